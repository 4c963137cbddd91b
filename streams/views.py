"""Narrow views of a worker's state for the scorer and its candidate sources.

The scorer needs five things, not the whole app: the item graph, the item
catalogue, a vector search, users' LLM profiles and the event clock. Each is a
small protocol here, with an adapter over a worker's Faust tables and stores
(``views_of``) and plain in-memory implementations for tests and benches
(``MemoryGraph``, ``MemoryProfiles``, ``FixedClock``), so a source or the scorer
is testable without Faust.

Thread safety: the scorer runs on its own thread. Every read here is a single
dict lookup or a call into a thread-safe index, and graph states are replaced,
never changed in place, by the graph agent; iterating the graph (the trending
refresh) happens on the event loop only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from genre.core.catalog import ItemCatalog
from genre.core.features import ItemState, decode_vector
from genre.core.vectorstore import StoredVector, VectorStore
from genre.streams.app import GenreStreams, table_get


class GraphView(Protocol):
    """The item graph: one item's state, and (on the event loop only) all of them."""

    def state(self, item_id: str) -> ItemState | None: ...

    def __len__(self) -> int: ...

    def items(self) -> Iterable[tuple[str, ItemState]]: ...


class ItemLookup(Protocol):
    """Item vectors and payloads this process holds in memory."""

    def cached(self, ids: Iterable[str]) -> tuple[dict[str, StoredVector], list[str]]: ...


class VectorSearch(Protocol):
    """Top-``limit`` items by cosine similarity for each query row: (ids, scores) per row."""

    def search(self, queries: np.ndarray, limit: int) -> list[tuple[list[str], list[float]]]: ...


@dataclass(frozen=True, slots=True)
class Profile:
    """A user's LLM interest profile as the scorer uses it."""

    vector: np.ndarray
    interests: tuple[str, ...]


class ProfileLookup(Protocol):
    """Users' latest LLM profiles."""

    def get(self, user_id: str) -> Profile | None: ...


class EventClock(Protocol):
    """Event-time "now": decay runs in the time of the events, not the wall clock."""

    def now(self) -> float: ...


@dataclass(frozen=True)
class ScorerViews:
    """Everything the scorer reads."""

    graph: GraphView
    items: ItemLookup
    search: VectorSearch
    profiles: ProfileLookup
    clock: EventClock


class _TableGraph:
    def __init__(self, table: Any) -> None:
        self.table = table

    def state(self, item_id: str) -> ItemState | None:
        return table_get(self.table, item_id)

    def __len__(self) -> int:
        return len(self.table.data) if self.table is not None else 0

    def items(self) -> Iterator[tuple[str, ItemState]]:
        return iter(list(self.table.data.items())) if self.table is not None else iter(())


class _TableProfiles:
    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, user_id: str) -> Profile | None:
        entry = table_get(self.table, user_id) if self.table is not None else None
        if not entry:
            return None
        return Profile(decode_vector(entry["vector"]), tuple(entry["interests"]))


class _StoreSearch:
    """Search the exact in-memory index when there is one (local mode), else the store."""

    def __init__(self, streams: GenreStreams) -> None:
        self.index = streams.index
        self.store: VectorStore = streams.store
        self.collection = streams.config.qdrant.items_collection

    def search(self, queries: np.ndarray, limit: int) -> list[tuple[list[str], list[float]]]:
        if self.index is not None:
            return self.index.search_ids(queries, limit)
        hits = self.store.search_batch(self.collection, queries, limit)
        return [([h.id for h in row], [h.score for h in row]) for row in hits]


class _StreamsClock:
    def __init__(self, streams: GenreStreams) -> None:
        self.streams = streams

    def now(self) -> float:
        return self.streams.event_now()


def views_of(streams: GenreStreams) -> ScorerViews:
    """The scorer's views of a worker process."""
    return ScorerViews(
        graph=_TableGraph(streams.graph),
        items=streams.catalog,
        search=_StoreSearch(streams),
        profiles=_TableProfiles(streams.profiles),
        clock=_StreamsClock(streams),
    )


class MemoryGraph(dict[str, ItemState]):
    """A graph in a dict (tests, benches, the training replay)."""

    def state(self, item_id: str) -> ItemState | None:
        return self.get(item_id)


class MemoryProfiles(dict[str, Profile]):
    """Profiles in a dict (tests, benches)."""


@dataclass
class FixedClock:
    """A clock that says what it is told (tests, benches)."""

    t: float

    def now(self) -> float:
        return self.t


class CatalogSearch:
    """Exact search over an ``ExactIndex``-like object (tests, benches)."""

    def __init__(self, index: Any) -> None:
        self.index = index

    def search(self, queries: np.ndarray, limit: int) -> list[tuple[list[str], list[float]]]:
        return self.index.search_ids(queries, limit)


def memory_items(ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[dict]) -> ItemCatalog:
    """An item catalogue filled in memory, with no store behind it (tests, benches)."""
    catalog = ItemCatalog(store=None, collection="items", capacity=len(ids) + 1)  # type: ignore[arg-type]
    for key, vector, payload in zip(ids, vectors, payloads, strict=True):
        catalog.put(key, vector, {**payload, "id": key})
    return catalog
