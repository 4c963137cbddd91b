"""Model export entry points: the offline exporter wired to the serving runtime for parity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genre.schemas.manifest import ModelManifest
from genre.schemas.ranker_manifest import RankerManifest


def export_encoder(out_dir: Path, **kwargs: Any) -> ModelManifest:
    """Export the text encoder; its parity check runs the serving-side ``TextEncoder``."""
    from genre.core.text_encoder import TextEncoder
    from genre.model_export.encoder import export_text_encoder

    return export_text_encoder(out_dir, runtime=TextEncoder.for_parity, **kwargs)


def export_ranker(checkpoint: Path, out_dir: Path, **kwargs: Any) -> RankerManifest:
    """Export the ranker checkpoint; its parity check runs the serving-side ``OnnxRanker``."""
    from genre.model_export.ranker_export import export_ranker as run_export
    from genre.workers.ranker import OnnxRanker

    return run_export(checkpoint, out_dir, runtime=OnnxRanker.for_parity, **kwargs)
