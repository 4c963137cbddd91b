"""Pull API latency: GET /v1/users/{user_id}/recommendations at a fixed rate while clicks flow.

Starts an embedded broker, one ``genre worker`` (every agent) and one ``genre api``
(rate limit off), loads ``--items`` items, sends one click for each of ``--users``
users so each has a list, then runs two things at once for ``--duration-s``:

* clicks at ``--click-rate`` per second from this process (``ClickProducer``),
  on random users: lists keep changing and the API keeps following the topics;
* an open-loop load generator in a separate process (aiohttp client, keep-alive,
  ``--rate`` GETs per second on random users with a list, each sent at its
  scheduled time whether or not earlier ones returned).

Latency is per request, measured by the load generator from send to full body
(client-side, so it includes the client's own event loop on this shared machine).
The API's own ``genre_api_request_ms`` histogram is reported beside it.

    python bench/bench_api.py                       # 1,000 GET/s for 20 s, 50 clicks/s
    python bench/bench_api.py --rate 200 --duration-s 5

Prints one JSON line and writes ``bench/results/api.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_name, save_result  # noqa: E402

from genre.core.broker import EmbeddedBroker, ensure_genre_topics, free_port  # noqa: E402
from genre.core.config import GenreConfig, load_config  # noqa: E402
from genre.core.kafka_client import ClickProducer  # noqa: E402
from genre.process import WorkerProcess  # noqa: E402
from genre.schemas import ClickEvent, ItemUpsert  # noqa: E402

WORDS = [
    *("space", "crime", "cooking", "animation", "war", "love"),
    *("music", "sport", "ocean", "desert", "city", "robot"),
]


# --------------------------------------------------------------------------- load generator


async def _load(base: str, users: list[str], rate: float, duration_s: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lag: list[float] = []
    rng = random.Random(1)
    conn = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(url: str) -> None:
            start = time.perf_counter()
            async with session.get(url) as resp:
                await resp.read()
            latencies.append((time.perf_counter() - start) * 1000.0)
            statuses[resp.status] = statuses.get(resp.status, 0) + 1

        for u in users[:50]:  # warm the connection pool
            await one(f"{base}/v1/users/{u}/recommendations")
        latencies.clear()
        statuses.clear()
        total = int(rate * duration_s)
        tasks = []
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            lag.append((time.perf_counter() - due) * 1000.0)
            url = f"{base}/v1/users/{rng.choice(users)}/recommendations"
            tasks.append(asyncio.create_task(one(url)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    arr = np.asarray(latencies)
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p90_ms": round(float(np.percentile(arr, 90)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "max_ms": round(float(arr.max()), 3),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "send_lag_p99_ms": round(float(np.percentile(np.asarray(lag), 99)), 3),
    }


def load_main(args: argparse.Namespace) -> None:
    users = json.loads(Path(args.users_file).read_text())
    result = asyncio.run(_load(args.base, users, args.rate, args.duration_s))
    print(json.dumps(result))


# --------------------------------------------------------------------------- the stack


class ApiProcess(WorkerProcess):
    """``genre api --config <file>``."""

    def spawn(self) -> ApiProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "genre", "api", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self


def _config(tmp: Path, bootstrap: str) -> Path:
    base = load_config(REPO / "genre.yaml", environ={})
    data = base.model_dump(mode="json")
    data["app_id"] = "bench-api"
    data["data_dir"] = str(tmp / "data")
    data["kafka"]["bootstrap_servers"] = bootstrap
    data["encoder"]["dir"] = str(base.path(base.encoder.dir))
    data["ranker"]["dir"] = str(base.path(base.ranker.dir))
    data["streams"]["web_port"] = free_port()
    data["api"].update(port=free_port(), rate_limit_per_s=0.0, token=None)
    data["llm"]["api_key"] = None
    path = tmp / "genre.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _items(n: int) -> list[ItemUpsert]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        words = rng.sample(WORDS, 3)
        text = f"A story of {words[0]} and {words[1]} in the {words[2]}"
        out.append(ItemUpsert(item_id=f"i{i}", title=f"Item {i}", text=text, ts=1.7e9))
    return out


def _ready(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def _server_quantiles(api: WorkerProcess) -> dict[str, float]:
    """p50/p99 of the API's own genre_api_request_ms for the recommendations route (from
    the histogram buckets: upper bounds)."""
    from prometheus_client.parser import text_string_to_metric_families

    route = "/v1/users/{user_id}/recommendations"
    buckets = []
    for fam in text_string_to_metric_families(api.metrics_text()):
        for s in fam.samples:
            if s.name == "genre_api_request_ms_bucket" and s.labels.get("route") == route:
                buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    out = {}
    for q in (0.5, 0.99):
        out[f"p{int(q * 100)}_ms_at_most"] = next(
            (le for le, c in buckets if total and c >= q * total), float("nan")
        )
    out["requests"] = total
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    broker = EmbeddedBroker(log_path=tmp / "broker.log")
    broker.start(timeout_s=30)
    procs: list[WorkerProcess] = []
    stop = threading.Event()
    try:
        path = _config(tmp, broker.bootstrap)
        cfg: GenreConfig = load_config(path, environ={})
        ensure_genre_topics(broker.bootstrap, cfg.kafka.topics)
        worker = WorkerProcess(path, cfg.streams.web_port, tmp / "worker.log").start(180)
        procs.append(worker)
        items = _items(args.items)
        with ClickProducer(cfg.kafka) as producer:
            for item in items:
                producer.send_item(item)
        worker.wait_metric("genre_items_encoded_total", len(items), timeout_s=300)
        users = [f"u{i}" for i in range(args.users)]
        rng = random.Random(2)
        counter = [0]

        def clicks(batch: list[str]) -> list[ClickEvent]:
            out = []
            for u in batch:
                counter[0] += 1
                out.append(
                    ClickEvent(
                        event_id=f"e{counter[0]}",
                        user_id=u,
                        item_id=f"i{rng.randrange(args.items)}",
                        ts=1.7e9 + counter[0],
                    )
                )
            return out

        with ClickProducer(cfg.kafka) as producer:
            for ev in clicks(users):
                producer.send(ev)
        api = ApiProcess(path, cfg.api.port, tmp / "api.log").start(120)
        procs.append(api)
        deadline = time.monotonic() + 300
        while _ready(cfg.api.port)["users"] < args.users * 0.95:
            if time.monotonic() > deadline:
                raise RuntimeError(f"lists did not arrive: {_ready(cfg.api.port)}")
            time.sleep(0.5)
        with_lists = users  # >= 95% have a list; the others answer 404, counted
        users_file = tmp / "users.json"
        users_file.write_text(json.dumps(with_lists))

        sent = [0]

        def flow() -> None:
            with ClickProducer(cfg.kafka) as producer:
                t0 = time.perf_counter()
                while not stop.is_set():
                    for ev in clicks([rng.choice(users)]):
                        producer.send(ev)
                    sent[0] += 1
                    due = t0 + sent[0] / args.click_rate
                    time.sleep(max(0.0, due - time.perf_counter()))

        flowing = threading.Thread(target=flow, daemon=True)
        flowing.start()
        time.sleep(2.0)
        lists_before = worker.metric("genre_recommendations_total")
        gen = subprocess.run(
            [
                sys.executable,
                __file__,
                "--load-gen",
                "--base",
                f"http://127.0.0.1:{cfg.api.port}",
                "--users-file",
                str(users_file),
                "--rate",
                str(args.rate),
                "--duration-s",
                str(args.duration_s),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        client = json.loads(gen.stdout.strip().splitlines()[-1])
        lists_during = worker.metric("genre_recommendations_total") - lists_before
        stop.set()
        flowing.join(5)
        return {
            "bench": "api",
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
            "conditions": {
                "offered_rate_rps": args.rate,
                "duration_s": args.duration_s,
                "users_with_lists": _ready(cfg.api.port)["users"],
                "items": args.items,
                "click_rate": args.click_rate,
                "lists_published_during_load": lists_during,
                "processes": "embedded broker, genre worker (all), genre api, load "
                "generator (aiohttp, separate process), click producer (this process)",
            },
            "client": client,
            "server_histogram": _server_quantiles(api),
            "target_p99_ms": 5.0,
        }
    finally:
        stop.set()
        for p in reversed(procs):
            p.stop()
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="GET requests per second")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--click-rate", type=float, default=50.0, help="clicks per second")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api.json")
    parser.add_argument("--load-gen", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--users-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_gen:
        load_main(args)
        return 0
    result = run(args)
    save_result(result, args.out)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
