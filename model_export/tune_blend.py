"""The blend-served path's NDCG@10 on one split, cheap enough to run per trial.

The stream's state depends only on the stream rules (``FeatureSpec``), not on the
scorer's weights, limits or diversity settings. So one replay per distinct spec
records, for every query click of the split, each source's ranked candidates at
the widest limit the search allows; a trial then cuts each list to its limit and
blends (``core.features.candidates.blend``), which gives exactly what the replay's
``StreamReplay.prerank`` would (a test checks it against ``genre evaluate``'s
``blend`` row), in seconds instead of a replay.

``head`` cuts a click log after the validation split: the search never holds a
test click.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from genre.core.config import GenreConfig
from genre.core.features import decayed
from genre.core.features.candidates import Candidates, best_unseen, blend, source_specs
from genre.core.features.diversity import DiversityRule
from genre.core.features.ids import seen_rows
from genre.model_export.evaluate import NOT_A_CANDIDATE, rerank_scores
from genre.model_export.metrics import RankingMetrics
from genre.model_export.pipeline import feature_spec
from genre.model_export.replay import (
    TEST,
    TRAIN,
    VALID,
    FeatureSpec,
    Interactions,
    ProfileTrack,
    QueryBatch,
    StreamReplay,
)

#: Queries scored per block (memory only).
CHUNK = 256


def head(
    data: Interactions, profiles: ProfileTrack | None, split: int = VALID
) -> tuple[Interactions, ProfileTrack | None]:
    """The log up to the end of ``split`` (and its profile track): nothing after it."""
    stop = int(np.flatnonzero(data.split <= split)[-1]) + 1
    cut = replace(
        data,
        users=data.users[:stop],
        items=data.items[:stop],
        ts=data.ts[:stop],
        split=data.split[:stop],
        event_ids=None if data.event_ids is None else data.event_ids[:stop],
        kinds=None if data.kinds is None else data.kinds[:stop],
        query=None if data.query is None else data.query[:stop],
    )
    if profiles is not None:
        profiles = ProfileTrack(profiles.after_event[:stop], profiles.vectors)
    return cut, profiles


@dataclass
class SplitQueries:
    """One replay's query clicks of a split, with every source's widest candidate lists."""

    targets: np.ndarray  # int32 [Q]
    exclude: np.ndarray  # bool [Q, n_items]: seen before the click
    popularity: np.ndarray  # float32 [Q, n_items]: decayed trending counts
    #: source -> per query (catalogue indices, scores), in the source's own order.
    lists: dict[str, list[tuple[np.ndarray, np.ndarray]]]
    #: ann / profile: per query the over-fetch for seen items; trending: per query the
    #: unseen mask over its ranked list.
    extra: dict[str, list[Any]]
    seconds: float

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def gather(
    data: Interactions,
    spec: FeatureSpec,
    vectors: np.ndarray,
    profiles: ProfileTrack | None,
    sources: Mapping[str, Mapping[str, Any]],
    widest: Mapping[str, int],
    split: int,
) -> SplitQueries:
    """Replay ``data`` to the end of ``split``; per query click in it, each source's
    candidates at limit ``widest[name]`` (``sources``: name -> params)."""
    start = time.perf_counter()
    replay = StreamReplay(data, spec, vectors, profiles)
    stop = int(np.flatnonzero(data.split <= split)[-1]) + 1
    targets, exclude, popularity = [], [], []
    lists: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in sources}
    extra: dict[str, list[Any]] = {name: [] for name in sources}
    hl = spec.trending_half_life_s
    for e in replay.run(stop):
        if data.split[e] != split or not data.is_query(e):
            continue
        u, now = int(data.users[e]), float(data.ts[e])
        targets.append(int(data.items[e]))
        seen = replay.seen_mask(u)
        exclude.append(seen)
        popularity.append(decayed(replay.pop, replay.pop_ts, now, hl).astype(np.float32))
        for name, params in sources.items():
            got, more = _widest(replay, name, params, u, now, widest[name])
            lists[name].append(got)
            extra[name].append(more)
    return SplitQueries(
        targets=np.asarray(targets, np.int32),
        exclude=np.stack(exclude) if exclude else np.zeros((0, data.n_items), bool),
        popularity=np.stack(popularity) if popularity else np.zeros((0, data.n_items), np.float32),
        lists=lists,
        extra=extra,
        seconds=time.perf_counter() - start,
    )


def _widest(
    replay: StreamReplay,
    name: str,
    params: Mapping[str, Any],
    user: int,
    now: float,
    limit: int,
) -> tuple[tuple[np.ndarray, np.ndarray], Any]:
    """One source's candidates at ``limit``, as ``StreamReplay._source`` computes them,
    in an order whose prefixes are that source's answer at any smaller limit."""
    state = replay.users[user]
    index = replay.index_of_row
    empty = (np.zeros(0, np.int64), np.zeros(0, np.float64))
    if name == "co_click":
        recent = int(params.get("recent_items", replay.spec.co_click_recent))
        scores = replay.graph_rules.neighbour_scores(replay.graph.get, state.history[-recent:], now)
        best = best_unseen(Candidates(scores.rows, scores.scores), state.seen, limit)
        idx = np.asarray([index.get(r, -1) for r in best.rows.tolist()], np.int64)
        return (idx[idx >= 0], best.scores[idx >= 0]), None
    if name in ("ann", "profile"):
        query = state.vector if name == "ann" else replay.profile_vector(user)
        if query is None or replay.text_vectors is None or not len(query):
            return empty, 0
        more = min(len(state.seen), int(params.get("max_overfetch", 100)))
        sims = replay.text_vectors @ query
        top = np.argsort(-sims, kind="stable")[: limit + more]
        return (top.astype(np.int64), sims[top].astype(np.float64)), more
    if name == "trending":
        in_graph = np.flatnonzero(replay._in_graph)
        hl = replay.spec.trending_half_life_s
        pops = decayed(replay.pop[in_graph], replay.pop_ts[in_graph], now, hl)
        order = in_graph[np.argsort(-pops, kind="stable")[: limit * 4]]
        values = decayed(replay.pop[order], replay.pop_ts[order], now, hl)
        unseen = ~np.isin(replay.rows[order], seen_rows(state.seen))  # as first_unseen
        return (order.astype(np.int64), np.asarray(values, np.float64)), unseen
    raise ValueError(f"genre tune cannot replay candidate source {name!r}")


