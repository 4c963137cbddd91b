"""End-to-end scale: throughput and click-to-recommendation latency by offered load and workers.

What it measures: full ``genre worker`` processes (stream agents, scorer with the
configured candidate sources and ranker, profiles; everything changelogged) fed
synthetic clicks at a fixed offered rate. For each worker count (``--workers``,
default 1 and 2, one consumer group) a fresh embedded broker is started, the
catalogue is written, the workers start, then each offered load (``--loads``,
default 1k, 5k, 10k, 20k clicks/s) runs for ``--duration-s`` seconds in turn:

* ``throughput_eps``: clicks of the level over the time from its first produce
  to the last recommendation triggered by one of its clicks (the backlog left
  when the offered load exceeds capacity is part of the level's time);
* ``p50_ms`` / ``p99_ms``: click-to-recommendation latency, from the moment the
  bench handed the click to the producer to the moment its consumer read the
  recommendation that click triggered (a user who clicks again while waiting
  for the scorer is scored once, at the latest click, so ``triggered_share``
  says how many clicks had their own list);
* ``hop_mean_ms``: where that latency went, per hop (``genre_hop_ms``: ingest,
  fold, handoff, wait, score, publish), mean over the level's lists;
* ``routed``: how the fold got the level's clicks (``genre_clicks_routed_total``:
  in place, keyed by user id, or re-keyed), and ``pending_users_max``: the most
  users seen waiting for a scorer (``genre_pending_users``, sampled);
* the scorer: batch-size distribution (``genre_batch_size{stage="scorer"}``
  buckets, delta over the level), mean batch and utilisation (busy seconds of
  the scorer agent and of ranker inference, over the level's wall time);
* CPU seconds of each worker, the broker and this process (producer and
  recommendation consumer), and each worker's resident memory.

Items are ``--items`` synthetic items (``genre produce --synthetic``'s generator)
with random unit vectors written straight into each worker's Qdrant local folder,
as bench_stream does: encoding is measured by bench_encoder. With local mode
every worker needs the whole catalogue in its own folder (see docs/limitations.md,
known limitations), so the bench copies it; a Qdrant server needs no copy.
Everything runs on this machine's cores: the broker, the workers and the
producer compete for them, which the CPU figures show.

    python bench/bench_scale.py                                # 1k..20k/s, 1 and 2 workers
    python bench/bench_scale.py --loads 1000 --workers 1 --duration-s 5   # a quick look
    python bench/bench_scale.py --layout split --out bench/results/roles.json

``--layout split`` runs one process per role instead (``genre worker --role``
stream, encoder and scorer, as docker-compose.yml does); the catalogue then
reaches the stream and scorer roles as records on the item-vectors topic.

Prints one JSON line and writes ``bench/results/scale.json`` (merging the
history-length and state-memory figures of bench_scorer.py and bench_state.py,
and the catalogue-size figures of bench_search.py, when their results exist)
and ``bench/results/scale.png`` when matplotlib is importable.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from bench_stream import _cpu_s, _load_items
from machine import cpu_name, memory_mb, save_result
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from genre.core.broker import EmbeddedBroker, ensure_genre_topics, free_port
from genre.core.config import GenreConfig, load_config
from genre.core.features import encode_vector
from genre.core.kafka_client import ClickProducer
from genre.core.synthetic import SyntheticSpec, SyntheticWorkload
from genre.demo import _assigned_consumer, _demo_config
from genre.process import WorkerProcess, WorkerProcessError
from genre.schemas import ItemVector
from genre.streams.app import role_runs

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
POLL_S = 0.1
#: The agents of the stream path (the fold and the item graph), as their
#: genre_agent_batch_seconds{agent} label names them.
STREAM_AGENTS = ("fold", "graph")
#: Quiet time after the last click is applied before a level counts as finished.
SETTLE_S = 1.0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class RecConsumer(threading.Thread):
    """Reads the recommendations topic and notes when each trigger's list arrived."""

    def __init__(self, cfg: GenreConfig, events: int) -> None:
        super().__init__(daemon=True, name="scale-recs")
        self.conf = cfg.kafka.consumer_config()
        self.topic = cfg.kafka.topics.recommendations.name
        #: arrival time (Unix s) per event index; nan until that click's list arrives
        self.arrivals = np.full(events, np.nan)
        self.count = 0
        self.foreign = 0  # lists whose trigger is not one of this bench's event ids
        self.stop_event = threading.Event()

    def run(self) -> None:
        consumer = _assigned_consumer(self.conf, self.topic)
        try:
            while not self.stop_event.is_set():
                msgs = consumer.consume(1000, 0.05)
                at = time.time()
                for msg in msgs:
                    if msg.error():
                        continue
                    trigger = orjson.loads(msg.value()).get("trigger_event_id", "")
                    _, _, index = trigger.rpartition("-e")
                    self.count += 1
                    if not index.isdigit() or int(index) >= len(self.arrivals):
                        self.foreign += 1
                    elif np.isnan(self.arrivals[int(index)]):
                        self.arrivals[int(index)] = at
        finally:
            consumer.close()


