"""The Faust application: settings, topics, tables and the shared services agents use."""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import faust
import numpy as np
from aiohttp import web
from aiokafka.partitioner import murmur2
from faust.serializers import codecs
from faust.stores import STORES
from faust.stores import rocksdb as faust_rocksdb
from faust.tables import TableManager
from faust.transport.consumer import Consumer
from yarl import URL

from genre.core.catalog import ItemCatalog
from genre.core.config import GenreConfig
from genre.core.exact_index import ExactIndex
from genre.core.features import ItemState, UserState
from genre.core.memory_report import memory_report
from genre.core.telemetry import METRICS, render
from genre.core.vectorstore import StoredVector, VectorStore, open_vector_store
from genre.schemas import DeadLetter
from genre.schemas.records import _Record
from genre.schemas.validation import printable
from genre.streams import recovery, transport
from genre.streams.recovery import ExactEndTableManager
from genre.streams.score_context import PendingScores

log = logging.getLogger("genre.streams")
T = TypeVar("T")
R = TypeVar("R")

#: How many record chunks an agent takes per batch (each is one partition's share
#: of a fetch, up to a few hundred records).
CHUNKS_PER_BATCH = 64


def chunk_records(events: Iterable[Any]) -> list[Any]:
    """The Kafka records behind a batch of Faust events, in order.

    Chunked topics (``transport.CHUNKED_TOPICS``) deliver ``RecordChunk``
    messages; each stands for many records. Records have ``topic``,
    ``partition``, ``offset``, ``key``, ``value`` and ``timestamp`` (ms).
    """
    out: list[Any] = []
    for event in events:
        message = event.message
        records = getattr(message, "records", None)
        if records is None:
            raise TypeError(
                f"{message.topic} is not delivered in record chunks; add it to "
                "transport.CHUNKED_TOPICS (build_streams does so for GENRE's stream topics)"
            )
        out.extend(records)
    return out


#: What one worker process runs (``genre worker --role``):
#: all      every agent, in one process (Faust app and consumer group ``app_id``);
#: stream   ingest and user state (``app_id``);
#: encoder  the item encoder and LLM item enrichment (``<app_id>-encoder``);
#: scorer   item graph, LLM profiles and the scorer (``<app_id>-scorer``).
#: Split roles are separate Faust apps, so each consumer group reads only its
#: own topics; they exchange item vectors through the ``item_vectors`` topic and
#: user state inside score requests.
#: The parts of the pipeline each role runs; everything else about a role (app id,
#: tables, models, whether it follows item_vectors) follows from these.
ROLE_PARTS = {
    "all": frozenset({"stream", "encoder", "scorer"}),
    "stream": frozenset({"stream"}),
    "encoder": frozenset({"encoder"}),
    "scorer": frozenset({"scorer"}),
}
ROLES = tuple(ROLE_PARTS)

#: The tables each part keeps (a role's others stay None on its ``GenreStreams``).
PART_TABLES = {
    "stream": frozenset({"users"}),
    "encoder": frozenset(),
    "scorer": frozenset({"graph", "latest_lists", "profiles"}),
}


