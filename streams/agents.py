"""The stream agents: ingest (validate, route), user state (by user), item graph (by item).

Each agent works in micro-batches: it takes record chunks (one partition's
share of a fetch each, see ``streams.transport``), writes each table key once
per batch, and sends one micro-batch message per partition of each internal
topic. Every record it consumes is either applied once or dead-lettered once
with its reason.
"""

from __future__ import annotations

import logging
from typing import Any

from genre.core.telemetry import METRICS, measured_batch
from genre.schemas import (
    ClickEvent,
    CoClick,
    CoClicks,
    ProfileRequest,
    ProfileRequests,
    Rejection,
    ScoreRequest,
    ScoreRequests,
    UserClick,
    UserClicks,
    parse_record,
)
from genre.streams.app import CHUNKS_PER_BATCH, GenreStreams, chunk_records, table_get
from genre.streams.state import (
    USER_VECTOR_UPDATERS,
    GraphRules,
    UserState,
    UserStateRules,
    encode_vector,
    finish_user_state,
    new_item_state,
    new_user_state,
    user_vector,
)

log = logging.getLogger("genre.streams")


def user_rules(streams: GenreStreams) -> UserStateRules:
    """The user-state rules from config, with the configured vector updater."""
    s = streams.config.streams
    return UserStateRules(
        history_size=s.history_size,
        max_seen=s.max_seen,
        dedup_window=s.dedup_window,
        co_click_window=s.co_click_window,
        click_weights=s.click_weights,
        updater=USER_VECTOR_UPDATERS.create(s.user_vector.name, **s.user_vector.params),
    )


def graph_rules(streams: GenreStreams) -> GraphRules:
    """The item-graph rules from config."""
    s = streams.config.streams
    return GraphRules(s.edge_half_life_s, s.trending_half_life_s, s.max_neighbours)


def register_stream_agents(streams: GenreStreams) -> None:
    """Attach the ingest and user-state agents to the app."""
    app, topics, cfg = streams.app, streams.topics, streams.config.streams
    within = cfg.batch_within_ms / 1000.0
    rules = user_rules(streams)
    clicks_name = topics.clicks.get_topic_name()
    user_clicks_name = topics.user_clicks.get_topic_name()
    profiles = streams.config.llm.profiles
    profile_every = profiles.every_k_clicks if profiles.enabled else 0
    profile_titles = profiles.recent_titles

    @app.agent(topics.clicks, name="genre.ingest")
    async def ingest(stream: Any) -> None:
        """Validate raw clicks; good ones go to the user topic by user, bad ones to DLQ."""
        async for events in stream.take_events(CHUNKS_PER_BATCH, within=within):
            records = chunk_records(events)
            with measured_batch("ingest", clicks_name, len(records)):
                accepted: list[tuple[str, UserClick]] = []
                for rec in records:
                    result = parse_record(ClickEvent, rec.value)
                    if isinstance(result, Rejection):
                        await streams.dead_letter(rec, result.reason, result.error)
                        continue
                    # model_construct: every field is a value validated or made here.
                    envelope = UserClick.model_construct(
                        event=result,
                        produced_at=rec.timestamp / 1000.0,
                        source_partition=rec.partition,
                        source_offset=rec.offset,
                    )
                    accepted.append((result.user_id, envelope))
                sent = await streams.send_partitioned(
                    topics.user_clicks,
                    accepted,
                    lambda clicks: UserClicks(clicks=clicks),
                )
                METRICS.events_out.labels(user_clicks_name).inc(sent)

    @app.agent(topics.user_clicks, name="genre.user-state")
    async def user_state(stream: Any) -> None:
        """Fold clicks into user state; emit co-clicks by item and one score request per user."""
        async for events in stream.take_events(CHUNKS_PER_BATCH, within=within):
            await streams.items_read()
            records = chunk_records(events)
            batches = [(rec, UserClicks.from_trusted_bytes(rec.value)) for rec in records]
            n_clicks = sum(len(clicks) for _, clicks in batches)
            with measured_batch("user-state", user_clicks_name, n_clicks):
                await _fold_clicks(streams, rules, batches, profile_every, profile_titles)
            await streams.producer_ebb()


def register_graph_agent(streams: GenreStreams) -> None:
    """Attach the item-graph agent: it keeps the graph table its scorer reads."""
    app, topics, cfg = streams.app, streams.topics, streams.config.streams
    within = cfg.batch_within_ms / 1000.0
    grules = graph_rules(streams)
    co_clicks_name = topics.co_clicks.get_topic_name()

    @app.agent(topics.co_clicks, name="genre.graph")
    async def graph(stream: Any) -> None:
        """Update time-decayed co-click edges and trending counts, one write per item per batch."""
        async for events in stream.take_events(CHUNKS_PER_BATCH, within=within):
            records = chunk_records(events)
            co = [c for rec in records for c in CoClicks.from_trusted_bytes(rec.value)]
            with measured_batch("graph", co_clicks_name, len(co)):
                touched: dict[str, dict] = {}
                for record in co:
                    streams.observe_event_time(record.ts)
                    state = touched.get(record.item_id)
                    if state is None:
                        state = table_get(streams.graph, record.item_id) or new_item_state()
                    if record.neighbours:
                        grules.add_neighbours(state, record.neighbours, record.ts)
                    if record.clicks:
                        grules.add_click(state, record.ts, record.clicks)
                    touched[record.item_id] = state
                for item_id, state in touched.items():
                    streams.graph[item_id] = state
            await streams.producer_ebb()


