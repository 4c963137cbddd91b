"""The profile worker: ProfileRequests -> LLM interest profile -> text encoder -> profile table.

Every ``llm.profiles.every_k_clicks`` clicks the user-state agent asks for a fresh
profile. This agent writes it from the user's recent items ("Title (tags)"),
encodes it with the item text encoder (so it lives in the item vector space) and
stores it in the changelogged ``user-profiles`` table, co-partitioned with the
user state, where the scorer reads it: the ``profile`` candidate source searches
by its vector, the ranker's ``profile`` feature compares it with each candidate,
and reasons name its interests.

An LLM outage never stalls the clicks: this agent has its own topic, and every
call answers within ``llm.timeout_s`` (the offline backend's profile on failure).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from genre.core.features import encode_vector
from genre.core.telemetry import METRICS, measured_batch
from genre.core.text_encoder import TextEncoder
from genre.llm.client import LLMClient, UserProfile, item_label, profile_text
from genre.schemas import ProfileRequest, ProfileRequests
from genre.streams.app import GenreStreams, chunk_records

log = logging.getLogger("genre.profiles")

#: Most record chunks (each a micro-batch of requests from one partition) per batch.
PROFILE_BATCH = 256


class ProfileWorker:
    """Generates, encodes and stores user profiles, a micro-batch at a time."""

    def __init__(self, streams: GenreStreams, encoder: TextEncoder, llm: LLMClient) -> None:
        self.streams = streams
        self.encoder = encoder
        self.llm = llm
        self.batch_size = streams.config.encoder.batch_size
        self.provider = (encoder.providers or ["CPUExecutionProvider"])[0]

    async def handle(self, requests: list[ProfileRequest]) -> int:
        """Write one profile per user (their latest request wins); returns how many."""
        latest: dict[str, ProfileRequest] = {}
        for req in requests:
            prev = latest.get(req.user_id)
            if prev is None or req.clicks >= prev.clicks:
                latest[req.user_id] = req
        if not latest:
            return 0
        needed = {i for r in latest.values() for i in r.recent_items}
        try:
            items = await self.streams.items(needed)
        except Exception as exc:  # vector store down: profile from the titles we hold
            log.warning("item lookup for profiles failed (%s); using the cache", exc)
            METRICS.fallbacks.labels("profiles", type(exc).__name__).inc()
            items, _ = self.streams.catalog.cached(needed)
        reqs = list(latest.values())
        labels = [
            [
                item_label(str(p.get("title", "")), str(p.get("category", "")), p.get("tags") or ())
                for p in (items[i].payload for i in req.recent_items if i in items)
            ]
            for req in reqs
        ]
        results = await asyncio.gather(*(self.llm.profile(titles) for titles in labels))
        keep = [
            (req, r)
            for req, r in zip(reqs, results, strict=True)
            if r.value.interests  # nothing known about these titles: no profile to store
        ]
        if not keep:
            return 0
        start = time.perf_counter()
        vectors = await self.streams.in_encoder(
            self.encoder.encode, [profile_text(r.value) for _, r in keep], self.batch_size
        )
        METRICS.inference_seconds.labels("profile_encoder", self.provider).observe(
            time.perf_counter() - start
        )
        now = time.time()
        for (req, result), vector in zip(keep, vectors, strict=True):
            self.streams.profiles[req.user_id] = profile_state(
                result.value, vector, req.clicks, result.backend, result.origin, now
            )
            METRICS.profiles_generated.labels(result.origin).inc()
        return len(keep)


def profile_state(
    profile: UserProfile,
    vector: np.ndarray,
    clicks: int,
    backend: str,
    source: str,
    generated_at: float,
) -> dict[str, Any]:
    """The JSON-able table value for one profile."""
    return {
        "profile": profile.profile,
        "interests": list(profile.interests),
        "vector": encode_vector(vector),  # base64 float32, as in user states
        "clicks": clicks,
        "backend": backend,
        "source": source,
        "generated_at": generated_at,
    }


def register_profile_agent(streams: GenreStreams, worker: ProfileWorker) -> None:
    """Attach the profile agent; requests within ``debounce_s`` are coalesced per user."""
    topic = streams.topics.profile_requests
    name = topic.get_topic_name()
    within = max(streams.config.llm.profiles.debounce_s, 0.01)

    @streams.app.agent(topic, name="genre.profiles")
    async def profiles(stream: Any) -> None:
        async for events in stream.take_events(PROFILE_BATCH, within=within):
            await streams.items_read()
            records = chunk_records(events)
            requests = [
                r for rec in records for r in ProfileRequests.from_bytes(rec.value).requests
            ]
            with measured_batch("profiles", name, len(requests)):
                await worker.handle(requests)
            await streams.producer_ebb()
