"""Burst load: N synthetic clicks produced at the broker's top rate, then drained by one worker.

What it measures (the load part of "bad input, faults and load"):

* ``produce_eps``: how fast one confluent-kafka producer (``ClickProducer.send_raw``,
  pre-serialised payloads, keyed by user id) gets N clicks acknowledged by the
  embedded tansu broker;
* ``drain_seconds`` / ``end_to_end_eps``: how long the worker needs to account for
  every event, i.e. ``applied + duplicates + dlq == N``, where ``applied`` is
  ``genre_online_clicks_total`` (clicks folded into user state), ``duplicates`` is
  ``genre_duplicate_events_total`` and ``dlq`` is ``genre_dlq_records_total``;
  ``end_to_end_eps`` is N over the time from the first produce to that moment;
* ``lost``: ``N - applied - dlq - duplicates`` (must be 0); the drain also waits
  until no user is waiting for the scorer (``genre_pending_users`` is 0: the
  worker, role ``all``, hands folded users to its scorer in process);
* ``routed``: how the clicks reached the fold (``genre_clicks_routed_total``):
  ``in_place`` (keyed by user id, as here) or ``rekeyed``;
* memory: the resident set (``VmRSS`` from ``/proc/<pid>/status``) of the worker
  process and of the broker, sampled every 2 s; ``peak`` is the larger of the
  sampled maximum and the kernel's high-water mark (``VmHWM``), so short spikes
  between samples are not missed. The broker keeps every topic in memory
  (``memory://`` storage, no retention), so its RSS is expected to grow with
  the data written; the worker's should level off;
* ``worker_memory_report``: the worker's ``/debug/memory`` page at the end
  (entries in each table and cache; with ``--tracemalloc`` also the top
  allocation sites and the Python heap they add up to, to tell Python objects
  from native memory such as ONNX Runtime's arenas);
* ``lag_samples``: ``[t, produced, applied]`` every 2 s (t in seconds since the
  first produce, produced = clicks acknowledged by the broker), plus the other
  counters in ``samples``; ``consumer_lag_end`` is the worker's
  ``genre_consumer_lag`` gauge summed per topic when the run ends.

The events have a known structure: ``--users`` users chosen uniformly, items
drawn Zipf-popular (p(rank) proportional to rank^-1.2 over the 1682
MovieLens-100k item ids, renormalised), unique
event ids, event times increasing by 10 ms. No duplicates and no bad records
are sent, so ``duplicates`` and ``dlq`` should be 0 and ``applied`` should be N.

It starts its own embedded broker on a free port and one ``genre worker`` process
(config written by ``genre.demo._demo_config``; state in ``.cache/bench-burst``,
wiped at start), sends the MovieLens-100k items and waits until they are encoded,
then produces the burst. Prints one JSON line and writes it to
``bench/results/burst.json`` (plus the plot next to it, ``burst.png``, when
matplotlib is importable; otherwise ``"plot": null``).

    python bench/bench_burst.py                         # 200k events, 20k users
    python bench/bench_burst.py --events 5000 --users 500   # a quick check
    python bench/bench_burst.py --tracemalloc               # where the worker's memory goes

Exit status: 0 when every event was accounted for and none was lost, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from machine import memory_mb, save_result
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from genre.core.broker import EmbeddedBroker, ensure_genre_topics, free_port
from genre.core.config import GenreConfig, load_config
from genre.core.kafka_client import ClickProducer
from genre.demo import _demo_config
from genre.model_export.datasets import fetch_ml100k, load_ml100k
from genre.process import WorkerProcess, WorkerProcessError
from genre.schemas import ClickEvent

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
N_ITEMS = 1682  # MovieLens-100k item ids are 1..1682
ZIPF_A = 1.2
TS_START = 1_700_000_000.0  # event time of the first click (Unix seconds)
TS_STEP = 0.01  # event-time spacing between consecutive clicks
SAMPLE_EVERY_S = 2.0
CHECK_EVERY_S = 0.25  # how often the drain loop looks for "all accounted"


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _mb(value: float) -> float | None:
    """``value`` rounded to 0.1 MB, None (JSON null) for nan: the process was gone."""
    return None if math.isnan(value) else round(value, 1)


@dataclass
class Counters:
    """The worker counters the benchmark watches, from one /metrics read."""

    clicks_in: float = 0.0
    user_clicks_in: float = 0.0
    applied: float = 0.0
    duplicates: float = 0.0
    dlq: float = 0.0
    recommendations: float = 0.0
    requests_out: float = 0.0  # score requests the fold sent (split roles only)
    requests_in: float = 0.0  # score requests the scorer consumed (split roles only)
    pending: float = 0.0  # users folded and waiting for this process's scorer
    routed: dict[str, float] = field(default_factory=dict)  # route -> clicks
    lag: dict[str, float] = field(default_factory=dict)  # topic -> sum over partitions

    @property
    def accounted(self) -> float:
        return self.applied + self.duplicates + self.dlq

    @property
    def scorer_drained(self) -> bool:
        """No user waits for the scorer, and every score request sent so far (split
        roles) has been consumed."""
        return self.pending == 0 and self.requests_in >= self.requests_out


def read_counters(
    worker: WorkerProcess, clicks_topic: str, user_clicks_topic: str, requests_topic: str
) -> Counters:
    """Parse the worker's /metrics page once and pick out the benchmark's counters."""
    c = Counters()
    for family in text_string_to_metric_families(worker.metrics_text()):
        for s in family.samples:
            if s.name == "genre_events_in_total":
                topic = s.labels.get("topic")
                if topic == clicks_topic:
                    c.clicks_in += s.value
                elif topic == user_clicks_topic:
                    c.user_clicks_in += s.value
                elif topic == requests_topic:
                    c.requests_in += s.value
            elif s.name == "genre_events_out_total" and s.labels.get("topic") == requests_topic:
                c.requests_out += s.value
            elif s.name == "genre_online_clicks_total":
                c.applied += s.value
            elif s.name == "genre_duplicate_events_total":
                c.duplicates += s.value
            elif s.name == "genre_dlq_records_total":
                c.dlq += s.value
            elif s.name == "genre_recommendations_total":
                c.recommendations += s.value
            elif s.name == "genre_pending_users":
                c.pending += s.value
            elif s.name == "genre_clicks_routed_total":
                route = s.labels.get("route", "?")
                c.routed[route] = c.routed.get(route, 0.0) + s.value
            elif s.name == "genre_consumer_lag":
                topic = s.labels.get("topic", "?")
                c.lag[topic] = c.lag.get(topic, 0.0) + s.value
    return c


@dataclass
class MemTrack:
    """start / peak / end RSS of one process, in MB."""

    pid: int | None
    start: float = float("nan")
    peak: float = 0.0
    end: float = float("nan")

    def sample(self) -> float:
        rss, hwm = memory_mb(self.pid)
        if not math.isnan(rss):
            if math.isnan(self.start):
                self.start = rss
            self.end = rss
            self.peak = max(self.peak, rss, 0.0 if math.isnan(hwm) else hwm)
        return rss

    def as_dict(self) -> dict[str, float | None]:
        values = (("start", self.start), ("peak", self.peak), ("end", self.end))
        return {k: _mb(v) for k, v in values}


class Sampler(threading.Thread):
    """Every ``SAMPLE_EVERY_S``: worker counters, produced count and both processes' RSS."""

    def __init__(
        self,
        worker: WorkerProcess,
        topics: tuple[str, str, str],
        produced: Callable[[], int],
        t0: float,
        worker_mem: MemTrack,
        broker_mem: MemTrack,
        on_sample: Callable[[Counters, int], None],
    ) -> None:
        super().__init__(daemon=True, name="burst-sampler")
        self.worker = worker
        self.topics = topics
        self.produced = produced
        self.t0 = t0
        self.worker_mem = worker_mem
        self.broker_mem = broker_mem
        self.on_sample = on_sample
        self.samples: list[dict[str, Any]] = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.errors = 0

    def take(self) -> dict[str, Any] | None:
        """One sample now (also called by the main thread for the final one)."""
        try:
            c = read_counters(self.worker, *self.topics)
        except OSError:
            self.errors += 1
            return None
        produced = int(self.produced())
        sample = {
            "t": round(time.time() - self.t0, 3),
            "produced": produced,
            "clicks_in": int(c.clicks_in),
            "user_clicks_in": int(c.user_clicks_in),
            "applied": int(c.applied),
            "duplicates": int(c.duplicates),
            "dlq": int(c.dlq),
            "recommendations": int(c.recommendations),
            "pending_users": int(c.pending),
            "worker_rss_mb": _mb(self.worker_mem.sample()),
            "broker_rss_mb": _mb(self.broker_mem.sample()),
        }
        with self.lock:
            self.samples.append(sample)
        self.on_sample(c, produced)
        return sample

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.take()
            self.stop_event.wait(SAMPLE_EVERY_S)


