"""Parse raw topic payloads into records, or explain precisely why not.

Reason codes are machine-readable and stable: they label DLQ records and the
``genre_dlq_records_total`` metric.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

#: Inputs are size-limited before parsing so a huge payload cannot stall an agent.
MAX_PAYLOAD_BYTES = 64 * 1024

_PYDANTIC_REASONS = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    # pydantic's parser rejects JSON that orjson accepted (e.g. nesting past its
    # recursion limit): still malformed JSON, not a bad value.
    "json_invalid": "invalid_json",
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload was rejected: a reason code and a human-readable error."""

    reason: str
    error: str


def _reason_for(exc: ValidationError) -> str:
    first = exc.errors()[0]
    kind = str(first.get("type", ""))
    if kind in _PYDANTIC_REASONS:
        return _PYDANTIC_REASONS[kind]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return "wrong_type"
    return "invalid_value"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<record>"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


def parse_record(model: type[T], payload: bytes | None) -> T | Rejection:
    """Validate ``payload`` as ``model``; return the record or a ``Rejection``."""
    if payload is None or len(payload) == 0:
        return Rejection("empty_payload", "the message value is empty; send a JSON object")
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(
            "payload_too_large",
            f"{len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit; "
            "send one event per message",
        )
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Rejection("invalid_json", f"not valid UTF-8 JSON: {exc}")
    duplicate = _duplicate_keys(payload, data)
    if duplicate:
        return Rejection("invalid_json", duplicate)
    if not isinstance(data, dict):
        return Rejection("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    try:
        # Strict JSON mode: "ts": "1700000000" or "weight": true are rejected, as the
        # published JSON Schema rejects them (the orjson pass above only names the reason).
        return model.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        return Rejection(_reason_for(exc), _describe(exc))


def _duplicate_keys(payload: bytes, data: Any) -> str | None:
    """Why ``payload`` is refused for naming a key twice in one object, or None.

    JSON allows repeated keys and every fast parser, orjson included, keeps the
    last one silently, so a click with two user ids would count for the second.
    Fast path: without backslashes every quote in the payload delimits a string,
    so each quote followed by a colon ends a key; as many of those as keys parsed
    means no object repeated one. Otherwise the standard library's parser, whose
    hook sees every object's pairs, decides.
    """
    if b"\\" not in payload and len(_KEY_END.findall(payload)) == _count_keys(data):
        return None
    try:
        json.loads(payload, object_pairs_hook=_unique_pairs)
    except _Repeated as exc:
        return (
            f"the JSON object names {', '.join(repr(k) for k in exc.args[0])} more than "
            "once; send each field once"
        )
    return None


_KEY_END = re.compile(rb'"\s*:')


def _count_keys(data: Any) -> int:
    n = 0
    if type(data) is dict:
        n = len(data)
        values: Any = data.values()
    elif type(data) is list:
        values = data
    else:
        return 0
    for value in values:
        if type(value) is dict or type(value) is list:
            n += _count_keys(value)
    return n


class _Repeated(ValueError):
    """A JSON object names these keys more than once."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        names = [k for k, _ in pairs]
        raise _Repeated(sorted({k for k in names if names.count(k) > 1}))
    return out


def printable(payload: bytes | None, limit: int = 4096) -> str:
    """The payload as text for a dead letter: UTF-8 with invalid bytes escaped, truncated."""
    if payload is None:
        return ""
    text = payload[:limit].decode("utf-8", errors="backslashreplace")
    if len(payload) > limit:
        text += f"...[truncated, {len(payload)} bytes]"
    return text
