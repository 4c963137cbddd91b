"""Parse raw topic payloads into records, or explain precisely why not.

Reason codes are machine-readable and stable: they label DLQ records and the
``genre_dlq_records_total`` metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

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
    if not isinstance(data, dict):
        return Rejection("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    try:
        # Strict JSON mode: "ts": "1700000000" or "weight": true are rejected, as the
        # published JSON Schema rejects them (the orjson pass above only names the reason).
        return model.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        return Rejection(_reason_for(exc), _describe(exc))


def printable(payload: bytes | None, limit: int = 4096) -> str:
    """The payload as text for a dead letter: UTF-8 with invalid bytes escaped, truncated."""
    if payload is None:
        return ""
    text = payload[:limit].decode("utf-8", errors="backslashreplace")
    if len(payload) > limit:
        text += f"...[truncated, {len(payload)} bytes]"
    return text
