"""The boundary between GENRE and a language model: output schemas, prompt framing,
strict parsing, and the circuit breaker.

Nothing a model says is trusted. Item data goes into the prompt only as a JSON payload
whose ``<`` and ``>`` are escaped, so text inside it can never forge the delimiters
around it. The answer must be one JSON object of exactly the schema's keys; strings are
cleaned (control characters removed, whitespace collapsed) and truncated, lists are
capped, and anything else - prose, another shape, an extra key - is rejected with a
reason code (``invalid_json`` or ``schema``) so the caller falls back.
"""

from __future__ import annotations

import json
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

SUMMARY_MAX = 400
PROFILE_MAX = 300
KEYWORDS_MAX = 10
CATEGORIES_MAX = 5
INTERESTS_MAX = 5
TERM_MAX = 40
INTEREST_MAX = 60
#: Item text beyond this many characters is not sent to the model (prompt size bound).
PAYLOAD_TEXT_MAX = 6000
#: Titles sent for a profile are cut to this many characters each.
PAYLOAD_TITLE_MAX = 200

_WS = re.compile(r"\s+")
M = TypeVar("M", bound=BaseModel)


class LLMCallError(Exception):
    """A model call failed; ``reason`` is the fallback reason code.

    ``transport`` marks failures of the endpoint itself (timeouts, HTTP errors, broken
    responses): they retry when ``retryable`` and count towards the circuit breaker.
    Bad *content* (``invalid_json``, ``schema``) is neither: the endpoint is healthy and
    asking again at temperature 0 would give the same answer.
    """

    def __init__(
        self, reason: str, message: str = "", *, retryable: bool = False, transport: bool = True
    ) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.retryable = retryable
        self.transport = transport


def clean_text(value: str, limit: int) -> str:
    """Drop control/format characters, collapse whitespace, cut to ``limit`` characters."""
    kept = "".join(
        " " if ch in "\t\n\r\v\f" else ch
        for ch in value
        if ch in "\t\n\r\v\f" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co")
    )
    text = _WS.sub(" ", kept).strip()
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:-")


def _clean_list(value: Any, max_items: int, limit: int, lower: bool) -> list[str]:
    if not isinstance(value, list | tuple):
        raise ValueError("must be a list of strings")
    out: list[str] = []
    seen: set[str] = set()
    for entry in value:
        if not isinstance(entry, str):
            raise ValueError("must be a list of strings")
        text = clean_text(entry, limit)
        if lower:
            text = text.lower()
        key = text.casefold()
        if text and key not in seen:
            seen.add(key)
            out.append(text)
        if len(out) == max_items:
            break
    return out


def _strict_str(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return clean_text(value, limit)


class ItemEnrichment(BaseModel):
    """What the model (or the offline backend) adds to an item."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    summary: str
    keywords: list[str]
    categories: list[str]

    @field_validator("summary", mode="before")
    @classmethod
    def _summary(cls, v: Any) -> str:
        return _strict_str(v, SUMMARY_MAX)

    @field_validator("keywords", mode="before")
    @classmethod
    def _keywords(cls, v: Any) -> list[str]:
        return _clean_list(v, KEYWORDS_MAX, TERM_MAX, lower=True)

    @field_validator("categories", mode="before")
    @classmethod
    def _categories(cls, v: Any) -> list[str]:
        return _clean_list(v, CATEGORIES_MAX, TERM_MAX, lower=True)


class UserProfile(BaseModel):
    """A short description of a user's tastes, from the titles they interacted with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: str
    interests: list[str]

    @field_validator("profile", mode="before")
    @classmethod
    def _profile(cls, v: Any) -> str:
        return _strict_str(v, PROFILE_MAX)

    @field_validator("interests", mode="before")
    @classmethod
    def _interests(cls, v: Any) -> list[str]:
        return _clean_list(v, INTERESTS_MAX, INTEREST_MAX, lower=True)


# --------------------------------------------------------------------------- prompts


def payload_json(data: dict[str, Any]) -> str:
    """Canonical JSON of a payload, safe to embed between text delimiters.

    Keys sorted, no NaN; ``<``, ``>`` and ``&`` are written as ``\\u003c`` etc. (still the
    same JSON value), so no delimiter such as ``ITEM_PAYLOAD>>>`` can occur inside it.
    """
    text = json.dumps(data, ensure_ascii=False, sort_keys=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def item_payload(title: str, category: str, tags: Sequence[str], text: str) -> dict[str, Any]:
    """The fields of an item a model sees."""
    return {
        "title": title,
        "category": category,
        "tags": list(tags),
        "text": text[:PAYLOAD_TEXT_MAX],
    }


def profile_payload(titles: Sequence[str]) -> dict[str, Any]:
    """The fields of a user a model sees: recent titles, oldest first."""
    return {"titles": [t[:PAYLOAD_TITLE_MAX] for t in titles]}


def render_messages(system: str, user_template: str, payload: str) -> list[dict[str, str]]:
    """Chat messages: the system prompt as given, the payload put into the user template.

    Plain replacement, not ``str.format``: templates hold JSON braces, and the payload is
    inserted once, after the template is final, so nothing in it is interpreted.
    """
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user_template.replace("{payload}", payload, 1)},
    ]


# --------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def parse_output(content: str, model: type[M]) -> M:
    """Parse a model's answer into ``model``; raises ``LLMCallError`` (invalid_json/schema).

    The whole answer must be one JSON object (a single ```json fence around it is
    tolerated). Prose around it, another shape or an extra key is a failure.
    """
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise LLMCallError("invalid_json", "the answer is not JSON", transport=False) from None
    if not isinstance(data, dict):
        raise LLMCallError("schema", "the answer is not a JSON object", transport=False)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise LLMCallError(
            "schema",
            f"the answer does not match the schema: {exc.error_count()} error(s)",
            transport=False,
        ) from None


# --------------------------------------------------------------------------- breaker


class CircuitBreaker:
    """Consecutive-failure circuit breaker: closed -> open -> half-open -> closed.

    After ``failures`` consecutive failed calls the circuit opens: ``allow()`` says no for
    ``reset_s``; then exactly one probe is let through (half-open) and its result closes
    or re-opens the circuit.

    A small one of our own rather than ``purgatory``: purgatory signals an open circuit by
    raising from an async context manager around a named breaker in a shared factory, and
    counts every exception as a failure. Here a call's "failure" is decided after retries
    and excludes bad content, the caller needs a plain yes/no to skip the network, the
    gauge must follow each state change, and tests need an injectable clock. That is ~50
    lines without another dependency.
    """

    def __init__(
        self,
        failures: int,
        reset_s: float,
        *,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.reset_s = reset_s
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        """closed, open or half_open."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._probing or self._clock() - self._opened_at >= self.reset_s:
                return "half_open"
            return "open"

    def allow(self) -> bool:
        """Whether a call may go to the network now (claims the probe when half-open)."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self._clock() - self._opened_at < self.reset_s:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        """The endpoint answered."""
        with self._lock:
            was_open = self._opened_at is not None
            self._count = 0
            self._opened_at = None
            self._probing = False
        if was_open and self._on_change:
            self._on_change(False)

    def failure(self) -> None:
        """The endpoint failed (after retries)."""
        with self._lock:
            self._count += 1
            opening = self._probing or (self._opened_at is None and self._count >= self.failures)
            if opening:
                self._opened_at = self._clock()
                self._probing = False
        if opening and self._on_change:
            self._on_change(True)

    def release(self) -> None:
        """A call ended without a verdict (cancelled): free the half-open probe slot."""
        with self._lock:
            self._probing = False
