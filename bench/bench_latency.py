"""Latency anatomy: where a click's time goes on its way to a recommendation, hop by hop.

What it measures: full ``genre worker`` processes (``--layout all``: one process
running every agent; ``--layout split``: one process per role, as
docker-compose.yml runs them) fed synthetic clicks at a fixed offered rate
(``--loads``, default 100 and 1000 clicks/s, for ``--duration-s`` seconds each,
default 30 and 15), on a fresh embedded broker, with the default config
(``genre.yaml``) and the learned ranker when one is exported in
``<data_dir>/models/ranker`` (``--ranker auto``).

Every click is followed through the topics it passes by the Kafka record
timestamp (CreateTime, ms) of each record that carries it. The bench reads,
without joining the workers' consumer groups and from the start of the run:

* ``genre.clicks``: the ClickEvent (``event_id``);
* ``genre.user-clicks``: batches ``{"clicks": [{"event": {"event_id": ...}}, ...]}``;
* ``genre.score-requests``: batches ``{"requests": [{"trigger_event_id": ...}, ...]}``;
* ``genre.recommendations``: one Recommendation per message (``trigger_event_id``),
  with the time this bench's consumer received it.

Payloads are decoded tolerantly (a single record where a batch is expected, and
the other way round, is accepted; anything else is counted as undecodable).
The hops of a click, each the difference of two consecutive points it passed:

* ``producer``: clicks record time - the moment the bench handed it to the producer;
* ``ingest``: user-clicks record - clicks record;
* ``user-state``: score-requests record - user-clicks record;
* ``scorer``: recommendations record - score-requests record;
* ``delivery``: the bench's receipt of the recommendation - recommendations record
  (includes the broker's fetch wait, ``kafka.fetch_max_wait_ms``, as any consumer's);
* ``end to end``: receipt - hand-off (the same figure as bench_scale's latency).

A topic that carries no record for a click (a pipeline that folds clicks and
scores them in one process skips user-clicks and score-requests) is reported
as absent, and the hop spans the points that are present, named after them
(``clicks -> recommendations``). When a Recommendation carries an object field
``hops`` (hop name -> ms, in-process stage timings), each of its names is
reported as an extra row (``in-process: <name>``). Hops are taken over the
clicks that got their own list (the scorer answers a user's latest click of a
micro-batch; ``triggered_share`` says how many did), so their means add up to
the end-to-end mean; record times are whole milliseconds, so a hop of a few
ms carries up to 1 ms of rounding and ``producer`` can read -1.

The clicks come from ``genre produce --synthetic``'s generator with sessions of
one click, so consecutive clicks belong to distinct users as far as the
workload allows: a user clicks again only after about ``--users / 2`` other
clicks (``min_clicks_between_user_clicks`` in the result), far longer than a
micro-batch, so clicks do not coalesce. Items are ``--items`` synthetic items
with random unit vectors written into each worker's Qdrant local folder (or, for
``--layout split``, onto the item-vectors topic), as bench_scale does. Also
reported per load: the CPU seconds of each worker, the broker and this process,
each worker's resident memory, and whether the ranker ran. Everything shares
this machine's cores.

    python bench/bench_latency.py                              # 100 and 1000 clicks/s, one process
    python bench/bench_latency.py --loads 500 --duration-s 5   # a quick look
    python bench/bench_latency.py --layout split --out bench/results/latency_split.json

Prints one JSON line and writes ``bench/results/latency.json`` (or ``--out``),
and a plot of p50/p99 per hop per load next to it (``.png``) when matplotlib is
importable.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from bench_scale import (
    SPLIT_ROLES,
    CpuMeter,
    _payloads,
    _produce_level,
    _publish_item_vectors,
    _raise_interrupt,
    _scrape,
    _start_all,
    _worker_configs,
    drain_level,
)
from bench_stream import _load_items
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, TopicPartition
from machine import cpu_name, memory_mb, save_result
from rich.console import Console

from genre.core.broker import EmbeddedBroker, ensure_genre_topics, free_port
from genre.core.config import GenreConfig, load_config
from genre.core.kafka_client import ClickProducer
from genre.core.synthetic import SyntheticSpec, SyntheticWorkload
from genre.demo import _assigned_consumer
from genre.process import WorkerProcess

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
#: The points a click passes, in order: (name, where its time comes from).
POINTS = ("hand-off", "clicks", "user-clicks", "score-requests", "recommendations", "receipt")
#: The hops between consecutive points, when both are present.
HOP_NAMES = {
    ("hand-off", "clicks"): "producer",
    ("clicks", "user-clicks"): "ingest",
    ("user-clicks", "score-requests"): "user-state",
    ("score-requests", "recommendations"): "scorer",
    ("recommendations", "receipt"): "delivery",
}
#: The topic points (the others are this bench's own clock).
TOPIC_POINTS = ("clicks", "user-clicks", "score-requests", "recommendations")
#: A level whose recommendations stopped arriving this long is over even if the
#: workers' counters (which a rebuilt pipeline may name differently) never say so.
STALL_S = 15.0
#: How often the workers' /metrics pages are read while a load drains (each read
#: costs the worker a render and this process a parse: not too often).
SCRAPE_S = 0.5


def _event_index(event_id: Any) -> int | None:
    """The index of one of this bench's events (``syn-s0-e123`` -> 123), else None."""
    if not isinstance(event_id, str):
        return None
    _, sep, index = event_id.rpartition("-e")
    return int(index) if sep and index.isdigit() else None


