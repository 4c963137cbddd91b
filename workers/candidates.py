"""Candidate sources, chosen by name in ``scorer.candidates``.

A source turns a batch of score requests into, per request, a mapping of
item id to a ``Candidate`` (raw score and the history item that explains it).
Raw scores are on each source's own scale; the scorer normalises them.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np

from genre.core.registry import Registry
from genre.core.telemetry import METRICS
from genre.schemas import ScoreRequest
from genre.streams.agents import graph_rules
from genre.streams.app import GenreStreams, table_get
from genre.streams.state import neighbour_scores


class Candidate(NamedTuple):
    """A candidate item's raw score from one source and the history item behind it.

    A named tuple, not a frozen dataclass: sources make a few hundred per user
    per request, and a frozen dataclass's ``__init__`` (``object.__setattr__``
    per field) was ~5% of the scorer's time.
    """

    score: float
    because: str | None = None


class CandidateSource(Protocol):
    """Generates candidates for a batch of users."""

    name: str

    async def generate(self, requests: list[ScoreRequest]) -> list[dict[str, Candidate]]: ...


CANDIDATE_SOURCES: Registry[CandidateSource] = Registry(
    "candidate source", "scorer.candidates[].name"
)


@CANDIDATE_SOURCES.register("ann")
class AnnSource:
    """Nearest items to the user vector (content similarity).

    ``index``: ``auto`` searches the exact in-memory index when the worker has
    one (Qdrant local mode) and the Qdrant collection otherwise; ``qdrant`` and
    ``exact`` force one. Both are exact in local mode, so they return the same items.
    """

    name = "ann"

    def __init__(
        self,
        streams: GenreStreams,
        limit: int,
        max_overfetch: int = 100,
        index: Literal["auto", "qdrant", "exact"] = "auto",
    ) -> None:
        if index not in ("auto", "qdrant", "exact"):
            raise ValueError(f"index must be auto, qdrant or exact, got {index!r}")
        if index == "exact" and streams.index is None:
            raise ValueError("index: exact needs Qdrant local mode (qdrant.url unset)")
        self.streams = streams
        self.limit = limit
        self.max_overfetch = max_overfetch
        self.use_exact = streams.index is not None and index != "qdrant"
        self.collection = streams.config.qdrant.items_collection

    @staticmethod
    def query_vector(request: ScoreRequest) -> Sequence[float] | None:
        """What this source searches with: the user's decayed-mean vector."""
        return request.vector

    async def generate(self, requests: list[ScoreRequest]) -> list[dict[str, Candidate]]:
        queries = [self.query_vector(r) for r in requests]
        with_vec = [i for i, q in enumerate(queries) if q is not None and len(q)]
        out: list[dict[str, Candidate]] = [{} for _ in requests]
        if not with_vec:
            return out
        # Over-fetch so that filtering seen items still leaves candidates; capped
        # because every extra hit costs a payload decode (heavy users have
        # seen hundreds of items; co_click and trending cover them too).
        vectors = np.asarray([queries[i] for i in with_vec], np.float32)  # [B, D]
        extra = min(max(len(requests[i].seen_items) for i in with_vec), self.max_overfetch)
        limit = self.limit + extra
        if self.use_exact and self.streams.index is not None:
            # Ids and scores straight from the matrix: no Hit object per hit.
            ranked = self.streams.index.search_ids(vectors, limit)
            for i, (ids, scores) in zip(with_vec, ranked, strict=True):
                out[i] = dict(zip(ids, map(Candidate, scores), strict=True))
            return out
        results = await self.streams.in_store(
            self.streams.store.search_batch, self.collection, vectors, limit
        )
        for i, hits in zip(with_vec, results, strict=True):
            out[i] = {h.id: Candidate(h.score) for h in hits}
        return out


@CANDIDATE_SOURCES.register("profile")
class ProfileSource(AnnSource):
    """Nearest items to the user's LLM interest profile (``llm.profiles``).

    Users without a profile yet (fewer than ``every_k_clicks`` clicks, or
    profiles off) get no candidates from it; the other sources cover them.
    """

    name = "profile"

    @staticmethod
    def query_vector(request: ScoreRequest) -> Sequence[float] | None:
        return request.profile_vector


