"""Export GENRE's ranker checkpoint to ONNX: three graphs x three precisions, parity, manifest.

``genre export ranker`` calls :func:`export_ranker`. For every graph of
``schemas.ranker_manifest.RANKER_GRAPHS`` it writes

- ``<graph>.onnx``: fp32, traced with the TorchScript exporter (``dynamo=False``:
  torch>=2.9 defaults to the dynamo exporter, which needs ``onnxscript``);
- ``<graph>.fp16.onnx``: fp16 weights and compute, float32 inputs and outputs
  (``keep_io_types``), so callers feed the same arrays at every precision;
- ``<graph>.int8.onnx``: dynamic quantisation, int8 weights for every MatMul/Gemm
  with a constant weight (activations are quantised per call, attention
  products between activations stay float);

plus ``vocab.json`` and ``manifest.json`` (written last). Parity runs the
PyTorch modules and the serving-side runner on the same seeded, realistic
inputs (left-padded histories of varied length, a cold user with an empty
history, popularity-like features) and chains the graphs as the scorer
worker does: item tower -> user encoder -> scorer. fp32 must agree to 1e-4;
fp16 and int8 errors are recorded, not enforced.

The serving-side runner comes from the ``runtime`` factory
(``genre.workers.ranker.OnnxRanker.for_parity``, wired by ``genre/export.py``):
parity checks the exact code that serves, while this offline package never
imports the serving one. :class:`TorchRanker` and that runner share one
numpy-in/numpy-out interface (:class:`RankerBackend`); the benchmark
(``bench/bench_ranker.py``) reuses them and :func:`make_parity_inputs`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console

from genre.model_export.onnx_export import torchscript_export
from genre.schemas.manifest import (
    ManifestError,
    TensorSpec,
    describe_file,
    sha256_file,
    utcnow,
    verify_files,
)
from genre.schemas.ranker_manifest import (
    RANKER_GRAPHS,
    GraphFile,
    RankerManifest,
    RankParity,
    write_ranker_manifest,
)

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
MIN_OPSET = 17
PARITY_TOLERANCE = 1e-4  # fp32 max abs error, on every compared output
PARITY_USERS = 48
PARITY_CANDIDATES = 200
TOP_K = 10
VOCAB_FILENAME = "vocab.json"

#: Graph name -> (input names, output names). The contract with the scorer worker.
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "item_tower": (("text", "ids"), ("item",)),
    "user_encoder": (("history", "mask"), ("user",)),
    "score_head": (("user", "history", "mask", "candidates", "features"), ("scores", "attention")),
}

#: Symbolic axes of every tensor (axis index -> name); fixed axes are left out.
DYNAMIC_AXES: dict[str, dict[str, dict[int, str]]] = {
    "item_tower": {"text": {0: "items"}, "ids": {0: "items"}, "item": {0: "items"}},
    "user_encoder": {
        "history": {0: "batch", 1: "history"},
        "mask": {0: "batch", 1: "history"},
        "user": {0: "batch"},
    },
    "score_head": {
        "user": {0: "batch"},
        "history": {0: "batch", 1: "history"},
        "mask": {0: "batch", 1: "history"},
        "candidates": {0: "batch", 1: "candidates"},
        "features": {0: "batch", 1: "candidates"},
        "scores": {0: "batch", 1: "candidates"},
        "attention": {0: "batch", 1: "candidates", 2: "history"},
    },
}

#: Checkpoint keys that are not copied into the manifest's ``training`` as extras.
_CHECKPOINT_CORE_KEYS = {
    "state_dict",
    "config",
    "id_vocab",
    "feature_spec",
    "history",
    "best_epoch",
}
_EXPORT_HINT = "re-run `genre train` then `genre export ranker`"


def graph_filename(graph: str, precision: str) -> str:
    """``<graph>.onnx`` for fp32, ``<graph>.fp16.onnx`` / ``<graph>.int8.onnx`` otherwise."""
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}.{precision}.onnx"


# --------------------------------------------------------------------------------------------
# Backends: PyTorch eager and the serving runner behind one numpy interface
# --------------------------------------------------------------------------------------------


class RankerBackend(Protocol):
    """The three graphs as numpy functions (what parity checks and the benchmark call)."""

    def item_tower(self, text: np.ndarray, ids: np.ndarray) -> np.ndarray: ...

    def user_encoder(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray: ...

    def score_head(
        self,
        user: np.ndarray,
        history: np.ndarray,
        mask: np.ndarray,
        candidates: np.ndarray,
        features: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]: ...


class TorchRanker:
    """PyTorch eager reference (fp32, CPU, eval mode, inference mode)."""

    def __init__(self, model: Any, blob: Mapping[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.blob: Mapping[str, Any] = blob or {}

    @property
    def cfg(self) -> Any:
        return self.model.cfg

    def item_tower(self, text: np.ndarray, ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.item_tower(torch.from_numpy(text), torch.from_numpy(ids)).numpy()

    def user_encoder(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.user_encoder(
                torch.from_numpy(history), torch.from_numpy(mask)
            ).numpy()

    def score_head(
        self,
        user: np.ndarray,
        history: np.ndarray,
        mask: np.ndarray,
        candidates: np.ndarray,
        features: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        args = (user, history, mask, candidates, features)
        with torch.inference_mode():
            scores, attention = self.model.score_head(*(torch.from_numpy(a) for a in args))
        return scores.numpy(), attention.numpy()


def torch_reference(checkpoint: Path | str) -> TorchRanker:
    """The PyTorch reference for a checkpoint written by ``train.save_checkpoint``."""
    from genre.model_export.train import load_checkpoint

    model, blob = load_checkpoint(Path(checkpoint))
    return TorchRanker(model, blob)


class ParityRanker(RankerBackend, Protocol):
    """What the parity check needs from the serving-side ranker: the three graphs as numpy
    functions, and the execution provider they run on (recorded in the manifest)."""

    @property
    def provider(self) -> str: ...


#: Opens the serving-side ranker on a fresh export at one precision, before manifest.json is
#: written: ``runtime(draft_manifest, staging_dir, precision)``.
RankerRuntimeFactory = Callable[[RankerManifest, Path, str], ParityRanker]


# --------------------------------------------------------------------------------------------
# Held-out inputs and the chained pipeline
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityInputs:
    """Raw inputs for ``batch`` users: history and candidate items, mask and features."""

    history_text: np.ndarray  # float32 [B, H, text_dim], zero where padded
    history_ids: np.ndarray  # int64 [B, H], 0 where padded or unknown
    mask: np.ndarray  # float32 [B, H], left-padded: 0 on the left, 1 for real clicks
    cand_text: np.ndarray  # float32 [B, C, text_dim]
    cand_ids: np.ndarray  # int64 [B, C]
    features: np.ndarray  # float32 [B, C, F], non-negative counts

    @property
    def batch(self) -> int:
        return int(self.mask.shape[0])


def make_parity_inputs(
    cfg: Any,
    *,
    batch: int = PARITY_USERS,
    candidates: int = PARITY_CANDIDATES,
    history: int | None = None,
    seed: int = 0,
) -> ParityInputs:
    """Seeded, realistic inputs: unit-norm text vectors, ids incl. unknown (0), histories of
    varied length with left padding (row 0 cold: empty history; row 1 full), gamma-distributed
    popularity-like features in [0, 50] with many zeros."""
    rng = np.random.default_rng(seed)
    h = int(history if history is not None else cfg.history_len)
    t, f = int(cfg.text_dim), int(cfg.n_features)

    def text(*shape: int) -> np.ndarray:
        v = rng.standard_normal((*shape, t)).astype(np.float32)
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    def ids(*shape: int) -> np.ndarray:
        out = rng.integers(0, max(int(cfg.n_ids), 1), shape, dtype=np.int64)
        out[rng.random(shape) < 0.2] = 0  # unknown items: text only
        return out

    lengths = rng.integers(1, h + 1, batch) if h > 0 else np.zeros(batch, np.int64)
    lengths[0] = 0  # a cold user: no clicks at all
    if batch > 1:
        lengths[1] = h
    if batch > 2 and h > 0:
        lengths[2] = 1
    mask = (np.arange(h)[None, :] >= (h - lengths)[:, None]).astype(np.float32)
    history_text = text(batch, h) * mask[..., None]
    history_ids = ids(batch, h) * mask.astype(np.int64)
    feats = np.clip(rng.gamma(0.6, 8.0, (batch, candidates, f)), 0.0, 50.0)
    feats[rng.random(feats.shape) < 0.3] = 0.0
    return ParityInputs(
        history_text=history_text,
        history_ids=history_ids,
        mask=mask,
        cand_text=text(batch, candidates),
        cand_ids=ids(batch, candidates),
        features=feats.astype(np.float32),
    )


def run_pipeline(backend: RankerBackend, x: ParityInputs) -> dict[str, np.ndarray]:
    """Item tower -> user encoder -> scorer, as the worker chains them."""
    b, h, t = x.history_text.shape
    c = x.cand_text.shape[1]
    history = backend.item_tower(x.history_text.reshape(b * h, t), x.history_ids.reshape(-1))
    history = (history.reshape(b, h, -1) * x.mask[..., None]).astype(np.float32)
    cands = backend.item_tower(x.cand_text.reshape(b * c, t), x.cand_ids.reshape(-1))
    cands = cands.reshape(b, c, -1)
    user = backend.user_encoder(history, x.mask)
    scores, attention = backend.score_head(user, history, x.mask, cands, x.features)
    return {
        "history_items": history,
        "candidate_items": cands,
        "user": user,
        "scores": scores,
        "attention": attention,
    }


def topk_agreement(reference: np.ndarray, got: np.ndarray, k: int = TOP_K) -> float:
    """Mean overlap (0..1) of the top-k column sets per row."""
    k = min(k, reference.shape[1])
    ref = np.argpartition(-reference, k - 1, axis=1)[:, :k]
    hyp = np.argpartition(-got, k - 1, axis=1)[:, :k]
    overlap = [len(set(r.tolist()) & set(g.tolist())) / k for r, g in zip(ref, hyp, strict=True)]
    return float(np.mean(overlap))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(diff.max()) if diff.size else 0.0


# --------------------------------------------------------------------------------------------
# ONNX export and conversions
# --------------------------------------------------------------------------------------------


def export_fp32_graphs(model: Any, out_dir: Path, opset: int = MIN_OPSET) -> dict[str, Path]:
    """Trace the three modules of ``model`` to ``<graph>.onnx`` in ``out_dir``; checks them."""
    import onnx
    import torch

    cfg = model.cfg
    model = model.eval()
    rng = np.random.default_rng(1234)
    # Distinct dummy sizes so the tracer cannot confuse axes with one another.
    b, c, items = 3, 11, 7
    h = max(1, min(int(cfg.history_len), 5))
    d, f, t = int(cfg.dim), int(cfg.n_features), int(cfg.text_dim)

    def randn(*shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))

    mask = torch.ones(b, h)
    mask[0, :] = 0.0
    mask[1, : h // 2] = 0.0
    dummies: dict[str, tuple[Any, tuple[torch.Tensor, ...]]] = {
        "item_tower": (
            model.item_tower,
            (randn(items, t), torch.from_numpy(rng.integers(0, cfg.n_ids, items))),
        ),
        "user_encoder": (model.user_encoder, (randn(b, h, d), mask)),
        "score_head": (
            model.score_head,
            (randn(b, d), randn(b, h, d), mask, randn(b, c, d), randn(b, c, f).abs()),
        ),
    }
    paths: dict[str, Path] = {}
    for graph in RANKER_GRAPHS:
        module, args = dummies[graph]
        inputs, outputs = GRAPH_IO[graph]
        path = out_dir / graph_filename(graph, "fp32")
        torchscript_export(
            module,
            args,
            path,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=DYNAMIC_AXES[graph],
            opset=opset,
        )
        onnx.checker.check_model(str(path), full_check=True)
        paths[graph] = path
    return paths


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute with float32 graph inputs/outputs (``keep_io_types``)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "values clipped to fp16 range" notices
        half = convert_float_to_float16(model, keep_io_types=True)
    _toposort(half.graph)  # the converter appends its input/output Casts at the end
    onnx.save(half, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)
    return dst


def _toposort(graph: Any) -> None:
    """Reorder ``graph.node`` topologically in place (onnx.checker requires it)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            names = [n.name for n in pending[:5]]
            raise ManifestError(f"ONNX graph has a cycle or dangling inputs near {names}")
        for n in ready:
            available.update(n.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered, strict=True):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def _gemm_to_matmul(model: Any) -> Any:
    """Rewrite ``Gemm(A, W, bias)`` with a constant W as ``MatMul + Add``.

    ORT's dynamic quantiser only handles MatMul; ``nn.Linear`` on a 2-D input (the item
    tower's projection) exports as Gemm and would otherwise stay float.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            node.op_type == "Gemm"
            and node.input[1] in inits
            and float(attrs.get("alpha", 1.0)) == 1.0
            and float(attrs.get("beta", 1.0)) == 1.0
            and int(attrs.get("transA", 0)) == 0
        )
        if not plain:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if int(attrs.get("transB", 0)):
            w = np.ascontiguousarray(w.T)
        w_name = f"{node.input[1]}__matmul"
        graph.initializer.append(numpy_helper.from_array(w, w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}__matmul" if has_bias else node.output[0]
        nodes.append(
            helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}_mm")
        )
        if has_bias:
            nodes.append(
                helper.make_node(
                    "Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_add"
                )
            )
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model


def convert_int8(src: Path, dst: Path) -> Path:
    """Dynamic quantisation: int8 (QInt8) weights for MatMul/Gemm with constant weights."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _gemm_to_matmul(onnx.load(str(src)))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs "consider pre-processing" per graph
    try:
        with tempfile.TemporaryDirectory(prefix="genre-int8-") as tmp:
            staged = Path(tmp) / src.name
            onnx.save(model, str(staged))
            quantize_dynamic(
                str(staged),
                str(dst),
                op_types_to_quantize=["MatMul", "Gemm"],
                weight_type=QuantType.QInt8,
                extra_options={"MatMulConstBOnly": True},
            )
    finally:
        root.setLevel(level)
    onnx.checker.check_model(str(dst), full_check=True)
    return dst