def _records(value: Any, batch_key: str) -> list[Any]:
    """The records of a message: the list under ``batch_key``, or the message itself."""
    if isinstance(value, dict) and isinstance(value.get(batch_key), list):
        return value[batch_key]
    if isinstance(value, list):
        return value
    return [value]


class HopLog:
    """Per event index: the record time (ms) of each topic point and the receipt time."""

    def __init__(self, events: int) -> None:
        self.ms = {p: np.full(events, np.nan) for p in (*TOPIC_POINTS, "receipt")}
        self.in_process: dict[int, dict[str, float]] = {}
        self.lock = threading.Lock()
        self.records = dict.fromkeys(TOPIC_POINTS, 0)
        self.undecodable = dict.fromkeys(TOPIC_POINTS, 0)
        self.foreign = dict.fromkeys(TOPIC_POINTS, 0)  # records of events not this bench's
        self.extra_recs = 0  # recommendations beyond the first for one trigger
        self.timestamp_types: dict[str, set[int]] = {p: set() for p in TOPIC_POINTS}
        self.rec_count = 0

    def note(self, point: str, event_id: Any, ts_ms: float) -> int | None:
        index = _event_index(event_id)
        column = self.ms[point]
        if index is None or index >= len(column):
            self.foreign[point] += 1
            return None
        if np.isnan(column[index]) or ts_ms < column[index]:
            column[index] = ts_ms  # the first record that carried the click
        return index


