"""The item encoder worker: ItemUpserts -> (LLM enrichment) -> ONNX text encoder -> Qdrant.

With ``llm.items.enabled`` the encoded text is the item's own text plus the LLM's
summary, keywords and categories (``enriched_text``). The LLM never holds an item
back: whatever is not enriched within ``llm.items.wait_s`` is encoded from its raw
text at once and re-encoded when the answer lands; a failed enrichment keeps the
raw text and is retried every ``llm.items.retry_s``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from genre.core.features import encode_vector
from genre.core.telemetry import METRICS, measured_batch
from genre.core.text_encoder import TextEncoder
from genre.llm.client import ItemEnrichment, LLMClient, LLMResult, enriched_text
from genre.schemas import ItemUpsert, ItemVector, Rejection, parse_record
from genre.streams.app import GenreStreams

log = logging.getLogger("genre.item_encoder")

#: Most failed enrichments re-tried per ``retry_s`` tick (the LLM's rate limit applies too).
RETRY_BATCH = 256


class ItemEncoderWorker:
    """Encodes item text in batches and writes vectors plus payload to the vector store."""

    def __init__(
        self,
        streams: GenreStreams,
        encoder: TextEncoder,
        on_change: Callable[[list[str]], None] | None = None,
        llm: LLMClient | None = None,
    ) -> None:
        """``on_change(ids)`` runs after items are re-encoded or deleted (cache invalidation).
        ``llm``: enrich items with it (None: encode raw text only)."""
        self.streams = streams
        self.on_change = on_change
        self.encoder = encoder
        self.llm = llm
        self.settings = streams.config.llm.items
        self.collection = streams.config.qdrant.items_collection
        self.batch_size = streams.config.encoder.batch_size
        self.provider = (encoder.providers or ["CPUExecutionProvider"])[0]
        #: Items encoded from raw text whose enrichment is still running: id -> upsert.
        self._waiting: dict[str, ItemUpsert] = {}
        #: Enrichments that landed after their item was encoded raw, to re-encode.
        self._landed: dict[str, tuple[ItemUpsert, LLMResult[ItemEnrichment]]] = {}
        self._landed_event = asyncio.Event()
        #: Items whose enrichment failed, oldest first, to retry.
        self._retry: OrderedDict[str, ItemUpsert] = OrderedDict()
        #: Enrichments waiting for a slot (see ``run_enrichment``).
        self._queue: asyncio.Queue[tuple[ItemUpsert, asyncio.Future[Any]]] = asyncio.Queue()
        METRICS.model_info.labels("text_encoder", encoder.version).set(1)

    @property
    def pending(self) -> int:
        """Items encoded raw that still wait for their enrichment."""
        return len(self._waiting) + len(self._retry)

    async def handle(self, items: list[ItemUpsert]) -> None:
        """Apply a batch of upserts and deletes (last write per item wins)."""
        latest: dict[str, ItemUpsert] = {}
        for item in items:
            latest[item.item_id] = item
        deletes = [i.item_id for i in latest.values() if i.deleted]
        upserts = [i for i in latest.values() if not i.deleted]
        for key in latest:  # a newer version supersedes any enrichment still in flight
            self._waiting.pop(key, None)
            self._landed.pop(key, None)
            self._retry.pop(key, None)
        if deletes:
            await self.streams.in_store(self.streams.store.delete, self.collection, deletes)
            self.streams.forget_items(deletes)
            if self.on_change is not None:
                self.on_change(deletes)
            await self._publish(deletes, None, None)
        if upserts:
            enrichments = await self._enrich(upserts)
            await self._store(upserts, enrichments)
        METRICS.enrichment_pending.set(self.pending)

    async def _enrich(self, upserts: list[ItemUpsert]) -> list[LLMResult[ItemEnrichment] | None]:
        """Each item's enrichment if it is ready within ``wait_s``, else None (raw text)."""
        if self.llm is None:
            return [None] * len(upserts)
        tasks = [self._submit(item) for item in upserts]
        await asyncio.wait(tasks, timeout=self.settings.wait_s)
        out: list[LLMResult[ItemEnrichment] | None] = []
        for item, task in zip(upserts, tasks, strict=True):
            if task.done():
                out.append(self._usable(item, task.result()))
            else:
                self._waiting[item.item_id] = item
                task.add_done_callback(functools.partial(self._on_landed, item))
                out.append(None)
        return out

    def _usable(
        self, item: ItemUpsert, result: LLMResult[ItemEnrichment]
    ) -> LLMResult[ItemEnrichment] | None:
        """The result if it is an enrichment; a failure is queued for retry (raw text now)."""
        source = result.origin
        METRICS.items_enriched.labels(source).inc()
        if source != "failed":
            return result
        self._queue_retry(item)
        return None

    def _queue_retry(self, item: ItemUpsert) -> None:
        self._retry[item.item_id] = item
        self._retry.move_to_end(item.item_id)
        while len(self._retry) > self.settings.max_pending:
            dropped, _ = self._retry.popitem(last=False)
            METRICS.fallbacks.labels("enrichment", "retry_queue_full").inc()
            log.warning("enrichment retry queue full; %s keeps its raw-text vector", dropped)

    def _submit(self, item: ItemUpsert) -> asyncio.Future[Any]:
        """A future of the item's enrichment. Network calls wait their turn in a queue
        (``run_enrichment``) rather than all at once: the client's timeout counts local
        queueing, so a catalogue load fired at once would mostly time out unasked."""
        assert self.llm is not None
        if self.llm.local:
            return asyncio.ensure_future(self.llm.enrich_item(item))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return future

    async def run_enrichment(self) -> None:
        """Forever: start queued enrichments, at most ``llm.max_concurrency`` at a time."""
        assert self.llm is not None
        llm = self.llm
        slots = asyncio.Semaphore(llm.max_concurrency)

        def finish(task: asyncio.Future[Any], future: asyncio.Future[Any]) -> None:
            slots.release()
            if future.done():
                return
            if task.cancelled():
                future.cancel()
            elif (exc := task.exception()) is not None:
                future.set_exception(exc)
            else:
                future.set_result(task.result())

        while True:
            item, future = await self._queue.get()
            if future.done():
                continue
            await slots.acquire()
            task = asyncio.ensure_future(llm.enrich_item(item))
            task.add_done_callback(functools.partial(finish, future=future))

    def _on_landed(self, item: ItemUpsert, task: asyncio.Future[Any]) -> None:
        key = item.item_id
        if task.cancelled() or self._waiting.get(key) is not item:
            return  # superseded by a newer upsert or a delete
        del self._waiting[key]
        if task.exception() is not None:  # the client never raises; a bug must not be lost
            log.error("enrichment of %s raised", key, exc_info=task.exception())
            METRICS.items_enriched.labels("failed").inc()
            self._queue_retry(item)
            return
        self._landed[key] = (item, task.result())
        self._landed_event.set()

    async def reencode_landed(self) -> int:
        """Re-encode the items whose enrichment landed after they were stored raw."""
        self._landed_event.clear()
        landed, self._landed = self._landed, {}
        items, enrichments = [], []
        for item, result in landed.values():
            usable = self._usable(item, result)
            if usable is not None:
                items.append(item)
                enrichments.append(usable)
        if items:
            await self._store(items, enrichments)
        METRICS.enrichment_pending.set(self.pending)
        return len(items)

    async def run_landed(self) -> None:
        """Forever: re-encode enrichments as they land (a background task)."""
        while True:
            await self._landed_event.wait()
            await asyncio.sleep(0.05)  # gather what lands together into one batch
            try:
                await self.reencode_landed()
            except Exception:  # keep the task alive; the items keep their raw vectors
                log.exception("re-encoding enriched items failed")

    def retry_failed(self) -> int:
        """Start enrichment again for up to ``RETRY_BATCH`` failed items (oldest first)."""
        if self.llm is None or not self._retry or self.llm.breaker.state == "open":
            return 0
        count = min(RETRY_BATCH, len(self._retry))
        batch = [self._retry.popitem(last=False)[1] for _ in range(count)]
        for item in batch:
            self._waiting[item.item_id] = item
            self._submit(item).add_done_callback(functools.partial(self._on_landed, item))
        return len(batch)

    async def _store(
        self, upserts: list[ItemUpsert], enrichments: Sequence[LLMResult[ItemEnrichment] | None]
    ) -> None:
        texts = [
            item.encoder_text() if e is None else enriched_text(item, e.value)
            for item, e in zip(upserts, enrichments, strict=True)
        ]
        start = time.perf_counter()
        vectors = await self.streams.in_encoder(self.encoder.encode, texts, self.batch_size)
        METRICS.inference_seconds.labels("text_encoder", self.provider).observe(
            time.perf_counter() - start
        )
        payloads = [_payload(i, e) for i, e in zip(upserts, enrichments, strict=True)]
        ids = [i.item_id for i in upserts]
        await self.streams.in_store(
            self.streams.store.upsert, self.collection, ids, vectors, payloads
        )
        self.streams.remember_items(ids, list(vectors), payloads)
        if self.on_change is not None:
            self.on_change(ids)
        await self._publish(ids, vectors, payloads)
        METRICS.items_encoded.inc(len(upserts))

    async def _publish(
        self, ids: list[str], vectors: np.ndarray | None, payloads: list[dict] | None
    ) -> None:
        """Send each item's vector and payload to the compacted ``item_vectors`` topic,
        where workers of other roles follow it; ``vectors`` None sends tombstones."""
        topic = self.streams.topics.item_vectors
        for i, key in enumerate(ids):
            value = None
            if vectors is not None and payloads is not None:
                record = ItemVector(
                    item_id=key, vector=encode_vector(vectors[i]), payload=payloads[i]
                )
                value = record.to_bytes()
            await topic.send(key=key.encode(), value=value)
        METRICS.events_out.labels(topic.get_topic_name()).inc(len(ids))


