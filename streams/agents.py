"""The stream agents: the fold (validate, fold into user state, hand users to the scorer)
and the item graph.

The fold reads producers' clicks straight from ``genre.clicks``: a click keyed by
its user id (Kafka's default murmur2 partitioner) is already in the partition
that holds the user's state. Only a click keyed otherwise takes one extra hop,
re-keyed through ``genre.user-clicks``; the fold agent reads both topics. Every
record it consumes is applied once or dead-lettered once with its reason, and
its batch is acknowledged only once the batch's lists are published (role
``all``) or its score requests sent (role ``stream``).
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

from genre.core.features import CoClickEvidence, FeatureSpec, ItemState, apply_evidence
from genre.core.telemetry import METRICS
from genre.schemas import (
    ClickEvent,
    CoClicks,
    ProfileRequests,
    Rejection,
    ScoreRequests,
    UserClick,
    UserClicks,
    parse_record,
)
from genre.streams.app import (
    CHUNKS_PER_BATCH,
    GenreStreams,
    chunk_records,
    partition_for,
    table_get,
)
from genre.streams.batching import ack_events, take_ready
from genre.streams.fold import Click, Fold, FoldResult
from genre.streams.score_context import to_request

log = logging.getLogger("genre.streams")


def feature_spec(streams: GenreStreams) -> FeatureSpec:
    """The stream's rules (``streams`` config) as the feature spec."""
    return FeatureSpec.from_streams(streams.config.streams)


def register_stream_agents(streams: GenreStreams) -> None:
    """Attach the fold agent (clicks and re-keyed clicks -> user state) to the app."""
    app, topics = streams.app, streams.topics
    clicks_name = topics.clicks.get_topic_name()
    user_clicks_name = topics.user_clicks.get_topic_name()
    t = streams.config.kafka.topics
    # Clicks can be folded where they land only if the clicks topic is partitioned
    # like the user-state table (whose partitions follow user_clicks).
    direct_partitions = (
        t.clicks.partitions if t.clicks.partitions == t.user_clicks.partitions else 0
    )
    profiles = streams.config.llm.profiles
    fold = Fold(
        feature_spec(streams),
        profile_every=profiles.every_k_clicks if profiles.enabled else 0,
        profile_titles=profiles.recent_titles,
    )
    channel = app.topic(clicks_name, user_clicks_name, key_serializer="raw", value_serializer="raw")

    @app.agent(channel, name="genre.fold")
    async def fold_clicks(stream: Any) -> None:
        """Validate, fold, and hand each clicking user to the scorer."""
        async for events in take_ready(stream, CHUNKS_PER_BATCH):
            await streams.items_read()
            taken_at = time.time()
            start = time.perf_counter()
            records = chunk_records(events)
            clicks = await _ingest(streams, records, direct_partitions)
            result = await _fold(streams, fold, clicks, taken_at)
            METRICS.agent_batch_seconds.labels("fold").observe(time.perf_counter() - start)
            METRICS.batch_size.labels("fold").observe(len(clicks))
            await _hand_over(streams, stream, events, result)
            await streams.producer_ebb()


async def _ingest(streams: GenreStreams, records: list[Any], direct_partitions: int) -> list[Click]:
    """The clicks of a batch of records, in order: producers' clicks validated (bad ones
    dead-lettered, ones in the wrong partition re-keyed), re-keyed ones decoded."""
    topics = streams.topics
    clicks_name = topics.clicks.get_topic_name()
    clicks: list[Click] = []
    misplaced: list[tuple[str, UserClick]] = []
    n_raw = n_rekeyed = 0
    for rec in records:
        if rec.topic != clicks_name:  # re-keyed by a fold: validated already
            for uc in UserClicks.from_trusted_bytes(rec.value):
                clicks.append(
                    Click(
                        uc.event, uc.produced_at, clicks_name, uc.source_partition, uc.source_offset
                    )
                )
                n_rekeyed += 1
            continue
        n_raw += 1
        result = parse_record(ClickEvent, rec.value)
        if isinstance(result, Rejection):
            await streams.dead_letter(rec, result.reason, result.error)
            continue
        produced_at = rec.timestamp / 1000.0
        user_key = result.user_id.encode()
        if (
            direct_partitions
            and rec.key == user_key
            and rec.partition == partition_for(result.user_id, direct_partitions)
        ):
            clicks.append(Click(result, produced_at, rec.topic, rec.partition, rec.offset, rec.key))
        else:
            # model_construct: every field is a value validated or made here.
            envelope = UserClick.model_construct(
                event=result,
                produced_at=produced_at,
                source_partition=rec.partition,
                source_offset=rec.offset,
                source_key_b64=base64.b64encode(rec.key).decode() if rec.key else None,
            )
            misplaced.append((result.user_id, envelope))
    if n_raw:
        METRICS.events_in.labels(clicks_name).inc(n_raw)
        METRICS.clicks_routed.labels("in_place").inc(len(clicks) - n_rekeyed)
        if misplaced:
            METRICS.clicks_routed.labels("rekeyed").inc(len(misplaced))
    if n_rekeyed:
        METRICS.events_in.labels(topics.user_clicks.get_topic_name()).inc(n_rekeyed)
    if misplaced:
        sent = await streams.send_partitioned(
            topics.user_clicks, misplaced, lambda batch: UserClicks(clicks=batch)
        )
        METRICS.events_out.labels(topics.user_clicks.get_topic_name()).inc(sent)
    return clicks


