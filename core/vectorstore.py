"""Vector store backends behind one small interface.

The default is qdrant-client's embedded local mode (on disk, one process holds
it); setting ``qdrant.url`` (or ``QDRANT_URL``) points the same code at a
Qdrant server. Our string ids map to deterministic UUIDs because Qdrant point
ids must be integers or UUIDs; the original id travels in the payload.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from qdrant_client import QdrantClient, models

from genre.core.config import GenreConfig
from genre.core.telemetry import METRICS

ID_FIELD = "id"
_NAMESPACE = uuid.UUID("6f1c1c55-9d8f-4a53-8e0b-2f3f6a1d0c11")


class VectorStoreError(RuntimeError):
    """The vector store is unreachable or inconsistent with the configuration."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredVector:
    """A stored point: its vector and payload."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any]


class VectorStore(Protocol):
    """What GENRE needs from a vector database."""

    def ensure_collection(self, name: str, dim: int) -> None: ...
    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]
    ) -> None: ...
    def delete(self, name: str, ids: Sequence[str]) -> None: ...
    def retrieve(self, name: str, ids: Sequence[str]) -> dict[str, StoredVector]: ...
    def search_batch(self, name: str, vectors: np.ndarray, limit: int) -> list[list[Hit]]: ...
    def scroll(self, name: str, page: int = 1000) -> Iterator[StoredVector]: ...
    def count(self, name: str) -> int: ...
    def close(self) -> None: ...


def point_id(key: str) -> str:
    """The Qdrant point id (a UUID string) for one of our string ids."""
    return str(uuid.uuid5(_NAMESPACE, key))


@contextmanager
def _timed(op: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        METRICS.qdrant_seconds.labels(op).observe(time.perf_counter() - start)


class QdrantStore:
    """Qdrant through qdrant-client: local mode (``path``) or a server (``url``)."""

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        try:
            if url:
                self.client = QdrantClient(url=url, api_key=api_key, timeout=int(timeout_s))
                self.client.get_collections()
            else:
                self.client = QdrantClient(path=path)
        except Exception as exc:
            where = url or path
            raise VectorStoreError(
                f"cannot open Qdrant at {where}: {exc}. Fix qdrant.url / QDRANT_URL "
                "(a running server) or qdrant.path (local mode: one process at a time may "
                "hold the folder; stop the other GENRE process)"
            ) from exc
        self.location = url or f"local:{path}"

    def ensure_collection(self, name: str, dim: int) -> None:
        """Create ``name`` with cosine distance, or check an existing one has ``dim``."""
        with _timed("ensure_collection"):
            if self.client.collection_exists(name):
                info = self.client.get_collection(name)
                params = info.config.params.vectors
                size = getattr(params, "size", None)
                if size is not None and size != dim:
                    raise VectorStoreError(
                        f"collection {name!r} at {self.location} holds {size}-d vectors but the "
                        f"encoder makes {dim}-d ones; delete the collection or set encoder.dim"
                    )
                return
            self.client.create_collection(
                name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
            )

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]
    ) -> None:
        """Insert or replace points."""
        points = [
            models.PointStruct(
                id=point_id(key), vector=vec.tolist(), payload={**payload, ID_FIELD: key}
            )
            for key, vec, payload in zip(
                ids, np.asarray(vectors, np.float32), payloads, strict=True
            )
        ]
        with _timed("upsert"):
            self.client.upsert(name, points=points, wait=True)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Remove points by id (missing ids are ignored)."""
        with _timed("delete"):
            self.client.delete(
                name, points_selector=models.PointIdsList(points=[point_id(k) for k in ids])
            )

    def retrieve(self, name: str, ids: Sequence[str]) -> dict[str, StoredVector]:
        """Fetch vectors and payloads for ``ids``; absent ids are left out."""
        if not ids:
            return {}
        with _timed("retrieve"):
            records = self.client.retrieve(
                name, ids=[point_id(k) for k in ids], with_vectors=True, with_payload=True
            )
        out = {}
        for rec in records:
            payload = dict(rec.payload or {})
            key = str(payload.get(ID_FIELD))
            out[key] = StoredVector(key, np.asarray(rec.vector, dtype=np.float32), payload)
        return out

    def search_batch(self, name: str, vectors: np.ndarray, limit: int) -> list[list[Hit]]:
        """Nearest neighbours for each row of ``vectors``, best first."""
        if len(vectors) == 0:
            return []
        requests = [
            models.QueryRequest(query=vec.tolist(), limit=limit, with_payload=[ID_FIELD])
            for vec in np.asarray(vectors, np.float32)
        ]
        with _timed("search"):
            responses = self.client.query_batch_points(name, requests=requests)
        return [
            [
                Hit(str((p.payload or {}).get(ID_FIELD)), float(p.score), dict(p.payload or {}))
                for p in resp.points
            ]
            for resp in responses
        ]

    def scroll(self, name: str, page: int = 1000) -> Iterator[StoredVector]:
        """Every point of ``name`` with its vector and payload, page by page."""
        if not self.client.collection_exists(name):
            return
        offset = None
        while True:
            with _timed("scroll"):
                points, offset = self.client.scroll(
                    name, limit=page, offset=offset, with_vectors=True, with_payload=True
                )
            for p in points:
                payload = dict(p.payload or {})
                key = str(payload.get(ID_FIELD))
                yield StoredVector(key, np.asarray(p.vector, dtype=np.float32), payload)
            if offset is None:
                return

    def count(self, name: str) -> int:
        """Number of points in ``name`` (0 when the collection does not exist)."""
        if not self.client.collection_exists(name):
            return 0
        return int(self.client.count(name, exact=True).count)

    def close(self) -> None:
        """Release the client (and the local-mode folder lock)."""
        self.client.close()


def open_vector_store(config: GenreConfig) -> QdrantStore:
    """Open the configured vector store: server when a URL is set, else local mode."""
    q = config.qdrant
    api_key = q.api_key.get_secret_value() if q.api_key else None
    if q.url:
        return QdrantStore(url=q.url, api_key=api_key, timeout_s=q.timeout_s)
    path = config.path(q.path)
    path.mkdir(parents=True, exist_ok=True)
    return QdrantStore(path=str(path))
