"""``genre demo``: MovieLens-100k replayed through the real pipeline, measured end to end.

Steps: 1. fetch the data and make sure the encoder is exported; 2. start the
embedded broker and create topics; 3. start a worker process (agents, item
encoder, scorer, local Qdrant); 4. send the items and wait until they are
encoded; 5. replay ratings as clicks in timestamp order at a fixed rate while
a consumer thread records every recommendation; 6. drain, then measure.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from genre.core.broker import EmbeddedBroker, ensure_genre_topics, free_port
from genre.core.config import GenreConfig
from genre.core.experiments import ListSeen, arms_summary, online_outcomes, overall_hit_rate
from genre.core.kafka_client import ClickProducer, iter_records
from genre.process import WorkerProcess, WorkerProcessError
from genre.report import print_arms
from genre.schemas import DeadLetter, Recommendation


class DemoError(RuntimeError):
    """The demo could not run; the message says which step failed and why."""


@dataclass
class RecLog:
    """Recommendations consumed by the demo, with their arrival times."""

    by_user: dict[str, list[ListSeen]] = field(default_factory=lambda: defaultdict(list))
    arrivals: dict[str, float] = field(default_factory=dict)  # trigger_event_id -> consumed_at
    count: int = 0
    bad: int = 0
    versions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rec: Recommendation, at: float) -> None:
        with self.lock:
            self.by_user[rec.user_id].append((at, [i.item_id for i in rec.items], rec.arm))
            self.arrivals.setdefault(rec.trigger_event_id, at)
            self.count += 1
            self.last_at = at
            self.versions[rec.model_version] += 1


def _assigned_consumer(conf: dict[str, str], topic: str) -> Consumer:
    """A consumer reading every partition of ``topic`` from the start, without a group.

    Observers need no group: joining one costs ~30 s on the embedded broker
    (see docs/limitations.md), and they must not miss early records.
    """
    consumer = Consumer(
        {**conf, "group.id": f"genre-demo-{os.getpid()}", "enable.auto.commit": False}
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
    return consumer


def _consume(conf: dict[str, str], topic: str, log: RecLog, stop: threading.Event) -> None:
    consumer = _assigned_consumer(conf, topic)
    try:
        while not stop.is_set():
            msg = consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            at = time.time()
            value = msg.value()
            try:
                log.add(Recommendation.from_bytes(value if value is not None else b""), at)
            except ValueError:
                log.bad += 1
    finally:
        consumer.close()


def _secret_env(cfg: GenreConfig) -> dict[str, str]:
    """Secrets of ``cfg`` as the environment overrides the worker reads."""
    env = {}
    if cfg.qdrant.api_key is not None:
        env["QDRANT_API_KEY"] = cfg.qdrant.api_key.get_secret_value()
    if cfg.llm.api_key is not None:
        env["OPENAI_API_KEY"] = cfg.llm.api_key.get_secret_value()
    return env


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    arr = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(arr, q)), 2) for q in (50, 95, 99)}


def _demo_config(
    cfg: GenreConfig,
    run_dir: Path,
    port: int,
    web_port: int,
    sources: str | None,
    ranker: str | None = None,
    arms: bool = False,
) -> tuple[GenreConfig, Path]:
    data = cfg.model_dump(mode="json")
    data["data_dir"] = str(run_dir)  # the worker keeps its state in the run folder
    data["kafka"]["bootstrap_servers"] = f"127.0.0.1:{port}"
    data["kafka"]["embedded"]["port"] = port
    data["streams"]["web_port"] = web_port
    data["qdrant"]["path"] = "qdrant"
    data["encoder"]["dir"] = str(cfg.path(cfg.encoder.dir))
    data["ranker"]["dir"] = str(cfg.path(cfg.ranker.dir))
    data["ranker"]["checkpoint"] = str(cfg.path(cfg.ranker.checkpoint))
    if ranker:
        data["ranker"]["enabled"] = ranker
    if arms:
        data["experiments"]["enabled"] = True
    if sources:
        wanted = [s.strip() for s in sources.split(",") if s.strip()]
        specs = {c["name"]: c for c in data["scorer"]["candidates"]}
        missing = [s for s in wanted if s not in specs]
        if missing:
            raise DemoError(f"--sources names {missing}, not in scorer.candidates: {list(specs)}")
        data["scorer"]["candidates"] = [specs[s] for s in wanted]
    # Secrets never go into the generated file: the worker gets them through its
    # environment (see run_demo), and the masked placeholders are dropped here.
    data["qdrant"]["api_key"] = None
    data["llm"]["api_key"] = None
    if cfg.llm.cache_path:
        data["llm"]["cache_path"] = str(cfg.path(cfg.llm.cache_path))  # shared across runs
    data["kafka"]["security"] = {}  # the demo's own embedded broker speaks PLAINTEXT
    path = run_dir / "genre.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    from genre.core.config import load_config

    return load_config(path, environ={}), path


def _profiles_settled(worker: WorkerProcess, topic: str) -> bool:
    """Every profile request sent has been read, and no profile batch is in flight."""
    sent = worker.metric("genre_events_out_total", topic=topic)
    read = worker.metric("genre_events_in_total", topic=topic)
    started = worker.metric("genre_batch_size_count", stage="profiles")
    finished = worker.metric("genre_agent_batch_seconds_count", agent="profiles")
    return read >= sent and finished >= started


def run_demo(
    cfg: GenreConfig,
    *,
    events: int | None = None,
    rate: float | None = None,
    sources: str | None = None,
    ranker: str | None = None,
    window: str | None = None,
    arms: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the summary (also printed as a table).

    ``window`` picks the clicks replayed: ``last`` (default) the most recent
    ``events`` of the dataset, which follow the ranker's training window (the
    first 80%), so a trained ranker is measured on clicks it never saw;
    ``first`` the earliest ones. ``ranker`` overrides ``ranker.enabled``; ``arms``
    turns the A/B experiment on (``experiments``: by default the ranker against the
    blend) and reports each arm's online HR@10.
    """
    from genre.model_export.datasets import DatasetError, as_click_events, fetch_ml100k, load_ml100k

    console = console or Console(stderr=True)
    n_events = events or cfg.demo.events
    rate_eps = rate or cfg.demo.rate_eps

    # 1. Data and model.
    try:
        ml = load_ml100k(fetch_ml100k(cfg.path("datasets")))
    except DatasetError as exc:
        raise DemoError(f"step 1 (data): {exc}") from exc
    encoder_dir = cfg.path(cfg.encoder.dir)
    if not (encoder_dir / "manifest.json").exists():
        try:
            from genre.export import export_encoder
        except ImportError as exc:
            raise DemoError(
                f"step 1 (model): no encoder at {encoder_dir} and the export tools are missing "
                f"({exc}); run `pip install 'genre-recsys[train]'` then `genre export encoder`"
            ) from exc
        export_encoder(encoder_dir)

    run_dir = cfg.path("demo-run")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    port, web_port = free_port(), free_port()
    dcfg, dcfg_path = _demo_config(cfg, run_dir, port, web_port, sources, ranker, arms)
    window = window or cfg.demo.window
    if window not in ("first", "last"):
        raise DemoError(f"window must be 'first' or 'last', got {window!r}")
    skip = max(0, len(ml) - n_events) if window == "last" else 0
    kconf = dcfg.kafka.consumer_config()
    worker_log = run_dir / "worker.log"

    # 2. Broker and topics.
    broker = EmbeddedBroker("127.0.0.1", port, log_path=run_dir / "broker.log")
    worker = WorkerProcess(dcfg_path, web_port, worker_log, env=_secret_env(cfg))
    # SIGTERM (e.g. `timeout`, a supervisor) must stop the child worker and broker too.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    stop = threading.Event()
    try:
        with console.status("starting the embedded broker"):
            broker.start()
            ensure_genre_topics(broker.bootstrap, dcfg.kafka.topics)

        # 3. Worker process.
        with console.status("starting the worker (agents, item encoder, scorer)"):
            try:
                worker.start(ready_timeout_s=120)
            except WorkerProcessError as exc:
                raise DemoError(f"step 3 (worker): {exc}") from exc

        rec_log = RecLog()
        consumer = threading.Thread(
            target=_consume,
            args=(kconf, dcfg.kafka.topics.recommendations.name, rec_log, stop),
            daemon=True,
        )
        consumer.start()

        with ClickProducer(dcfg.kafka) as producer, _progress(console) as progress:
            # 4. Items.
            task = progress.add_task("encoding items", total=len(ml.items))
            for item in ml.items:
                producer.send_item(item)
            producer.flush(30)
            deadline = time.monotonic() + 300
            while (done := worker.metric("genre_items_encoded_total")) < len(ml.items):
                progress.update(task, completed=done)
                if time.monotonic() > deadline or not worker.running:
                    raise DemoError(f"step 4: items not encoded in time; log:\n{worker.log_tail()}")
                time.sleep(0.2)
            progress.update(task, completed=len(ml.items))

            # 5. Replay clicks at a fixed rate.
            clicks: list[tuple[str, str, float]] = []
            produced_at: dict[str, float] = {}
            last_event: dict[str, str] = {}
            task = progress.add_task(f"replaying clicks at {rate_eps:.0f}/s", total=n_events)
            start = time.time()
            replayed = itertools.islice(as_click_events(ml), skip, skip + n_events)
            for i, event in enumerate(replayed):
                target = start + i / rate_eps
                delay = target - time.time()
                if delay > 0:
                    time.sleep(delay)
                at = time.time()
                producer.send(event)
                clicks.append((event.user_id, event.item_id, at))
                produced_at[event.event_id] = at
                last_event[event.user_id] = event.event_id
                if i % 100 == 0:
                    producer.poll(0)
                    progress.update(task, completed=i + 1)
            producer.flush(30)
            progress.update(task, completed=n_events)
            replay_s = time.time() - start

            # 6. Drain: wait for each user's last click to have its recommendation.
            task = progress.add_task("draining", total=len(last_event))
            deadline = time.monotonic() + dcfg.demo.drain_timeout_s
            while time.monotonic() < deadline:
                with rec_log.lock:
                    done = sum(1 for e in last_event.values() if e in rec_log.arrivals)
                progress.update(task, completed=done)
                if done == len(last_event) or not worker.running:
                    break
                time.sleep(0.2)
            # Profiles fall due in the stream and are written after a debounce: let the
            # ones already requested finish, so the summary counts every profile.
            while time.monotonic() < deadline and worker.running:
                if _profiles_settled(worker, dcfg.kafka.topics.profile_requests.name):
                    break
                time.sleep(0.2)
        end = max(rec_log.last_at, start + replay_s)
        events_in = worker.metric("genre_events_in_total", topic=dcfg.kafka.topics.clicks.name)
        metrics_text = worker.metrics_text()
        (run_dir / "metrics.txt").write_text(metrics_text)
    finally:
        stop.set()
        worker.stop()
        signal.signal(signal.SIGTERM, previous)
        dlq = -1
        if broker.running:
            topic = dcfg.kafka.topics.dlq.name
            records = iter_records(
                dcfg.kafka, topic, DeadLetter, from_beginning=True, stop_at_end=True, timeout_s=10
            )
            dlq = sum(1 for _ in records)
        broker.stop()

    latencies = [
        (at - produced_at[eid]) * 1000.0
        for eid, at in rec_log.arrivals.items()
        if eid in produced_at
    ]
    outcomes = online_outcomes(clicks, rec_log.by_user, 10)
    summary = {
        "events_in": len(clicks),
        "events_consumed_by_worker": int(events_in),
        "events_dlq": dlq,
        "recommendations_out": rec_log.count,
        "users_with_recommendations": sum(1 for v in rec_log.by_user.values() if v),
        "users_seen": len(last_event),
        "throughput_eps": round(len(clicks) / max(end - start, 1e-9), 1),
        "replay_rate_eps": rate_eps,
        "latency_ms": _percentiles(latencies),
        "online_hit_rate_at_10": round(overall_hit_rate(outcomes), 4),
        "arms": arms_summary(outcomes) if dcfg.experiments.active else None,
        "sources": [c.name for c in dcfg.scorer.candidates],
        "window": f"{window} {n_events} of {len(ml)} clicks",
        "model_versions": dict(sorted(rec_log.versions.items(), key=lambda kv: -kv[1])),
        "llm": llm_summary(dcfg, metrics_text),
        "run_dir": str(run_dir),
    }
    _print_summary(console, summary)
    return summary


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def llm_summary(cfg: GenreConfig, metrics_text: str) -> dict[str, Any]:
    """What the LLM did during the run, from the worker's metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    by: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if name == "genre_items_enriched_total":
                by["items_enriched"][labels["source"]] += sample.value
            elif name == "genre_profiles_generated_total":
                by["profiles_generated"][labels["source"]] += sample.value
            elif name == "genre_llm_fallbacks_total":
                by["fallbacks"][labels["reason"]] += sample.value
            elif name == "genre_llm_calls_total":
                by["calls"][labels["outcome"]] += sample.value
    return {
        "backend": cfg.llm.backend,
        "items": cfg.llm.items.enabled,
        "profiles": cfg.llm.profiles.enabled,
        **{key: {k: int(v) for k, v in sorted(counts.items())} for key, counts in by.items()},
    }


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="GENRE demo")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if key == "arms":
            continue  # its own table below
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        table.add_row(key, str(value))
    console.print(table)
    if summary.get("arms"):
        print_arms(console, summary["arms"])


__all__ = ["DemoError", "run_demo"]
