"""The item encoder worker: ItemUpserts -> ONNX text encoder -> Qdrant ``items``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from genre.core.telemetry import METRICS, measured_batch
from genre.schemas import ItemUpsert, Rejection, parse_record
from genre.streams.app import GenreStreams
from genre.workers.text_encoder import TextEncoder


class ItemEncoderWorker:
    """Encodes item text in batches and writes vectors plus payload to the vector store."""

    def __init__(
        self,
        streams: GenreStreams,
        encoder: TextEncoder,
        on_change: Callable[[list[str]], None] | None = None,
    ) -> None:
        """``on_change(ids)`` runs after items are re-encoded or deleted (cache invalidation)."""
        self.streams = streams
        self.on_change = on_change
        self.encoder = encoder
        self.collection = streams.config.qdrant.items_collection
        self.batch_size = streams.config.encoder.batch_size
        self.provider = (encoder.providers or ["CPUExecutionProvider"])[0]
        METRICS.model_info.labels("text_encoder", encoder.version).set(1)

    async def handle(self, items: list[ItemUpsert]) -> None:
        """Apply a batch of upserts and deletes (last write per item wins)."""
        latest: dict[str, ItemUpsert] = {}
        for item in items:
            latest[item.item_id] = item
        deletes = [i.item_id for i in latest.values() if i.deleted]
        upserts = [i for i in latest.values() if not i.deleted]
        if deletes:
            await self.streams.in_store(self.streams.store.delete, self.collection, deletes)
            for key in deletes:
                self.streams.catalog.forget(key)
            if self.streams.index is not None:
                self.streams.index.delete(deletes)
            if self.on_change is not None:
                self.on_change(deletes)
        if not upserts:
            return
        start = time.perf_counter()
        vectors = await self.streams.in_model(
            self.encoder.encode, [i.encoder_text() for i in upserts], self.batch_size
        )
        METRICS.inference_seconds.labels("text_encoder", self.provider).observe(
            time.perf_counter() - start
        )
        payloads = [
            {"title": i.title, "category": i.category, "tags": list(i.tags), "updated_ts": i.ts}
            for i in upserts
        ]
        ids = [i.item_id for i in upserts]
        await self.streams.in_store(
            self.streams.store.upsert, self.collection, ids, vectors, payloads
        )
        for key, vec, payload in zip(ids, vectors, payloads, strict=True):
            self.streams.catalog.put(key, vec, {**payload, "id": key})
        if self.streams.index is not None:
            self.streams.index.upsert(ids, vectors)
        if self.on_change is not None:
            self.on_change(ids)
        METRICS.items_encoded.inc(len(upserts))


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
                    result = parse_record(ItemUpsert, event.message.value)
                    if isinstance(result, Rejection):
                        await streams.dead_letter(event.message, result.reason, result.error)
                    else:
                        good.append(result)
                await worker.handle(good)
