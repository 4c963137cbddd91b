"""Candidate sources, chosen by name in ``scorer.candidates``.

A source turns a batch of users (``ScoreContext``s) into, per user, a mapping of
item id to a ``Candidate`` (raw score and the history item that explains it).
Raw scores are on each source's own scale; the scorer normalises them. Sources
read the worker through ``ScorerViews`` only: ``generate`` runs on the scorer's
thread, ``prepare`` on the event loop before each batch.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from genre.core.features import ITEM_IDS, FeatureSpec, NeighbourScores
from genre.core.features.candidates import (
    NO_CANDIDATES,
    Candidates,
    best_unseen,
    first_unseen,
)
from genre.core.features.graph_embedding import EMBEDDINGS_FILE, load_graph_embeddings
from genre.core.registry import Registry
from genre.core.telemetry import METRICS
from genre.streams.score_context import ScoreContext
from genre.streams.views import ScorerViews


class CandidateSource(Protocol):
    """Generates candidates for a batch of users."""

    name: str

    def prepare(self) -> None:
        """Refresh shared state on the event loop before a batch (most sources: nothing)."""
        ...

    def generate(self, batch: Sequence[ScoreContext]) -> list[Candidates]: ...


CANDIDATE_SOURCES: Registry[CandidateSource] = Registry(
    "candidate source", "scorer.candidates[].name"
)


@CANDIDATE_SOURCES.register("ann")
class AnnSource:
    """Nearest items to the user vector (content similarity): one search for the batch."""

    name = "ann"

    def __init__(
        self, views: ScorerViews, features: FeatureSpec, limit: int, max_overfetch: int = 100
    ) -> None:
        self.views = views
        self.limit = limit
        self.max_overfetch = max_overfetch

    @staticmethod
    def query_vector(ctx: ScoreContext) -> np.ndarray | None:
        """What this source searches with: the user's decayed-mean vector."""
        return ctx.vector

    def prepare(self) -> None:
        """Nothing to refresh."""

    def generate(self, batch: Sequence[ScoreContext]) -> list[Candidates]:
        queries = {
            i: q for i, c in enumerate(batch) if (q := self.query_vector(c)) is not None and len(q)
        }
        with_vec = list(queries)
        out: list[Candidates] = [NO_CANDIDATES] * len(batch)
        if not with_vec:
            return out
        # Over-fetch so that filtering seen items still leaves candidates; capped
        # (heavy users have seen hundreds of items; co_click and trending cover them).
        vectors = np.stack(list(queries.values())).astype(np.float32, copy=False)
        extra = min(max(_seen_count(batch[i]) for i in with_vec), self.max_overfetch)
        found = self.views.search.search(vectors, self.limit + extra)
        for i, (ids, scores) in zip(with_vec, found, strict=True):
            out[i] = Candidates.of(ids, scores)
        return out


@CANDIDATE_SOURCES.register("profile")
class ProfileSource(AnnSource):
    """Nearest items to the user's LLM interest profile (``llm.profiles``).

    Users without a profile yet (fewer than ``every_k_clicks`` clicks, or
    profiles off) get no candidates from it; the other sources cover them.
    """

    name = "profile"

    @staticmethod
    def query_vector(ctx: ScoreContext) -> np.ndarray | None:
        return ctx.profile_vector


@CANDIDATE_SOURCES.register("co_click")
class CoClickSource:
    """Items co-clicked with the user's recent items (time-decayed item graph)."""

    name = "co_click"

    def __init__(
        self, views: ScorerViews, features: FeatureSpec, limit: int, recent_items: int | None = None
    ) -> None:
        self.views = views
        self.limit = limit
        self.recent_items = features.co_click_recent if recent_items is None else recent_items
        self.rules = features.graph_rules()
        #: The full neighbour scores of the last batch, by user (before the seen filter
        #: and the limit): the ranker's co-click feature reuses them.
        self.last_scores: dict[str, NeighbourScores] = {}

    def prepare(self) -> None:
        """Nothing to refresh."""

    def generate(self, batch: Sequence[ScoreContext]) -> list[Candidates]:
        now = self.views.clock.now()
        state_of = self.views.graph.state
        out = []
        scores_by_user = {}
        for ctx in batch:
            scores = self.rules.neighbour_scores(state_of, ctx.history[-self.recent_items :], now)
            scores_by_user[ctx.user_id] = scores
            cands = Candidates(scores.rows, scores.scores, scores.because)
            out.append(best_unseen(cands, ctx.seen, self.limit))
        self.last_scores = scores_by_user
        return out