async def _fold_clicks(
    streams: GenreStreams,
    rules: UserStateRules,
    batches: list[tuple[Any, list[UserClick]]],
    profile_every: int,
    profile_titles: int,
) -> None:
    """Apply one micro-batch of clicks: one state write per user, batched outputs."""
    topics = streams.topics
    clicks_name = topics.clicks.get_topic_name()
    clicks = [click for _, batch in batches for click in batch]
    store_down = False
    try:
        vectors = await streams.items(c.event.item_id for c in clicks)
    except Exception as exc:  # vector store unreachable: keep the stream moving
        log.warning("item lookup failed (%s); using cached vectors only", exc)
        METRICS.fallbacks.labels("user-state", type(exc).__name__).inc()
        vectors, _ = streams.catalog.cached(c.event.item_id for c in clicks)
        store_down = True
    touched: dict[str, dict] = {}
    triggers: dict[str, UserClick] = {}
    clicked: dict[str, list[str]] = {}
    co = _CoClickBuffer()
    due: dict[str, ProfileRequest] = {}
    for rec, batch in batches:
        for click in batch:
            ev = click.event
            state = touched.get(ev.user_id)
            if state is None:
                state = table_get(streams.users, ev.user_id) or new_user_state()
            if rules.is_duplicate(state, ev.event_id):
                METRICS.duplicate_events.inc()
                continue
            stored = vectors.get(ev.item_id)
            if stored is None and not store_down:
                await streams.dead_letter(
                    rec,
                    "unknown_item",
                    f"item_id {ev.item_id!r} is not in the catalog; send its ItemUpsert "
                    f"to {topics.items.get_topic_name()} first",
                    payload=ev.to_bytes(),
                    origin=(clicks_name, click.source_partition, click.source_offset),
                )
                continue
            METRICS.online_clicks.inc()  # the scorer counts hits (clicked_items)
            # With the store down an uncached item is applied without its vector:
            # history, graph and counts stay exact; the vector catches up later.
            neighbours = rules.apply(
                state, ev, stored.vector if stored else None, vector_as_array=True
            )
            streams.observe_event_time(ev.ts)
            touched[ev.user_id] = state
            triggers[ev.user_id] = click
            clicked.setdefault(ev.user_id, []).append(ev.item_id)
            if profile_every and profile_due(state, profile_every):
                state["profiled_clicks"] = state["clicks"]
                due[ev.user_id] = ProfileRequest(
                    user_id=ev.user_id,
                    recent_items=state["history"][-profile_titles:],
                    clicks=state["clicks"],
                    trigger_ts=ev.ts,
                )
            co.add(ev.item_id, neighbours, ev.ts, clicks=1.0)
            for nbr in neighbours:
                co.add(nbr, [ev.item_id], ev.ts)
    for user_id, state in touched.items():
        streams.users[user_id] = finish_user_state(state)
    sent = await streams.send_partitioned(
        topics.co_clicks, co.records(), lambda r: CoClicks(records=r)
    )
    METRICS.events_out.labels(topics.co_clicks.get_topic_name()).inc(sent)
    carry = streams.carries_user_state
    requests = (
        (
            user_id,
            score_request(click, clicked[user_id], touched[user_id] if carry else None),
        )
        for user_id, click in triggers.items()
    )
    sent = await streams.send_partitioned(
        topics.score_requests,
        requests,
        lambda r: ScoreRequests(requests=r),
    )
    METRICS.events_out.labels(topics.score_requests.get_topic_name()).inc(sent)
    sent = await streams.send_partitioned(
        topics.profile_requests,
        due.items(),
        lambda r: ProfileRequests(requests=r),
    )
    if sent:
        METRICS.events_out.labels(topics.profile_requests.get_topic_name()).inc(sent)
    # genre_users_tracked is sampled on a timer (streams/app.py): len() of a
    # RocksDB table scans every key, too dear after every batch.


def score_request(
    click: UserClick, clicked_items: list[str], state: UserState | None
) -> ScoreRequest:
    """The score request for a user's latest click; with ``state``, the scorer's part of it
    (history, seen set, vector, clicks) travels along for a scorer in another process."""
    request = ScoreRequest(
        user_id=click.event.user_id,
        trigger_event_id=click.event.event_id,
        trigger_produced_at=click.produced_at,
        trigger_ts=click.event.ts,
        clicked_items=clicked_items,
    )
    if state is None:
        return request
    vector = state.get("vector")
    if vector is not None and not isinstance(vector, str):  # a state from before base64
        vector = encode_vector(user_vector(state))
    return request.model_copy(
        update={
            "recent_items": state["history"],
            "seen_items": state["seen"],
            "clicks": state["clicks"],
            "vector_b64": vector,
        }
    )


def profile_due(state: dict, every_k_clicks: int) -> bool:
    """Whether the user has clicked ``every_k_clicks`` times since their last profile."""
    return state["clicks"] - state.get("profiled_clicks", 0) >= every_k_clicks


class _CoClickBuffer:
    """This batch's outgoing co-click evidence per item, merged before it is sent.

    Plain lists while merging (a validated record per merge cost ~8% of the
    agent); records are built once per item, from values made here.
    """

    def __init__(self) -> None:
        self._items: dict[str, list] = {}  # item -> [neighbours, clicks, ts]

    def add(self, item_id: str, neighbours: list[str], ts: float, clicks: float = 0.0) -> None:
        entry = self._items.get(item_id)
        if entry is None:
            self._items[item_id] = [list(neighbours), clicks, ts]
        else:
            entry[0].extend(neighbours)
            entry[1] += clicks
            entry[2] = max(entry[2], ts)

    def records(self) -> list[tuple[str, CoClick]]:
        return [
            (item, CoClick.model_construct(item_id=item, neighbours=n, clicks=c, ts=ts))
            for item, (n, c, ts) in self._items.items()
        ]


__all__ = [
    "graph_rules",
    "profile_due",
    "register_graph_agent",
    "register_stream_agents",
    "score_request",
    "user_rules",
]