def build_events(n: int, users: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """N pre-serialised ClickEvents (payloads) and their user-id keys."""
    rng = np.random.default_rng(seed)
    # Zipf over item ranks, truncated to the catalog and renormalised (no clipping,
    # which would pile the whole tail onto the last item).
    ranks = np.arange(1, N_ITEMS + 1, dtype=np.float64)
    weights = ranks**-ZIPF_A
    items = rng.choice(ranks.astype(np.int64), size=n, p=weights / weights.sum())
    user_idx = rng.integers(0, users, size=n)
    payloads: list[bytes] = []
    keys: list[bytes] = []
    for i in range(n):
        user = f"burst-u{int(user_idx[i])}"
        event = ClickEvent(
            event_id=f"burst-{seed}-{i}",
            user_id=user,
            item_id=str(int(items[i])),
            ts=TS_START + i * TS_STEP,
        )
        payloads.append(event.to_bytes())
        keys.append(user.encode())
    return payloads, keys


def _plot(result: dict[str, Any], samples: list[dict[str, Any]], path: Path) -> str | None:
    """applied/produced vs time and RSS vs time; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    t = [s["t"] for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    ax1.plot(t, [s["produced"] for s in samples], label="produced (acked)")
    ax1.plot(t, [s["applied"] for s in samples], label="applied")
    ax1.plot(t, [s["recommendations"] for s in samples], label="recommendations", alpha=0.6)
    ax1.set_ylabel("events")
    ax1.set_title(
        f"burst of {result['events']} events: produce {result['produce_eps']:.0f}/s, "
        f"end to end {result['end_to_end_eps']:.0f}/s, lost {result['lost']}"
    )
    ax1.legend()
    ax2.plot(t, [s["worker_rss_mb"] for s in samples], label="worker RSS")
    ax2.plot(t, [s["broker_rss_mb"] for s in samples], label="broker RSS")
    ax2.set_ylabel("MB")
    ax2.set_xlabel("seconds since first produce")
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path)


def run_burst(
    cfg: GenreConfig,
    *,
    events: int,
    users: int,
    seed: int,
    timeout_s: float,
    console: Console,
    tracemalloc: bool = False,
    plot_path: Path = RESULTS_DIR / "burst.png",
) -> dict[str, Any]:
    """Run the benchmark; returns the result dict (see the module docstring)."""
    ml = load_ml100k(fetch_ml100k(cfg.path("datasets")))
    encoder_dir = cfg.path(cfg.encoder.dir)
    if not (encoder_dir / "manifest.json").exists():
        from genre.export import export_encoder

        export_encoder(encoder_dir)

    with console.status(f"building {events} events"):
        t_build = time.perf_counter()
        payloads, keys = build_events(events, users, seed)
        build_s = time.perf_counter() - t_build

    run_dir = cfg.path("bench-burst")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    port, web_port = free_port(), free_port()
    bcfg, bcfg_path = _demo_config(cfg, run_dir, port, web_port, None)
    clicks_topic = bcfg.kafka.topics.clicks.name
    topics = (
        clicks_topic,
        bcfg.kafka.topics.user_clicks.name,
        bcfg.kafka.topics.score_requests.name,
    )

    broker = EmbeddedBroker("127.0.0.1", port, log_path=run_dir / "broker.log")
    env = {}
    if cfg.qdrant.api_key is not None:
        env["QDRANT_API_KEY"] = cfg.qdrant.api_key.get_secret_value()
    if tracemalloc:
        env["PYTHONTRACEMALLOC"] = "1"  # allocation sites in /debug/memory (slows the worker)
    worker = WorkerProcess(bcfg_path, web_port, run_dir / "worker.log", env=env)
    memory_report: dict[str, Any] | None = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    sampler: Sampler | None = None
    error: str | None = None
    try:
        with console.status("starting the embedded broker"):
            broker.start()
            ensure_genre_topics(broker.bootstrap, bcfg.kafka.topics)
        with console.status("starting the worker"):
            worker.start(ready_timeout_s=120)
        worker_mem, broker_mem = (
            MemTrack(worker.proc.pid if worker.proc else None),
            MemTrack(broker.pid),
        )

        with ClickProducer(bcfg.kafka) as producer:
            with console.status(f"encoding {len(ml.items)} items"):
                for item in ml.items:
                    producer.send_item(item)
                producer.flush(30)
                worker.wait_metric("genre_items_encoded_total", len(ml.items), timeout_s=600)
            base_delivered = producer.delivered
            worker_mem.sample()
            broker_mem.sample()

            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
            )
            with progress:
                task = progress.add_task("applied", total=events, info="")

                def on_sample(c: Counters, produced: int) -> None:
                    progress.update(
                        task,
                        completed=min(c.accounted, events),
                        info=(
                            f"produced {produced}  recs {int(c.recommendations)}  "
                            f"worker {worker_mem.end:.0f} MB  broker {broker_mem.end:.0f} MB"
                        ),
                    )

                t0 = time.time()
                sampler = Sampler(
                    worker,
                    topics,
                    lambda: producer.delivered - base_delivered,
                    t0,
                    worker_mem,
                    broker_mem,
                    on_sample,
                )
                sampler.start()
                # The burst: as fast as librdkafka takes it.
                for i in range(events):
                    producer.send_raw(clicks_topic, payloads[i], keys[i])
                    if i % 1000 == 0:
                        producer.poll(0)
                producer.flush(120)
                t_produced = time.time()
                produce_s = t_produced - t0

                # Drain: until every event is applied, a duplicate or dead-lettered.
                deadline = t0 + timeout_s
                counters = Counters()
                try:
                    while True:
                        if not worker.running:
                            error = f"worker died; log:\n{worker.log_tail()}"
                            break
                        with contextlib.suppress(OSError):  # slow /metrics: keep the last ones
                            counters = read_counters(worker, *topics)
                        # Drained: every click accounted for and the scorer has caught up.
                        if counters.accounted >= events and counters.scorer_drained:
                            break
                        if time.time() > deadline:
                            error = f"timeout: {int(counters.accounted)}/{events} accounted"
                            break
                        time.sleep(CHECK_EVERY_S)
                except KeyboardInterrupt:  # Ctrl-C / SIGTERM: still report what was measured
                    error = f"interrupted: {int(counters.accounted)}/{events} accounted"
                t_done = time.time()
                sampler.stop_event.set()
                sampler.join(10)
                sampler.take()  # the final sample
        with contextlib.suppress(OSError):  # the worker may be gone (error says why)
            (run_dir / "metrics.txt").write_text(worker.metrics_text())
            memory_report = worker.memory_report(top=30)
    finally:
        if sampler is not None:
            sampler.stop_event.set()
        worker.stop()
        broker.stop()
        signal.signal(signal.SIGTERM, previous)

    samples = sampler.samples if sampler else []
    applied, dlq, dups = int(counters.applied), int(counters.dlq), int(counters.duplicates)
    result: dict[str, Any] = {
        "events": events,
        "users": users,
        "seed": seed,
        "complete": error is None,
        "error": error,
        "build_seconds": round(build_s, 2),
        "produce_seconds": round(produce_s, 2),
        "produce_eps": round(events / max(produce_s, 1e-9), 1),
        "drain_seconds": round(t_done - t_produced, 2),
        "end_to_end_seconds": round(t_done - t0, 2),
        "end_to_end_eps": round(events / max(t_done - t0, 1e-9), 1),
        "applied": applied,
        "dlq": dlq,
        "duplicates": dups,
        "lost": events - applied - dlq - dups,
        "clicks_in": int(counters.clicks_in),
        "user_clicks_in": int(counters.user_clicks_in),
        "recommendations": int(counters.recommendations),
        "score_requests_out": int(counters.requests_out),
        "score_requests_in": int(counters.requests_in),
        "routed": {k: int(v) for k, v in sorted(counters.routed.items())},
        "pending_users_max": max((s["pending_users"] for s in samples), default=0),
        "consumer_lag_end": {k: int(v) for k, v in sorted(counters.lag.items())},
        "worker_rss_mb": worker_mem.as_dict(),
        "broker_rss_mb": broker_mem.as_dict(),
        "worker_memory_report": memory_report,
        "lag_samples": [[s["t"], s["produced"], s["applied"]] for s in samples],
        "samples": samples,
        "run_dir": str(run_dir.relative_to(REPO_ROOT))
        if run_dir.is_relative_to(REPO_ROOT)
        else str(run_dir),
    }
    result["plot"] = _plot(result, samples, plot_path)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="clicks in the burst")
    parser.add_argument("--users", type=int, default=20_000, help="distinct users")
    parser.add_argument("--seed", type=int, default=0, help="numpy default_rng seed")
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds from first produce to give up"
    )
    parser.add_argument(
        "--config", type=Path, default=REPO_ROOT / "genre.yaml", help="base genre.yaml"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / "burst.json", help="where to write the JSON"
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="run the worker under tracemalloc; the result names its top allocation sites",
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.users < 1:
        parser.error("--events and --users must be positive")

    console = Console(stderr=True)
    cfg = load_config(args.config)
    try:
        result = run_burst(
            cfg,
            events=args.events,
            users=args.users,
            seed=args.seed,
            timeout_s=args.timeout,
            console=console,
            tracemalloc=args.tracemalloc,
            plot_path=args.out.with_suffix(".png"),
        )
    except WorkerProcessError as exc:
        console.print(f"[red]bench_burst failed:[/red] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; worker and broker stopped[/yellow]")
        return 130
    save_result(result, args.out, indent=1)
    return 0 if result["complete"] and result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
