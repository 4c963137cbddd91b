"""The one way GENRE traces a PyTorch module to ONNX (shared by every exporter)."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

EXPORTER = "torchscript"


def torchscript_export(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    opset: int,
) -> str:
    """Trace ``module`` on ``args`` to a single self-contained ``path``; returns the exporter.

    torch>=2.9 defaults torch.onnx.export to the dynamo exporter, which needs the extra
    `onnxscript` dependency and writes weights as external data by default. The legacy
    TorchScript exporter (dynamo=False) is still shipped in torch 2.13, needs no extra
    package, produces one .onnx file and passes parity, so it is pinned explicitly.
    """
    import torch

    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TracerWarnings / legacy-exporter deprecation notice
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=opset,
            do_constant_folding=True,
            **kwargs,
        )
    return EXPORTER