class TopicFollower(threading.Thread):
    """Reads some of the click's topics from the start, without a consumer group."""

    def __init__(self, cfg: GenreConfig, points: dict[str, str], log: HopLog) -> None:
        super().__init__(daemon=True, name=f"latency-{'+'.join(points.values())}")
        self.conf = cfg.kafka.consumer_config()
        self.point_of = {topic: point for topic, point in points.items()}
        self.log = log
        self.stop_event = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        topics = list(self.point_of)
        consumer = _assigned_consumer(self.conf, topics[0])
        try:
            parts = []
            for topic in topics:
                meta = consumer.list_topics(topic, timeout=10).topics[topic]
                parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions]
            consumer.assign(parts)
            self.ready.set()
            while not self.stop_event.is_set():
                # poll returns as soon as a record is there (consume would wait for a
                # full batch or its timeout, which would count as delivery time);
                # what is already queued locally comes with it.
                head = consumer.poll(0.05)
                at_ms = time.time() * 1000.0
                if head is None:
                    continue
                for msg in [head, *consumer.consume(1000, 0)]:
                    if msg.error() is None:
                        self._handle(self.point_of[msg.topic()], msg, at_ms)
        finally:
            self.ready.set()
            consumer.close()

    def _handle(self, point: str, msg: Any, at_ms: float) -> None:
        log = self.log
        ts_type, ts_ms = msg.timestamp()
        if ts_type == TIMESTAMP_NOT_AVAILABLE:
            ts_ms = np.nan
        log.timestamp_types[point].add(ts_type)
        try:
            value = orjson.loads(msg.value() or b"null")
        except orjson.JSONDecodeError:
            log.undecodable[point] += 1
            return
        log.records[point] += 1
        if point == "recommendations":
            for rec in _records(value, "recommendations"):
                self._recommendation(rec, ts_ms, at_ms)
            return
        if point == "clicks":
            ids = [value.get("event_id") if isinstance(value, dict) else None]
        elif point == "user-clicks":
            ids = []
            for click in _records(value, "clicks"):
                event = click.get("event", click) if isinstance(click, dict) else None
                ids.append(event.get("event_id") if isinstance(event, dict) else None)
        else:
            ids = [
                r.get("trigger_event_id") if isinstance(r, dict) else None
                for r in _records(value, "requests")
            ]
        with log.lock:
            for event_id in ids:
                if event_id is None:
                    log.undecodable[point] += 1
                else:
                    log.note(point, event_id, ts_ms)

    def _recommendation(self, rec: Any, ts_ms: float, at_ms: float) -> None:
        """The first list for a trigger: its record time, receipt and in-process hops."""
        log = self.log
        trigger = rec.get("trigger_event_id") if isinstance(rec, dict) else None
        if trigger is None:
            log.undecodable["recommendations"] += 1
            return
        with log.lock:
            index = _event_index(trigger)
            seen = index is not None and index < len(log.ms["receipt"])
            if seen and not np.isnan(log.ms["receipt"][index]):
                log.extra_recs += 1
                return
            index = log.note("recommendations", trigger, ts_ms)
            if index is None:
                return
            log.ms["receipt"][index] = at_ms
            hops = rec.get("hops")
            if isinstance(hops, dict):
                log.in_process[index] = {
                    str(k): float(v)
                    for k, v in hops.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                }
            log.rec_count += 1


def _stats(values: np.ndarray) -> dict[str, Any]:
    if not len(values):
        return {"n": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "mean_ms": round(float(values.mean()), 2),
        "max_ms": round(float(values.max()), 1),
    }