def check_role(role: str) -> str:
    """``role`` if it is one of ``ROLES``; ValueError naming them otherwise."""
    if role not in ROLES:
        raise ValueError(f"worker role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def role_runs(role: str, part: str) -> bool:
    """Whether a process of ``role`` runs ``part`` (stream, encoder or scorer)."""
    return part in ROLE_PARTS[check_role(role)]


def role_tables(role: str) -> frozenset[str]:
    """The tables a process of ``role`` keeps."""
    return frozenset().union(*(PART_TABLES[part] for part in ROLE_PARTS[check_role(role)]))


def follows_item_vectors(role: str) -> bool:
    """Whether ``role`` reads the whole item_vectors topic into its catalogue: every
    role that uses item vectors, since a split role's encoder runs elsewhere and an
    all-in-one worker's encodes only the items of the ``items`` partitions it owns."""
    return role_runs(role, "stream") or role_runs(role, "scorer")


def role_app_id(app_id: str, role: str) -> str:
    """The Faust app id (and consumer group) of a role: ``app_id`` for the roles that
    run the stream part (the user-state changelog stays theirs), else ``<app_id>-<role>``."""
    return app_id if role_runs(role, "stream") else f"{app_id}-{role}"


#: Most table writes an agent leaves queued for the producer (``producer_ebb``);
#: a user state is ~3-30 KB serialised, so this is at most tens of MB.
PRODUCER_BACKLOG_LIMIT = 2_000


#: Largest micro-batch message; Kafka's default limit (message.max.bytes) is ~1 MB.
MAX_BATCH_BYTES = 512 * 1024


def _sized_batches(records: list[R], wrap: Callable[[list[R]], _Record | bytes]) -> Iterator[bytes]:
    """``wrap(records)`` serialised, split in halves until each part fits ``MAX_BATCH_BYTES``."""
    wrapped = wrap(records)
    value = wrapped if isinstance(wrapped, bytes) else wrapped.to_bytes()
    if len(value) <= MAX_BATCH_BYTES or len(records) == 1:
        yield value
        return
    half = len(records) // 2
    yield from _sized_batches(records[:half], wrap)
    yield from _sized_batches(records[half:], wrap)


def table_get(table: Any, key: str) -> Any:
    """``table.get(key)`` straight from the table's store.

    ``Table.get`` goes through ``Mapping.get`` and raises and catches KeyError
    for every absent key (~4% of the user-state agent). GENRE's tables are not
    windowed, so skipping Faust's per-read hook changes nothing else. Works for
    both stores: the memory store is a dict, and ``RocksDBStore.get`` returns
    the default for an absent key without the KeyError round trip.
    """
    return table.data.get(key)


#: URL scheme of ``RocksDBStore``; ``streams.store: rocksdb://`` is mapped to it.
ROCKSDB_SCHEME = "genre-rocksdb"


class RocksDBStore(faust_rocksdb.Store):
    """Faust's RocksDB table store, keeping each key in its changelog partition's database.

    faust-streaming 0.15.3 writes a key into the database of the partition of
    the *current event*, and asserts there is one. GENRE's tables use
    ``use_partitioner=True`` and its batched agents write after an await, where
    there is no current event (``take_events`` fills its buffer in another
    task), so with the stock store every write crashed the agent with an
    AssertionError. Had an event been current, it would have been one of a
    batch that spans partitions, and keys would have landed in databases other
    than the one recovery replays their changelog records into (upstream fixed
    only the read side of this, faust-streaming PRs #130/#144).

    Here a key's partition is its changelog record's: Kafka's default
    partitioner, murmur2 of the serialised key over the table's partitions,
    the rule ``partition_for`` also uses for GENRE's own topics. Reads go
    straight to that partition's database instead of searching all of them.
    """

    def _partition_of(self, key: bytes) -> int:
        partitions = self.table.partitions or self.app.conf.topic_partitions
        return (murmur2(key) & 0x7FFFFFFF) % partitions

    def _set(self, key: bytes, value: bytes | None) -> None:
        if not self.table.use_partitioner:
            super()._set(key, value)
            return
        self._db_for_partition(self._partition_of(key)).put(key, value)

    def _get(self, key: bytes) -> bytes | None:
        if self.table.use_partitioner:
            db = self._dbs.get(self._partition_of(key))
            if db is not None:
                return db.get(key)
        return super()._get(key)

    def get(self, key: Any, default: Any = None) -> Any:
        """``Mapping.get`` without raising and catching KeyError for absent keys."""
        value = self._get(self._encode_key(key))
        return default if value is None else self._decode_value(value)

    def count_keys(self, dbs: list[Any]) -> int:
        """Keys in ``dbs`` (from ``_dbs_for_actives``): a full key scan, ~0.25 us a key.

        Safe in a thread (RocksDB iterators read a snapshot), so it runs off the
        event loop. A database revoked meanwhile stays open until the scan
        ends; were it reassigned at once, Faust retries opening it 1 s apart.
        """
        return sum(self._size1(db) for db in dbs)


# Faust finds stores by URL scheme in this registry (the same mechanism as its
# "faust.stores" entry points), so registering here needs no reinstall.
STORES.aliases[ROCKSDB_SCHEME] = f"{__name__}:RocksDBStore"


def table_store_url(url: str) -> str:
    """The Faust store URL for ``streams.store``: memory, or GENRE's RocksDB store.

    Raises ValueError for another scheme, or for RocksDB without its binding:
    a worker must never fall back to memory tables silently.
    """
    parsed = URL(url)
    if parsed.scheme == "memory":
        return url
    if parsed.scheme not in ("rocksdb", ROCKSDB_SCHEME):
        raise ValueError(f"streams.store must be memory:// or rocksdb://, not {url!r}")
    if not faust_rocksdb.USE_ROCKSDICT:
        raise ValueError(
            "streams.store is rocksdb:// but rocksdict is not installed; "
            "pip install 'genre-recsys[embedded]' (rocksdict==0.3.29)"
        )
    return ROCKSDB_SCHEME + url[len(parsed.scheme) :]


@functools.lru_cache(maxsize=200_000)
def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``table_key(key)``.

    Same murmur2 hash as the producer's, so a micro-batch sent to this
    partition lands where the table changelog writes for ``key`` land.
    """
    return (murmur2(table_key(key)) & 0x7FFFFFFF) % partitions


@dataclass
class Topics:
    """Faust topic handles; every value is raw bytes we (de)serialise with pydantic."""

    clicks: faust.TopicT
    items: faust.TopicT
    user_clicks: faust.TopicT
    co_clicks: faust.TopicT
    score_requests: faust.TopicT
    profile_requests: faust.TopicT
    recommendations: faust.TopicT
    dlq: faust.TopicT
    item_vectors: faust.TopicT


@dataclass
class GenreStreams:
    """Everything the agents of one worker process share."""

    config: GenreConfig
    app: faust.App
    topics: Topics
    # Tables; None where this process's role keeps none (role_tables).
    users: Any  # faust Table: user_id -> UserState
    graph: Any  # faust GlobalTable: item_id -> ItemState
    latest_lists: Any  # faust Table: user_id -> item ids of the user's latest published list
    profiles: Any  # faust Table: user_id -> the user's latest LLM profile (text, vector)
    store: VectorStore
    catalog: ItemCatalog
    #: What this process runs (one of ``ROLES``).
    role: str = "all"
    #: One thread for vector-store calls: qdrant local mode is not thread-safe.
    store_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="vector-store")
    )
    #: Thread the scorer computes lists on (numpy and ONNX Runtime release the GIL),
    #: so the event loop keeps folding clicks meanwhile.
    model_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="scorer")
    )
    #: Thread for the text encoder (items, profiles): its batches take tens of ms,
    #: and on the ranker's thread they held every scorer batch up behind them.
    encoder_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="text-encoder")
    )
    #: Exact in-memory item index, used instead of Qdrant queries in local mode.
    index: ExactIndex | None = None
    ready: dict[str, bool] = field(default_factory=dict)
    #: Set once the item-vectors follower has read its topic to the end (None: no
    #: follower in this process); see ``items_read``.
    item_vectors_read: asyncio.Event | None = None
    #: Newest event time seen by this process (Unix seconds); 0 until the first click.
    event_time: float = 0.0
    #: Keys of the dead letters this process wrote lately: a record read again (after
    #: a rebalance, before its offset was committed) is not dead-lettered twice.
    letters_written: RecentKeys = field(default_factory=lambda: RecentKeys(LETTERS_REMEMBERED))
    #: Users waiting for this process's scorer (from its own fold in role ``all``, from
    #: score requests in role ``scorer``); None where no scorer runs.
    pending: PendingScores | None = None

    @property
    def carries_user_state(self) -> bool:
        """Whether score requests carry the user's state: the scorer runs in another process."""
        return self.runs("stream") and not self.runs("scorer")

    def runs(self, part: str) -> bool:
        """Whether this process runs ``part`` of the pipeline (stream, encoder, scorer)."""
        return role_runs(self.role, part)

    def observe_event_time(self, ts: float) -> None:
        """Advance this process's event clock."""
        if ts > self.event_time:
            self.event_time = ts

    def event_now(self) -> float:
        """Event-time "now" for decay: the newest click time seen, else wall time.

        Replayed data (MovieLens is from 1997-98) must decay in its own time, not ours.
        """
        return self.event_time or time.time()

    async def items_read(self) -> None:
        """Wait until this process knows every item published so far (at start only):
        an agent that ran earlier would take clicks on known items for unknown ones."""
        if self.item_vectors_read is not None and not self.item_vectors_read.is_set():
            await self.item_vectors_read.wait()

    async def in_store(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking vector-store call off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.store_executor, fn, *args)

    async def in_model(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking scorer call on the scorer's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.model_executor, fn, *args)

    async def in_encoder(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking text-encoder call off the event loop (not behind the ranker)."""
        return await asyncio.get_running_loop().run_in_executor(self.encoder_executor, fn, *args)

    async def producer_ebb(self, limit: int = PRODUCER_BACKLOG_LIMIT) -> None:
        """Wait until at most ``limit`` table writes wait for the producer.

        A table write queues its changelog record in Faust's producer buffer
        without waiting. Faust holds the consumer back only 100 records at a
        time per delivered message, and each of GENRE's messages is a chunk of
        hundreds of clicks that writes hundreds of states, so under a burst the
        buffer grew to 35,000 serialised states while the broker fell behind.
        Every batched agent calls this after its writes: the queue stays bounded
        and a slow broker slows consumption instead of filling memory.
        """
        buffer = self.app.producer.buffer
        while buffer.size > limit:
            await buffer.flush_atmost(buffer.size - limit)

    def remember_items(
        self, ids: Sequence[str], vectors: Sequence[np.ndarray], payloads: Sequence[dict]
    ) -> None:
        """Put items just encoded or read from the item-vectors topic into this process's
        catalogue and exact index (Qdrant is written by the encoder)."""
        for key, vector, payload in zip(ids, vectors, payloads, strict=True):
            self.catalog.put(key, vector, {**payload, "id": key})
        if self.index is not None and len(ids):
            self.index.upsert(ids, np.stack(vectors))

    def forget_items(self, ids: Sequence[str]) -> None:
        """Drop deleted items from this process's catalogue and exact index."""
        for key in ids:
            self.catalog.forget(key)
        if self.index is not None and ids:
            self.index.delete(ids)

    async def items(self, ids: Iterable[str]) -> dict[str, StoredVector]:
        """Item vectors and payloads: cache hits at once, misses fetched off the loop."""
        hits, misses = self.catalog.cached(ids)
        if misses:
            hits.update(await self.in_store(self.catalog.get_many, misses))
        return hits

    async def send_partitioned(
        self,
        topic: faust.TopicT,
        keyed: Iterable[tuple[str, R]],
        wrap: Callable[[list[R]], _Record | bytes],
    ) -> int:
        """Send records as one micro-batch message per partition; returns records sent.

        Each record goes to the partition its key hashes to (``partition_for``, over
        the topic's configured partition count), so co-partitioning with the tables
        holds for micro-batches as for single records.
        """
        partitions = topic.partitions
        groups: dict[int, list[R]] = {}
        n = 0
        for key, record in keyed:
            groups.setdefault(partition_for(key, partitions), []).append(record)
            n += 1
        for partition, records in groups.items():
            for value in _sized_batches(records, wrap):
                await topic.send(key=f"p{partition}".encode(), value=value, partition=partition)
        return n

    async def dead_letter(
        self,
        message: Any,
        reason: str,
        error: str,
        *,
        payload: bytes | None = None,
        origin: tuple[str, int, int] | None = None,
    ) -> None:
        """Publish a rejected record to the DLQ with its origin (topic, partition, offset)."""
        topic, partition, offset = origin or (message.topic, message.partition, message.offset)
        key = dead_letter_key(topic, partition, offset)
        if not self.letters_written.add(key):
            # Re-read before its offset was committed (a rebalance seeks back): the
            # letter for this record is already on the DLQ.
            log.info("dead letter %s already written by this process: not repeated", key)
            return
        record = DeadLetter(
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            raw_payload=printable(message.value if payload is None else payload),
            raw_key=printable(message.key) if message.key is not None else None,
            reason=reason,
            error=error,
        )
        await self.topics.dlq.send(key=key, value=record.to_bytes())
        METRICS.dlq_records.labels(reason).inc()
        METRICS.events_out.labels(self.topics.dlq.get_topic_name()).inc()


#: Dead-letter keys each process remembers (a few MB at most).
LETTERS_REMEMBERED = 65_536


class RecentKeys:
    """The last ``size`` distinct keys added, oldest forgotten first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def add(self, key: bytes) -> bool:
        """Remember ``key``; False if it was already remembered."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return True


def dead_letter_key(topic: str, partition: int, offset: int) -> bytes:
    """A dead letter's message key: the identity of the record it stands for.

    A record dead-lettered again (by a worker restarted before its offset was
    committed) gets the same key, so a compacted DLQ, or any consumer that keeps
    the last letter per key, sees it once. The producer's own key is in the
    letter's ``raw_key``.
    """
    return f"{topic}/{partition}/{offset}".encode()


def _broker_settings(config: GenreConfig) -> dict[str, Any]:
    sec = config.kafka.security
    settings: dict[str, Any] = {"broker": f"{transport.SCHEME}://{config.kafka.bootstrap_servers}"}
    if sec.protocol == "PLAINTEXT":
        return settings
    context = ssl.create_default_context(cafile=sec.ssl_cafile) if "SSL" in sec.protocol else None
    if sec.protocol.startswith("SASL"):
        settings["broker_credentials"] = faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password.get_secret_value() if sec.sasl_password else None,
            mechanism=sec.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    elif context is not None:
        settings["broker_credentials"] = faust.SSLCredentials(context)
    return settings


class _StateCodec(codecs.Codec):
    """Faust codec for a typed state record (``to_bytes`` / ``from_bytes``)."""

    state_type: Any = None

    def _dumps(self, obj: Any) -> bytes:
        return obj.to_bytes()

    def _loads(self, s: bytes) -> Any:
        return self.state_type.from_bytes(s)


class _UserStateCodec(_StateCodec):
    state_type = UserState


class _ItemStateCodec(_StateCodec):
    state_type = ItemState


USER_STATE_CODEC = "genre-user-state"
ITEM_STATE_CODEC = "genre-item-state"
codecs.register(USER_STATE_CODEC, _UserStateCodec())
codecs.register(ITEM_STATE_CODEC, _ItemStateCodec())


def with_serializers(table: Any, value_serializer: str) -> Any:
    """``table`` keyed by UTF-8 ids (``table_key``), its values in ``value_serializer``.

    faust-streaming 0.15.3 derives ``Table.key_serializer``/``value_serializer``
    from ``key_type``/``value_type`` only (json unless the type is bytes), writes
    them into the table's schema and passes them explicitly to the store and the
    changelog topic. The store is made on first use; the changelog topic already
    exists (the table manager named it), so it is made again with the codecs.
    """
    table.key_serializer = "raw"
    table.value_serializer = value_serializer
    table.schema = faust.Schema(
        key_type=str, key_serializer="raw", value_serializer=value_serializer
    )
    table.changelog_topic = table._new_changelog_topic()
    return table


def table_key(key: str) -> bytes:
    """Message key of a user or item: its id as UTF-8, the same bytes its table's
    changelog records carry.

    A producer that keys clicks this way (with Kafka's default murmur2
    partitioner) puts a user's clicks in the partition that holds the user's
    state, so the fold reads them straight from ``genre.clicks``; GENRE's
    internal topics are keyed the same way.
    """
    return key.encode()


def build_streams(
    config: GenreConfig, *, store: VectorStore | None = None, role: str = "all"
) -> GenreStreams:
    """Create the Faust app of a role with GENRE's topics and the role's tables;
    agents attach afterwards."""
    app_id = role_app_id(config.app_id, role)
    tables = role_tables(role)
    s = config.streams
    store_url = table_store_url(s.store)
    # Faust's own folder (RocksDB tables, worker state) lives under data_dir, not
    # in whatever directory the worker was started from; one folder per app id,
    # because RocksDB files are named by table only and the changelog offset
    # stored in them names no topic: another app id (its own changelogs) must
    # not pick up this one's state. Each worker process needs its own data_dir
    # with RocksDB tables (a process locks the databases it opens).
    faust_dir = config.path("faust") / app_id
    faust_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        store=store_url,
        datadir=str(faust_dir),
        autodiscover=False,
        topic_replication_factor=s.topic_replication_factor,
        topic_partitions=config.kafka.topics.user_clicks.partitions,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        web_enabled=True,
        web_host="127.0.0.1",
        web_bind=s.web_bind,
        web_port=s.web_port,
        web_in_thread=False,
        # Faust's own views would serve every table's contents (user histories, LLM
        # profiles, lists) and its routing to anyone who reaches the port; a worker
        # serves /metrics, /ready and (loopback or token only) /debug/*, nothing else.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        web_metrics_enabled=False,
        # Per broker flavour (core/config.py BROKER_FLAVORS): 6 s on tansu, which
        # holds a new member for about half of it; Kafka's own 45 s on Apache Kafka.
        broker_session_timeout=config.kafka.group_session_ms / 1000,
        broker_heartbeat_interval=config.kafka.heartbeat_interval_ms / 1000,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # A few ms of linger batches the many small sends of a micro-batch into
        # few requests: CPU per event halves for < 10 ms of added latency.
        producer_linger_ms=5,
        TableManager=ExactEndTableManager if config.kafka.exact_end_offsets else TableManager,
        stream_buffer_maxsize=4096,
        logging_config=None,
        **_broker_settings(config),
    )

    def topic(spec: Any) -> faust.TopicT:
        return app.topic(
            spec.name,
            partitions=spec.partitions,
            key_serializer="raw",
            value_serializer="raw",
            internal=False,
        )

    transport.FETCH_MAX_WAIT_MS[app_id] = config.kafka.fetch_wait_ms
    t = config.kafka.topics
    transport.CHUNKED_TOPICS[app_id] = frozenset(
        spec.name
        for spec in (t.clicks, t.user_clicks, t.co_clicks, t.score_requests, t.profile_requests)
    )
    if config.kafka.exact_end_offsets:
        recovery.CLIENT_CONFIG[app_id] = config.kafka.client_config()
    topics = Topics(
        clicks=topic(t.clicks),
        items=topic(t.items),
        user_clicks=topic(t.user_clicks),
        co_clicks=topic(t.co_clicks),
        score_requests=topic(t.score_requests),
        profile_requests=topic(t.profile_requests),
        recommendations=topic(t.recommendations),
        dlq=topic(t.dlq),
        item_vectors=topic(t.item_vectors),
    )

    def user_table(name: str, value_serializer: str = "json") -> Any:
        """A table keyed by user, co-partitioned with ``clicks`` and ``user_clicks``."""
        return with_serializers(
            app.Table(
                name,
                partitions=t.user_clicks.partitions,
                key_type=str,
                # Batched agents write after awaiting (no current event), so the changelog
                # partition comes from the key, as the source topic's partition does.
                use_partitioner=True,
            ),
            value_serializer,
        )

    users = user_table("user-state", USER_STATE_CODEC) if "users" in tables else None
    latest_lists = user_table("latest-lists") if "latest_lists" in tables else None
    profiles = user_table("user-profiles") if "profiles" in tables else None
    graph = None
    if "graph" in tables:
        graph = app.GlobalTable(  # serializers set below (with_serializers)
            "item-graph",
            partitions=t.co_clicks.partitions,
            key_type=str,
            use_partitioner=True,
            # Always in memory, whatever streams.store says. Its size follows the
            # catalogue (items x max_neighbours edges), not the users, and it is
            # read as Python objects on hot paths: the scorer looks up every
            # candidate's item state and the trending source scans the whole table
            # every second, which with RocksDB means a JSON decode per read and a
            # full database scan per second on every worker. GlobalTable with
            # use_partitioner is also where Faust's RocksDB store has broken before
            # (faust-streaming PRs #130/#144; issue #283, multi-worker GlobalTable,
            # reported on RocksDB, still open). The cost: a restarted worker
            # replays the whole (compacted) graph changelog.
            # The host part is needed: yarl's URL("memory://") is falsy, and Faust
            # then falls back to the app's store.
            store="memory://item-graph",
        )
        with_serializers(graph, ITEM_STATE_CODEC)
    vector_store = store if store is not None else open_vector_store(config)
    catalog = ItemCatalog(vector_store, config.qdrant.items_collection)
    if follows_item_vectors(role):
        # Filled whole from the item_vectors topic (streams.item_vectors): no eviction.
        catalog.capacity = sys.maxsize
    streams = GenreStreams(
        config, app, topics, users, graph, latest_lists, profiles, vector_store, catalog, role
    )
    if role_runs(role, "scorer"):
        streams.pending = PendingScores()
    _add_pages(streams)
    return streams


def debug_refusal(request: Any, token: Any) -> web.Response | None:
    """None when ``request`` may read a debug page: it comes from loopback, or carries
    ``Authorization: Bearer <streams.debug_token>``; else the 403 that says why."""
    remote = request.remote or ""
    if remote in ("127.0.0.1", "::1") or remote.startswith("127."):
        return None
    header = request.headers.get("Authorization", "")
    if token is not None and hmac.compare_digest(
        header.encode(), f"Bearer {token.get_secret_value()}".encode()
    ):
        return None
    fix = (
        "send Authorization: Bearer <streams.debug_token>"
        if token is not None
        else "set streams.debug_token (GENRE_STREAMS__DEBUG_TOKEN) and send it as a bearer token"
    )
    return web.json_response(
        {"error": f"/debug pages are served to loopback only; from {remote}: {fix}"},
        status=403,
    )


#: Seconds between consumer-lag samples: fine enough for a dashboard, cheap.
LAG_SAMPLE_S = 5.0
#: Seconds between samples of the users-tracked gauge.
USERS_SAMPLE_S = 15.0


def _add_pages(streams: GenreStreams) -> None:
    app = streams.app
    # The pages' ``type: ignore[arg-type]``: Faust types a page handler as returning
    # its abstract faust.web.Response, but its aiohttp driver serves the aiohttp
    # web.Response a handler returns (Faust's own Web.json() casts one the same way).

    @app.timer(USERS_SAMPLE_S)
    async def sample_users_tracked() -> None:
        """Users in this worker's user-state table, sampled on a timer, not per batch.

        The memory store counts in O(1). RocksDB keeps no key count: ``len()``
        scans every key (O(users), it was run after every batch) and the
        ``rocksdb.estimate-num-keys`` property counts every overwrite still in
        the memtable (10 keys written 1000 times each read 10,000), useless for
        state that is rewritten on every click. So the RocksDB count is an exact
        scan, run off the event loop every ``USERS_SAMPLE_S`` seconds.
        """
        if streams.users is None:
            return
        store = streams.users.data
        if isinstance(store, RocksDBStore):
            dbs = list(store._dbs_for_actives())
            loop = asyncio.get_running_loop()
            count = await loop.run_in_executor(None, store.count_keys, dbs)
        else:
            count = len(store)
        METRICS.users_tracked.set(count)

    @app.timer(LAG_SAMPLE_S)
    async def sample_consumer_lag() -> None:
        """Export lag per assigned partition: high watermark minus the committed offset."""
        # The concrete Consumer: its offset bookkeeping is not on the ConsumerT interface.
        consumer = cast(Consumer, app.consumer)
        # Table changelogs are read by recovery/global-table readers that commit no
        # offsets, so "committed" means nothing there; only source topics count.
        changelogs = {t.changelog_topic.get_topic_name() for t in app.tables.values()}
        for tp in consumer.assignment():
            if tp.topic in changelogs or "__assignor" in tp.topic:
                continue
            highwater = consumer.highwater(tp)
            committed = consumer._committed_offset.get(tp)  # Faust keeps no public getter
            if highwater is None or highwater < 0:
                continue
            lag = max(0, highwater - (committed or 0))
            METRICS.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    @app.page("/metrics")  # type: ignore[arg-type]  # see _add_pages
    async def metrics(web_view: Any, request: Any) -> web.Response:
        body, content_type = render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    def memory_table_size(table: Any) -> Callable[[], int | None]:
        # RocksDB keeps no key count (see sample_users_tracked): not counted here;
        # None too for a table this role does not keep.
        return lambda: (
            None if table is None or isinstance(table.data, RocksDBStore) else len(table.data)
        )

    @app.page("/debug/memory")  # type: ignore[arg-type]  # see _add_pages
    async def memory(web_view: Any, request: Any) -> web.Response:
        """RSS, entries in each table and cache, and allocation sites under PYTHONTRACEMALLOC."""
        refused = debug_refusal(request, streams.config.streams.debug_token)
        if refused is not None:
            return refused
        sizes = {
            "users": memory_table_size(streams.users),
            "item_graph": memory_table_size(streams.graph),
            "latest_lists": memory_table_size(streams.latest_lists),
            "profiles": memory_table_size(streams.profiles),
            "item_catalog_cache": lambda: len(streams.catalog),
            "exact_index": lambda: None if streams.index is None else len(streams.index),
            "producer_buffer": lambda: app.producer.buffer.size,
        }
        top = request.query.get("top", "25")
        if not top.isdigit():
            return web.json_response(
                {"error": f"top must be a whole number of allocation sites, not {top!r}"},
                status=400,
            )
        limit = int(top)
        report = await asyncio.get_running_loop().run_in_executor(
            None, lambda: memory_report(sizes, limit=limit)
        )
        return web.json_response(report)

    @app.page("/ready")  # type: ignore[arg-type]  # see _add_pages
    async def ready(web_view: Any, request: Any) -> web.Response:
        components = dict(streams.ready)
        components["rebalanced"] = not app.rebalancing
        # app.tables is the TableManager setting (TableManager or ExactEndTableManager);
        # ``recovery`` is on the class, not on the TableManagerT interface.
        tables = cast(TableManager, app.tables)
        components["tables_recovered"] = tables.recovery.completed.is_set()
        is_ready = all(components.values())
        return web.json_response(
            {"ready": is_ready, "components": components}, status=200 if is_ready else 503
        )