@CANDIDATE_SOURCES.register("co_click")
class CoClickSource:
    """Items co-clicked with the user's recent items (time-decayed item graph)."""

    name = "co_click"

    def __init__(self, streams: GenreStreams, limit: int, recent_items: int = 10) -> None:
        self.streams = streams
        self.limit = limit
        self.recent_items = recent_items
        self.rules = graph_rules(streams)
        #: The full neighbour scores of the last batch, by user (before the seen
        #: filter and the limit): the ranker's co-click feature reuses them.
        self.last_scores: dict[str, dict[str, tuple[float, str]]] = {}

    async def generate(self, requests: list[ScoreRequest]) -> list[dict[str, Candidate]]:
        now = self.streams.event_now()
        graph = self.streams.graph

        def graph_state(item: str) -> Any:
            return table_get(graph, item)

        out = []
        self.last_scores = {}
        for req in requests:
            scores = neighbour_scores(
                graph_state, req.recent_items[-self.recent_items :], self.rules, now
            )
            self.last_scores[req.user_id] = scores
            seen = set(req.seen_items)
            best = heapq.nlargest(
                self.limit,
                ((item, sw) for item, sw in scores.items() if item not in seen),
                key=lambda kv: kv[1][0],
            )
            out.append({item: Candidate(score, because) for item, (score, because) in best})
        return out


@CANDIDATE_SOURCES.register("trending")
class TrendingSource:
    """The most popular items right now (time-decayed click counts), refreshed periodically."""

    name = "trending"

    def __init__(self, streams: GenreStreams, limit: int, refresh_s: float = 1.0) -> None:
        self.streams = streams
        self.limit = limit
        self.refresh_s = refresh_s
        self.rules = graph_rules(streams)
        self._top: list[tuple[str, float]] = []
        self._candidates: tuple[list, list[tuple[str, Candidate]]] | None = None
        self._refreshed = 0.0
        self._graph_size = 0

    def top(self) -> list[tuple[str, float]]:
        """The current trending list, recomputed at most every ``refresh_s`` seconds,
        and at once when it is short and the graph has grown since: on a young graph
        (a fresh deployment) the first users would otherwise get no trending items
        for up to ``refresh_s``."""
        # Over-fetch so users who saw the head of the list still get candidates.
        k = self.limit * 4
        graph = self.streams.graph
        stale = time.monotonic() - self._refreshed >= self.refresh_s
        if stale or (len(self._top) < k and len(graph) != self._graph_size):
            now = self.streams.event_now()
            self._graph_size = len(graph)
            self._top = heapq.nlargest(
                k,
                ((item, self.rules.popularity(state, now)) for item, state in list(graph.items())),
                key=lambda kv: kv[1],
            )
            self._refreshed = time.monotonic()
        return self._top

    async def generate(self, requests: list[ScoreRequest]) -> list[dict[str, Candidate]]:
        top = self.top()
        if self._candidates is None or self._candidates[0] is not top:
            # The same Candidate objects serve every user until the next refresh.
            self._candidates = (top, [(item, Candidate(score)) for item, score in top])
        ranked = self._candidates[1]
        out = []
        for req in requests:
            seen = set(req.seen_items)
            unseen = ((item, cand) for item, cand in ranked if item not in seen)
            out.append(dict(itertools.islice(unseen, self.limit)))
        return out


def build_sources(streams: GenreStreams) -> list[tuple[CandidateSource, float]]:
    """Instantiate the configured sources with their blend weights."""
    sources = []
    for spec in streams.config.scorer.candidates:
        params: dict[str, Any] = dict(spec.params)
        source = CANDIDATE_SOURCES.create(spec.name, streams, spec.limit, **params)
        sources.append((source, spec.weight))
    return sources


def count_candidates(name: str, per_request: list[dict[str, Candidate]]) -> None:
    """Export how many candidates a source produced."""
    METRICS.candidates.labels(name).inc(sum(len(c) for c in per_request))