def _opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


# --------------------------------------------------------------------------------------------
# export_ranker
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _step(console: Console, title: str) -> Iterator[None]:
    """A rich spinner for one step, then its duration."""
    t0 = time.perf_counter()
    with console.status(f"[bold cyan]{title}…"):
        yield
    console.print(f"[green]✓[/green] {title} [dim]({time.perf_counter() - t0:.1f}s)[/dim]")


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _install(staging: Path, out_dir: Path, names: Sequence[str]) -> None:
    """Move the staged files into ``out_dir``: the old manifest goes first, so that a reader
    sees either the old model or no model until the new manifest lands (written last)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)
    for name in names:
        os.replace(staging / name, out_dir / name)


def export_ranker(
    checkpoint: Path,
    out_dir: Path,
    *,
    opset: int = MIN_OPSET,
    precisions: Sequence[str] = PRECISIONS,
    metrics: dict[str, Any] | None = None,
    console: Console | None = None,
    seed: int = 0,
    runtime: RankerRuntimeFactory,
) -> RankerManifest:
    """Export a ranker checkpoint to ``out_dir`` with parity checks; returns the manifest.

    ``runtime(manifest, staging_dir, precision)`` must return the serving-side ranker
    (``genre.workers.ranker.OnnxRanker.for_parity``); parity runs it against PyTorch.

    Raises ManifestError when the fp32 graphs disagree with PyTorch by 1e-4 or more, or the
    written files do not verify; ValueError for bad arguments or an inconsistent checkpoint.
    """
    import onnx
    import onnxruntime as ort
    import torch

    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    precisions = list(dict.fromkeys(precisions))
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or "fp32" not in precisions:
        raise ValueError(
            f"precisions must include 'fp32' and only use {list(PRECISIONS)}; got {precisions}"
        )
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET}: the ranker manifest requires opset >= 17")

    with _step(console, f"Loading checkpoint {checkpoint}"):
        ref = torch_reference(checkpoint)
        blob, cfg = ref.blob, ref.cfg
        vocab = list(blob.get("id_vocab", []))
        feature_spec = dict(blob.get("feature_spec") or {})
        feature_names = [str(n) for n in feature_spec.get("feature_names", ())]
    if len(vocab) != cfg.n_ids - 1:
        raise ValueError(
            f"checkpoint {checkpoint} has {len(vocab)} vocab ids but {cfg.n_ids} id-embedding "
            f"rows (expected rows = ids + 1); {_EXPORT_HINT}"
        )
    if len(feature_names) != cfg.n_features:
        raise ValueError(
            f"checkpoint {checkpoint}: feature_spec.feature_names {feature_names} does not match "
            f"n_features={cfg.n_features}; {_EXPORT_HINT}"
        )

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        files: dict[tuple[str, str], Path] = {}
        with _step(console, f"Exporting {len(RANKER_GRAPHS)} graphs to ONNX (opset {opset}, fp32)"):
            for g, p in export_fp32_graphs(ref.model, staging, opset).items():
                files[g, "fp32"] = p
        if "fp16" in precisions:
            with _step(console, "Converting to fp16 (float32 inputs/outputs kept)"):
                for g in RANKER_GRAPHS:
                    dst = staging / graph_filename(g, "fp16")
                    files[g, "fp16"] = convert_fp16(files[g, "fp32"], dst)
        if "int8" in precisions:
            with _step(console, "Quantising to int8 (dynamic, int8 MatMul weights)"):
                for g in RANKER_GRAPHS:
                    dst = staging / graph_filename(g, "int8")
                    files[g, "int8"] = convert_int8(files[g, "fp32"], dst)
        (staging / VOCAB_FILENAME).write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
        opsets = {p.name: _opset_of(p) for p in files.values()}
        low = {n: v for n, v in opsets.items() if v < MIN_OPSET}
        if low:
            raise ManifestError(f"exported graphs below opset {MIN_OPSET}: {low}")

        specs = {key: _specs_from_model(path) for key, path in files.items()}
        file_entries = [
            describe_file(staging, p.name, role=f"{g}:{prec}") for (g, prec), p in files.items()
        ]
        file_entries.append(describe_file(staging, VOCAB_FILENAME, role="vocab"))
        head_sha = next(f.sha256 for f in file_entries if f.role == "score_head:fp32")

        def graph_entries(
            parity: Mapping[tuple[str, str], RankParity | None],
        ) -> dict[str, list[GraphFile]]:
            return {
                g: [
                    GraphFile(
                        path=files[g, prec].name,
                        precision=prec,  # type: ignore[arg-type]
                        inputs=specs[g, prec][0],
                        outputs=specs[g, prec][1],
                        parity=parity.get((g, prec)),
                    )
                    for prec in precisions
                ]
                for g in RANKER_GRAPHS
            }

        # Everything but parity and the export record: what the serving runner opens.
        draft = RankerManifest(
            version=f"r{head_sha[:12]}",
            created_at=utcnow(),
            opset=min(opsets.values()),
            config=cfg.to_dict(),
            feature_spec=feature_spec,
            feature_names=feature_names,
            vocab=VOCAB_FILENAME,
            graphs=graph_entries({}),
            files=file_entries,
            metrics=dict(metrics if metrics is not None else _checkpoint_metrics(dict(blob))),
        )

        x = make_parity_inputs(cfg, seed=seed)
        notes: list[str] = []
        detail: dict[str, dict[str, float]] = {}
        parity: dict[tuple[str, str], RankParity | None] = {}
        with _step(console, f"Parity on {x.batch} users x {x.cand_text.shape[1]} candidates"):
            want = run_pipeline(ref, x)
            for precision in precisions:
                try:
                    runner = runtime(draft, staging, precision)
                    got = run_pipeline(runner, x)
                except Exception as exc:  # an EP without kernels for this precision
                    if precision == "fp32":
                        raise
                    notes.append(
                        f"{precision}: the serving runner could not run these graphs "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
                        "parity not measured"
                    )
                    continue
                backend = (
                    f"onnxruntime {ort.__version__} {runner.provider} vs torch "
                    f"{torch.__version__} eager (cpu)"
                )
                errs = {
                    k: _max_abs(want[k], got[k])
                    for k in ("history_items", "candidate_items", "user", "scores", "attention")
                }
                if precision != "fp32" and not all(math.isfinite(v) for v in errs.values()):
                    notes.append(
                        f"{precision}: non-finite outputs on the parity inputs (overflow?); "
                        f"parity not recorded ({errs})"
                    )
                    continue
                item_err = max(errs["history_items"], errs["candidate_items"])
                top10 = topk_agreement(want["scores"], got["scores"])
                detail[precision] = {
                    "item": item_err,
                    "user": errs["user"],
                    "scores": errs["scores"],
                    "attention": errs["attention"],
                    "top10_agreement": top10,
                }
                n_items = int(x.history_ids.size + x.cand_ids.size)
                parity["item_tower", precision] = RankParity(
                    max_abs_error=item_err, n_samples=n_items, backend=backend
                )
                parity["user_encoder", precision] = RankParity(
                    max_abs_error=errs["scores"], n_samples=x.batch, backend=backend
                )
                parity["score_head", precision] = RankParity(
                    max_abs_error=errs["scores"],
                    top10_agreement=top10,
                    n_samples=x.batch,
                    backend=backend,
                )
                if precision == "fp32":
                    worst = max(errs.values())
                    if not worst < PARITY_TOLERANCE:  # also catches NaN
                        raise ManifestError(
                            f"ranker ONNX parity check failed: fp32 max abs error {worst:.3e} "
                            f">= {PARITY_TOLERANCE:.0e} (per output: "
                            + ", ".join(f"{k} {v:.2e}" for k, v in errs.items())
                            + "); manifest not written. Fix: check that the checkpoint loads "
                            "into the current model_export/ranker.py (same code it was trained "
                            f"with) and {_EXPORT_HINT}; if ranker.py changed, make sure every "
                            "op traces (no data-dependent Python control flow)"
                        )
        for precision in precisions:
            d = detail.get(precision)
            if d:
                console.print(
                    f"  {precision}: scores max abs err {d['scores']:.2e}, item {d['item']:.2e}, "
                    f"user {d['user']:.2e}, top-10 agreement {d['top10_agreement']:.3f}"
                )
        for note in notes:
            console.print(f"  [yellow]![/yellow] {note}")

        extras = {k: v for k, v in blob.items() if k not in _CHECKPOINT_CORE_KEYS and _jsonable(v)}
        training: dict[str, Any] = {
            "best_epoch": blob.get("best_epoch"),
            "history": blob.get("history", []),
            **extras,
            "export": {
                "checkpoint_sha256": sha256_file(Path(checkpoint)),
                "exporter": "torchscript",
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "parity_seed": seed,
                "parity_tolerance_fp32": PARITY_TOLERANCE,
                "parity_detail": detail,
                "parity_note": (
                    "item_tower: max abs error of item vectors; user_encoder and scorer: max abs "
                    "error of the scores of the chained pipeline (item tower -> user encoder -> "
                    "scorer, all at that precision, run by the serving runner); parity_detail "
                    "has each output separately"
                ),
                "notes": notes,
                "seconds": round(time.perf_counter() - t_start, 2),
            },
        }
        manifest = draft.model_copy(update={"graphs": graph_entries(parity), "training": training})
        verify_files(staging, manifest)  # type: ignore[arg-type]  # duck-typed: files/name/version
        _install(staging, out_dir, [f.path for f in file_entries])
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    write_ranker_manifest(out_dir, manifest)
    try:
        verify_files(out_dir, manifest)  # type: ignore[arg-type]
    except ManifestError:
        (out_dir / "manifest.json").unlink(missing_ok=True)  # never leave a lying manifest
        raise
    fp32 = detail["fp32"]
    console.print(
        f"[green]✓[/green] wrote {out_dir / 'manifest.json'}: {manifest.name}@{manifest.version}, "
        f"{len(file_entries)} files, fp32 scores max abs err {fp32['scores']:.2e} "
        f"[dim]({time.perf_counter() - t_start:.1f}s total)[/dim]"
    )
    return manifest


def _checkpoint_metrics(blob: dict[str, Any]) -> dict[str, Any]:
    """Evaluation figures `genre train` / `genre evaluate` stored in the checkpoint."""
    metrics = blob.get("metrics")
    return dict(metrics) if isinstance(metrics, dict) else {}


def _specs_from_model(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input/output specs of an ONNX file, as the manifest lists them ("?": an unknown axis)."""
    import onnx

    model = onnx.load(str(path))

    def spec(v: Any) -> TensorSpec:
        tt = v.type.tensor_type
        dims: list[int | str] = [
            d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tt.shape.dim
        ]
        dtype = f"tensor({onnx.TensorProto.DataType.Name(tt.elem_type).lower()})"  # as ORT names it
        return TensorSpec(name=v.name, dtype=dtype, shape=dims)

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]