def _anatomy(log: HopLog, handoff_s: np.ndarray, first: int, n: int) -> dict[str, Any]:
    """Hop rows, end to end and topic presence for the clicks ``first .. first + n - 1``."""
    sl = slice(first, first + n)
    cols = {"hand-off": handoff_s[sl] * 1000.0}
    with log.lock:
        cols.update({p: log.ms[p][sl].copy() for p in (*TOPIC_POINTS, "receipt")})
        in_process = {i - first: h for i, h in log.in_process.items() if first <= i < first + n}
    triggered = ~np.isnan(cols["receipt"])
    present = np.stack([~np.isnan(cols[p]) for p in POINTS], axis=1)
    hops: dict[str, list[np.ndarray]] = {}
    spans: dict[str, tuple[str, str]] = {}
    paths: dict[str, int] = {}
    # Group the triggered clicks by the points they passed; each group's hops at once.
    rows = np.flatnonzero(triggered)
    patterns = np.unique(present[rows], axis=0) if len(rows) else present[:0]
    for pattern in patterns:
        members = rows[(present[rows] == pattern).all(axis=1)]
        names = [p for p, on in zip(POINTS, pattern, strict=True) if on]
        paths[" > ".join(names)] = len(members)
        for a, b in itertools.pairwise(names):
            label = HOP_NAMES.get((a, b), f"{a} -> {b}")
            spans[label] = (a, b)
            hops.setdefault(label, []).append(cols[b][members] - cols[a][members])
    order = [HOP_NAMES[pair] for pair in itertools.pairwise(POINTS)]
    labels = [h for h in order if h in hops] + sorted(h for h in hops if h not in order)
    # Spanning hops go after the named hops they replace.
    labels.sort(key=lambda h: POINTS.index(spans[h][0]))
    table = [
        {"hop": h, "from": spans[h][0], "to": spans[h][1], **_stats(np.concatenate(hops[h]))}
        for h in labels
    ]
    e2e = cols["receipt"][triggered] - cols["hand-off"][triggered]
    table.append({"hop": "end to end", "from": "hand-off", "to": "receipt", **_stats(e2e)})
    extra: dict[str, list[float]] = {}
    for h in in_process.values():
        for name, ms in h.items():
            extra.setdefault(name, []).append(ms)
    in_rows = [
        {"hop": f"in-process: {name}", **_stats(np.asarray(v, dtype=float))}
        for name, v in extra.items()
    ]
    topic_share = {
        p: round(float(np.mean(~np.isnan(cols[p][triggered]))), 4) if triggered.any() else 0.0
        for p in TOPIC_POINTS
    }
    return {
        "triggered": int(triggered.sum()),
        "triggered_share": round(float(triggered.mean()), 4),
        "hops": table,
        "in_process_hops": in_rows,
        "paths": paths,
        # share of the triggered clicks with a record on each topic
        "topic_share": topic_share,
        "absent_topics": [p for p, s in topic_share.items() if s == 0.0],
        "last_receipt_s": float(np.nanmax(cols["receipt"])) / 1000.0 if triggered.any() else None,
    }


def _user_spacing(work: SyntheticWorkload, first: int, n: int) -> dict[str, Any]:
    """How distinct the users of the clicks ``first .. first + n - 1`` are."""
    users = np.concatenate([c.user for c in work.click_chunks(first + n)])[first:]
    order = np.argsort(users, kind="stable")
    same = users[order][1:] == users[order][:-1]
    gaps = np.diff(order)[same]
    return {
        "distinct_users": len(np.unique(users)),
        "min_clicks_between_user_clicks": int(gaps.min()) if len(gaps) else None,
    }


