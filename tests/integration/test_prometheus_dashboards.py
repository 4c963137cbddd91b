"""Every Grafana panel query, evaluated by a real Prometheus scraping a live worker.

tests/unit/test_dashboards.py checks the dashboards statically (PromQL syntax, metric and
label names against ``create_metrics``). This test closes the loop: a real ``prometheus``
server scrapes one ``genre worker`` every second while clicks, duplicates, bad records,
item re-sends and LLM calls flow; then every panel query of deploy/grafana/dashboards/
*.json is sent to Prometheus' HTTP API with Grafana's variables filled in, and must
return data (a series whose value is not NaN) unless ``EMPTY_IN_THIS_RUN`` lists it
with the reason.

The worker runs an A/B experiment (two arms under the bandit). Its LLM is the
local OpenAI-compatible test server in ``flaky`` mode (every
other request fails), so the LLM panels see calls, errors, fallbacks, cache hits and the
circuit-breaker gauge; ``scorer.users_max_pending: 1`` under a long ``users_write_s``
makes the users-write backlog drop lists, a fallback a single healthy worker reaches,
so the fallback panels have data as well. Traffic comes in two rounds with scrapes in
between (see ``warm_up``), and ``$__rate_interval`` spans the whole run.

Prometheus is a system package (Debian's ``prometheus``): ``make test`` installs it with
deploy/install-system-deps.sh. Without it this test fails, naming that script, unless
``GENRE_SKIP_PROMETHEUS=1`` is set. The query table (dashboard, panel, query, series
returned) is printed and written to .cache/prometheus-dashboards.txt.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from genre.core.broker import free_port
from genre.core.config import GenreConfig
from genre.core.features.graph_embedding import save_graph_embeddings
from genre.schemas import ClickEvent

from ..conftest import REPO_ROOT
from ..llm_server import LLMTestServer
from ..unit.test_dashboards import DASHBOARD_FILES, GRAFANA_INTERVAL, INSTANCE_QUERY, TARGETS
from .conftest import GENRES, Pipeline, catalog, click, running_pipeline

pytestmark = [pytest.mark.broker, pytest.mark.model]

SCRAPE_INTERVAL_S = 1
#: Scrapes Prometheus must take after the last traffic before the panels are queried.
SCRAPES_AFTER_TRAFFIC = 3
#: The job the deploy's Prometheus gives a stream worker (deploy/prometheus/prometheus.yml).
JOB = "genre-stream"
TABLE_PATH = REPO_ROOT / ".cache" / "prometheus-dashboards.txt"
SKIP_ENV = "GENRE_SKIP_PROMETHEUS"
INSTALL_SCRIPT = "deploy/install-system-deps.sh"
#: Grafana's ``$instance`` / ``${instance}`` (``${instance:regex}`` and friends too).
INSTANCE_VAR = re.compile(r"\$\{instance(?::\w+)?\}|\$instance\b")
#: Any Grafana variable left in a query after substitution (``$1`` in label_replace is not).
ANY_VAR = re.compile(r"\$\{?[A-Za-z_]\w*")

#: Panel title or exact query -> why it legitimately returns no data in this run. The
#: run is built so that every panel has data; list a panel here only when one CPU-only
#: worker process cannot feed it (a role split, a GPU, ...), and say why. A key that
#: matches no panel title or query fails the test (stale list), and so does a listed
#: panel that returns data after all.
_API = (
    "the pull API is its own process (genre api, job genre-api), not this worker; "
    "tests/integration/test_api.py reads its /metrics"
)
EMPTY_IN_THIS_RUN: dict[str, str] = {
    "API requests by route and status": _API,
    "API latency p50 / p99": _API,
    "API errors and events": _API,
}

#: Records the clicks topic dead-letters, so the DLQ panels have reasons to show.
BAD_RECORDS = [
    b"{not json",
    b"[1, 2, 3]",
    b'{"event_id": "prom-bad", "user_id": "u", "ts": 1700000000}',
]


# --------------------------------------------------------------------------- Prometheus


@dataclass
class Prometheus:
    """A ``prometheus`` server process and a small client for its HTTP API."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started: float  # time.monotonic() at spawn

    def get(self, path: str, params: list[tuple[str, str]]) -> Any:
        """GET ``path``; the ``data`` of a success answer (a failure fails the test)."""
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:  # 400 / 422: a bad query, with the reason
            body = json.loads(err.read() or b"{}")
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query at the current time."""
        return self.get("/api/v1/query", [("query", expr)])

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}"
            )
        try:
            url = f"http://127.0.0.1:{self.port}/-/ready"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def prometheus_binary() -> str:
    """The ``prometheus`` executable; fails when missing (skips only when asked to)."""
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"prometheus is not installed and {SKIP_ENV}=1")
        pytest.fail(
            f"the prometheus binary is not on PATH: run {INSTALL_SCRIPT} (as root or with "
            f"sudo; `make test` runs it first), or set {SKIP_ENV}=1 to skip this test",
            pytrace=False,
        )
    return binary


@contextmanager
def running_prometheus(binary: str, tmp: Path, target_port: int) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port, scraping ``127.0.0.1:target_port`` every second
    as job ``genre-stream``; stopped on exit, its log tail printed."""
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
            "scrape_timeout": f"{SCRAPE_INTERVAL_S}s",
            "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
        },
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }
        ],
    }
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = tmp / "prometheus.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(proc, port, log_path, time.monotonic())
    try:
        wait_until(prom.ready, 60, "prometheus /-/ready")
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        print(f"--- prometheus log tail ({log_path}) ---\n{prom.log_tail()}")


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


# --------------------------------------------------------------------------- the run


@dataclass
class Scraped:
    pipeline: Pipeline
    prometheus: Prometheus
    instance: str  # the worker's ``instance`` label


@contextmanager
def scraped_worker(binary: str, bootstrap: str, encoder_dir: Path, tmp: Path) -> Iterator[Scraped]:
    """Prometheus first (it sees the worker start and the catalogue load), then the worker
    on the port Prometheus scrapes, its LLM the flaky test endpoint."""
    web_port = free_port()
    graph_dir = graph_model(tmp)
    with (
        LLMTestServer("flaky") as server,
        running_prometheus(binary, tmp, web_port) as prom,
        running_pipeline(
            tmp,
            bootstrap,
            encoder_dir,
            streams={"web_port": web_port},
            # Lists wait a minute for the Qdrant users write; past one waiting user the
            # oldest is dropped: genre_fallbacks_total{stage="users-write",reason="backlog"}.
            # The graph source too, its embeddings covering half the catalogue: the
            # clicked items without one are folded in (genre_graph_fold_ins).
            scorer={
                "users_write_s": 60.0,
                "users_max_pending": 1,
                "candidates": [
                    *(c.model_dump() for c in GenreConfig().scorer.candidates),
                    {
                        "name": "graph",
                        "weight": 0.5,
                        "limit": 20,
                        "params": {"dir": graph_dir, "refresh_s": 0.0},
                    },
                ],
            },
            # Two A/B arms (the default pair; no ranker here, so both blend) under the
            # bandit, so the arm panels have lists, clicks, shares and coverage.
            experiments={"enabled": True, "policy": "thompson", "update_s": 1.0},
            llm={
                "backend": "openai",
                "base_url": server.base_url,
                "model": "test-model",
                "timeout_s": 2.0,
                "retries": 0,  # a failed call falls back at once (genre_llm_fallbacks_total)
                "rate_per_s": 0,
                "breaker_failures": 1000,  # flaky must not open the circuit: no offline-only run
                "items": {"enabled": True, "wait_s": 0.2, "retry_s": 1.0},
                "profiles": {"enabled": True, "every_k_clicks": 2, "debounce_s": 0.1},
            },
        ) as p,
    ):
        yield Scraped(p, prom, f"127.0.0.1:{web_port}")


def graph_model(tmp: Path) -> str:
    """A graph model folder with embeddings for the even-numbered items of each genre."""
    trained = [item.item_id for item in catalog() if int(item.item_id.rsplit("-", 1)[1]) % 2 == 0]
    vectors = np.random.default_rng(0).standard_normal((len(trained), 8))
    save_graph_embeddings(tmp / "graph", trained, vectors, {"model": "test"})
    return str(tmp / "graph")


USERS = {f"prom-{genre}": genre for genre in GENRES}


def clicks(first: int, last: int) -> list[ClickEvent]:
    """Clicks ``first``..``last`` of each user in ``USERS`` (one genre each)."""
    return [
        click(f"{user}-{i}", user, f"{genre}-{i}", ts=1_700_000_100.0 + i)
        for user, genre in USERS.items()
        for i in range(first, last + 1)
    ]


def warm_up(p: Pipeline) -> None:
    """Two clicks per user (a list each, a profile each) and a bad record.

    Labelled series appear on the first increment, so a series born and grown between
    two scrapes shows no rate: a ratio or quantile over it is 0/0, NaN. After this the
    children exist (candidate sources, hops, LLM tasks, fallbacks) and the main traffic
    grows them under Prometheus' eyes."""
    w = p.worker
    w.wait_metric("genre_items_enriched_total", 1, timeout_s=30, source="llm")  # one cached
    p.send_clicks(clicks(0, 1))
    p.send_raw(BAD_RECORDS[:1])
    p.recommendations({f"{user}-1" for user in USERS}, timeout_s=60)
    w.wait_metric("genre_profiles_generated_total", len(USERS), timeout_s=30)
    w.wait_metric("genre_dlq_records_total", 1, timeout_s=30)


def send_traffic(p: Pipeline) -> None:
    """Two more clicks per user (a second profile each), the first clicks again
    (duplicates), bad records (dead letters) and the catalogue again (LLM cache hits);
    returns once the worker has counted all of it."""
    w = p.worker
    p.send_clicks(clicks(2, 3))
    p.send_raw(BAD_RECORDS)
    with p.producer() as producer:
        for item in catalog():
            producer.send_item(item)
    p.recommendations({f"{user}-3" for user in USERS}, timeout_s=60)
    p.send_clicks(clicks(0, 0))  # re-sent event ids: duplicates
    w.wait_metric("genre_duplicate_events_total", len(USERS), timeout_s=30)
    w.wait_metric("genre_dlq_records_total", 1 + len(BAD_RECORDS), timeout_s=30)
    w.wait_metric("genre_llm_cache_hits_total", 1, timeout_s=30)
    w.wait_metric("genre_llm_fallbacks_total", 1, timeout_s=30)
    w.wait_metric("genre_profiles_generated_total", 2 * len(USERS), timeout_s=30)
    w.wait_metric("genre_fallbacks_total", 1, timeout_s=30, stage="users-write")
    w.wait_metric("genre_graph_fold_ins", 1, timeout_s=30)


def wait_for_scrapes(prom: Prometheus, after: float) -> None:
    """Until Prometheus scraped the worker ``SCRAPES_AFTER_TRAFFIC`` times past ``after``
    (a Unix time), successfully."""

    def scraped() -> bool:
        result = prom.query(f'timestamp(up{{job="{JOB}"}} == 1)')["result"]
        return bool(result) and float(result[0]["value"][1]) >= after + SCRAPES_AFTER_TRAFFIC

    wait_until(scraped, 60, f"{SCRAPES_AFTER_TRAFFIC} scrapes after the traffic")


def instance_values(prom: Prometheus) -> list[str]:
    """What the dashboards' ``$instance`` variable offers: its ``label_values`` query."""
    m = re.fullmatch(r"label_values\((.+), (\w+)\)", INSTANCE_QUERY)
    assert m is not None, INSTANCE_QUERY
    selector, label = m.groups()
    return prom.get(f"/api/v1/label/{label}/values", [("match[]", selector)])


def grafana_query(expr: str, instance: str, rate_interval: str) -> str:
    """``expr`` as Grafana sends it with ``instance`` picked in the Worker drop-down: a
    multi-value variable is regex-escaped (then escaped again for the PromQL string)."""
    escaped = re.escape(instance).replace("\\", "\\\\")
    expr = INSTANCE_VAR.sub(lambda _m: escaped, expr)
    expr = GRAFANA_INTERVAL.sub(rate_interval, expr)
    left = ANY_VAR.findall(expr)
    assert not left, f"Grafana variables {left} not substituted in {expr!r}"
    return expr


def series_and_values(data: dict[str, Any]) -> tuple[int, int]:
    """(series returned, of which with a value that is not NaN) of an instant query."""
    if data["resultType"] == "vector":
        values = [float(s["value"][1]) for s in data["result"]]
    elif data["resultType"] == "scalar":
        values = [float(data["result"][1])]
    else:
        raise AssertionError(f"unexpected result type {data['resultType']}")
    return len(values), sum(not math.isnan(v) for v in values)


def format_table(rows: list[tuple[str, str, str, int, int]]) -> str:
    head = ("dashboard", "panel", "series", "not NaN", "query")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(2)]
    lines = [f"{head[0]:<{widths[0]}}  {head[1]:<{widths[1]}}  series  not NaN  query"]
    for dashboard, panel, expr, n, finite in rows:
        lines.append(f"{dashboard:<{widths[0]}}  {panel:<{widths[1]}}  {n:>6}  {finite:>7}  {expr}")
    return "\n".join(lines)


def query_every_panel(scraped: Scraped) -> tuple[list[tuple[str, str, str, int, int]], str]:
    """Drive the traffic, then evaluate every panel query: the rows of the query table
    (dashboard, panel, query sent, series, series not NaN) and the rate window used."""
    p, prom = scraped.pipeline, scraped.prometheus
    wait_until(lambda: bool(prom.query(f'up{{job="{JOB}"}} == 1')["result"]), 60, "the worker up")
    assert scraped.instance in instance_values(prom), "the $instance variable misses the worker"

    warm_up(p)
    wait_for_scrapes(prom, after=time.time())
    send_traffic(p)
    wait_for_scrapes(prom, after=time.time())

    # Grafana's $__rate_interval grows with the panel's time range; here it spans the
    # whole run (as a panel over the last few minutes would), so every counter that moved
    # during the run has a rate, and no rate depends on when the last batch landed.
    rate_interval = f"{math.ceil(time.monotonic() - prom.started) + 10}s"
    rows: list[tuple[str, str, str, int, int]] = []
    for dashboard, panel, expr in TARGETS:
        query = grafana_query(expr, scraped.instance, rate_interval)
        n, finite = series_and_values(prom.query(query))
        rows.append((dashboard, panel, query, n, finite))
    return rows, rate_interval


def test_every_dashboard_panel_returns_data_from_a_live_worker(
    broker: Any, encoder_dir: Path, tmp_path: Path
) -> None:
    binary = prometheus_binary()  # first: a missing Prometheus fails here, starting nothing
    with scraped_worker(binary, broker.bootstrap, encoder_dir, tmp_path) as scraped:
        rows, rate_interval = query_every_panel(scraped)

    table = format_table(rows)
    TABLE_PATH.parent.mkdir(parents=True, exist_ok=True)
    TABLE_PATH.write_text(f"$__rate_interval={rate_interval}\n{table}\n")
    print(f"--- panel queries ($__rate_interval={rate_interval}) ---\n{table}")

    assert {d for d, _, _ in TARGETS} == {f.name for f in DASHBOARD_FILES}
    keys = {panel for _, panel, _ in TARGETS} | {expr for _, _, expr in TARGETS}
    problems = [f"stale EMPTY_IN_THIS_RUN entry {k!r}" for k in EMPTY_IN_THIS_RUN if k not in keys]
    for (dashboard, panel, expr), (*_, n, finite) in zip(TARGETS, rows, strict=True):
        listed = panel in EMPTY_IN_THIS_RUN or expr in EMPTY_IN_THIS_RUN
        if listed and finite:
            problems.append(f"{dashboard}: {panel}: listed as empty but returned data: {expr}")
        elif not listed and not finite:
            problems.append(f"{dashboard}: {panel}: no data ({n} series, all NaN): {expr}")
    assert not problems, "\n".join(problems) + f"\n\n{table}"
