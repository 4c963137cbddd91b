"""Stream-worker throughput: GENRE's stream agents against naive Faust agents, same run.

What it measures: how many click events per second one worker process folds
into durable state, draining a backlog already in the broker (so the producer
is not the limit). Three consumers read the same pre-produced clicks topic,
each in its own process and consumer group, one after the other, in
``--rounds`` interleaved rounds (figures are medians):

* ``naive_iter``: a plain Faust agent that iterates the JSON records;
* ``naive_table``: the same agent also incrementing a Faust Table per click
  (changelogged per write): the "naive Faust table agent" of issue 7;
* ``genre``: GENRE's stream agents (``streams.agents``: the fold, which
  validates each click, folds it into user state with vectors, history, dedup
  and co-clicks where it lands (clicks keyed by user id) or re-keys it; the
  item graph), every table changelogged. The fold hands its users to the
  process's scorer as in role ``all``; here no scorer runs and each handed-over
  user is settled at once, so batches are acknowledged and offsets committed as
  in a worker. Done means every click is applied (``genre_online_clicks_total``)
  and every co-click record the fold sent has reached the graph. The result
  records how the clicks were routed (``genre_clicks_routed_total``).

All three use GENRE's Faust transport with the same fetch wait; only GENRE's
stream topics get record chunks (see ``streams/transport.py``). Time runs from
the first consumed click to the last applied one, sampled every 20 ms. The
embedded broker (tansu) shares the two cores with the worker.

The workload is ``genre produce --synthetic``'s generator (Zipf items inside
topics, users with interest mixtures, sessions). Items get random unit vectors
written straight into Qdrant local mode (no encoder), since only the stream
path is measured.

    python bench/bench_stream.py                      # 200k events, 20k users
    python bench/bench_stream.py --events 20000 --rounds 1   # a quick look
    python bench/bench_stream.py --store rocksdb://   # GENRE's tables in RocksDB

``--store`` sets the ``genre`` consumer's ``streams.store`` (memory:// by
default; the item graph stays in memory either way, see ``streams/app.py``);
the naive agents always use memory tables.

Prints one JSON line and writes ``bench/results/stream.json``. With
``GENRE_BENCH_PYSPY=<dir>`` and ``py-spy`` on PATH (``pip install py-spy``; not a
project dependency) each consumer runs under py-spy, which writes its collapsed
stacks to ``<dir>/<consumer>.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from machine import memory_mb, save_result
from rich.console import Console

from genre.core.broker import EmbeddedBroker, ensure_genre_topics, free_port
from genre.core.config import DURABLE_FETCH_WAIT_MS, GenreConfig, load_config
from genre.core.kafka_client import ClickProducer
from genre.core.synthetic import SyntheticSpec, SyntheticWorkload
from genre.demo import _demo_config

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
MODES = ("naive_iter", "naive_table", "genre")
POLL_S = 0.02


def _finish(
    result_path: Path,
    start: float | None,
    end: float,
    applied: int,
    extra: dict[str, Any] | None = None,
) -> None:
    elapsed = end - (start or end)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result: dict[str, Any] = {
        **(extra or {}),
        "worker_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "events": applied,
        "seconds": round(elapsed, 3),
        "eps": round(applied / elapsed, 1) if elapsed > 0 else None,
        "peak_rss_mb": round(memory_mb()[1], 1),
    }
    result_path.write_text(json.dumps(result))
    os.kill(os.getpid(), signal.SIGTERM)  # Faust's worker shuts down cleanly on SIGTERM


def serve_naive(cfg: GenreConfig, mode: str, events: int, result_path: Path) -> None:
    """A plain Faust app over the clicks topic (run in a child process)."""
    import faust
    import orjson

    from genre.streams import transport

    app_id = f"bench-{mode}-{os.getpid()}"
    transport.FETCH_MAX_WAIT_MS[app_id] = cfg.kafka.fetch_wait_ms
    app = faust.App(
        app_id,
        broker=f"{transport.SCHEME}://{cfg.kafka.bootstrap_servers}",
        store="memory://",
        datadir=str(cfg.path(f"faust-{mode}")),
        autodiscover=False,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_partitions=cfg.kafka.topics.clicks.partitions,
        broker_session_timeout=cfg.kafka.group_session_ms / 1000,
        broker_heartbeat_interval=cfg.kafka.heartbeat_interval_ms / 1000,
        logging_config=None,
    )
    topic = app.topic(cfg.kafka.topics.clicks.name, key_serializer="raw", value_serializer="raw")
    counts = app.Table("counts", default=int, partitions=cfg.kafka.topics.clicks.partitions)
    seen = {"n": 0, "start": None}
    with_table = mode == "naive_table"

    @app.agent(topic)
    async def consume(stream: Any) -> None:
        async for value in stream:
            record = orjson.loads(value)
            if seen["start"] is None:
                seen["start"] = time.perf_counter()
            if with_table:
                counts[record["user_id"]] += 1
            seen["n"] += 1
            if seen["n"] == events:
                _finish(result_path, seen["start"], time.perf_counter(), events)

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


def serve_genre(cfg: GenreConfig, events: int, result_path: Path) -> None:
    """GENRE's stream agents alone (run in a child process)."""
    import faust

    from genre.core.telemetry import METRICS
    from genre.streams.agents import register_graph_agent, register_stream_agents
    from genre.streams.app import build_streams

    streams = build_streams(cfg)  # role all: the fold hands users to PendingScores
    register_stream_agents(streams)
    register_graph_agent(streams)
    t = cfg.kafka.topics
    state: dict[str, float | None] = {"start": None}
    pending = streams.pending
    assert pending is not None

    @streams.app.task
    async def settle_handed_over_users() -> None:
        """No scorer: settle each handed-over user at once (acknowledges its batch)."""
        await streams.items_read()
        while True:
            for _, batch in await pending.take(100_000):
                await batch.settle()

    def counter(metric: Any, *labels: str) -> float:
        return (metric.labels(*labels) if labels else metric)._value.get()

    @streams.app.timer(POLL_S)
    async def watch() -> None:
        consumed = counter(METRICS.events_in, t.clicks.name)
        if state["start"] is None and consumed > 0:
            state["start"] = time.perf_counter()
        applied = counter(METRICS.online_clicks)
        co_out = counter(METRICS.events_out, t.co_clicks.name)
        co_in = counter(METRICS.events_in, t.co_clicks.name)
        if applied >= events and co_in >= co_out:
            routed = {r: int(counter(METRICS.clicks_routed, r)) for r in ("in_place", "rekeyed")}
            _finish(
                result_path, state["start"], time.perf_counter(), int(applied), {"routed": routed}
            )

    faust.Worker(streams.app, loglevel="warning", quiet=True).execute_from_commandline()


