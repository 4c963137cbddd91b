"""Offline replay of MovieLens-100k through GENRE's own stream and scorer code, without Kafka.

The same fold (``streams.fold.Fold``: the user-state rules), item graph
(``apply_evidence`` over the fold's co-click evidence, as the graph agent does)
and scorer (``ScorerWorker`` over in-memory ``ScorerViews``: candidate sources,
blend, filters) as the workers, driven click by click in timestamp order: the
list computed after a user's click is the one that user's next click is checked
against, and the click counts as a hit when its item is in that top-10. This is
the demo's online_hit_rate_at_10 with zero pipeline lag (an upper bound on it),
fast enough to compare candidate weights. Prints one JSON line per configuration.

    python bench/replay_offline.py --events 20000 \
        --config co_click=1,ann=0.5,trending=0.5 --config trending=1
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from rich.progress import track

from genre.core.config import CandidateSourceSpec, GenreConfig, load_config
from genre.core.exact_index import ExactIndex
from genre.core.features import FeatureSpec, UserState, apply_evidence
from genre.core.text_encoder import TextEncoder
from genre.model_export.datasets import as_click_events, fetch_ml100k, load_ml100k
from genre.streams.fold import Click, Fold
from genre.streams.views import (
    CatalogSearch,
    FixedClock,
    MemoryGraph,
    MemoryProfiles,
    ScorerViews,
    memory_items,
)
from genre.workers.scorer import ScorerWorker


def item_vectors(config: GenreConfig, items: list[Any]) -> np.ndarray:
    """Encode the catalog once and cache it next to the encoder."""
    encoder = TextEncoder.from_manifest(config.path(config.encoder.dir))
    cache = config.path(f"bench/ml100k-items-{encoder.version}.npy")
    if cache.exists():
        return np.load(cache)
    vectors = encoder.encode([i.encoder_text() for i in items], batch_size=64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def parse_weights(text: str) -> list[CandidateSourceSpec]:
    """'co_click=1,ann=0.5' -> candidate specs (limits from the default config)."""
    defaults = {c.name: c for c in GenreConfig().scorer.candidates}
    specs = []
    for part in text.split(","):
        name, _, weight = part.partition("=")
        base = defaults[name.strip()]
        specs.append(
            base.model_copy(
                update={"weight": float(weight or 1.0), "params": {**base.params, **_fresh(name)}}
            )
        )
    return specs


def _fresh(name: str) -> dict[str, Any]:
    # Offline there is no wall clock to wait for: recompute trending every call.
    return {"refresh_s": 0.0} if name.strip() == "trending" else {}


def replay(
    config: GenreConfig, ml: Any, vectors: np.ndarray, n_events: int, k: int = 10, lag: int = 0
) -> dict[str, Any]:
    """Hit rate at k of the configured ranker over the first ``n_events`` clicks.

    ``lag`` models pipeline latency in events: the list computed after click
    ``j`` is usable from click ``j + lag + 1`` on (at 100 events/s, 30 events
    is 300 ms). With ``lag=0`` each click sees the list from the state just before it.
    """
    config = config.model_copy(deep=True)
    config.scorer.top_k = k
    index = ExactIndex(vectors.shape[1])
    ids = [i.item_id for i in ml.items]
    index.upsert(ids, vectors)
    vec_of = dict(zip(ids, vectors, strict=True))
    clock = FixedClock(0.0)
    graph = MemoryGraph()
    views = ScorerViews(
        graph=graph,
        items=memory_items(ids, vectors, [{"title": i.title} for i in ml.items]),
        search=CatalogSearch(index),
        profiles=MemoryProfiles(),
        clock=clock,
    )
    spec = FeatureSpec.from_streams(config.streams)
    fold, grules = Fold(spec), spec.graph_rules()
    worker = ScorerWorker(config, views, "replay")
    users: dict[str, UserState] = {}
    hits = scored = 0
    start = time.perf_counter()
    events = list(as_click_events(ml, limit=n_events))
    published: dict[str, list[tuple[int, set[str]]]] = {}  # user -> [(usable_from, items)]
    for i, ev in enumerate(
        track(
            events,
            description=" ".join(f"{c.name}={c.weight}" for c in config.scorer.candidates)
            + f" lag={lag}",
            transient=True,
        )
    ):
        clock.t = max(clock.t, ev.ts)
        lists = published.get(ev.user_id, [])
        while len(lists) > 1 and lists[1][0] <= i:
            lists.pop(0)  # keep the newest list usable now at the head
        if lists and lists[0][0] <= i:
            hits += ev.item_id in lists[0][1]
            scored += 1
        result = fold(
            [Click(ev, ev.ts, "replay", 0, i)],
            users,
            {ev.item_id: vec_of[ev.item_id]},
            taken_at=ev.ts,
            folded_at=ev.ts,
        )
        users.update(result.states)
        graph.update(apply_evidence(grules, result.evidence, graph.get))
        worker.prepare()
        (scored_list,) = worker.score(result.contexts)
        published.setdefault(ev.user_id, []).append((i + lag + 1, set(scored_list.items)))
    return {
        "sources": {c.name: c.weight for c in config.scorer.candidates},
        "events": len(events),
        "lag_events": lag,
        "hit_rate_at_10": round(hits / len(events), 4),
        "hit_rate_at_10_users_with_history": round(hits / max(scored, 1), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument(
        "--lag",
        type=int,
        action="append",
        default=[],
        help="pipeline lag in events (repeatable); default 0",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="candidate weights, e.g. co_click=1,ann=0.5,trending=0.5",
    )
    args = parser.parse_args()
    base = load_config()
    ml = load_ml100k(fetch_ml100k(base.path("datasets")))
    vectors = item_vectors(base, ml.items)
    for weights in args.config or [
        ",".join(f"{c.name}={c.weight}" for c in base.scorer.candidates)
    ]:
        cfg = base.model_copy(deep=True)
        cfg.scorer.candidates = parse_weights(weights)
        for lag in args.lag or [0]:
            print(json.dumps(replay(cfg, ml, vectors, args.events, lag=lag)), flush=True)


if __name__ == "__main__":
    main()


__all__ = ["replay"]