async def _fold(
    streams: GenreStreams, fold: Fold, clicks: list[Click], taken_at: float
) -> FoldResult:
    """Fold ``clicks`` into the user-state table; send graph evidence, profile requests
    and dead letters. The users to score are in the result."""
    topics = streams.topics
    item_ids = [c.event.item_id for c in clicks]
    strict = True
    try:
        stored = await streams.items(item_ids)
    except Exception as exc:  # vector store unreachable: keep the stream moving
        log.warning("item lookup failed (%s); using cached vectors only", exc)
        METRICS.fallbacks.labels("fold", type(exc).__name__).inc()
        stored, _ = streams.catalog.cached(item_ids)
        strict = False
    vectors = {item: s.vector for item, s in stored.items()}
    for click in clicks:
        streams.observe_event_time(click.event.ts)
    result = fold(
        clicks, _TableUsers(streams.users), vectors, strict_items=strict, taken_at=taken_at
    )
    for user_id, state in result.states.items():
        streams.users[user_id] = state
    METRICS.online_clicks.inc(result.applied)  # the scorer counts the hits
    if result.duplicates:
        METRICS.duplicate_events.inc(result.duplicates)
    for click in result.unknown_items:
        await streams.dead_letter(
            _Origin(click),
            "unknown_item",
            f"item_id {click.event.item_id!r} is not in the catalog; send its ItemUpsert "
            f"to {topics.items.get_topic_name()} first",
            payload=click.event.to_bytes(),
            origin=(click.topic, click.partition, click.offset),
        )
    sent = await streams.send_partitioned(
        topics.co_clicks,
        [(e.item_id, (e.item_id, list(e.neighbours), e.clicks, e.ts)) for e in result.evidence],
        CoClicks.encode,
    )
    METRICS.events_out.labels(topics.co_clicks.get_topic_name()).inc(sent)
    if result.profiles_due:
        sent = await streams.send_partitioned(
            topics.profile_requests,
            ((r.user_id, r) for r in result.profiles_due),
            lambda r: ProfileRequests(requests=r),
        )
        METRICS.events_out.labels(topics.profile_requests.get_topic_name()).inc(sent)
    return result


async def _hand_over(
    streams: GenreStreams, stream: Any, events: list[Any], result: FoldResult
) -> None:
    """Give the batch's users to this process's scorer (acknowledged once their lists are
    published), or send them to the scorer role as score requests (acknowledged now)."""

    async def acknowledge() -> None:
        await ack_events(stream, events)

    if streams.pending is not None and streams.runs("scorer"):
        streams.pending.submit(result.contexts, acknowledge)
        METRICS.pending_users.set(len(streams.pending))
        return
    topic = streams.topics.score_requests
    sent = await streams.send_partitioned(
        topic,
        ((ctx.user_id, to_request(ctx)) for ctx in result.contexts),
        lambda r: ScoreRequests(requests=r),
    )
    METRICS.events_out.labels(topic.get_topic_name()).inc(sent)
    await acknowledge()


class _TableUsers:
    """The user-state table as the fold's ``UserStore`` (reads straight from the store)."""

    __slots__ = ("table",)

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, user_id: str) -> Any:
        return table_get(self.table, user_id)

    def __setitem__(self, user_id: str, state: Any) -> None:
        self.table[user_id] = state


class _Origin:
    """Where a dead letter's record came from: the producer's record, not a batch."""

    __slots__ = ("key", "offset", "partition", "topic", "value")

    def __init__(self, click: Click) -> None:
        self.topic, self.partition, self.offset = click.topic, click.partition, click.offset
        self.key = click.key  # the producer's own key (None if it sent none)
        self.value = click.event.to_bytes()


#: How long the graph agent gathers co-click evidence after the first arrives. The
#: graph is not on the click-to-list path (a list reads the graph as it is); a
#: popular item touched several times in the window is written to the changelog
#: once, and the agent's Faust and producer costs are paid per window, not per fetch.
GRAPH_GATHER_S = 0.25


def register_graph_agent(streams: GenreStreams) -> None:
    """Attach the item-graph agent: it keeps the graph table its scorer reads."""
    app, topics = streams.app, streams.topics
    rules = feature_spec(streams).graph_rules()
    co_clicks_name = topics.co_clicks.get_topic_name()
    graph = streams.graph

    def state_of(item_id: str) -> ItemState | None:
        return table_get(graph, item_id)

    @app.agent(topics.co_clicks, name="genre.graph")
    async def item_graph(stream: Any) -> None:
        """Fold co-click evidence in order; write each touched item's new state once."""
        async for events in take_ready(stream, CHUNKS_PER_BATCH, GRAPH_GATHER_S):
            start = time.perf_counter()
            records = chunk_records(events)
            evidence = [
                CoClickEvidence(item, tuple(neighbours), clicks, ts)
                for rec in records
                for item, neighbours, clicks, ts in CoClicks.from_trusted_bytes(rec.value)
            ]
            METRICS.events_in.labels(co_clicks_name).inc(len(evidence))
            for ev in evidence:
                streams.observe_event_time(ev.ts)
            # New states, never the published ones changed: the scorer reads them
            # from its own thread.
            for item_id, state in apply_evidence(rules, evidence, state_of).items():
                graph[item_id] = state
            METRICS.agent_batch_seconds.labels("graph").observe(time.perf_counter() - start)
            METRICS.batch_size.labels("graph").observe(len(evidence))
            await ack_events(stream, events)
            await streams.producer_ebb()


__all__ = ["feature_spec", "register_graph_agent", "register_stream_agents"]