def _scrape(workers: list[WorkerProcess]) -> dict[str, Any]:
    """The counters a level needs, summed over the workers."""
    out: dict[str, Any] = {"applied": 0.0, "dup": 0.0, "dlq": 0.0, "req_out": 0.0, "req_in": 0.0}
    out.update(scorer_s=0.0, ranker_s=0.0, batches=0.0, batch_sum=0.0, buckets={})
    out.update(profiles=0.0, profile_encoder_s=0.0, profiles_agent_s=0.0, stream_s=0.0, gc_s=0.0)
    out.update(hop_sum={}, hop_count={}, routed={}, pending=0.0)
    for worker in workers:
        for family in text_string_to_metric_families(worker.metrics_text()):
            for s in family.samples:
                name, labels = s.name, s.labels
                if name == "genre_online_clicks_total":
                    out["applied"] += s.value
                elif name == "genre_duplicate_events_total":
                    out["dup"] += s.value
                elif name == "genre_dlq_records_total":
                    out["dlq"] += s.value
                elif name == "genre_events_out_total" and "score-requests" in labels["topic"]:
                    out["req_out"] += s.value
                elif name == "genre_events_in_total" and "score-requests" in labels["topic"]:
                    out["req_in"] += s.value
                elif name == "genre_agent_batch_seconds_sum" and labels["agent"] == "scorer":
                    out["scorer_s"] += s.value
                elif name == "genre_inference_seconds_sum" and labels["model"] == "ranker":
                    out["ranker_s"] += s.value
                elif name == "genre_inference_seconds_sum" and labels["model"] == "profile_encoder":
                    out["profile_encoder_s"] += s.value
                elif name == "genre_agent_batch_seconds_sum" and labels["agent"] == "profiles":
                    out["profiles_agent_s"] += s.value
                elif name == "genre_agent_batch_seconds_sum" and labels["agent"] in STREAM_AGENTS:
                    out["stream_s"] += s.value
                elif name == "genre_gc_seconds_total":
                    out["gc_s"] += s.value
                elif name == "genre_profiles_generated_total":
                    out["profiles"] += s.value
                elif name in ("genre_hop_ms_sum", "genre_hop_ms_count"):
                    part = out["hop_sum" if name.endswith("_sum") else "hop_count"]
                    part[labels["hop"]] = part.get(labels["hop"], 0.0) + s.value
                elif name == "genre_clicks_routed_total":
                    route = labels["route"]
                    out["routed"][route] = out["routed"].get(route, 0.0) + s.value
                elif name == "genre_pending_users":
                    out["pending"] += s.value
                elif name.startswith("genre_batch_size_") and labels.get("stage") == "scorer":
                    if name.endswith("_bucket"):
                        le = labels["le"]
                        out["buckets"][le] = out["buckets"].get(le, 0.0) + s.value
                    elif name.endswith("_count"):
                        out["batches"] += s.value
                    elif name.endswith("_sum"):
                        out["batch_sum"] += s.value
    return out


