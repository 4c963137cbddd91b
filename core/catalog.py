"""An in-process cache of item vectors and payloads, backed by the vector store."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from genre.core.vectorstore import StoredVector, VectorStore


@dataclass
class ItemCatalog:
    """LRU cache of ``StoredVector`` by item id; misses are fetched in one batched call.

    Blocking: call ``get_many`` off the event loop. The item encoder worker
    writes through ``put`` so a freshly encoded item is visible at once.
    """

    store: VectorStore
    collection: str
    capacity: int = 200_000

    def __post_init__(self) -> None:
        self._items: OrderedDict[str, StoredVector] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def cached(self, ids: Iterable[str]) -> tuple[dict[str, StoredVector], list[str]]:
        """Split ``ids`` into cached entries and misses; never blocks (safe on the event loop)."""
        hits: dict[str, StoredVector] = {}
        misses: list[str] = []
        for key in dict.fromkeys(ids):
            hit = self._items.get(key)
            if hit is None:
                misses.append(key)
            else:
                hits[key] = hit
        return hits, misses

    def get_many(self, ids: Iterable[str]) -> dict[str, StoredVector]:
        """Vectors and payloads for ``ids``; unknown ids are absent from the result."""
        wanted = list(dict.fromkeys(ids))
        out: dict[str, StoredVector] = {}
        missing = []
        for key in wanted:
            hit = self._items.get(key)
            if hit is None:
                missing.append(key)
            else:
                self._items.move_to_end(key)
                out[key] = hit
        if missing:
            for key, stored in self.store.retrieve(self.collection, missing).items():
                self._remember(key, stored)
                out[key] = stored
        return out

    def put(self, key: str, vector: np.ndarray, payload: dict) -> None:
        """Record a freshly written item."""
        self._remember(key, StoredVector(key, np.asarray(vector, np.float32), dict(payload)))

    def forget(self, key: str) -> None:
        """Drop a deleted item."""
        self._items.pop(key, None)

    def _remember(self, key: str, stored: StoredVector) -> None:
        self._items[key] = stored
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
