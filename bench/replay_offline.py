"""Offline replay of MovieLens-100k through GENRE's own ranking code, without Kafka.

The same user-state rules, item graph, candidate sources, blend and filters as
the workers, driven click by click in timestamp order: before each click the
user's list is computed from the state so far and the click counts as a hit
when its item is in that top-10. This is the demo's online_hit_rate_at_10 with
zero pipeline lag (an upper bound on it), fast enough to compare candidate
weights. Prints one JSON line per configuration.

    python bench/replay_offline.py --events 20000 \
        --config co_click=1,ann=0.5,trending=0.5 --config trending=1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import numpy as np
from rich.progress import track

from genre.core.config import CandidateSourceSpec, GenreConfig, load_config
from genre.core.exact_index import ExactIndex
from genre.model_export.datasets import as_click_events, fetch_ml100k, load_ml100k
from genre.schemas import ScoreRequest
from genre.streams.agents import graph_rules, user_rules
from genre.streams.state import new_item_state, new_user_state
from genre.workers.candidates import build_sources
from genre.workers.scorer import FILTERS, SCORERS
from genre.workers.text_encoder import TextEncoder


class OfflineStreams:
    """Just enough of ``GenreStreams`` for the candidate sources: config, graph, index, clock."""

    def __init__(self, config: GenreConfig, index: ExactIndex) -> None:
        self.config = config
        self.graph: dict[str, dict[str, Any]] = {}
        self.index = index
        self.event_time = 0.0

    def event_now(self) -> float:
        return self.event_time


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
    index = ExactIndex(vectors.shape[1])
    ids = [i.item_id for i in ml.items]
    index.upsert(ids, vectors)
    vec_of = dict(zip(ids, vectors, strict=True))
    streams = OfflineStreams(config, index)
    urules, grules = user_rules(streams), graph_rules(streams)  # type: ignore[arg-type]
    sources = build_sources(streams)  # type: ignore[arg-type]
    scorer = SCORERS.create(config.scorer.name)
    filters = [FILTERS.create(f.name, **f.params) for f in config.scorer.filters]
    users: dict[str, dict[str, Any]] = {}
    hits = scored = 0
    loop = asyncio.new_event_loop()
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
        state = users.setdefault(ev.user_id, new_user_state())
        streams.event_time = max(streams.event_time, ev.ts)
        lists = published.get(ev.user_id, [])
        while len(lists) > 1 and lists[1][0] <= i:
            lists.pop(0)  # keep the newest list usable now at the head
        if lists and lists[0][0] <= i:
            hits += ev.item_id in lists[0][1]
            scored += 1
        neighbours = urules.apply(state, ev, vec_of[ev.item_id])
        item_state = streams.graph.setdefault(ev.item_id, new_item_state())
        grules.add_neighbours(item_state, neighbours, ev.ts)
        grules.add_click(item_state, ev.ts)
        for nbr in neighbours:
            grules.add_neighbours(
                streams.graph.setdefault(nbr, new_item_state()), [ev.item_id], ev.ts
            )
        req = ScoreRequest(
            user_id=ev.user_id,
            trigger_event_id=ev.event_id,
            trigger_produced_at=0.0,
            trigger_ts=ev.ts,
            recent_items=state["history"],
            seen_items=state["seen"],
            vector=state["vector"],
        )
        per_source = [
            (s.name, w, loop.run_until_complete(s.generate([req]))[0]) for s, w in sources
        ]
        tests = [f.predicate(req) for f in filters]
        ranked = scorer.rank(per_source, lambda item, t=tests: all(f(item) for f in t), k)
        published.setdefault(ev.user_id, []).append((i + lag + 1, {r.item_id for r in ranked}))
    loop.close()
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