def _batch_histogram(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Scorer batches per size bucket (non-cumulative), over one level."""

    def key(le: str) -> float:
        return float("inf") if le == "+Inf" else float(le)

    out: dict[str, int] = {}
    previous = 0.0
    for le in sorted(after, key=key):
        cumulative = after[le] - before.get(le, 0.0)
        label = "+Inf" if le == "+Inf" else f"<={key(le):g}"
        out[label] = int(cumulative - previous)
        previous = cumulative
    return {k: v for k, v in out.items() if v}


class CpuMeter:
    """CPU seconds the workers, the broker and this bench spend from now on."""

    def __init__(self, workers: list[WorkerProcess], broker: EmbeddedBroker) -> None:
        self.pids = {f"worker{i}": w.proc.pid for i, w in enumerate(workers) if w.proc}
        self.pids["broker"] = broker.pid
        self.pids["bench"] = os.getpid()
        self.start = {name: _cpu_s(pid) for name, pid in self.pids.items()}

    def spent(self) -> dict[str, float]:
        """CPU seconds per process since this meter was made."""
        return {n: round(_cpu_s(pid) - self.start[n], 1) for n, pid in self.pids.items()}


def drain_level(
    workers: list[WorkerProcess],
    target: int,
    n: int,
    rate: float,
    timeout_s: float,
    lists_seen: Callable[[], int],
    console: Console,
    stall_s: float | None = None,
    poll_s: float = POLL_S,
) -> tuple[bool, float]:
    """Wait until a level's ``n`` clicks are applied (``target`` in the workers'
    counters) and no scorer work is left, then until no list has arrived for
    ``SETTLE_S``. Returns (drained, most users seen waiting for a scorer).

    ``stall_s``: give up once no list has arrived for that long (None: wait for
    ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    progress = Progress(
        TextColumn(f"offered {rate:,.0f}/s: applied"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    drained = False
    pending_max = 0.0
    last_lists, last_change = lists_seen(), time.monotonic()
    with progress:
        task = progress.add_task("drain", total=n)
        while time.monotonic() < deadline:
            now = _scrape(workers)
            pending_max = max(pending_max, now["pending"])
            done = now["applied"] + now["dup"] + now["dlq"] - (target - n)
            progress.update(task, completed=min(done, n))
            # Drained: every click applied, every score request taken, and no user still
            # waiting for an in-process scorer (lists of the last batch follow below).
            if done >= n and now["req_in"] >= now["req_out"] and now["pending"] == 0:
                drained = True
                break
            if lists_seen() != last_lists:
                last_lists, last_change = lists_seen(), time.monotonic()
            elif stall_s is not None and time.monotonic() - last_change > stall_s:
                break  # nothing arrives any more: the counters may not mean what we think
            if not all(w.running for w in workers):
                raise WorkerProcessError(f"a worker died; log:\n{workers[0].log_tail()}")
            time.sleep(poll_s)
    # Lists of the last batch are still on their way: wait until none arrive for SETTLE_S.
    last_count = -1
    while lists_seen() != last_count:
        last_count = lists_seen()
        time.sleep(SETTLE_S)
    return drained, pending_max


def _produce_level(
    producer: ClickProducer,
    topic: str,
    keys: list[bytes],
    values: list[bytes],
    rate: float,
    produced_at: np.ndarray,
    first: int,
) -> tuple[float, float]:
    """Send ``values`` at ``rate`` per second; returns (start, end) wall times."""
    n = len(values)
    start = time.time()
    sent = 0
    while sent < n:
        now = time.time()
        due = min(n, int((now - start) * rate) + 1)
        if due > sent:
            for j in range(sent, due):
                producer.send_raw(topic, values[j], keys[j])
            produced_at[first + sent : first + due] = now
            sent = due
            producer.poll(0)
        else:
            time.sleep(0.0005)
    producer.flush(120)
    return start, time.time()


#: The processes of ``--layout split``: one per role.
SPLIT_ROLES = ("stream", "encoder", "scorer")


def _publish_item_vectors(cfg: GenreConfig, work: SyntheticWorkload, seed: int) -> int:
    """The catalogue as the encoder role would publish it: random unit vectors on the
    item-vectors topic (the same vectors ``_load_items`` writes to Qdrant)."""
    items = list(work.items())
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(items), cfg.encoder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    topic = cfg.kafka.topics.item_vectors.name
    with ClickProducer(cfg.kafka) as producer:
        for item, vector in zip(items, vectors, strict=True):
            payload = {"title": item.title, "category": item.category}
            record = ItemVector(item_id=item.item_id, vector=encode_vector(vector), payload=payload)
            producer.send_raw(topic, record.to_bytes(), item.item_id.encode())
    return len(items)


def _worker_configs(
    base: GenreConfig,
    run_dir: Path,
    port: int,
    count: int,
    ranker: str,
    profiles_every: int | None,
) -> tuple[GenreConfig, list[Path], list[int]]:
    """One config file per worker: same app id, own data_dir and web port."""
    cfg, _ = _demo_config(base, run_dir, port, 0, None, ranker)
    paths, ports = [], []
    for i in range(count):
        data = cfg.model_dump(mode="json")
        if profiles_every is not None:  # 0: profiles off
            data["llm"]["profiles"]["enabled"] = profiles_every > 0
            data["llm"]["profiles"]["every_k_clicks"] = max(profiles_every, 1)
        data["data_dir"] = str(run_dir / f"w{i}")
        data["streams"]["web_port"] = free_port()
        (run_dir / f"w{i}").mkdir(parents=True, exist_ok=True)
        path = run_dir / f"w{i}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        paths.append(path)
        ports.append(data["streams"]["web_port"])
    return load_config(paths[0], environ={}), paths, ports


def run_workers(
    args: argparse.Namespace,
    count: int,
    work: SyntheticWorkload,
    console: Console,
    split: bool = False,
) -> list[dict[str, Any]]:
    """Every offered load against ``count`` workers (or the split roles) on a fresh broker."""
    roles = SPLIT_ROLES if split else ("all",) * count
    count = len(roles)
    base = load_config(args.config) if args.config else load_config(None)
    run_dir = base.path(f"bench-scale/{'split' if split else f'w{count}'}")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    port = free_port()
    cfg, paths, ports = _worker_configs(
        base, run_dir, port, count, args.ranker, args.profiles_every
    )
    total = sum(int(rate * args.duration_s) for rate in args.loads)
    broker = EmbeddedBroker("127.0.0.1", port, log_path=run_dir / "broker.log")
    workers = [
        WorkerProcess(path, web_port, run_dir / f"w{i}.log", role=role)
        for i, (path, web_port, role) in enumerate(zip(paths, ports, roles, strict=True))
    ]
    recs = RecConsumer(cfg, total)
    levels: list[dict[str, Any]] = []
    try:
        with console.status(f"{count} worker(s): broker, catalogue, workers"):
            broker.start()
            ensure_genre_topics(broker.bootstrap, cfg.kafka.topics)
            if split:
                _publish_item_vectors(cfg, work, args.seed)
            else:
                _load_items(cfg, work, args.seed)
                for i in range(1, count):  # local mode: each worker its own copy
                    shutil.copytree(run_dir / "w0" / "qdrant", run_dir / f"w{i}" / "qdrant")
            _start_all(workers)
        recs.start()
        produced_at = np.full(total, np.nan)
        keys_all, values_all = _payloads(work, total)
        first = 0
        with ClickProducer(cfg.kafka) as producer:
            for rate in args.loads:
                n = int(rate * args.duration_s)
                level = _run_level(
                    args, workers, broker, producer, cfg, recs, produced_at,
                    keys_all[first : first + n], values_all[first : first + n], first, rate,
                    console,
                )  # fmt: skip
                level["workers"] = count
                level["roles"] = list(roles)
                levels.append(level)
                console.print(
                    f"{'+'.join(roles)}, offered {rate:,}/s: {level['throughput_eps']:,.0f}/s, "
                    f"p50 {level['p50_ms']} ms, p99 {level['p99_ms']} ms, "
                    f"scorer mean batch {level['scorer']['mean_batch']}, "
                    f"busy {level['scorer']['utilisation']:.0%}"
                )
                first += n
    finally:
        recs.stop_event.set()
        for w in workers:
            w.stop()
        broker.stop()
    return levels


def _start_all(workers: list[WorkerProcess]) -> None:
    """Spawn every worker (together: one rebalance, not one per worker), then wait
    until all are ready at the same time."""
    for w in workers:
        w.spawn()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            for w in workers:
                w.wait_ready(max(1.0, deadline - time.monotonic()))
            time.sleep(2.0)  # a late join rebalances the others: all must still be ready
            for w in workers:
                w.wait_ready(1.0)
            return
        except WorkerProcessError:
            if not all(w.running for w in workers):
                raise
    raise WorkerProcessError("workers did not become ready together within 240 s")


def _payloads(work: SyntheticWorkload, total: int) -> tuple[list[bytes], list[bytes]]:
    keys: list[bytes] = []
    values: list[bytes] = []
    for k, v in work.click_payloads(total):
        keys.extend(k)
        values.extend(v)
    return keys, values


def _run_level(
    args: argparse.Namespace,
    workers: list[WorkerProcess],
    broker: EmbeddedBroker,
    producer: ClickProducer,
    cfg: GenreConfig,
    recs: RecConsumer,
    produced_at: np.ndarray,
    keys: list[bytes],
    values: list[bytes],
    first: int,
    rate: float,
    console: Console,
) -> dict[str, Any]:
    n = len(values)
    scorers = sum(role_runs(w.role, "scorer") for w in workers)
    stream_workers = sum(role_runs(w.role, "stream") for w in workers)
    before = _scrape(workers)
    cpu_meter = CpuMeter(workers, broker)
    topic = cfg.kafka.topics.clicks.name
    start, produce_end = _produce_level(producer, topic, keys, values, rate, produced_at, first)
    target = before["applied"] + before["dup"] + before["dlq"] + n
    drained, pending_max = drain_level(
        workers, target, n, rate, args.drain_timeout_s, lambda: recs.count, console
    )
    after = _scrape(workers)
    arrivals = recs.arrivals[first : first + n]
    sent = produced_at[first : first + n]
    got = ~np.isnan(arrivals)
    lat = (arrivals[got] - sent[got]) * 1000.0
    end = float(np.nanmax(arrivals)) if got.any() else time.time()
    wall = max(end - start, 1e-9)
    cpu = cpu_meter.spent()
    batches = after["batches"] - before["batches"]
    return {
        "offered_eps": rate,
        "events": n,
        "produced_eps": round(n / max(produce_end - start, 1e-9), 1),
        "throughput_eps": round(n / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "triggered_share": round(float(got.mean()), 3),
        "drained": drained,
        "applied": int(after["applied"] - before["applied"]),
        "dlq": int(after["dlq"] - before["dlq"]),
        "duplicates": int(after["dup"] - before["dup"]),
        "seconds": round(wall, 2),
        "scorer": {
            "batches": int(batches),
            "mean_batch": round((after["batch_sum"] - before["batch_sum"]) / max(batches, 1), 1),
            "batch_histogram": _batch_histogram(before["buckets"], after["buckets"]),
            # busy seconds per worker over wall time: 1.0 means the agent never waited
            "utilisation": round((after["scorer_s"] - before["scorer_s"]) / wall / scorers, 3),
            "ranker_utilisation": round(
                (after["ranker_s"] - before["ranker_s"]) / wall / scorers, 3
            ),
        },
        # busy seconds of each stage over wall time, per process that runs it: where the CPU went
        "busy_share": {
            key: round(
                (after[key + "_s"] - before[key + "_s"])
                / wall
                / (stream_workers if key == "stream" else scorers if key != "gc" else len(workers)),
                3,
            )
            for key in ("stream", "scorer", "ranker", "profiles_agent", "profile_encoder", "gc")
        },
        "hop_mean_ms": {
            hop: round(
                (after["hop_sum"][hop] - before["hop_sum"].get(hop, 0.0))
                / max(after["hop_count"][hop] - before["hop_count"].get(hop, 0.0), 1.0),
                2,
            )
            for hop in sorted(after["hop_count"])
        },
        "routed": {
            route: int(count - before["routed"].get(route, 0.0))
            for route, count in sorted(after["routed"].items())
        },
        "pending_users_max": int(pending_max),
        "profiles": int(after["profiles"] - before["profiles"]),
        "cpu_s": cpu,
        "worker_rss_mb": [round(memory_mb(w.proc.pid)[0], 1) for w in workers if w.proc],
    }


def _merge_other_results() -> dict[str, Any]:
    """Catalogue, history-length and state-memory figures from the other benches."""
    out: dict[str, Any] = {}
    for key, name in (
        ("history_length", "scorer.json"),
        ("state_memory", "state.json"),
        ("catalog", "search.json"),
    ):
        path = RESULTS_DIR / name
        if path.exists():
            data = json.loads(path.read_text())
            out[key] = data.get("summary", data)
            out[key + "_source"] = f"bench/results/{name}"
    return out


def _plot(result: dict[str, Any], path: Path) -> str | None:
    """Throughput and latency against offered load, one line per worker count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for count, levels in result["by_workers"].items():
        name = "split roles" if count == "split" else f"{count} worker(s)"
        offered = [lv["offered_eps"] for lv in levels]
        ax1.plot(offered, [lv["throughput_eps"] for lv in levels], "o-", label=name)
        ax2.plot(offered, [lv["p50_ms"] for lv in levels], "o-", label=f"p50, {name}")
        ax2.plot(offered, [lv["p99_ms"] for lv in levels], "s--", label=f"p99, {name}")
    top = max(lv["offered_eps"] for lvs in result["by_workers"].values() for lv in lvs)
    ax1.plot([0, top], [0, top], ":", color="grey", label="offered")
    ax1.set_xlabel("offered clicks/s")
    ax1.set_ylabel("end-to-end clicks/s")
    ax1.legend()
    ax2.set_xlabel("offered clicks/s")
    ax2.set_ylabel("click-to-recommendation ms")
    ax2.set_yscale("log")
    ax2.legend(fontsize=8)
    fig.suptitle(f"GENRE end to end on {result['machine']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, nargs="+", default=[1000, 5000, 10000, 20000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--layout",
        choices=("all", "split"),
        nargs="+",
        default=["all"],
        help="all: --workers processes running every agent; split: one process per role "
        "(both: each in turn, on the same workload)",
    )
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--ranker", choices=("auto", "on", "off"), default="auto")
    parser.add_argument(
        "--profiles-every",
        type=int,
        default=None,
        help="llm.profiles.every_k_clicks for this run (0: profiles off; default: the config's)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drain-timeout-s", type=float, default=600.0)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "scale.json")
    parser.add_argument(
        "--merge-only",
        action="store_true",
        help="re-read --out and merge the other benches' latest results into it; run nothing",
    )
    args = parser.parse_args(argv)
    if args.merge_only:
        result = json.loads(args.out.read_text())
        result.update(_merge_other_results())
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    console = Console(stderr=True)
    total = sum(int(rate * args.duration_s) for rate in args.loads)
    spec = SyntheticSpec(
        seed=args.seed, n_users=args.users, n_items=args.items, events=total, rate=1000.0
    )
    work = SyntheticWorkload(spec)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        by_workers: dict[str, list[dict[str, Any]]] = {}
        if "all" in args.layout:
            by_workers.update({str(c): run_workers(args, c, work, console) for c in args.workers})
        if "split" in args.layout:
            by_workers["split"] = run_workers(args, len(SPLIT_ROLES), work, console, split=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    best = {c: max(lv["throughput_eps"] for lv in levels) for c, levels in by_workers.items()}
    result: dict[str, Any] = {
        "bench": "scale",
        "machine": f"{os.cpu_count()} cores ({cpu_name()}), broker and producer on the same cores",
        "users": args.users,
        "items": args.items,
        "duration_s": args.duration_s,
        "ranker": args.ranker,
        "profiles_every_k_clicks": args.profiles_every,
        "by_offered_load": [
            {k: lv[k] for k in ("offered_eps", "throughput_eps", "p50_ms", "p99_ms")}
            for lv in next(iter(by_workers.values()))
        ],
        "layout": args.layout,
        "max_throughput_eps": best,
        "scaling_ratio_1_to_2_workers": (
            round(best["2"] / best["1"], 2) if "1" in best and "2" in best else None
        ),
        "ratio_split_roles_to_1_worker": (
            round(best["split"] / best["1"], 2) if "1" in best and "split" in best else None
        ),
        "by_workers": by_workers,
    }
    result.update(_merge_other_results())
    result["plot"] = _plot(result, args.out.with_suffix(".png"))
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
