"""Ranker ONNX export: files, opset, precisions, parity, dynamic axes, cold users, tampering.

A tiny randomly initialised ranker is exported once per module (about a second). Parity and
the ONNX checks here run the serving runner, ``genre.workers.ranker.OnnxRanker``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from genre.export import export_ranker  # noqa: E402
from genre.model_export import ranker_export as rx  # noqa: E402
from genre.model_export.ranker import GenreRanker, RankerShape  # noqa: E402
from genre.schemas.manifest import ManifestError, sha256_file, verify_files  # noqa: E402
from genre.schemas.ranker_manifest import (  # noqa: E402
    RANKER_GRAPHS,
    RankerManifest,
    load_ranker_manifest,
)
from genre.workers.ranker import OnnxRanker  # noqa: E402

CFG = RankerShape(text_dim=32, n_ids=20, dim=16, heads=2, n_features=2, history_len=8)
PRECISIONS = ("fp32", "fp16", "int8")


def _write_checkpoint(path: Path, cfg: RankerShape = CFG, vocab_size: int | None = None) -> Path:
    """A blob with save_checkpoint's keys; weights perturbed so no module is degenerate."""
    torch.manual_seed(0)
    model = GenreRanker(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    n_vocab = cfg.n_ids - 1 if vocab_size is None else vocab_size
    torch.save(
        {
            "state_dict": model.state_dict(),
            "config": cfg.to_dict(),
            "id_vocab": [f"item-{i}" for i in range(n_vocab)],
            "feature_spec": {"history_len": cfg.history_len, "feature_names": ["trending", "co"]},
            "history": [{"epoch": 1, "loss": 2.5, "valid_ndcg@10": 0.1}],
            "best_epoch": 1,
            "dataset": "toy",
            "not_json": object(),
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, RankerManifest]:
    root = tmp_path_factory.mktemp("ranker")
    ckpt = _write_checkpoint(root / "ranker.pt")
    out = root / "model"
    manifest = export_ranker(ckpt, out, metrics={"ndcg@10": 0.25}, seed=3)
    return ckpt, out, manifest


def _reference(ckpt: Path) -> rx.TorchRanker:
    return rx.torch_reference(ckpt)


def test_files_verify_and_manifest_round_trips(exported: Any) -> None:
    ckpt, out, manifest = exported
    on_disk = load_ranker_manifest(out)
    assert on_disk == manifest
    verify_files(out, on_disk)  # type: ignore[arg-type]
    listed = {f.path for f in manifest.files}
    expected = {rx.graph_filename(g, p) for g in RANKER_GRAPHS for p in PRECISIONS}
    assert listed == expected | {"vocab.json"}
    assert {p.name for p in out.iterdir()} == listed | {"manifest.json"}
    # nothing left behind by the staging directory
    assert [p.name for p in out.parent.iterdir() if "staging" in p.name] == []
    assert json.loads((out / "vocab.json").read_text()) == [f"item-{i}" for i in range(19)]
    assert manifest.version == "r" + sha256_file(out / "score_head.onnx")[:12]
    assert manifest.config == CFG.to_dict()
    assert manifest.feature_names == ["trending", "co"]
    assert manifest.metrics == {"ndcg@10": 0.25}
    assert manifest.training["best_epoch"] == 1
    assert manifest.training["dataset"] == "toy"
    assert "not_json" not in manifest.training
    assert manifest.training["export"]["checkpoint_sha256"] == sha256_file(ckpt)


def test_opset_and_onnx_checker(exported: Any) -> None:
    _, out, manifest = exported
    assert manifest.opset >= 17
    for g in RANKER_GRAPHS:
        for p in PRECISIONS:
            model = onnx.load(str(out / manifest.graph(g, p).path))
            onnx.checker.check_model(model, full_check=True)
            assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_three_graphs_three_precisions_with_contract_io(exported: Any) -> None:
    _, out, manifest = exported
    assert set(manifest.graphs) == set(RANKER_GRAPHS)
    d, t, f = CFG.dim, CFG.text_dim, CFG.n_features
    want_inputs = {
        "item_tower": [("text", ["items", t]), ("ids", ["items"])],
        "user_encoder": [("history", ["batch", "history", d]), ("mask", ["batch", "history"])],
        "score_head": [
            ("user", ["batch", d]),
            ("history", ["batch", "history", d]),
            ("mask", ["batch", "history"]),
            ("candidates", ["batch", "candidates", d]),
            ("features", ["batch", "candidates", f]),
        ],
    }
    want_outputs = {
        "item_tower": [("item", ["items", d])],
        "user_encoder": [("user", ["batch", d])],
        "score_head": [
            ("scores", ["batch", "candidates"]),
            ("attention", ["batch", "candidates", "history"]),
        ],
    }
    for g in RANKER_GRAPHS:
        assert sorted(e.precision for e in manifest.graphs[g]) == sorted(PRECISIONS)
        for p in PRECISIONS:
            entry = manifest.graph(g, p)
            assert entry.path == rx.graph_filename(g, p)
            assert [(s.name, s.shape) for s in entry.inputs] == want_inputs[g]
            assert [(s.name, s.shape) for s in entry.outputs] == want_outputs[g]
            # fp16/int8 keep float32 (and int64 ids) at the boundary
            dtypes = {s.name: s.dtype for s in [*entry.inputs, *entry.outputs]}
            assert dtypes.pop("ids", "tensor(int64)") == "tensor(int64)"
            assert set(dtypes.values()) == {"tensor(float)"}
    fp16 = onnx.load(str(out / "score_head.fp16.onnx"))
    assert {i.data_type for i in fp16.graph.initializer} == {onnx.TensorProto.FLOAT16}
    int8_ops = {n.op_type for n in onnx.load(str(out / "item_tower.int8.onnx")).graph.node}
    assert "MatMulInteger" in int8_ops and "Gemm" not in int8_ops


def test_parity_recorded(exported: Any) -> None:
    _, _, manifest = exported
    for g in RANKER_GRAPHS:
        fp32 = manifest.graph(g, "fp32").parity
        assert fp32 is not None and fp32.max_abs_error < 1e-4 and fp32.n_samples > 0
        assert "CPUExecutionProvider" in fp32.backend
        for p in ("fp16", "int8"):
            par = manifest.graph(g, p).parity
            assert par is not None, manifest.training["export"]["notes"]
            assert np.isfinite(par.max_abs_error) and par.max_abs_error < 1.0
    scorer = manifest.graph("score_head", "fp32").parity
    assert scorer is not None and scorer.top10_agreement == 1.0
    assert manifest.graph("item_tower", "fp32").parity.top10_agreement is None  # type: ignore[union-attr]
    for p in ("fp16", "int8"):
        assert manifest.graph("score_head", p).parity.top10_agreement > 0.5  # type: ignore[union-attr, operator]


@pytest.mark.parametrize(("batch", "history", "candidates"), [(1, 3, 5), (6, CFG.history_len, 37)])
def test_dynamic_axes_match_torch(exported: Any, batch: int, history: int, candidates: int) -> None:
    ckpt, out, _ = exported
    x = rx.make_parity_inputs(CFG, batch=batch, candidates=candidates, history=history, seed=11)
    want = rx.run_pipeline(_reference(ckpt), x)
    for p in PRECISIONS:
        got = rx.run_pipeline(OnnxRanker(out, p, "cpu"), x)
        assert got["scores"].shape == (batch, candidates)
        assert got["attention"].shape == (batch, candidates, history)
        assert got["user"].shape == (batch, CFG.dim)
        tol = 1e-4 if p == "fp32" else 0.5
        for key in ("candidate_items", "user", "scores", "attention"):
            err = float(np.abs(got[key] - want[key]).max())
            assert err < tol, f"{p} {key}: {err}"


def test_cold_user_gets_finite_scores(exported: Any) -> None:
    ckpt, out, _ = exported
    x = rx.make_parity_inputs(CFG, batch=4, candidates=20, seed=5)
    assert x.mask[0].sum() == 0  # row 0 is the cold user
    assert x.mask[1].sum() == CFG.history_len
    want = rx.run_pipeline(_reference(ckpt), x)
    for p in PRECISIONS:
        got = rx.run_pipeline(OnnxRanker(out, p, "cpu"), x)
        assert np.isfinite(got["scores"]).all() and np.isfinite(got["attention"]).all()
        # all attention of a cold user goes to the null click, which is not returned
        assert np.abs(got["attention"][0]).max() < 1e-3
        assert np.ptp(got["scores"][0]) > 0  # features and content still rank candidates
        assert np.abs(got["scores"][0] - want["scores"][0]).max() < (1e-4 if p == "fp32" else 0.5)


def test_tampered_file_fails_verification(exported: Any, tmp_path: Path) -> None:
    _, out, manifest = exported
    copy = tmp_path / "model"
    shutil.copytree(out, copy)
    verify_files(copy, manifest)  # type: ignore[arg-type]
    target = copy / "score_head.int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    tampered = r"score_head\.int8\.onnx: sha256.*`genre export ranker`"
    with pytest.raises(ManifestError, match=tampered):
        verify_files(copy, manifest)  # type: ignore[arg-type]
    (copy / "vocab.json").unlink()
    with pytest.raises(ManifestError, match=r"vocab\.json: missing"):
        verify_files(copy, manifest)  # type: ignore[arg-type]


def test_fp32_parity_gate_blocks_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = _write_checkpoint(tmp_path / "ranker.pt")
    original = rx.TorchRanker.score_head

    def drifted(self: rx.TorchRanker, *args: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, attention = original(self, *args)
        return scores + 1e-3, attention

    monkeypatch.setattr(rx.TorchRanker, "score_head", drifted)
    out = tmp_path / "model"
    with pytest.raises(ManifestError, match="parity check failed: fp32"):
        export_ranker(ckpt, out, precisions=("fp32",))
    assert not (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []


def test_reexport_replaces_and_subset_of_precisions(exported: Any, tmp_path: Path) -> None:
    ckpt, out, first = exported
    copy = tmp_path / "model"
    shutil.copytree(out, copy)
    again = export_ranker(ckpt, copy, precisions=("fp32", "int8"))
    assert again.version == first.version  # same checkpoint -> same scorer bytes -> same id
    assert {e.precision for e in again.graphs["score_head"]} == {"fp32", "int8"}
    verify_files(copy, load_ranker_manifest(copy))  # type: ignore[arg-type]
    with pytest.raises(ManifestError, match="no fp16"):
        again.graph("score_head", "fp16")


def test_bad_arguments_and_inconsistent_checkpoint(tmp_path: Path) -> None:
    ckpt = _write_checkpoint(tmp_path / "bad.pt", vocab_size=5)
    with pytest.raises(ValueError, match="vocab ids"):
        export_ranker(ckpt, tmp_path / "out")
    with pytest.raises(ValueError, match="fp32"):
        export_ranker(ckpt, tmp_path / "out", precisions=("int8",))
    with pytest.raises(ValueError, match="opset"):
        export_ranker(ckpt, tmp_path / "out", opset=13)
    assert not (tmp_path / "out").exists()


def test_parity_runs_the_serving_runner(tmp_path: Path) -> None:
    ckpt = _write_checkpoint(tmp_path / "ranker.pt")
    out = tmp_path / "model"
    calls: list[tuple[str, str, Path, bool]] = []

    def recording(manifest: RankerManifest, model_dir: Path, precision: str) -> OnnxRanker:
        runner = OnnxRanker.for_parity(manifest, model_dir, precision)
        calls.append((precision, manifest.version, model_dir, (out / "manifest.json").exists()))
        return runner

    manifest = rx.export_ranker(ckpt, out, precisions=("fp32", "int8"), runtime=recording)
    assert [c[0] for c in calls] == ["fp32", "int8"]
    for _, version, model_dir, manifest_written in calls:
        assert version == manifest.version
        assert model_dir != out and "staging" in model_dir.name  # before install
        assert not manifest_written
    assert manifest.graph("score_head", "int8").parity is not None


class _DriftedRanker(OnnxRanker):
    """A serving runner whose scorer is off by 1e-3: parity must catch it."""

    def score_head(
        self,
        user: np.ndarray,
        history: np.ndarray,
        mask: np.ndarray,
        candidates: np.ndarray,
        features: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        scores, attention = super().score_head(user, history, mask, candidates, features)
        return scores + 1e-3, attention


def test_a_wrong_serving_runner_blocks_the_manifest(tmp_path: Path) -> None:
    ckpt = _write_checkpoint(tmp_path / "ranker.pt")
    out = tmp_path / "model"
    with pytest.raises(ManifestError, match="parity check failed: fp32"):
        rx.export_ranker(ckpt, out, precisions=("fp32",), runtime=_DriftedRanker.for_parity)
    assert not (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []
