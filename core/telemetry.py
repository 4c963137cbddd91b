"""Every Prometheus metric GENRE exports, declared together.

All names carry the ``genre_`` namespace; label names are constants so the
dashboards and the code agree. Latency buckets are in milliseconds and chosen
around the budgets that matter: a stream agent batch should take < 50 ms, a
click-to-recommendation round trip < 100 ms at low load, and anything past
5 s means a stalled stage.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

NAMESPACE = "genre"
LABEL_TOPIC = "topic"
LABEL_REASON = "reason"
LABEL_AGENT = "agent"
LABEL_STAGE = "stage"
LABEL_SOURCE = "source"
LABEL_MODEL = "model"
LABEL_PROVIDER = "provider"
LABEL_OP = "op"
LABEL_VERSION = "version"
LABEL_PARTITION = "partition"
LABEL_BACKEND = "backend"
LABEL_TASK = "task"
LABEL_OUTCOME = "outcome"
LABEL_HOP = "hop"
LABEL_ROUTE = "route"
LABEL_STATUS = "status"
LABEL_ARM = "arm"

#: Milliseconds; dense below 100 ms where healthy latencies live.
LATENCY_MS_BUCKETS = (
    0.5,
    1,
    2,
    3,
    5,
    7.5,
    10,
    15,
    20,
    30,
    50,
    75,
    100,
    150,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
)
#: Milliseconds, for pull API requests: a lookup takes well under one.
API_MS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 25, 50, 100, 250, 1000, 5000)
#: Seconds, for short blocking calls (model runs, Qdrant calls, agent batches).
CALL_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
#: Intra-list diversity (mean pairwise cosine distance), mostly between 0.3 and 0.9.
DIVERSITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.0)
#: Micro-batch sizes, powers of two up to the largest configured batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Seconds, for LLM calls: a cache-cold generation takes from ~0.1 s to the call timeout.
LLM_SECONDS_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)

log = logging.getLogger("genre")


@dataclass(frozen=True)
class Metrics:
    """The metric objects, created once per registry."""

    events_in: Counter
    events_out: Counter
    dlq_records: Counter
    duplicate_events: Counter
    superseded_requests: Counter
    agent_batch_seconds: Histogram
    batch_size: Histogram
    click_to_recommendation_ms: Histogram
    hop_ms: Histogram
    pending_users: Gauge
    graph_fold_ins: Gauge
    clicks_routed: Counter
    inference_seconds: Histogram
    candidates: Counter
    qdrant_seconds: Histogram
    items_encoded: Counter
    recommendations: Counter
    fallbacks: Counter
    model_info: Gauge
    users_tracked: Gauge
    consumer_lag: Gauge
    online_clicks: Counter
    online_hits: Counter
    list_diversity: Histogram
    llm_calls: Counter
    llm_cache_hits: Counter
    llm_fallbacks: Counter
    llm_seconds: Histogram
    llm_circuit_open: Gauge
    items_enriched: Counter
    enrichment_pending: Gauge
    profiles_generated: Counter
    gc_seconds: Counter
    # The pull API (``genre api``; docs/api.md).
    api_requests: Counter
    api_request_ms: Histogram
    api_events: Counter
    # A/B arms (``experiments``; core/experiments.py).
    arm_lists: Counter
    arm_online_clicks: Counter
    arm_online_hits: Counter
    arm_latency_ms: Histogram
    arm_share: Gauge
    arm_coverage: Gauge


def create_metrics(registry: CollectorRegistry = REGISTRY) -> Metrics:
    """Declare every metric in ``registry``."""
    ns = NAMESPACE
    return Metrics(
        events_in=Counter(
            "events_in",
            "Records consumed, by topic.",
            [LABEL_TOPIC],
            namespace=ns,
            registry=registry,
        ),
        events_out=Counter(
            "events_out",
            "Records produced, by topic.",
            [LABEL_TOPIC],
            namespace=ns,
            registry=registry,
        ),
        dlq_records=Counter(
            "dlq_records",
            "Records dead-lettered, by reason code.",
            [LABEL_REASON],
            namespace=ns,
            registry=registry,
        ),
        duplicate_events=Counter(
            "duplicate_events",
            "Re-sent events (same event_id) skipped.",
            namespace=ns,
            registry=registry,
        ),
        superseded_requests=Counter(
            "superseded_score_requests",
            "Users who clicked again while waiting for the scorer: scored once, on the "
            "newer state (the older request is answered by that list).",
            namespace=ns,
            registry=registry,
        ),
        agent_batch_seconds=Histogram(
            "agent_batch_seconds",
            "Time to process one micro-batch, by agent.",
            [LABEL_AGENT],
            namespace=ns,
            registry=registry,
            buckets=CALL_SECONDS_BUCKETS,
        ),
        batch_size=Histogram(
            "batch_size",
            "Micro-batch sizes, by stage.",
            [LABEL_STAGE],
            namespace=ns,
            registry=registry,
            buckets=BATCH_BUCKETS,
        ),
        click_to_recommendation_ms=Histogram(
            "click_to_recommendation_ms",
            "From the trigger click's produce time to the recommendation's publication.",
            namespace=ns,
            registry=registry,
            buckets=LATENCY_MS_BUCKETS,
        ),
        hop_ms=Histogram(
            "hop_ms",
            "Where click-to-recommendation time goes, per list, by hop: ingest (click "
            "produced -> taken by the fold), fold, handoff (fold -> scorer; a topic in split "
            "roles), wait (queued for the scorer), score, publish.",
            [LABEL_HOP],
            namespace=ns,
            registry=registry,
            buckets=LATENCY_MS_BUCKETS,
        ),
        clicks_routed=Counter(
            "clicks_routed",
            "Valid clicks by how they reached the fold: in_place (keyed by user id, already "
            "in the partition of the user's state) or rekeyed (through the user-clicks topic).",
            [LABEL_ROUTE],
            namespace=ns,
            registry=registry,
        ),
        pending_users=Gauge(
            "pending_users",
            "Users folded and waiting for this process's scorer.",
            namespace=ns,
            registry=registry,
        ),
        graph_fold_ins=Gauge(
            "graph_fold_ins",
            "Items the graph candidate source folded in from live co-click edges (items "
            "that arrived after the graph model was trained).",
            namespace=ns,
            registry=registry,
        ),
        inference_seconds=Histogram(
            "inference_seconds",
            "Model inference time per batch, by model and provider.",
            [LABEL_MODEL, LABEL_PROVIDER],
            namespace=ns,
            registry=registry,
            buckets=CALL_SECONDS_BUCKETS,
        ),
        candidates=Counter(
            "candidates",
            "Candidates generated, by source.",
            [LABEL_SOURCE],
            namespace=ns,
            registry=registry,
        ),
        qdrant_seconds=Histogram(
            "qdrant_seconds",
            "Vector-store call latency, by operation.",
            [LABEL_OP],
            namespace=ns,
            registry=registry,
            buckets=CALL_SECONDS_BUCKETS,
        ),
        items_encoded=Counter(
            "items_encoded",
            "Items encoded and written to the vector store.",
            namespace=ns,
            registry=registry,
        ),
        recommendations=Counter(
            "recommendations",
            "Recommendation lists published.",
            namespace=ns,
            registry=registry,
        ),
        fallbacks=Counter(
            "fallbacks",
            "Times a stage fell back to a simpler path, by stage and reason.",
            [LABEL_STAGE, LABEL_REASON],
            namespace=ns,
            registry=registry,
        ),
        model_info=Gauge(
            "model_info",
            "Model versions in use (value 1), by model and version.",
            [LABEL_MODEL, LABEL_VERSION],
            namespace=ns,
            registry=registry,
        ),
        users_tracked=Gauge(
            "users_tracked",
            "Users held in this worker's user-state table.",
            namespace=ns,
            registry=registry,
        ),
        online_clicks=Counter(
            "online_clicks",
            "Clicks applied to user state (the online hit rate's denominator).",
            namespace=ns,
            registry=registry,
        ),
        online_hits=Counter(
            "online_hits",
            "Clicks whose item was in the list the user had when clicking, counted by "
            "the scorer (hit rate = hits / clicks).",
            namespace=ns,
            registry=registry,
        ),
        list_diversity=Histogram(
            "list_diversity",
            "Intra-list diversity of each published list: the mean pairwise cosine "
            "distance of its items' vectors (0: all alike; scorer.diversity raises it).",
            namespace=ns,
            registry=registry,
            buckets=DIVERSITY_BUCKETS,
        ),
        consumer_lag=Gauge(
            "consumer_lag",
            "Records behind the end of each assigned partition (last fetched high watermark).",
            [LABEL_TOPIC, LABEL_PARTITION],
            namespace=ns,
            registry=registry,
        ),
        llm_calls=Counter(
            "llm_calls",
            "LLM calls (cache misses), by backend, task and outcome "
            "(ok, error, invalid, timeout, circuit_open).",
            [LABEL_BACKEND, LABEL_TASK, LABEL_OUTCOME],
            namespace=ns,
            registry=registry,
        ),
        llm_cache_hits=Counter(
            "llm_cache_hits",
            "LLM answers served from the cache, by task.",
            [LABEL_TASK],
            namespace=ns,
            registry=registry,
        ),
        llm_fallbacks=Counter(
            "llm_fallbacks",
            "LLM calls answered by the offline backend instead, by task and reason.",
            [LABEL_TASK, LABEL_REASON],
            namespace=ns,
            registry=registry,
        ),
        llm_seconds=Histogram(
            "llm_seconds",
            "LLM call time including retries, by backend and task.",
            [LABEL_BACKEND, LABEL_TASK],
            namespace=ns,
            registry=registry,
            buckets=LLM_SECONDS_BUCKETS,
        ),
        llm_circuit_open=Gauge(
            "llm_circuit_open",
            "1 while the LLM circuit breaker is open (calls skip the network), by backend.",
            [LABEL_BACKEND],
            namespace=ns,
            registry=registry,
        ),
        items_enriched=Counter(
            "items_enriched",
            "Items encoded with their enrichment, by where it came from (llm, cache, "
            "offline); failed: encoded from raw text, retried later.",
            [LABEL_SOURCE],
            namespace=ns,
            registry=registry,
        ),
        enrichment_pending=Gauge(
            "enrichment_pending",
            "Items encoded from raw text that wait for their enrichment (in flight or retry).",
            namespace=ns,
            registry=registry,
        ),
        profiles_generated=Counter(
            "profiles_generated",
            "User profiles written, by where the text came from (llm, cache, offline, "
            "failed: the offline answer after an LLM failure).",
            [LABEL_SOURCE],
            namespace=ns,
            registry=registry,
        ),
        gc_seconds=Counter(
            "gc_seconds",
            "Time the interpreter spent in garbage collection, by generation (0, 1, 2); "
            "every stage of the process stands still meanwhile.",
            ["generation"],
            namespace=ns,
            registry=registry,
        ),
        # The pull API (``genre api``): requests by route template and status, their
        # latency, and the click events it took in.
        api_requests=Counter(
            "api_requests",
            "Pull API requests by route (the route template; other: no route matched) "
            "and HTTP status.",
            [LABEL_ROUTE, LABEL_STATUS],
            namespace=ns,
            registry=registry,
        ),
        api_request_ms=Histogram(
            "api_request_ms",
            "Pull API request time in the server, from the request read to the answer "
            "written, by route.",
            [LABEL_ROUTE],
            namespace=ns,
            registry=registry,
            buckets=API_MS_BUCKETS,
        ),
        api_events=Counter(
            "api_events",
            "Click events posted to the pull API, by outcome (accepted: acknowledged by "
            "the broker; invalid: refused with a reason; not_accepted: the broker did not "
            "acknowledge in time, the client was told to send again).",
            [LABEL_OUTCOME],
            namespace=ns,
            registry=registry,
        ),
        # A/B arms: each arm's lists, online clicks and hits (a click counts for the arm
        # of the list the user had), latency, traffic share and catalogue coverage.
        arm_lists=Counter(
            "arm_lists",
            "Lists published, by A/B arm.",
            [LABEL_ARM],
            namespace=ns,
            registry=registry,
        ),
        arm_online_clicks=Counter(
            "arm_online_clicks",
            "Clicks made while the user had a list of this arm.",
            [LABEL_ARM],
            namespace=ns,
            registry=registry,
        ),
        arm_online_hits=Counter(
            "arm_online_hits",
            "Of those clicks, the ones on an item of that list (online HR@10 = hits / clicks).",
            [LABEL_ARM],
            namespace=ns,
            registry=registry,
        ),
        arm_latency_ms=Histogram(
            "arm_latency_ms",
            "Click to published list, in ms, by A/B arm.",
            [LABEL_ARM],
            namespace=ns,
            registry=registry,
            buckets=LATENCY_MS_BUCKETS,
        ),
        arm_share=Gauge(
            "arm_share",
            "Share of users the allocation policy sends to each arm (fixed or the bandit's).",
            [LABEL_ARM],
            namespace=ns,
            registry=registry,
        ),
        arm_coverage=Gauge(
            "arm_coverage",
            "Distinct items this worker's lists of each arm have shown since it started.",
            [LABEL_ARM],
            namespace=ns,
            registry=registry,
        ),
    )


METRICS = create_metrics()


def _time_gc() -> None:
    """Time every garbage collection into ``genre_gc_seconds_total``.

    prometheus-client's GC collector counts collections but not their time; a
    worker holding millions of state objects can spend a large share of its
    time in full collections, and this is how an operator sees it.
    """
    started: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            METRICS.gc_seconds.labels(str(info["generation"])).inc(
                time.perf_counter() - started.pop()
            )

    gc.callbacks.append(callback)


_time_gc()


@contextmanager
def measured_batch(agent: str, topic: str, size: int) -> Iterator[None]:
    """Count a consumed micro-batch and time its processing, for one agent."""
    METRICS.events_in.labels(topic).inc(size)
    METRICS.batch_size.labels(agent).observe(size)
    start = time.perf_counter()
    try:
        yield
    finally:
        METRICS.agent_batch_seconds.labels(agent).observe(time.perf_counter() - start)


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The registry in Prometheus text format, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