@CANDIDATE_SOURCES.register("trending")
class TrendingSource:
    """The most popular items right now (time-decayed click counts), refreshed periodically."""

    name = "trending"

    def __init__(
        self, views: ScorerViews, features: FeatureSpec, limit: int, refresh_s: float = 1.0
    ) -> None:
        self.views = views
        self.limit = limit
        self.refresh_s = refresh_s
        self.rules = features.graph_rules()
        self._ranked = NO_CANDIDATES
        self._refreshed = 0.0
        self._graph_size = 0

    def prepare(self) -> None:
        """Recompute the list at most every ``refresh_s`` seconds, and at once when it is
        short and the graph has grown since: on a young graph (a fresh deployment) the
        first users would otherwise get no trending items for up to ``refresh_s``. On the
        event loop: it iterates the graph, which the graph agent extends."""
        k = self.limit * 4  # over-fetch: users who saw the head still get candidates
        graph = self.views.graph
        stale = time.monotonic() - self._refreshed >= self.refresh_s
        if stale or (len(self._ranked) < k and len(graph) != self._graph_size):
            now = self.views.clock.now()
            self._graph_size = len(graph)
            top = heapq.nlargest(
                k,
                ((item, self.rules.popularity(state, now)) for item, state in graph.items()),
                key=lambda kv: kv[1],
            )
            # A new object: a batch being scored keeps the one it started with.
            self._ranked = Candidates.of([i for i, _ in top], [s for _, s in top])
            self._refreshed = time.monotonic()

    def generate(self, batch: Sequence[ScoreContext]) -> list[Candidates]:
        ranked = self._ranked
        out = []
        for ctx in batch:
            out.append(ranked.take(first_unseen(ranked.rows, ctx.seen, self.limit)))
        return out


@CANDIDATE_SOURCES.register("graph")
class GraphSource:
    """Items nearest to the mean graph-model embedding of the user's recent items.

    The embeddings come from ``genre train --model graph`` (LightGCN over the click
    graph) in ``dir`` (a data path, e.g. ``models/graph``); a new training run is
    picked up within ``refresh_s``. Items that arrived since are folded in from
    their live co-click edges every ``refresh_s`` (``GraphEmbeddings.with_fold_ins``),
    so they can be retrieved from their first co-clicks.
    """

    name = "graph"

    def __init__(
        self,
        views: ScorerViews,
        features: FeatureSpec,
        limit: int,
        dir: str,
        recent_items: int | None = None,
        refresh_s: float = 5.0,
        min_neighbours: int = 1,
        max_overfetch: int = 100,
    ) -> None:
        self.views = views
        self.limit = limit
        self.folder = Path(dir)
        self.recent_items = features.co_click_recent if recent_items is None else recent_items
        self.refresh_s = refresh_s
        self.min_neighbours = min_neighbours
        self.max_overfetch = max_overfetch
        self.edge_half_life_s = features.edge_half_life_s
        self._trained, self.info = load_graph_embeddings(self.folder)
        self._loaded_mtime = self._mtime()
        self.embeddings = self._trained
        self._refreshed = -float("inf")

    def _mtime(self) -> float:
        path = self.folder / EMBEDDINGS_FILE
        return path.stat().st_mtime if path.exists() else 0.0

    def prepare(self) -> None:
        """Every ``refresh_s``: reload a newer training run, then fold in the graph's
        items training did not see. On the event loop: it iterates the graph."""
        if time.monotonic() - self._refreshed < self.refresh_s:
            return
        mtime = self._mtime()
        if mtime > self._loaded_mtime:
            self._trained, self.info = load_graph_embeddings(self.folder)
            self._loaded_mtime = mtime
        graph = self.views.graph
        trained = self._trained
        new_items = [
            item for item, _ in graph.items() if not trained.is_trained(ITEM_IDS.row(item))
        ]
        self.embeddings = trained.with_fold_ins(
            new_items,
            graph.state,
            self.views.clock.now(),
            self.edge_half_life_s,
            self.min_neighbours,
        )
        METRICS.graph_fold_ins.set(len(self.embeddings) - self.embeddings.trained)
        self._refreshed = time.monotonic()

    def generate(self, batch: Sequence[ScoreContext]) -> list[Candidates]:
        embeddings = self.embeddings
        queries = {
            i: q
            for i, ctx in enumerate(batch)
            if (q := embeddings.query(ctx.history, self.recent_items)) is not None
        }
        out: list[Candidates] = [NO_CANDIDATES] * len(batch)
        if not queries:
            return out
        # Each user over-fetches for their own seen items (one product for the batch).
        wanted = {i: self.limit + min(_seen_count(batch[i]), self.max_overfetch) for i in queries}
        found = embeddings.search(np.stack(list(queries.values())), max(wanted.values()))
        for i, (rows, scores) in zip(queries, found, strict=True):
            out[i] = Candidates(rows[: wanted[i]], scores[: wanted[i]])
        return out


def _seen_count(ctx: ScoreContext) -> int:
    seen = ctx.seen
    return len(seen) if hasattr(seen, "__len__") else len(ctx.history)  # type: ignore[arg-type]


def build_sources(
    config: Any, views: ScorerViews, features: FeatureSpec
) -> list[tuple[CandidateSource, float]]:
    """Instantiate the sources ``config.scorer.candidates`` names, with their blend weights."""
    sources = []
    for spec in config.scorer.candidates:
        params = dict(spec.params)
        if "dir" in params:  # a source's folder is a data path, like every other
            params["dir"] = str(config.path(params["dir"]))
        source = CANDIDATE_SOURCES.create(spec.name, views, features, spec.limit, **params)
        sources.append((source, spec.weight))
    return sources


def count_candidates(name: str, per_request: list[Candidates]) -> None:
    """Export how many candidates a source produced."""
    METRICS.candidates.labels(name).inc(sum(len(c) for c in per_request))
