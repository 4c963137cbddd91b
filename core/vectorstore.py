"""Vector store backends behind one small interface.

The default is qdrant-client's embedded local mode (on disk, one process holds
it); ``qdrant.engine: edge`` embeds Qdrant Edge (qdrant-edge-py, Qdrant's own
engine in this process) instead; setting ``qdrant.url`` (or ``QDRANT_URL``)
points the same code at a Qdrant server. Our string ids map to deterministic
UUIDs because Qdrant point ids must be integers or UUIDs; the original id
travels in the payload. Every backend passes the same contract tests
(tests/unit/test_vector_backends.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
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


def _matrix(
    location: str, name: str, dim: int | None, vectors: Any, rows: int | None
) -> np.ndarray:
    """``vectors`` as float32 [rows, dim]; a wrong shape raises the same error in every backend."""
    vecs = np.asarray(vectors, np.float32)
    if vecs.size == 0 and not rows:
        return vecs.reshape(0, dim or 0)
    if vecs.ndim == 1 and rows in (None, 1):
        vecs = vecs[None, :]
    if vecs.ndim != 2 or (rows is not None and len(vecs) != rows):
        raise VectorStoreError(
            f"expected {rows if rows is not None else 'n'} vectors for collection {name!r} at "
            f"{location}, got an array of shape {list(np.shape(vectors))}"
        )
    if dim is not None and vecs.shape[1] != dim:
        raise VectorStoreError(
            f"collection {name!r} at {location} holds {dim}-d vectors; got {vecs.shape[1]}-d ones"
        )
    return vecs


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise VectorStoreError(f"search limit must be 1 or more, got {limit}")


def _dim_mismatch(name: str, location: str, size: int, dim: int) -> VectorStoreError:
    return VectorStoreError(
        f"collection {name!r} at {location} holds {size}-d vectors but the "
        f"encoder makes {dim}-d ones; delete the collection or set encoder.dim"
    )


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
        self._dims: dict[str, int] = {}  # collections checked by ensure_collection

    def ensure_collection(self, name: str, dim: int) -> None:
        """Create ``name`` with cosine distance, or check an existing one has ``dim``."""
        with _timed("ensure_collection"):
            if self.client.collection_exists(name):
                info = self.client.get_collection(name)
                params = info.config.params.vectors
                size = getattr(params, "size", None)
                if size is not None and size != dim:
                    raise _dim_mismatch(name, self.location, size, dim)
            else:
                self.client.create_collection(
                    name,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                )
        self._dims[name] = dim

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]
    ) -> None:
        """Insert or replace points."""
        vecs = _matrix(self.location, name, self._dims.get(name), vectors, len(ids))
        if not len(ids):
            return
        points = [
            models.PointStruct(
                id=point_id(key), vector=vec.tolist(), payload={**payload, ID_FIELD: key}
            )
            for key, vec, payload in zip(ids, vecs, payloads, strict=True)
        ]
        with _timed("upsert"):
            self.client.upsert(name, points=points, wait=True)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Remove points by id (missing ids are ignored)."""
        if not ids:
            return
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
        _check_limit(limit)
        vecs = _matrix(self.location, name, self._dims.get(name), vectors, None)
        if len(vecs) == 0:
            return []
        requests = [
            models.QueryRequest(query=vec.tolist(), limit=limit, with_payload=[ID_FIELD])
            for vec in vecs
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


class EdgeStore:
    """Qdrant Edge (qdrant-edge-py): Qdrant's engine in this process, one shard per collection.

    Shards live in ``<path>/<collection>``; the shard's write-ahead log lets one
    process at a time open it. Points land in plain (brute-force, SIMD) segments,
    so search is exact until :meth:`optimize` builds the HNSW index; Qdrant Edge
    has no background optimizer, and ``optimize`` holds the interpreter for as
    long as it runs (100k 384-d items: 43-112 s on 2 cores; 1M: 467 s, see
    bench/results/search.json), so nothing here calls it on its own.
    """

    def __init__(self, *, path: str) -> None:
        try:
            import qdrant_edge
        except ImportError as exc:
            raise VectorStoreError(
                "qdrant.engine is 'edge' but qdrant-edge-py is not installed; install the "
                "embedded extra (pip install -e '.[embedded]') or set qdrant.engine: local"
            ) from exc
        self._edge = qdrant_edge
        self.root = Path(path)
        self.location = f"edge:{path}"
        self._shards: dict[str, Any] = {}
        self._dims: dict[str, int] = {}
        self._lock = threading.Lock()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VectorStoreError(f"cannot open Qdrant Edge at {path}: {exc}") from exc

    def _dir(self, name: str) -> Path:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise VectorStoreError(f"invalid collection name {name!r} for {self.location}")
        return self.root / name

    @staticmethod
    def _stored_dim(folder: Path) -> int | None:
        try:
            config = json.loads((folder / "edge_config.json").read_text())
            return int(config["vectors"][""]["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _open(self, name: str, dim: int | None = None) -> Any:
        """The open shard of ``name``; created with ``dim`` when given and absent."""
        edge = self._edge
        with self._lock:
            shard = self._shards.get(name)
            if shard is not None:
                return shard
            folder = self._dir(name)
            exists = (folder / "edge_config.json").is_file()
            if not exists and dim is None:
                raise VectorStoreError(
                    f"collection {name!r} does not exist at {self.location}; "
                    "call ensure_collection first"
                )
            try:
                if exists:
                    shard = edge.EdgeShard.load(str(folder))
                else:
                    params = edge.EdgeVectorParams(size=dim, distance=edge.Distance.Cosine)
                    shard = edge.EdgeShard.create(str(folder), edge.EdgeConfig(vectors=params))
            except Exception as exc:
                raise VectorStoreError(
                    f"cannot open collection {name!r} at {self.location}: {exc}. One process "
                    "at a time may hold the folder; stop the other GENRE process"
                ) from exc
            self._shards[name] = shard
            stored = self._stored_dim(folder)
            if stored is not None:
                self._dims[name] = stored
            return shard

    def ensure_collection(self, name: str, dim: int) -> None:
        """Create ``name`` with cosine distance, or check an existing one has ``dim``."""
        with _timed("ensure_collection"):
            size = self._dims.get(name) or self._stored_dim(self._dir(name))
            if size is not None and size != dim:
                raise _dim_mismatch(name, self.location, size, dim)
            self._open(name, dim)
            self._dims[name] = dim

    def upsert(
        self, name: str, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]
    ) -> None:
        """Insert or replace points."""
        shard = self._open(name)
        vecs = _matrix(self.location, name, self._dims.get(name), vectors, len(ids))
        if not len(ids):
            return
        point = self._edge.Point
        points = [
            point(point_id(key), vec.tolist(), {**payload, ID_FIELD: key})
            for key, vec, payload in zip(ids, vecs, payloads, strict=True)
        ]
        with _timed("upsert"):
            shard.update(self._edge.UpdateOperation.upsert_points(points))

    def delete(self, name: str, ids: Sequence[str]) -> None:
        """Remove points by id (missing ids are ignored)."""
        shard = self._open(name)
        if not ids:
            return
        with _timed("delete"):
            shard.update(self._edge.UpdateOperation.delete_points([point_id(k) for k in ids]))

    def retrieve(self, name: str, ids: Sequence[str]) -> dict[str, StoredVector]:
        """Fetch vectors and payloads for ``ids``; absent ids are left out."""
        shard = self._open(name)
        if not ids:
            return {}
        with _timed("retrieve"):
            records = shard.retrieve(
                [point_id(k) for k in ids], with_payload=True, with_vector=True
            )
        return dict(self._stored(rec) for rec in records)

    @staticmethod
    def _stored(rec: Any) -> tuple[str, StoredVector]:
        payload = dict(rec.payload or {})
        key = str(payload.get(ID_FIELD))
        return key, StoredVector(key, np.asarray(rec.vector, dtype=np.float32), payload)

    def search_batch(self, name: str, vectors: np.ndarray, limit: int) -> list[list[Hit]]:
        """Nearest neighbours for each row of ``vectors``, best first."""
        shard = self._open(name)
        _check_limit(limit)
        vecs = _matrix(self.location, name, self._dims.get(name), vectors, None)
        if len(vecs) == 0:
            return []
        edge = self._edge
        fields = edge.PayloadSelector.Include([ID_FIELD])
        requests = [
            edge.QueryRequest(
                limit=limit, query=edge.Query.Nearest(v.tolist()), with_payload=fields
            )
            for v in vecs
        ]
        with _timed("search"):
            results = shard.query_batch(edge.QueryBatchRequest(requests))
        return [
            [
                Hit(str((p.payload or {}).get(ID_FIELD)), float(p.score), dict(p.payload or {}))
                for p in points
            ]
            for points in results
        ]

    def scroll(self, name: str, page: int = 1000) -> Iterator[StoredVector]:
        """Every point of ``name`` with its vector and payload, page by page."""
        if name not in self._shards and not (self._dir(name) / "edge_config.json").is_file():
            return
        shard = self._open(name)
        offset = None
        while True:
            with _timed("scroll"):
                records, offset = shard.scroll(
                    self._edge.ScrollRequest(
                        offset=offset, limit=page, with_payload=True, with_vector=True
                    )
                )
            for rec in records:
                yield self._stored(rec)[1]
            if offset is None:
                return

    def count(self, name: str) -> int:
        """Number of points in ``name`` (0 when the collection does not exist)."""
        if name not in self._shards and not (self._dir(name) / "edge_config.json").is_file():
            return 0
        return int(self._open(name).count(self._edge.CountRequest(exact=True)))

    def optimize(self, name: str) -> bool:
        """Build the HNSW index over ``name``'s full segments (blocks; see the class doc)."""
        with _timed("optimize"):
            return bool(self._open(name).optimize())

    def close(self) -> None:
        """Flush and close every shard (and release their folders)."""
        with self._lock:
            shards, self._shards = self._shards, {}
        for shard in shards.values():
            shard.flush()
            shard.close()


def open_vector_store(config: GenreConfig) -> VectorStore:
    """Open the configured vector store: a server when a URL is set, else the embedded engine."""
    q = config.qdrant
    api_key = q.api_key.get_secret_value() if q.api_key else None
    if q.url:
        return QdrantStore(url=q.url, api_key=api_key, timeout_s=q.timeout_s)
    path = config.path(q.path)
    path.mkdir(parents=True, exist_ok=True)
    if q.engine == "edge":
        # A sibling of local mode's collection/ folder: the two formats never mix.
        return EdgeStore(path=str(path / "edge"))
    return QdrantStore(path=str(path))