def run_load(
    args: argparse.Namespace,
    workers: list[WorkerProcess],
    broker: EmbeddedBroker,
    producer: ClickProducer,
    cfg: GenreConfig,
    log: HopLog,
    handoff: np.ndarray,
    keys: list[bytes],
    values: list[bytes],
    first: int,
    rate: float,
    console: Console,
) -> dict[str, Any]:
    """One offered load: produce at ``rate``, wait for the pipeline to drain, measure."""
    n = len(values)
    before = _scrape(workers)
    cpu_meter = CpuMeter(workers, broker)
    topic = cfg.kafka.topics.clicks.name
    start, produce_end = _produce_level(producer, topic, keys, values, rate, handoff, first)
    target = before["applied"] + before["dup"] + before["dlq"] + n
    drained, _ = drain_level(
        workers,
        target,
        n,
        rate,
        args.drain_timeout_s,
        lambda: log.rec_count,
        console,
        stall_s=STALL_S,
        poll_s=SCRAPE_S,
    )
    after = _scrape(workers)
    cpu = cpu_meter.spent()
    anatomy = _anatomy(log, handoff, first, n)
    end = anatomy.pop("last_receipt_s") or time.time()
    wall = max(end - start, 1e-9)
    return {
        "offered_eps": rate,
        "events": n,
        "seconds_offered": round(produce_end - start, 2),
        "produced_eps": round(n / max(produce_end - start, 1e-9), 1),
        "throughput_eps": round(n / wall, 1),
        "drained": drained,
        **anatomy,
        "applied": int(after["applied"] - before["applied"]),
        "dlq": int(after["dlq"] - before["dlq"]),
        "duplicates": int(after["dup"] - before["dup"]),
        "ranker_s": round(after["ranker_s"] - before["ranker_s"], 2),
        "ranker_used": after["ranker_s"] > before["ranker_s"],
        "scorer_mean_batch": round(
            (after["batch_sum"] - before["batch_sum"])
            / max(after["batches"] - before["batches"], 1),
            2,
        ),
        "cpu_s": cpu,
        "worker_rss_mb": [round(memory_mb(w.proc.pid)[0], 1) for w in workers if w.proc],
    }


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Every offered load, in turn, against one set of workers on a fresh broker."""
    split = args.layout == "split"
    roles = SPLIT_ROLES if split else ("all",)
    counts = [int(rate * d) for rate, d in zip(args.loads, args.duration_s, strict=True)]
    total = sum(counts)
    spec = SyntheticSpec(
        seed=args.seed,
        n_users=args.users,
        n_items=args.items,
        events=total,
        rate=float(max(args.loads)),
        session_len=1.0,  # one click per session: consecutive clicks of distinct users
    )
    work = SyntheticWorkload(spec)
    base = load_config(args.config) if args.config else load_config(None)
    run_dir = base.path(f"bench-latency/{args.layout}")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    port = free_port()
    cfg, paths, ports = _worker_configs(base, run_dir, port, len(roles), args.ranker, None)
    ranker_dir = cfg.path(cfg.ranker.dir)
    broker = EmbeddedBroker("127.0.0.1", port, log_path=run_dir / "broker.log")
    workers = [
        WorkerProcess(path, web_port, run_dir / f"w{i}.log", role=role)
        for i, (path, web_port, role) in enumerate(zip(paths, ports, roles, strict=True))
    ]
    log = HopLog(total)
    t = cfg.kafka.topics
    followers = [
        TopicFollower(
            cfg,
            {
                t.clicks.name: "clicks",
                t.user_clicks.name: "user-clicks",
                t.score_requests.name: "score-requests",
            },
            log,
        ),
        # Its own consumer, so the receipt time is not held up by the busier topics.
        TopicFollower(cfg, {t.recommendations.name: "recommendations"}, log),
    ]
    levels: list[dict[str, Any]] = []
    try:
        with console.status(f"{'+'.join(roles)}: broker, catalogue, workers"):
            broker.start()
            ensure_genre_topics(broker.bootstrap, cfg.kafka.topics)
            if split:
                _publish_item_vectors(cfg, work, args.seed)
            else:
                _load_items(cfg, work, args.seed)
            _start_all(workers)
            for f in followers:
                f.start()
            for f in followers:
                f.ready.wait(30)
        handoff = np.full(total, np.nan)
        keys_all, values_all = _payloads(work, total)
        first = 0
        with ClickProducer(cfg.kafka) as producer:
            for rate, n, duration in zip(args.loads, counts, args.duration_s, strict=True):
                level = run_load(
                    args, workers, broker, producer, cfg, log, handoff,
                    keys_all[first : first + n], values_all[first : first + n], first, rate,
                    console,
                )  # fmt: skip
                level["duration_s"] = duration
                level.update(_user_spacing(work, first, n))
                levels.append(level)
                row = {h["hop"]: h for h in level["hops"]}
                console.print(
                    f"{'+'.join(roles)}, offered {rate:,}/s: triggered "
                    f"{level['triggered_share']:.0%}, "
                    + ", ".join(f"{name} {h['p50_ms']}/{h['p99_ms']}" for name, h in row.items())
                    + " ms (p50/p99)"
                )
                first += n
    finally:
        for f in followers:
            f.stop_event.set()
        for w in workers:
            w.stop()
        broker.stop()
        for f in followers:
            f.join(10)
    return {
        "bench": "latency",
        "machine": f"{os.cpu_count()} cores ({cpu_name()}), broker and producer on the same cores",
        "layout": args.layout,
        "roles": list(roles),
        "users": args.users,
        "items": args.items,
        "ranker": args.ranker,
        "ranker_exported": (ranker_dir / "manifest.json").exists(),
        "hop_definitions": {name: f"{b} - {a}" for (a, b), name in HOP_NAMES.items()}
        | {"end to end": "receipt - hand-off"},
        "summary": {
            str(lv["offered_eps"]): {h["hop"]: [h["p50_ms"], h["p99_ms"]] for h in lv["hops"]}
            for lv in levels
        },
        "summary_unit": "[p50, p99] ms per hop, by offered clicks/s",
        "by_load": levels,
        "records": dict(log.records),
        "undecodable": dict(log.undecodable),
        "foreign": dict(log.foreign),
        "extra_recommendations": log.extra_recs,
        "timestamp_types": {p: sorted(v) for p, v in log.timestamp_types.items()},
    }


def _plot(result: dict[str, Any], path: Path) -> str | None:
    """Bars of p50 and p99 per hop, one group of bars per offered load."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    levels = result["by_load"]
    hops: list[str] = []
    for lv in levels:
        hops += [h["hop"] for h in lv["hops"] + lv["in_process_hops"] if h["hop"] not in hops]
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(hops) + 2), 4.8))
    width = 0.8 / max(len(levels), 1)
    x = np.arange(len(hops))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, lv in enumerate(levels):
        row = {h["hop"]: h for h in lv["hops"] + lv["in_process_hops"]}
        p50 = [max(row[h]["p50_ms"] or 0.0, 0.01) if h in row else 0.0 for h in hops]
        p99 = [max(row[h]["p99_ms"] or 0.0, 0.01) if h in row else 0.0 for h in hops]
        colour = colours[k % len(colours)]
        pos = x - 0.4 + width * (k + 0.5)
        ax.bar(pos, p99, width, color=colour, alpha=0.35, label=f"{lv['offered_eps']:,}/s p99")
        ax.bar(pos, p50, width * 0.6, color=colour, label=f"{lv['offered_eps']:,}/s p50")
        for xp, h in zip(pos, hops, strict=True):
            if h in row and row[h]["p50_ms"] is not None:
                label = f"{row[h]['p50_ms']:.3g}\n{row[h]['p99_ms']:.3g}"
                ax.text(
                    xp, max(row[h]["p99_ms"], 0.01), label, ha="center", va="bottom", fontsize=6
                )
    ax.set_xticks(x, hops, rotation=20, ha="right")
    ax.set_ylabel("ms (log)")
    ax.set_yscale("log")
    ax.set_ylim(top=ax.get_ylim()[1] * 5)  # room for the value labels
    ax.legend(fontsize=8)
    ax.set_title(f"GENRE click -> recommendation by hop ({result['layout']}), {result['machine']}")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--duration-s",
        type=float,
        nargs="+",
        default=None,
        help="seconds per load: one for all, or one per load (default 30 s at <= 100/s, else 15 s)",
    )
    parser.add_argument("--layout", choices=("all", "split"), default="all")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--ranker", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drain-timeout-s", type=float, default=300.0)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "latency.json")
    args = parser.parse_args(argv)
    if args.duration_s is None:
        args.duration_s = [30.0 if rate <= 100 else 15.0 for rate in args.loads]
    elif len(args.duration_s) == 1:
        args.duration_s = args.duration_s * len(args.loads)
    elif len(args.duration_s) != len(args.loads):
        parser.error("--duration-s takes one value, or one per --loads value")
    console = Console(stderr=True)
    load_start = [round(x, 2) for x in os.getloadavg()]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        result = run(args, console)
    finally:
        signal.signal(signal.SIGTERM, previous)
    # 1/5/15-minute load averages: other work on the same cores shows here
    result["load_average"] = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
    result["plot"] = _plot(result, args.out.with_suffix(".png"))
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
