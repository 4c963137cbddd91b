"""Serving the exported ranker with onnxruntime alone: parity, reloads, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from genre.core.telemetry import METRICS
from genre.export import export_ranker
from genre.model_export.ranker import GenreRanker, RankerShape
from genre.schemas.manifest import ManifestError
from genre.workers.ranker import OnnxRanker, RankerHandle
from tests.ranker_checkpoints import write_random_checkpoint

CFG = RankerShape(text_dim=32, n_ids=11, dim=16, heads=2, history_len=8)
VOCAB = [f"item-{i}" for i in range(10)]


def _export(root: Path, seed: int, name: str = "model") -> Path:
    ckpt = write_random_checkpoint(root / f"ckpt-{seed}.pt", CFG, VOCAB, seed=seed)
    export_ranker(ckpt, root / name, precisions=("fp32", "int8"))
    return root / name


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("ranker"), seed=0)


def _text(ids: list[str]) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(tuple(ids))) % 2**32)
    return rng.standard_normal((len(ids), CFG.text_dim)).astype(np.float32)


def test_serving_scores_match_pytorch(exported: Path) -> None:
    ranker = OnnxRanker(exported, "fp32", "cpu")
    items = [*VOCAB, "new-1", "new-2"]  # two items the model never saw: text only
    text = _text(items)
    reps = ranker.encode_items(items, text)
    histories = [["item-1", "item-2", "new-1"], [], ["item-9"]]
    candidates = [
        ["item-3", "item-4", "new-2"],
        ["item-0", "item-5"],
        ["item-1", "item-2", "item-3"],
    ]
    feats = np.random.default_rng(1).gamma(1.0, 5.0, (3, 3, 2)).astype(np.float32)
    out = ranker.score(histories, candidates, feats, reps)

    blob = torch.load(exported.parent / "ckpt-0.pt", weights_only=False)
    model = GenreRanker(CFG)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    index = {item: i for i, item in enumerate(items)}
    ids = torch.tensor([0 if i.startswith("new") else VOCAB.index(i) + 1 for i in items])
    with torch.no_grad():
        all_reps = model.item_tower(torch.from_numpy(text), ids)
        for b, (hist, cands) in enumerate(zip(histories, candidates, strict=True)):
            h = torch.zeros(1, 3, CFG.dim)
            mask = torch.zeros(1, 3)
            if hist:
                h[0, 3 - len(hist) :] = all_reps[[index[x] for x in hist]]
                mask[0, 3 - len(hist) :] = 1.0
            c = all_reps[[index[x] for x in cands]].unsqueeze(0)
            user = model.user_encoder(h, mask)
            f = torch.from_numpy(feats[b : b + 1, : len(cands)])
            scores, _ = model.score_head(user, h, mask, c, f)
            np.testing.assert_allclose(out.scores[b, : len(cands)], scores[0].numpy(), atol=1e-4)
    assert out.attention.shape == (3, 3, 3)
    assert np.allclose(out.attention[1], 0.0, atol=1e-6)  # cold user attends to nothing real


def test_item_representations_are_cached_and_forgotten(exported: Path) -> None:
    ranker = OnnxRanker(exported, "int8", "cpu")
    ranker.encode_items(["item-1"], _text(["item-1"]))
    hits, missing = ranker.cached_reps(["item-1", "item-2"])
    assert list(hits) == ["item-1"] and missing == ["item-2"]
    ranker.forget(["item-1"])
    assert ranker.cached_reps(["item-1"])[1] == ["item-1"]
    assert ranker.version.endswith("/int8")


def test_a_tampered_model_is_refused(tmp_path: Path) -> None:
    model_dir = _export(tmp_path, seed=0)
    scorer = model_dir / "score_head.onnx"
    scorer.write_bytes(scorer.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ManifestError, match=r"score_head\.onnx"):
        OnnxRanker(model_dir, "fp32", "cpu")
    with pytest.raises(ManifestError, match="no fp16"):
        OnnxRanker(_export(tmp_path, seed=0, name="other"), "fp16", "cpu")


def _fallbacks() -> float:
    value = METRICS.fallbacks.labels("ranker-reload", "ManifestError")._value.get()  # type: ignore[attr-defined]
    return float(value)


def test_reload_swaps_versions_and_survives_a_broken_export(tmp_path: Path) -> None:
    model_dir = _export(tmp_path, seed=0)
    handle = RankerHandle(model_dir, "fp32", "cpu", None, required=True)
    first = handle.current
    assert first is not None
    assert handle.maybe_reload() is False  # unchanged manifest: nothing to do

    _export(tmp_path, seed=1)  # a new version lands in the same directory
    assert handle.maybe_reload() is True
    assert handle.current is not None and handle.current.version != first.version
    second = handle.current

    # A broken deploy: the manifest changes but a file does not match it.
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["files"][0]["sha256"] = "0" * 64
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    os.utime(model_dir / "manifest.json", (1, 1))
    before = _fallbacks()
    assert handle.maybe_reload() is False
    assert handle.current is second  # still serving the last good version
    assert _fallbacks() == before + 1


def test_required_ranker_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="genre train"):
        RankerHandle(tmp_path / "absent", "fp32", "cpu", None, required=True)
    assert RankerHandle(tmp_path / "absent", "fp32", "cpu", None, required=False).current is None


def test_a_ranker_exported_with_other_graph_names_is_refused(tmp_path: Path) -> None:
    import json

    from genre.schemas.ranker_manifest import load_ranker_manifest

    model_dir = _export(tmp_path, seed=0)
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text())
    data["graphs"]["scorer"] = data["graphs"].pop("score_head")
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"another version.*genre export ranker"):
        load_ranker_manifest(model_dir)
