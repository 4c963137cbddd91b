"""Thin, torch-free wrapper around onnxruntime: provider resolution and a checked session."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

#: The two ONNX Runtime builds GENRE installs as the mutually exclusive `cpu` and
#: `gpu` extras; both ship the same `onnxruntime` import package.
RUNTIME_EXTRAS = {"onnxruntime": "cpu", "onnxruntime-gpu": "gpu"}
RUNTIME_FIX = (
    "install exactly one ONNX Runtime: pip install 'genre-recsys[cpu]' or, on a CUDA "
    "machine, pip install 'genre-recsys[gpu]'"
)
GPU_FIX = "pip uninstall -y onnxruntime && pip install 'genre-recsys[gpu]'"

try:
    import onnxruntime as ort
except ImportError as exc:  # neither extra installed
    raise ImportError(f"onnxruntime is not installed: {RUNTIME_FIX}") from exc

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_ALIASES = {
    "cpu": CPU,
    "cuda": CUDA,
    "gpu": CUDA,
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}

# onnx tensor type string -> numpy dtype
_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class ProviderError(RuntimeError):
    """Raised when a requested execution provider is unavailable or silently dropped."""


def installed_runtimes() -> list[str]:
    """The ONNX Runtime distributions installed (``onnxruntime``, ``onnxruntime-gpu``)."""
    found = []
    for dist in RUNTIME_EXTRAS:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        found.append(dist)
    return found


def check_one_runtime(installed: Sequence[str]) -> None:
    """Raise ProviderError when both ONNX Runtime builds are installed side by side."""
    if len(installed) > 1:
        raise ProviderError(
            f"both {' and '.join(installed)} are installed; they share the `onnxruntime` "
            "package, so whichever was installed last is the one that runs. Fix: pip "
            "uninstall -y onnxruntime onnxruntime-gpu, then "
            f"{RUNTIME_FIX.removeprefix('install exactly one ONNX Runtime: ')}"
        )


def available_providers() -> list[str]:
    """Execution providers compiled into the installed onnxruntime build."""
    check_one_runtime(installed_runtimes())
    return list(ort.get_available_providers())


def resolve_providers(requested: Sequence[str] | str = "auto") -> list[str]:
    """Turn "auto" / "cpu" / "cuda,cpu" / explicit names into a validated provider list."""
    available = available_providers()
    if isinstance(requested, str):
        if requested.strip().lower() == "auto":
            return [p for p in (CUDA, CPU) if p in available] or available[:1]
        names = [p for p in requested.split(",") if p.strip()]
    else:
        names = list(requested)
    if not names:
        raise ProviderError("no execution provider requested; use 'auto', 'cpu' or 'cuda'")
    resolved: list[str] = []
    for name in names:
        key = name.strip()
        full = _ALIASES.get(key.lower(), key)
        if full not in available:
            fix = (
                f"install the GPU build: {GPU_FIX}"
                if full in (CUDA, "TensorrtExecutionProvider")
                else "request one of the available providers or 'auto'"
            )
            raise ProviderError(
                f"execution provider {full!r} is not available in this onnxruntime "
                f"{ort.__version__} build (available: {', '.join(available)}). Fix: {fix}"
            )
        if full not in resolved:
            resolved.append(full)
    return resolved


class OnnxModel:
    """An onnxruntime.InferenceSession with provider checks and declared-input feeding."""

    def __init__(
        self,
        path: Path | str,
        providers: Sequence[str] | str = "auto",
        *,
        threads: int | None = None,
        strict: bool | None = None,
    ) -> None:
        """Open ``path``; ``strict`` (default: True unless providers="auto") raises on CUDA
        fallback instead of warning."""
        self.path = Path(path)
        is_auto = isinstance(providers, str) and providers.strip().lower() == "auto"
        self.requested_providers = resolve_providers(providers)
        self.strict = (not is_auto) if strict is None else strict

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # Worker threads that spin between runs burn the cores the event loop and
        # the broker need; a streaming worker calls the model in short bursts.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.path), sess_options=opts, providers=self.requested_providers
        )
        self._check_fallback()
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _check_fallback(self) -> None:
        active = self.session.get_providers()
        dropped = [p for p in self.requested_providers if p != CPU and p not in active]
        if not dropped:
            return
        msg = (
            f"onnxruntime could not initialise {', '.join(dropped)} for {self.path.name} and "
            f"fell back to {', '.join(active)} (check CUDA/cuDNN libraries match the "
            f"onnxruntime-gpu build; {GPU_FIX})"
        )
        if self.strict:
            raise ProviderError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        log.warning(msg)

    @property
    def providers(self) -> list[str]:
        """Providers the session is actually running on, in priority order."""
        return list(self.session.get_providers())

    @property
    def input_names(self) -> list[str]:
        """Input names declared by the graph."""
        return list(self._inputs)

    @property
    def output_names(self) -> list[str]:
        """Output names declared by the graph."""
        return list(self._outputs)

    def has_input(self, name: str) -> bool:
        """Whether the graph declares an input called ``name``."""
        return name in self._inputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph, feeding only declared inputs (cast to their declared dtype)."""
        missing = [n for n in self._inputs if n not in feeds]
        if missing:
            raise KeyError(f"{self.path.name} needs inputs {missing}; got {sorted(feeds)}")
        prepared: dict[str, np.ndarray] = {}
        for name, meta in self._inputs.items():
            arr = np.asarray(feeds[name])
            dtype = _ORT_DTYPES.get(meta.type)
            if dtype is not None and arr.dtype != dtype:
                arr = arr.astype(dtype)
            prepared[name] = np.ascontiguousarray(arr)
        results = self.session.run(self._outputs, prepared)
        return dict(zip(self._outputs, results, strict=True))

    def __repr__(self) -> str:
        return f"OnnxModel({self.path.name!r}, providers={self.providers})"
