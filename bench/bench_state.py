"""State memory: bytes per user (and per item of the co-click graph), scaled to a million.

What it measures: the user states and item-graph states GENRE keeps in its Faust
tables, built by the real rules (``core.features``: ``UserStateRules`` for the
history, seen set, dedup window and float32 user vector of a ``UserState``;
``GraphRules`` for the co-click edges of an ``ItemState``, with their pruning)
from synthetic clicks, for users with ``--clicks`` clicks each. For each size:

* ``python_bytes``: heap bytes per user in the in-memory table store
  (``memory://``, a dict of ``UserState`` objects), from ``tracemalloc``:
  allocated after building the states minus before, over the number of users;
* ``changelog_bytes``: the value Faust writes to the changelog
  (``UserState.to_bytes``: JSON with the vector as base64; what a RocksDB store
  keeps per key before compression);
* ``*_per_million_gb``: either figure for a million users (or items).

For the item graph, ``arrays_bytes`` is what the scorer adds per item once it
has read an item's edges (``ItemState.edge_arrays``, cached on the published
state until the next update).

A user's state is bounded by config whatever their activity: ``history_size``
items, ``max_seen`` seen ids, ``dedup_window`` event ids and one vector, so
the per-user cost levels off once a user has clicked ``max_seen`` times.

    python bench/bench_state.py                 # 10, 50, 200, 1000 and 3000 clicks per user
    python bench/bench_state.py --clicks 10 50  # a quick look

Prints one JSON line and writes ``bench/results/state.json``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from machine import save_result
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from genre.core.config import load_config
from genre.core.features import FeatureSpec, GraphRules, ItemState, UserState, UserStateRules

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results" / "state.json"
#: Users built per size: enough for a stable mean, few enough for 3000-click users.
CLICK_BUDGET = 600_000


def _rules(config: Path | None) -> tuple[UserStateRules, GraphRules, int, dict[str, Any]]:
    cfg = load_config(config) if config else load_config(None)
    s = cfg.streams
    spec = FeatureSpec.from_streams(s)
    rules, grules = spec.user_rules(), spec.graph_rules()
    limits = {
        "history_size": s.history_size,
        "max_seen": s.max_seen,
        "dedup_window": s.dedup_window,
        "max_neighbours": s.max_neighbours,
        "dim": cfg.encoder.dim,
    }
    return rules, grules, cfg.encoder.dim, limits


def _events(n: int, user: int, items: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """(event id, item number) of a user's ``n`` clicks, one second apart."""
    picks = rng.integers(0, items, size=n).tolist()
    return [(f"syn-s0-e{user}x{k}", item) for k, item in enumerate(picks)]


def measure_users(
    rules: UserStateRules, clicks: int, items: int, dim: int, seed: int
) -> dict[str, Any]:
    """Build users with ``clicks`` clicks each; bytes per user in memory and serialised."""
    rng = np.random.default_rng(seed)
    users = max(50, min(5000, CLICK_BUDGET // clicks))
    vectors = rng.standard_normal((items, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    states: dict[str, UserState] = {}
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for u in range(users):
        state = UserState()
        for k, (event_id, item) in enumerate(_events(clicks, u, items, rng)):
            rules.apply(
                state,
                item_id=f"syn-i{item}",
                event_id=event_id,
                kind="click",
                ts=1_700_000_000.0 + k,
                item_vector=vectors[item],
            )
        states[f"syn-u{u}"] = state
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    python_bytes = (after - before) / users
    changelog = float(np.mean([len(s.to_bytes()) for s in states.values()]))
    sample = next(iter(states.values()))
    assert UserState.from_bytes(sample.to_bytes()).history == sample.history
    return {
        "clicks_per_user": clicks,
        "users_built": users,
        "python_bytes": round(python_bytes),
        "changelog_bytes": round(changelog),
        "python_per_million_gb": round(python_bytes * 1e6 / 1e9, 2),
        "changelog_per_million_gb": round(changelog * 1e6 / 1e9, 2),
        "lengths": {
            "history": len(sample.history),
            "seen": len(sample.seen),
            "recent_events": len(sample.recent_events),
        },
    }


def measure_items(grules: GraphRules, items: int, clicks: int, seed: int) -> dict[str, Any]:
    """The co-click graph after ``clicks`` clicks in sessions of 8: bytes per item."""
    rng = np.random.default_rng(seed)
    graph: dict[str, ItemState] = {}
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    window: list[str] = []
    for k, item in enumerate(rng.integers(0, items, size=clicks).tolist()):
        key = f"syn-i{item}"
        if k % 8 == 0:
            window = []
        state = graph.setdefault(key, ItemState())
        ts = 1_700_000_000.0 + k
        grules.add_click(state, ts)
        grules.add_neighbours(state, window[-5:], ts)
        for nbr in window[-5:]:
            grules.add_neighbours(graph[nbr], [key], ts)
        window.append(key)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_item = (after - before) / len(graph)
    # What the scorer's reads add: each item's edges as arrays, cached on its state.
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for state in graph.values():
        state.edge_arrays()
    gc.collect()
    arrays = (tracemalloc.get_traced_memory()[0] - before) / len(graph)
    tracemalloc.stop()
    changelog = float(np.mean([len(s.to_bytes()) for s in graph.values()]))
    edges = float(np.mean([len(s.edges) for s in graph.values()]))
    return {
        "items": len(graph),
        "clicks": clicks,
        "mean_edges": round(edges, 1),
        "python_bytes": round(per_item),
        "arrays_bytes": round(arrays),
        "changelog_bytes": round(changelog),
        "python_per_million_gb": round(per_item * 1e6 / 1e9, 2),
        "with_arrays_per_million_gb": round((per_item + arrays) * 1e6 / 1e9, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, nargs="+", default=[10, 50, 200, 1000, 3000])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--graph-clicks", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    rules, grules, dim, limits = _rules(args.config)
    users = []
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    )
    with progress:
        task = progress.add_task("user states", total=len(args.clicks) + 1)
        for clicks in args.clicks:
            progress.update(task, description=f"users with {clicks} clicks")
            row = measure_users(rules, clicks, args.items, dim, args.seed)
            users.append(row)
            console.print(
                f"{clicks:>5} clicks/user: {row['python_bytes']:,} B in memory, "
                f"{row['changelog_bytes']:,} B serialised per user"
            )
            progress.advance(task)
        progress.update(task, description="item graph")
        graph = measure_items(grules, args.items, args.graph_clicks, args.seed)
        progress.advance(task)
    result = {
        "bench": "state",
        "limits": limits,
        "users": users,
        "item_graph": graph,
        "summary": {
            "memory_gb_per_million_users": {
                str(r["clicks_per_user"]): r["python_per_million_gb"] for r in users
            },
            "changelog_gb_per_million_users": {
                str(r["clicks_per_user"]): r["changelog_per_million_gb"] for r in users
            },
            "memory_gb_per_million_items": graph["python_per_million_gb"],
        },
    }
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