def _load_items(cfg: GenreConfig, work: SyntheticWorkload, seed: int) -> int:
    from genre.core.vectorstore import open_vector_store

    items = list(work.items())
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((len(items), cfg.encoder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = open_vector_store(cfg)
    try:
        store.ensure_collection(cfg.qdrant.items_collection, cfg.encoder.dim)
        for start in range(0, len(items), 1000):
            part = items[start : start + 1000]
            store.upsert(
                cfg.qdrant.items_collection,
                [i.item_id for i in part],
                vectors[start : start + 1000],
                [{"title": i.title, "category": i.category} for i in part],
            )
    finally:
        store.close()
    return len(items)


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_cpu_s(broker: EmbeddedBroker) -> float:
    """CPU seconds of tansu and, when durable, of its object store."""
    store = broker.object_store
    return _cpu_s(broker.pid) + (_cpu_s(store.pid) if store is not None else 0.0)


def _run_child(cfg_path: Path, mode: str, events: int, run_dir: Path, timeout_s: float) -> dict:
    result_path = run_dir / f"result-{mode}.json"
    result_path.unlink(missing_ok=True)
    log_path = run_dir / f"{mode}.log"
    cmd = [sys.executable, __file__, "--serve", mode, "--config", str(cfg_path)]
    cmd += ["--events", str(events), "--result", str(result_path)]
    profile_dir = os.environ.get("GENRE_BENCH_PYSPY")  # optional: py-spy stacks per child
    if profile_dir and shutil.which("py-spy"):
        stacks = Path(profile_dir) / f"{mode}.txt"  # collapsed stacks (flamegraph.pl, speedscope)
        cmd = [
            "py-spy",
            "record",
            "--nonblocking",
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(stacks),
            "--",
            *cmd,
        ]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if not result_path.exists():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"{mode} did not finish within {timeout_s:.0f} s; log tail:\n{tail}")
    return json.loads(result_path.read_text())


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Produce the backlog once, then time each consumer ``--rounds`` times."""
    base = load_config(args.config) if args.config else load_config(None)
    run_dir = base.path("bench-stream")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    port = free_port()
    cfg, cfg_path = _demo_config(base, run_dir, port, 0, None)
    if args.durable:  # every consumer fetches at the durable broker's pace
        data = cfg.model_dump(mode="json")
        data["kafka"]["embedded"]["durable"] = True
        data["kafka"]["fetch_max_wait_ms"] = DURABLE_FETCH_WAIT_MS
        cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
        cfg = load_config(cfg_path, environ={})
    spec = SyntheticSpec(
        seed=args.seed, n_users=args.users, n_items=args.items, events=args.events, rate=200.0
    )
    work = SyntheticWorkload(spec)
    storage_dir = run_dir / "broker-data" if args.durable else None
    broker = EmbeddedBroker(
        "127.0.0.1", port, log_path=run_dir / "broker.log", storage_dir=storage_dir
    )
    rounds: dict[str, list[dict]] = {m: [] for m in MODES}
    try:
        with console.status("starting the embedded broker"):
            broker.start()
            ensure_genre_topics(broker.bootstrap, cfg.kafka.topics)
        with console.status(f"writing {args.items} item vectors to Qdrant local mode"):
            _load_items(cfg, work, args.seed)
        with console.status(f"producing {args.events} clicks"):
            t0 = time.perf_counter()
            with ClickProducer(cfg.kafka) as producer:
                for keys, values in work.click_payloads():
                    for key, value in zip(keys, values, strict=True):
                        producer.send_raw(cfg.kafka.topics.clicks.name, value, key)
                producer.flush(120)
            produce_s = time.perf_counter() - t0
        for r in range(args.rounds):
            for mode in MODES:
                with console.status(f"round {r + 1}/{args.rounds}: {mode}"):
                    if mode == "genre":  # fresh state and group each round
                        data = cfg.model_dump(mode="json")
                        data["app_id"] = f"genre-bench-{r}"
                        data["streams"]["web_port"] = free_port()
                        data["streams"]["store"] = args.store
                        path = run_dir / f"genre-{r}.yaml"
                        path.write_text(yaml.safe_dump(data, sort_keys=False))
                    else:
                        path = cfg_path
                    broker_cpu = _broker_cpu_s(broker)
                    res = _run_child(path, mode, args.events, run_dir, args.timeout_s)
                    # Includes the child's start-up and shutdown, so an upper bound.
                    res["broker_cpu_s"] = round(_broker_cpu_s(broker) - broker_cpu, 2)
                rounds[mode].append(res)
                console.print(
                    f"round {r + 1} {mode}: {res['eps']:,.0f} events/s in {res['seconds']} s; "
                    f"CPU s: worker {res['worker_cpu_s']}, broker {res['broker_cpu_s']}"
                )
    finally:
        broker.stop()
    med = {m: statistics.median(x["eps"] for x in rounds[m]) for m in MODES}
    return {
        "bench": "stream",
        "events": args.events,
        "users": args.users,
        "items": args.items,
        "partitions": cfg.kafka.topics.clicks.partitions,
        "store": args.store,
        "broker_storage": broker.storage,
        "produce_eps": round(args.events / produce_s, 1),
        "eps_median": med,
        "genre_vs_naive_table": round(med["genre"] / med["naive_table"], 2),
        "genre_vs_naive_iter": round(med["genre"] / med["naive_iter"], 2),
        "peak_rss_mb": {m: max(x["peak_rss_mb"] for x in rounds[m]) for m in MODES},
        "rounds": rounds,
        "machine": f"{os.cpu_count()} cores, embedded broker on the same cores",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument(
        "--store",
        default="memory://",
        help="streams.store of the genre consumer: memory:// or rocksdb://",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="run the embedded broker durable (s3 engine over its on-disk object store)",
    )
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "stream.json")
    args = parser.parse_args(argv)
    if args.serve:
        cfg = load_config(args.config, environ={})
        if args.serve == "genre":
            serve_genre(cfg, args.events, args.result)
        else:
            serve_naive(cfg, args.serve, args.events, args.result)
        return 0
    console = Console(stderr=True)
    result = run(args, console)
    save_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