def _cut(name: str, got: tuple[np.ndarray, np.ndarray], more: Any, limit: int) -> Candidates:
    """The source's answer at ``limit`` from its widest list."""
    idx, scores = got
    if name in ("ann", "profile"):
        n = limit + int(more)
        return Candidates(idx[:n], scores[:n])
    if name == "trending":
        head_ = np.flatnonzero(more[: limit * 4])[:limit]
        return Candidates(idx[head_], scores[head_])
    return Candidates(idx[:limit], scores[:limit])


def blend_metrics(
    queries: SplitQueries,
    cfg: GenreConfig,
    vectors: np.ndarray,
    train_counts: np.ndarray,
) -> dict[str, float]:
    """HR/NDCG@10, MRR and the beyond-accuracy figures of ``cfg``'s blend (with its
    diversity step when enabled) over ``queries``."""
    n_items = queries.exclude.shape[1]
    metrics = RankingMetrics(n_items, vectors=vectors, train_counts=train_counts)
    specs = source_specs(cfg.scorer)
    d = cfg.scorer.diversity
    rule = DiversityRule(d.mmr_lambda, d.popularity_weight, d.candidates)
    diversify = d.enabled and not rule.is_identity
    lists, extra = queries.lists, queries.extra
    for lo in range(0, len(queries), CHUNK):
        rows = range(lo, min(lo + CHUNK, len(queries)))
        scores = np.full((len(rows), n_items), NOT_A_CANDIDATE, np.float32)
        for i, q in enumerate(rows):
            per_source = [
                (s.weight, _cut(s.name, lists[s.name][q], extra[s.name][q], s.limit)) for s in specs
            ]
            blended = blend(per_source)
            scores[i, blended.rows] = blended.scores.astype(np.float32)
        batch = _batch(queries, lo, len(rows))
        if diversify:
            pops = queries.popularity[lo : lo + len(rows)]
            scores = rerank_scores(scores, batch, rule, vectors, pops).astype(np.float32)
        metrics.add(scores, batch)
    return metrics.result()


def _batch(queries: SplitQueries, lo: int, n: int) -> QueryBatch:
    """The metrics' view of ``n`` queries from ``lo`` (targets and exclusions only)."""
    sl = slice(lo, lo + n)
    none = np.zeros((n, 0), np.float32)
    return QueryBatch(
        events=np.arange(lo, lo + n),
        users=np.zeros(n, np.int32),
        targets=queries.targets[sl],
        ts=np.zeros(n),
        history=none.astype(np.int32),
        exclude=queries.exclude[sl],
        features=np.zeros((n, 0, 0), np.float32),
        popularity={},
        item_knn=none,
        next_item=none,
        user_vectors=none,
    )


class BlendEvaluator:
    """``evaluate(cfg)``: the blend's metrics on one split; one replay per distinct spec
    (the last ``cache_size`` kept)."""

    def __init__(
        self,
        data: Interactions,
        vectors: np.ndarray,
        profiles: ProfileTrack | None,
        split: int,
        widest: Mapping[str, int],
        cache_size: int = 4,
    ) -> None:
        if split == VALID and (data.split == TEST).any():
            raise ValueError("a validation evaluator must not hold test clicks; pass head(data)")
        self.data, self.vectors, self.profiles = data, vectors, profiles
        self.split, self.widest = split, dict(widest)
        self.cache: OrderedDict[str, SplitQueries] = OrderedDict()
        self.cache_size = cache_size
        self.train_counts = np.bincount(data.items[data.split == TRAIN], minlength=data.n_items)

    def queries(self, cfg: GenreConfig) -> tuple[SplitQueries, bool]:
        """The split's queries under ``cfg``'s stream rules, and whether they were cached."""
        spec = replace(feature_spec(cfg), popularity_half_lives=())
        sources = {c.name: dict(c.params) for c in cfg.scorer.candidates}
        key = json.dumps([spec.as_manifest(), sources], sort_keys=True, default=str)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key], True
        widest = {n: max(self.widest.get(n, 0), _limit(cfg, n)) for n in sources}
        got = gather(self.data, spec, self.vectors, self.profiles, sources, widest, self.split)
        self.cache[key] = got
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return got, False

    def evaluate(self, cfg: GenreConfig) -> dict[str, Any]:
        """Metrics of ``cfg``'s blend on the split, with ``seconds`` and ``cached``."""
        from threadpoolctl import threadpool_limits

        start = time.perf_counter()
        with threadpool_limits(1):  # one-row matrix products: threads only wait
            queries, cached = self.queries(cfg)
            out: dict[str, Any] = dict(blend_metrics(queries, cfg, self.vectors, self.train_counts))
        out["seconds"] = round(time.perf_counter() - start, 2)
        out["cached"] = cached
        return out


def _limit(cfg: GenreConfig, name: str) -> int:
    return next(c.limit for c in cfg.scorer.candidates if c.name == name)
