"""The pull API's request and response bodies (``genre api``; docs/api.md).

Responses are pydantic models, so the OpenAPI document (``genre.schemas.openapi``)
and the typed client (``genre.client``) are generated from the same definitions
the server answers with. ``split_events`` cuts a POST body into one raw payload per
event, so each is validated by ``parse_record`` exactly as ingest validates a
message from ``genre.clicks``.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict, Field

from genre.schemas.records import RecommendedItem
from genre.schemas.validation import Rejection


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserRecommendations(_Body):
    """A user's latest list, as the scorer last published it to ``genre.recommendations``."""

    user_id: str
    items: list[RecommendedItem]
    model_version: str
    generated_at: float = Field(description="Unix epoch seconds when the list was produced.")
    trigger_event_id: str = Field(description="The click that made this list.")
    arm: str | None = Field(
        default=None,
        description="The A/B arm that made the list (experiments.arms); null without an "
        "experiment.",
    )


class Neighbour(_Body):
    """An item near another, with its score (cosine similarity or decayed co-click weight)."""

    item_id: str
    score: float
    title: str = ""


class SimilarItems(_Body):
    """Neighbours of one item: by content (cosine of item vectors) and by co-clicks."""

    item_id: str
    title: str = ""
    k: int
    content: list[Neighbour] = Field(description="Nearest items by text embedding, best first.")
    co_click: list[Neighbour] = Field(
        description="Items clicked together with this one, by time-decayed co-click weight."
    )


class EventsAccepted(_Body):
    """202: every event was acknowledged by the broker (on ``genre.clicks``, keyed by user)."""

    accepted: list[str] = Field(description="Event ids, in request order.")


class RecordError(_Body):
    """Why one event of a request was refused: the ingest reason code and what was wrong."""

    index: int = Field(description="Position of the event in the request (0 for a single event).")
    event_id: str | None = None
    reason: str = Field(description="The DLQ reason code ingest would give, e.g. missing_field.")
    error: str


class ErrorBody(_Body):
    """Any error answer: what was wrong and what to do; per-record reasons for bad events,
    and for a 503 which event ids the broker did and did not acknowledge."""

    error: str
    reason: str | None = None
    records: list[RecordError] | None = None
    accepted: list[str] | None = None
    not_accepted: list[str] | None = None


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def split_events(body: bytes) -> list[bytes] | Rejection:
    """The raw JSON of each event in ``body``: one object, or an array of objects.

    Elements are cut out of the body as sent (not re-serialised), so ``parse_record``
    sees each exactly as the fold would see a message: a repeated key, NaN or a bad
    type in one element is that element's own reason. Only the array's own syntax
    is judged here (``invalid_json``, ``empty_payload``).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("invalid_json", f"the body is not UTF-8: {exc}")
    at = _skip(text, 0)
    if at == len(text):
        return Rejection(
            "empty_payload", "the body is empty; send a ClickEvent object or an array of them"
        )
    if text[at] != "[":
        return [body]
    at = _skip(text, at + 1)
    if at < len(text) and text[at] == "]":
        if _skip(text, at + 1) != len(text):
            return Rejection("invalid_json", f"text after the array at character {at + 1}")
        return Rejection("empty_payload", "the array holds no events; send at least one")
    out: list[bytes] = []
    while True:
        try:
            _, end = _DECODER.raw_decode(text, at)
        except (json.JSONDecodeError, RecursionError) as exc:
            return Rejection("invalid_json", f"event {len(out)} is not valid JSON: {exc}")
        out.append(text[at:end].encode("utf-8"))
        at = _skip(text, end)
        if at < len(text) and text[at] == ",":
            at = _skip(text, at + 1)
            continue
        if at < len(text) and text[at] == "]" and _skip(text, at + 1) == len(text):
            return out
        return Rejection(
            "invalid_json",
            f"expected ',' or the array's closing ']' after event {len(out) - 1} "
            f"(character {at}); send a JSON array of objects",
        )


def _skip(text: str, at: int) -> int:
    match = _WS.match(text, at)
    return at if match is None else match.end()


#: Every body the API answers with, by name (the OpenAPI document's components).
API_BODIES: dict[str, type[BaseModel]] = {
    "UserRecommendations": UserRecommendations,
    "SimilarItems": SimilarItems,
    "EventsAccepted": EventsAccepted,
    "ErrorBody": ErrorBody,
}