def _payload(item: ItemUpsert, e: LLMResult[ItemEnrichment] | None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "title": item.title,
        "category": item.category,
        "tags": list(item.tags),
        "updated_ts": item.ts,
    }
    if e is not None:
        payload["enrichment"] = {**e.value.model_dump(), "backend": e.backend}
    return payload


def item_upsert(key: bytes | None, value: bytes | None) -> ItemUpsert | Rejection:
    """The upsert a ``genre.items`` record asks for, or why it is refused.

    A record keyed by an item id with a null value (a tombstone, as compaction
    keeps them) deletes that item. An upsert's key, when it has one, must be its
    item id: a compacted topic keeps the latest value per key, so an upsert under
    another key would survive compaction beside the item's own records.
    """
    if value is None:
        if key is None:
            return Rejection("empty_payload", "a null value without a key deletes nothing")
        item_id = key.decode("utf-8", errors="replace")
        try:
            return ItemUpsert(item_id=item_id, deleted=True)
        except ValidationError as exc:
            return Rejection(
                "invalid_value", f"tombstone key {item_id!r}: {exc.errors()[0]['msg']}"
            )
    result = parse_record(ItemUpsert, value)
    if isinstance(result, ItemUpsert) and key is not None and key != result.item_id.encode():
        return Rejection(
            "invalid_value",
            f"message key {key.decode('utf-8', errors='replace')!r} differs from item_id "
            f"{result.item_id!r}; key each ItemUpsert by its item_id",
        )
    return result


def register_item_encoder_agent(streams: GenreStreams, worker: ItemEncoderWorker) -> None:
    """Attach the item-encoder agent; malformed upserts go to the DLQ with their reason."""
    topic = streams.topics.items
    name = topic.get_topic_name()
    batch = worker.batch_size * 4

    @streams.app.agent(topic, name="genre.item-encoder")
    async def item_encoder(stream: Any) -> None:
        async for events in stream.take_events(batch, within=0.05):
            with measured_batch("item-encoder", name, len(events)):
                good = []
                for event in events:
                    result = item_upsert(event.message.key, event.message.value)
                    if isinstance(result, Rejection):
                        await streams.dead_letter(event.message, result.reason, result.error)
                    else:
                        good.append(result)
                await worker.handle(good)

    if worker.llm is not None:

        @streams.app.task
        async def reencode_enriched() -> None:
            await worker.run_landed()

        @streams.app.task
        async def enrich_items() -> None:
            await worker.run_enrichment()

        @streams.app.timer(worker.settings.retry_s)
        async def retry_enrichment() -> None:
            if worker.retry_failed():
                METRICS.enrichment_pending.set(worker.pending)
