"""Records that cross topic boundaries: what producers send and consumers read.

Every record is a pydantic model, serialised as JSON. JSON Schema files are
generated from these models (``genre.schemas.jsonschema``) for producers in
other languages; a test keeps them current.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1


def _check_ids(record: Any, names: tuple[str, ...]) -> None:
    """Check the identifier fields ``names`` of a record (``_check_identifier``)."""
    values = [getattr(record, n) for n in names]
    # The common case at C speed. Printable text holds no whitespace but the plain
    # space, so an id printable without a space at either end is not padded.
    if "".join(values).isprintable() and " " not in "".join([v[0] + v[-1] for v in values]):
        return
    for name, value in zip(names, values, strict=True):
        try:
            _check_identifier(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None


def _check_identifier(value: str) -> str:
    if not value.isprintable():  # C speed; the detail below only for the error
        bad = sorted({f"U+{ord(c):04X}" for c in value if not c.isprintable()})
        raise ValueError(
            f"{value!r} contains invisible, control or non-space separator characters "
            f"({', '.join(bad)}); identifiers must be printable text"
        )
    if value != value.strip():
        raise ValueError(
            f"{value!r} has whitespace at its start or end; identifiers are taken as sent, "
            "not trimmed (trim them before sending)"
        )
    return value


#: The identifier rules as a JSON Schema pattern, for producers in other languages: no
#: whitespace at either end; no control, format (zero-width, bidi), or separator
#: characters but the plain space. The worker's own check is ``str.isprintable``
#: (Unicode "Other" and "Separator" categories, the ASCII space excepted), which also
#: refuses unassigned code points; the pattern is the part ECMA-262 regexes can say.
_BAD = (
    r"\u0000-\u001f\u007f-\u00a0\u00ad\u1680\u180e\u2000-\u200f\u2028-\u202f"
    r"\u205f-\u206f\u3000\ufeff\ufff9-\ufffb"
)
ID_PATTERN = rf"^[^\s{_BAD}](?:[^{_BAD}]*[^\s{_BAD}])?$"


#: Identifiers are short printable strings, taken exactly as sent: long enough for
#: UUIDs and URNs, short enough that a key never dominates a message; printable
#: (``str.isprintable``) with no whitespace at either end.
Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128),
    # Checked by the record (``_check_ids``): one call per record, not one per field.
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            # No whitespace at either end, no C0/C1 controls or zero-width/format marks.
            "pattern": ID_PATTERN,
        }
    ),
]

#: Timestamps are Unix epoch seconds (float). Anything before 1990 or after
#: 2100 is almost certainly a unit mistake (milliseconds sent as seconds).
MIN_TS = 631_152_000.0  # 1990-01-01
MAX_TS = 4_102_444_800.0  # 2100-01-01


def _check_ts(value: float) -> float:
    if not MIN_TS <= value <= MAX_TS:
        raise ValueError(
            f"ts={value} is outside 1990..2100 in Unix seconds; send seconds, not milliseconds"
        )
    return value


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_bytes(self) -> bytes:
        """Serialise as compact JSON bytes."""
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, payload: bytes | str) -> Any:
        """Parse and validate JSON bytes; raises pydantic.ValidationError."""
        return cls.model_validate_json(payload)


class ClickType(StrEnum):
    """Kinds of user interaction; the weight of each comes from config."""

    CLICK = "click"
    VIEW = "view"
    RATE = "rate"
    PURCHASE = "purchase"


class ClickEvent(_Record):
    """A user interacted with an item. Producers write these to ``genre.clicks``."""

    event_id: Identifier = Field(
        description="Unique id; re-sent events with the same id count once."
    )
    user_id: Identifier
    item_id: Identifier
    type: ClickType = ClickType.CLICK
    ts: float = Field(description="Event time, Unix epoch seconds.")
    weight: float | None = Field(
        default=None, ge=0.0, le=100.0, description="Optional strength, e.g. a rating."
    )
    context: dict[str, str] | None = Field(
        default=None, description="Optional free-form context (device, page, session)."
    )

    _ts = field_validator("ts")(_check_ts)

    @model_validator(mode="after")
    def _printable_ids(self) -> ClickEvent:
        _check_ids(self, ("event_id", "user_id", "item_id"))
        return self

    @field_validator("context")
    @classmethod
    def _small_context(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (len(value) > 32 or any(len(v) > 512 for v in value.values())):
            raise ValueError("context allows at most 32 keys of at most 512 characters each")
        return value


class ItemUpsert(_Record):
    """Create, update or delete an item. Producers write these to ``genre.items``."""

    item_id: Identifier
    title: Annotated[str, StringConstraints(max_length=512)] = ""
    text: Annotated[str, StringConstraints(max_length=20_000)] = ""
    category: Annotated[str, StringConstraints(max_length=128)] = ""
    tags: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list, max_length=64
    )
    ts: float = Field(default_factory=time.time)
    deleted: bool = False

    _ts = field_validator("ts")(_check_ts)

    @model_validator(mode="after")
    def _printable_id(self) -> ItemUpsert:
        _check_ids(self, ("item_id",))
        return self

    def encoder_text(self) -> str:
        """The text the item encoder embeds: title, category, tags and description."""
        parts = [self.title]
        if self.category:
            parts.append(f"Category: {self.category}.")
        if self.tags:
            parts.append("Tags: " + ", ".join(self.tags) + ".")
        if self.text:
            parts.append(self.text)
        return " ".join(p for p in parts if p)


class RecommendedItem(_Record):
    """One ranked item in a recommendation list."""

    item_id: str
    score: float
    source: str = Field(description="Candidate source that contributed most to the score.")
    reason: str = Field(description="Human-readable explanation.")
    title: str = ""


class Recommendation(_Record):
    """A fresh ranked list for one user, published to ``genre.recommendations``."""

    schema_version: int = SCHEMA_VERSION
    user_id: str
    items: list[RecommendedItem]
    model_version: str
    trigger_event_id: str
    generated_at: float = Field(description="Unix epoch seconds when the list was produced.")
    latency_ms: float = Field(description="From the trigger click's produce time to generation.")
    arm: str | None = Field(
        default=None,
        description="The A/B arm that made the list (experiments.arms); null without an "
        "experiment.",
    )
    hops: dict[str, float] | None = Field(
        default=None,
        description="Where latency_ms went, in ms: ingest (click produced -> taken by the "
        "fold), fold, handoff (fold -> scorer, through a topic in split roles), wait (for the "
        "scorer), score.",
    )


class DeadLetter(_Record):
    """A rejected input record with the reason, published to ``genre.dlq``."""

    source_topic: str
    source_partition: int
    source_offset: int
    raw_payload: str = Field(
        description="The payload as received (UTF-8, invalid bytes escaped, truncated at 4 KiB); "
        "for unknown_item, the validated event re-serialised."
    )
    raw_key: str | None = None
    reason: str = Field(description="Machine-readable reason code, e.g. invalid_json.")
    error: str = Field(description="Human-readable description of what was wrong.")
    failed_at: float = Field(default_factory=time.time)


class ScoreRequest(_Record):
    """Internal: a stream role asks a scorer role in another process for a fresh list.

    Carries what the scorer needs of the user (it keeps no user table): the
    history, the seen set, the click count and the vector as base64 float32.
    Within one process (``genre worker --role all``) no request is written: the
    fold hands the scorer a ``ScoreContext`` (streams/score_context.py) instead.
    """

    user_id: str
    trigger_event_id: str
    trigger_produced_at: float
    trigger_ts: float = Field(description="Event time of the trigger click.")
    #: Items the user clicked since the previous request (online hit rate).
    clicked_items: list[str] = Field(default_factory=list)
    recent_items: list[str] = Field(default_factory=list)
    seen_items: list[str] = Field(default_factory=list)
    #: The user vector as base64 little-endian float32.
    vector_b64: str | None = None
    clicks: int = 0
    #: When the fold took the trigger click and when it finished (Unix s): hop timings.
    taken_at: float | None = None
    folded_at: float | None = None


class ItemVector(_Record):
    """Internal: an item's latest vector and payload on the compacted ``item_vectors``
    topic, keyed by item id. A null value (tombstone) deletes the item."""

    item_id: str
    vector: str = Field(description="The item vector, base64 little-endian float32.")
    payload: dict[str, Any] = Field(default_factory=dict)


class ProfileRequest(_Record):
    """Internal: a user's interest profile is due (every ``llm.profiles.every_k_clicks``).

    Keyed by user and co-partitioned with the user-state table; carries the items
    the profile is written from, so the profile agent needs no table read.
    """

    user_id: str
    recent_items: list[str]
    clicks: int = Field(description="The user's click count when the profile fell due.")
    trigger_ts: float = Field(description="Event time of the click that made it due.")


class UserClick(_Record):
    """Internal: a validated click on its way to the user-state agent, keyed by user."""

    event: ClickEvent
    produced_at: float = Field(description="Produce time of the original click message.")
    source_partition: int
    source_offset: int
    #: The producer's message key, base64 (dead letters name it, not the batch's key).
    source_key_b64: str | None = None


#: One item's co-click evidence from one click, on the wire: [item_id, neighbours,
#: clicks, ts] (see ``CoClicks``).
CoClickRow = tuple[str, list[str], float, float]


class UserClicks(_Record):
    """Internal: a micro-batch of validated clicks, all of one ``user-clicks`` partition.

    Internal topics carry micro-batches, one message per partition per agent
    batch, so a worker sends a few messages per batch instead of one per click.
    """

    clicks: list[UserClick]

    @classmethod
    def from_trusted_bytes(cls, payload: bytes) -> list[UserClick]:
        """The clicks of a batch GENRE's ingest agent wrote, without re-validating them.

        Every click was validated at ingest; validating again costs ~9 us per
        click against ~2 us for this, a third of the user-state agent's budget.
        """
        out = []
        for c in orjson.loads(payload)["clicks"]:
            event = c.pop("event")
            event["type"] = ClickType(event.get("type", ClickType.CLICK))
            out.append(UserClick.model_construct(event=ClickEvent.model_construct(**event), **c))
        return out


class CoClicks(_Record):
    """Internal: the co-click evidence of one ``co-clicks`` partition, in click order.

    Keyed by item; each row is ``[item_id, neighbours, clicks, ts]``: the item gains
    ``clicks`` toward its popularity and an edge to each neighbour, at event time
    ``ts``. Rows, not objects: a click makes one per item it touches (up to six),
    and building and parsing an object per row cost the fold more than the graph
    update itself.
    """

    records: list[CoClickRow]

    @staticmethod
    def encode(rows: list[CoClickRow]) -> bytes:
        """The batch message for ``rows`` (what ``to_bytes`` writes, without validation)."""
        return orjson.dumps({"records": rows})

    @classmethod
    def from_trusted_bytes(cls, payload: bytes) -> list[CoClickRow]:
        """The rows of a batch GENRE's fold wrote, without re-validating them."""
        return [tuple(r) for r in orjson.loads(payload)["records"]]  # type: ignore[misc]


class ScoreRequests(_Record):
    """Internal: a micro-batch of score requests, all of one ``score-requests`` partition."""

    requests: list[ScoreRequest]


class ProfileRequests(_Record):
    """Internal: a micro-batch of profile requests, all of one ``profile-requests`` partition."""

    requests: list[ProfileRequest]


PUBLIC_RECORDS: dict[str, type[BaseModel]] = {
    "ClickEvent": ClickEvent,
    "ItemUpsert": ItemUpsert,
    "Recommendation": Recommendation,
    "DeadLetter": DeadLetter,
}
