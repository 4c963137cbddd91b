"""Shared pytest fixtures. Keep each owner's fixtures in their own section."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------
# Embedded broker (tansu) fixtures -- owner: core/broker.py
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A started EmbeddedBroker on a free port, shared by the whole session.

    Storage is in-memory: tests must use unique topic names (see ``topic_factory``).
    """
    from genre.core.broker import EmbeddedBroker

    log: Path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    b = EmbeddedBroker(log_path=log)
    b.start(timeout_s=30)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def topic_factory(broker: object) -> Callable[..., str]:
    """``make(prefix="t", partitions=1) -> name``: create a uniquely named topic."""
    from genre.core.broker import ensure_topics

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        ensure_topics(broker.bootstrap, {name: partitions})  # type: ignore[attr-defined]
        return name

    return make


# ---------------------------------------------------------------------------


REPO_ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------
# Text encoder -- owner: model_export/encoder.py, core/text_encoder.py
# ---------------------------------------------------------------------------

ENCODER_CACHE_DIR = REPO_ROOT / ".cache" / "models" / "encoder"


@pytest.fixture(scope="session")
def encoder_dir() -> Path:
    """Exported ONNX text encoder in .cache/models/encoder (exported once, reused after)."""
    from genre.export import export_encoder

    export_encoder(ENCODER_CACHE_DIR)  # no-op when a matching, intact export exists
    return ENCODER_CACHE_DIR
