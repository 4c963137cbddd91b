"""GENRE's generative step: an LLM client that is safe to call from the stream.

``build_llm(config)`` gives an ``LLMClient`` over the backend chosen in ``llm.backend``:
an OpenAI-compatible chat-completions endpoint, a local transformers model, or the
deterministic offline backend. Two tasks: ``enrich_item`` (summary, keywords,
categories that ``enriched_text`` adds to what the item encoder embeds) and ``profile``
(a sentence and interests from a user's recent titles).

A call never raises and never outlives ``llm.timeout_s``: answers come from the cache,
the model, or - on a timeout, an HTTP error, a broken or off-schema answer, an open
circuit or a local rate-limit wait past the deadline - the offline backend, with the
reason. Around the model: bounded concurrency (a semaphore), a request rate limit
(aiolimiter), retries with exponential backoff and jitter on timeouts/429/5xx/connection
errors (tenacity), a circuit breaker, and a SQLite cache keyed by task, input hash,
prompt version and backend, so nothing is generated twice. Fallbacks are not cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from aiolimiter import AsyncLimiter
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from genre.core.config import GenreConfig, LLMConfig, LLMPrompt
from genre.core.telemetry import METRICS, Metrics
from genre.llm.backends import OfflineBackend, OpenAIBackend, TransformersBackend
from genre.llm.guard import (
    CircuitBreaker,
    ItemEnrichment,
    LLMCallError,
    UserProfile,
    item_payload,
    parse_output,
    payload_json,
    profile_payload,
    render_messages,
)
from genre.schemas.records import ItemUpsert

__all__ = [
    "ItemEnrichment",
    "LLMCache",
    "LLMClient",
    "LLMResult",
    "UserProfile",
    "build_llm",
    "enriched_text",
    "item_label",
    "profile_text",
]

log = logging.getLogger("genre.llm")

T = TypeVar("T", bound=BaseModel)
R = TypeVar("R")
TASK_ITEM = "item"
TASK_PROFILE = "profile"


@dataclass(frozen=True)
class LLMResult(Generic[T]):
    """One answer. ``value`` is never None: on any failure it is the offline answer.

    ``source``: llm (generated now), cache (generated before), fallback (offline backend).
    ``backend``: whose answer ``value`` is ("openai:<model>", "transformers:<path>",
    "offline"). ``reason``: why it fell back (timeout, http_500, connection,
    bad_response, invalid_json, schema, circuit_open, rate_limited, backend_error,
    empty_input), None otherwise and when ``offline`` is the configured backend.
    """

    value: T
    source: Literal["llm", "cache", "fallback"]
    backend: str
    reason: str | None = None

    @property
    def origin(self) -> str:
        """For metrics: llm, cache, offline (the configured backend) or failed (fell back)."""
        if self.source == "fallback":
            return "offline" if self.reason is None else "failed"
        return self.source


class CacheKey(NamedTuple):
    """What identifies a generated answer."""

    task: str
    input_sha: str
    prompt_version: str
    backend: str


class LLMCache:
    """Generated answers in SQLite (WAL mode), one table; safe across threads and processes.

    Calls are synchronous: a WAL read never waits for a writer, and a write that finds
    the file locked for more than ``busy_s`` is skipped (the answer is just not cached),
    so the event loop is never held up for long. Storage errors never reach the caller.
    """

    def __init__(self, path: Path, *, busy_s: float = 0.2) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(path), timeout=busy_s, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS llm_cache ("
            " task TEXT NOT NULL, input_sha TEXT NOT NULL, prompt_version TEXT NOT NULL,"
            " backend TEXT NOT NULL, value TEXT NOT NULL, created_at REAL NOT NULL,"
            " PRIMARY KEY (task, input_sha, prompt_version, backend))"
        )

    def get(self, key: CacheKey) -> str | None:
        """The stored answer (JSON), or None."""
        with self._lock:
            if self._conn is None:
                return None
            try:
                row = self._conn.execute(
                    "SELECT value FROM llm_cache WHERE task=? AND input_sha=? "
                    "AND prompt_version=? AND backend=?",
                    tuple(key),
                ).fetchone()
            except sqlite3.Error as exc:
                log.warning("llm cache read failed (%s); treating as a miss", exc)
                return None
        return None if row is None else str(row[0])

    def put(self, key: CacheKey, value: str) -> None:
        """Store an answer (JSON)."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO llm_cache VALUES (?, ?, ?, ?, ?, ?)",
                    (*key, value, time.time()),
                )
            except sqlite3.Error as exc:
                log.warning("llm cache write failed (%s); answer not cached", exc)

    def __len__(self) -> int:
        with self._lock:
            if self._conn is None:
                return 0
            return int(self._conn.execute("SELECT COUNT(*) FROM llm_cache").fetchone()[0])

    def close(self) -> None:
        """Close the database; later calls miss and store nothing."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


@dataclass
class _LoopState:
    """Per event loop: asyncio primitives must not cross loops."""

    semaphore: asyncio.Semaphore
    limiter: AsyncLimiter | None
    inflight: dict[CacheKey, asyncio.Future[Any]] = field(default_factory=dict)


class _Failure(Exception):
    def __init__(self, reason: str, outcome: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


class LLMClient:
    """Enrich items and profile users with a model, safely (see the module docstring)."""

    def __init__(
        self,
        config: LLMConfig,
        backend: OpenAIBackend | TransformersBackend | None,
        cache: LLMCache | None = None,
        *,
        metrics: Metrics = METRICS,
    ) -> None:
        self._cfg = config
        self._backend = backend
        self._cache = cache
        self._metrics = metrics
        self._offline = OfflineBackend()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState]
        self._loops = weakref.WeakKeyDictionary()
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._sync_lock = threading.Lock()
        self.breaker = CircuitBreaker(
            config.breaker_failures, config.breaker_reset_s, on_change=self._breaker_changed
        )
        if backend is not None:
            metrics.llm_circuit_open.labels(backend.name).set(0)

    @property
    def backend_name(self) -> str:
        """Who answers: ``openai:<model>``, ``transformers:<path>`` or ``offline``."""
        return self._backend.name if self._backend is not None else OfflineBackend.name

    @property
    def local(self) -> bool:
        """True for the offline backend: answers are computed in-process, at once."""
        return self._backend is None

    @property
    def max_concurrency(self) -> int:
        """Calls this client lets in flight at once (``llm.max_concurrency``)."""
        return self._cfg.max_concurrency

    @property
    def cache(self) -> LLMCache | None:
        """The answer cache (None for the offline backend or ``cache_path: null``)."""
        return self._cache

    def __repr__(self) -> str:
        return f"LLMClient(backend={self.backend_name!r})"

    # ------------------------------------------------------------------ tasks

    async def enrich_item(self, item: ItemUpsert) -> LLMResult[ItemEnrichment]:
        """Summary, keywords and categories for an item."""
        fields = (item.title, item.category, list(item.tags), item.text)
        empty = not any(s.strip() for s in (item.title, item.category, item.text, *item.tags))
        return await self._run(
            TASK_ITEM,
            ItemEnrichment,
            self._cfg.prompts.item,
            item_payload(*fields),
            lambda: self._offline.enrich(*fields),
            empty=empty,
        )

    async def profile(self, titles: Sequence[str]) -> LLMResult[UserProfile]:
        """A profile from the user's recent titles (oldest first; the last
        ``llm.profiles.recent_titles`` non-empty ones are used)."""
        kept = [t for t in titles if isinstance(t, str) and t.strip()]
        kept = kept[-self._cfg.profiles.recent_titles :]
        return await self._run(
            TASK_PROFILE,
            UserProfile,
            self._cfg.prompts.profile,
            profile_payload(kept),
            lambda: self._offline.profile(kept),
            empty=not kept,
        )

    def enrich_item_sync(self, item: ItemUpsert) -> LLMResult[ItemEnrichment]:
        """``enrich_item`` for code without an event loop (offline evaluation)."""
        return self._run_sync(self.enrich_item(item))

    def profile_sync(self, titles: Sequence[str]) -> LLMResult[UserProfile]:
        """``profile`` for code without an event loop (offline evaluation)."""
        return self._run_sync(self.profile(titles))

    def enrich_items_sync(
        self, items: Sequence[ItemUpsert], on_done: Callable[[], None] | None = None
    ) -> list[LLMResult[ItemEnrichment]]:
        """``enrich_item`` for many items at once, within the client's concurrency bound
        (offline evaluation); ``on_done`` runs after each answer (progress)."""
        return self._gather_sync([self.enrich_item(i) for i in items], on_done)

    def profiles_sync(
        self, titles: Sequence[Sequence[str]], on_done: Callable[[], None] | None = None
    ) -> list[LLMResult[UserProfile]]:
        """``profile`` for many title lists at once (offline evaluation)."""
        return self._gather_sync([self.profile(t) for t in titles], on_done)

    def _gather_sync(
        self, coros: list[Coroutine[Any, Any, LLMResult[T]]], on_done: Callable[[], None] | None
    ) -> list[LLMResult[T]]:
        async def one(coro: Coroutine[Any, Any, LLMResult[T]]) -> LLMResult[T]:
            result = await coro
            if on_done is not None:
                on_done()
            return result

        async def every() -> list[LLMResult[T]]:
            return list(await asyncio.gather(*(one(c) for c in coros)))

        return self._run_sync(every())

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close the backend's connections on this loop and the cache."""
        if self._backend is not None:
            await self._backend.aclose()
        self._close_sync_loop()
        if self._cache is not None:
            self._cache.close()

    def close(self) -> None:
        """``aclose`` for code without an event loop (after the *_sync methods)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("called from a running event loop: await aclose()")
        with self._sync_lock:
            loop = self._sync_loop
            if self._backend is not None and loop is not None and not loop.is_closed():
                loop.run_until_complete(self._backend.aclose())
        self._close_sync_loop()
        if self._cache is not None:
            self._cache.close()

    def _close_sync_loop(self) -> None:
        with self._sync_lock:
            loop, self._sync_loop = self._sync_loop, None
        if loop is not None and not loop.is_running() and not loop.is_closed():
            loop.close()

    def _run_sync(self, coro: Coroutine[Any, Any, R]) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError("called from a running event loop: await the async method")
        with self._sync_lock:
            if self._sync_loop is None or self._sync_loop.is_closed():
                self._sync_loop = asyncio.new_event_loop()
            return self._sync_loop.run_until_complete(coro)

    # ------------------------------------------------------------------ machinery

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            rate = self._cfg.rate_per_s
            limiter = None
            if rate > 0:  # a bucket of at least one request: AsyncLimiter needs amount <= rate
                limiter = AsyncLimiter(rate, 1.0) if rate >= 1 else AsyncLimiter(1, 1.0 / rate)
            state = _LoopState(asyncio.Semaphore(self._cfg.max_concurrency), limiter)
            self._loops[loop] = state
        return state

    def _breaker_changed(self, is_open: bool) -> None:
        self._metrics.llm_circuit_open.labels(self.backend_name).set(1 if is_open else 0)
        if is_open:
            log.warning(
                "llm circuit open for %s: %d consecutive failures; offline answers for %.0f s",
                self.backend_name,
                self._cfg.breaker_failures,
                self._cfg.breaker_reset_s,
            )
        else:
            log.info("llm circuit closed for %s", self.backend_name)

    async def _run(
        self,
        task: str,
        model: type[T],
        prompt: LLMPrompt,
        payload: dict[str, Any],
        offline: Callable[[], T],
        *,
        empty: bool,
    ) -> LLMResult[T]:
        m = self._metrics
        if self._backend is None:  # offline is the configured backend
            start = time.perf_counter()
            value = offline()
            m.llm_seconds.labels(OfflineBackend.name, task).observe(time.perf_counter() - start)
            m.llm_calls.labels(OfflineBackend.name, task, "ok").inc()
            return LLMResult(value, "fallback", OfflineBackend.name, None)
        if empty:
            return self._fallback(task, offline, "empty_input")
        text = payload_json(payload)
        key = CacheKey(
            task, hashlib.sha256(text.encode()).hexdigest(), prompt.version, self.backend_name
        )
        if self._cache is not None:
            stored = self._cache.get(key)
            if stored is not None:
                try:
                    value = model.model_validate_json(stored)
                except ValidationError:
                    log.warning("llm cache entry for %s is unreadable; regenerating", task)
                else:
                    m.llm_cache_hits.labels(task).inc()
                    return LLMResult(value, "cache", self.backend_name, None)
        # Single flight: identical concurrent requests share one generation.
        state = self._state()
        shared = state.inflight.get(key)
        if shared is None:
            fut = asyncio.ensure_future(self._generate(task, model, prompt, text, key, offline))
            state.inflight[key] = fut
            fut.add_done_callback(lambda _f: state.inflight.pop(key, None))
            return await asyncio.shield(fut)
        result: LLMResult[T] = await asyncio.shield(shared)
        if result.source == "llm":
            m.llm_cache_hits.labels(task).inc()
            return replace(result, source="cache")
        return result

    def _fallback(self, task: str, offline: Callable[[], T], reason: str) -> LLMResult[T]:
        self._metrics.llm_fallbacks.labels(task, reason).inc()
        return LLMResult(offline(), "fallback", OfflineBackend.name, reason)

    async def _generate(
        self,
        task: str,
        model: type[T],
        prompt: LLMPrompt,
        payload_text: str,
        key: CacheKey,
        offline: Callable[[], T],
    ) -> LLMResult[T]:
        m, name = self._metrics, self.backend_name
        if not self.breaker.allow():
            m.llm_calls.labels(name, task, "circuit_open").inc()
            return self._fallback(task, offline, "circuit_open")
        messages = render_messages(prompt.system, prompt.user, payload_text)
        started = [False]  # whether an attempt reached the backend (vs. queued locally)
        t0 = time.perf_counter()
        try:
            try:
                content = await asyncio.wait_for(
                    self._attempts(messages, started), self._cfg.timeout_s
                )
            except TimeoutError:
                if not started[0]:
                    self.breaker.release()  # the endpoint was never asked
                    raise _Failure("rate_limited", "timeout") from None
                self.breaker.failure()
                raise _Failure("timeout", "timeout") from None
            except LLMCallError as exc:
                self.breaker.failure()
                raise _Failure(exc.reason, "error") from None
            try:
                value = parse_output(content, model)
            except LLMCallError as exc:
                # A model that keeps answering garbage is as useless as one that errors:
                # count it, so a run of bad answers opens the circuit too (one injected
                # item description cannot: the count resets on the next good answer).
                self.breaker.failure()
                raise _Failure(exc.reason, "invalid") from None
            self.breaker.success()
        except _Failure as failure:
            if started[0]:
                m.llm_seconds.labels(name, task).observe(time.perf_counter() - t0)
            m.llm_calls.labels(name, task, failure.outcome).inc()
            log.debug("llm %s call fell back: %s", task, failure.reason)
            return self._fallback(task, offline, failure.reason)
        except asyncio.CancelledError:
            self.breaker.release()
            raise
        except Exception:  # a bug must not stop the stream
            log.exception("llm %s call failed unexpectedly", task)
            self.breaker.release()
            m.llm_calls.labels(name, task, "error").inc()
            return self._fallback(task, offline, "backend_error")
        m.llm_seconds.labels(name, task).observe(time.perf_counter() - t0)
        m.llm_calls.labels(name, task, "ok").inc()
        if self._cache is not None:
            self._cache.put(key, value.model_dump_json())
        return LLMResult(value, "llm", name, None)

    async def _attempts(self, messages: list[dict[str, str]], started: list[bool]) -> str:
        assert self._backend is not None
        state = self._state()
        backoff = self._cfg.backoff_s
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._cfg.retries + 1),
            wait=wait_exponential_jitter(
                initial=backoff, max=max(backoff * 16, 0.01), jitter=backoff
            ),
            retry=retry_if_exception(lambda e: isinstance(e, LLMCallError) and e.retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                async with state.semaphore:
                    if state.limiter is not None:
                        await state.limiter.acquire()
                    started[0] = True
                    return await self._backend.complete(messages)
        raise AssertionError("unreachable")  # pragma: no cover


def build_llm(config: GenreConfig) -> LLMClient:
    """The client for ``config.llm``; raises ``ConfigError`` for a backend that cannot work
    (transformers not installed, model folder missing)."""
    cfg = config.llm
    backend: OpenAIBackend | TransformersBackend | None
    if cfg.backend == "openai":
        backend = OpenAIBackend(cfg)
    elif cfg.backend == "transformers":
        assert cfg.model_path is not None  # LLMConfig checks it
        backend = TransformersBackend(cfg, config.path(cfg.model_path))
    else:
        backend = None
    cache = None
    if backend is not None and cfg.cache_path:
        cache = LLMCache(config.path(cfg.cache_path))
    return LLMClient(cfg, backend, cache)


def enriched_text(item: ItemUpsert, e: ItemEnrichment) -> str:
    """What the item encoder embeds: ``item.encoder_text()`` plus the enrichment."""
    parts = [item.encoder_text()]
    if e.summary:
        parts.append(f"Summary: {e.summary}")
    if e.keywords:
        parts.append("Keywords: " + ", ".join(e.keywords) + ".")
    if e.categories:
        parts.append("Categories: " + ", ".join(e.categories) + ".")
    return " ".join(p for p in parts if p)


def item_label(title: str, category: str = "", tags: Sequence[str] = ()) -> str:
    """How an item appears among a user's recent titles: "Title (tag, tag)".

    Titles alone say little ("Four Rooms"); the item's own tags or category give
    the profile model (and the offline backend's lexicon) something to go on.
    """
    kinds = [t for t in tags if t] or ([category] if category else [])
    return f"{title} ({', '.join(kinds)})" if kinds else title


def profile_text(p: UserProfile) -> str:
    """What the text encoder embeds for a profile: the sentence and the interests."""
    if not p.interests:
        return p.profile
    return f"{p.profile} Interests: {', '.join(p.interests)}."
