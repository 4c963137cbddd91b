"""Records, validation reason codes and the committed JSON Schema files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from genre.schemas import (
    ClickEvent,
    ClickType,
    ItemUpsert,
    Recommendation,
    RecommendedItem,
    Rejection,
    parse_record,
)
from genre.schemas.jsonschema import SCHEMA_DIR, render_all, write_all
from genre.schemas.records import PUBLIC_RECORDS, DeadLetter
from genre.schemas.validation import MAX_PAYLOAD_BYTES, printable

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "schemas" / "jsonschema"
TS = 1_700_000_000.0
REGEN = 'python -c "from genre.schemas.jsonschema import write_all; write_all()"'


def _click(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event_id": "e-1",
        "user_id": "u-1",
        "item_id": "i-1",
        "type": "click",
        "ts": TS,
    }
    data.update(over)
    return data


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((COMMITTED / f"{name}.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


# ---------------------------------------------------------------------------
# JSON Schema files
# ---------------------------------------------------------------------------


def test_schema_dir_is_the_committed_folder() -> None:
    assert SCHEMA_DIR.resolve() == COMMITTED.resolve()


def test_committed_schemas_are_current() -> None:
    rendered = render_all()
    committed = {p.name: p.read_text() for p in COMMITTED.glob("*.json")}
    assert set(committed) == set(rendered) == {f"{n}.json" for n in PUBLIC_RECORDS}, (
        f"schema files differ from the public records; run {REGEN}"
    )
    stale = sorted(name for name, text in rendered.items() if committed[name] != text)
    assert not stale, f"stale JSON Schema files {stale}; run {REGEN}"


def test_write_all_writes_what_render_all_renders(tmp_path: Path) -> None:
    paths = write_all(tmp_path)
    rendered = render_all()
    assert sorted(p.name for p in paths) == sorted(rendered)
    for p in paths:
        assert p.read_text() == rendered[p.name]
        assert json.loads(p.read_text())["$id"].endswith(f"/{p.name}")


def test_click_event_schema_accepts_valid_and_rejects_invalid() -> None:
    v = _validator("ClickEvent")
    good = ClickEvent.model_validate(_click(weight=4.0, context={"device": "tv"}))
    assert not list(v.iter_errors(good.model_dump(mode="json")))
    assert not list(v.iter_errors(_click()))

    no_item = _click()
    del no_item["item_id"]
    errors = list(v.iter_errors(no_item))
    assert errors and any("item_id" in e.message for e in errors)

    bad_ts = _click(ts="yesterday")
    errors = list(v.iter_errors(bad_ts))
    assert errors and any(list(e.path) == ["ts"] for e in errors)

    assert list(v.iter_errors(_click(type="teleport")))
    assert list(v.iter_errors(_click(extra="nope")))  # additionalProperties: false


def test_recommendation_schema_matches_model_output() -> None:
    v = _validator("Recommendation")
    rec = Recommendation(
        user_id="u-1",
        items=[
            RecommendedItem(
                item_id="i-2", score=0.9, source="ann", reason="matches your taste", title="T"
            )
        ],
        model_version="blend@1",
        trigger_event_id="e-1",
        generated_at=TS,
        latency_ms=12.5,
    )
    as_json = json.loads(rec.to_bytes())
    assert not list(v.iter_errors(as_json))

    broken = dict(as_json)
    del broken["items"]
    assert list(v.iter_errors(broken))
    broken = dict(as_json, items=[{"item_id": "i-2"}])  # item without score/source/reason
    assert list(v.iter_errors(broken))

    # Where the latency went, per hop (ms): optional, so older lists still validate.
    assert as_json.get("hops") is None
    hops = {"ingest": 1.5, "fold": 0.25, "handoff": 0.0, "wait": 3.0, "score": 7.75}
    timed = Recommendation.from_bytes(rec.model_copy(update={"hops": hops}).to_bytes())
    assert timed.hops == hops
    assert not list(v.iter_errors(json.loads(timed.to_bytes())))
    assert list(v.iter_errors(dict(as_json, hops={"fold": "fast"})))
    assert list(v.iter_errors(dict(as_json, hops=[1.0])))


def test_every_public_schema_checks_itself() -> None:
    for name in PUBLIC_RECORDS:
        _validator(name)


# ---------------------------------------------------------------------------
# parse_record reason codes
# ---------------------------------------------------------------------------


def _reason(payload: bytes | None, model: type = ClickEvent) -> str:
    result = parse_record(model, payload)
    assert isinstance(result, Rejection), f"expected a rejection, got {result!r}"
    assert result.error  # always a human-readable error too
    return result.reason


def _json(data: Any) -> bytes:
    return json.dumps(data).encode()


def test_empty_payload() -> None:
    assert _reason(None) == "empty_payload"
    assert _reason(b"") == "empty_payload"


def test_payload_too_large() -> None:
    big = _json(_click(context={"x": "a" * 500})).ljust(MAX_PAYLOAD_BYTES + 1)
    assert _reason(big) == "payload_too_large"
    # exactly at the limit is still parsed (and fails later for other reasons, or not at all)
    at_limit = _json(_click()).ljust(MAX_PAYLOAD_BYTES)
    assert isinstance(parse_record(ClickEvent, at_limit), ClickEvent)


def test_invalid_json() -> None:
    assert _reason(b"{not json") == "invalid_json"
    assert _reason(b'{"event_id": "e"') == "invalid_json"
    assert _reason(b'{"event_id": "\xff\xfe", "user_id": "u"}') == "invalid_json"


def test_not_an_object() -> None:
    assert _reason(b'[{"event_id": "e"}]') == "not_an_object"
    assert _reason(b"42") == "not_an_object"
    assert _reason(b'"str"') == "not_an_object"


def test_missing_field() -> None:
    data = _click()
    del data["item_id"]
    result = parse_record(ClickEvent, _json(data))
    assert isinstance(result, Rejection)
    assert result.reason == "missing_field"
    assert "item_id" in result.error


def test_unknown_field() -> None:
    result = parse_record(ClickEvent, _json(_click(colour="red")))
    assert isinstance(result, Rejection)
    assert result.reason == "unknown_field"
    assert "colour" in result.error


@pytest.mark.parametrize(
    "over",
    [
        {"ts": "yesterday"},
        {"ts": None},
        {"user_id": 123},
        {"context": ["a"]},
        {"weight": "heavy"},
    ],
)
def test_wrong_type(over: dict[str, Any]) -> None:
    assert _reason(_json(_click(**over))) == "wrong_type"


@pytest.mark.parametrize(
    "over",
    [
        {"ts": TS * 1000},  # milliseconds
        {"ts": 12.0},  # far in the past
        {"weight": -1.0},
        {"user_id": "   "},  # empty after strip
        {"item_id": "x" * 129},
        {"type": "teleport"},
    ],
)
def test_invalid_value(over: dict[str, Any]) -> None:
    assert _reason(_json(_click(**over))) == "invalid_value"


def test_ms_timestamp_error_explains_the_fix() -> None:
    result = parse_record(ClickEvent, _json(_click(ts=TS * 1000)))
    assert isinstance(result, Rejection)
    assert "milliseconds" in result.error
    assert "ts" in result.error


def test_good_record_round_trips() -> None:
    result = parse_record(ClickEvent, _json(_click(user_id="u 1", weight=2.5)))
    assert isinstance(result, ClickEvent)
    assert result.user_id == "u 1"  # taken exactly as sent
    assert result.type is ClickType.CLICK
    payload = result.to_bytes()
    assert b"context" not in payload  # None fields are left out
    again = ClickEvent.from_bytes(payload)
    assert again == result
    assert parse_record(ClickEvent, payload) == result


def test_item_upsert_round_trip_and_rejections() -> None:
    item = ItemUpsert(item_id="i-9", title="Heat", tags=["crime"], ts=TS)
    assert ItemUpsert.from_bytes(item.to_bytes()) == item
    assert parse_record(ItemUpsert, item.to_bytes()) == item
    assert _reason(_json({"title": "no id"}), ItemUpsert) == "missing_field"
    assert _reason(_json({"item_id": "i", "tags": "crime"}), ItemUpsert) == "wrong_type"


def test_records_are_frozen() -> None:
    event = ClickEvent.model_validate(_click())
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        event.user_id = "other"  # type: ignore[misc]


def test_printable_escapes_and_truncates() -> None:
    assert printable(None) == ""
    assert printable(b'{"a": 1}') == '{"a": 1}'
    assert printable(b"ab\xffcd") == "ab\\xffcd"
    assert printable("é".encode()) == "é"
    text = printable(b"x" * 5000, limit=100)
    assert text.startswith("x" * 100)
    assert "x" * 101 not in text
    assert "truncated, 5000 bytes" in text
    assert "truncated" not in printable(b"x" * 100, limit=100)


def test_dead_letter_holds_printable_payload() -> None:
    raw = b"\xff{bad"
    letter = DeadLetter(
        source_topic="genre.clicks",
        source_partition=0,
        source_offset=7,
        raw_payload=printable(raw),
        reason="invalid_json",
        error="x",
        failed_at=TS,
    )
    assert DeadLetter.from_bytes(letter.to_bytes()).raw_payload == "\\xff{bad"


# ---------------------------------------------------------------------------
# ItemUpsert.encoder_text
# ---------------------------------------------------------------------------


def test_encoder_text_contains_all_parts() -> None:
    item = ItemUpsert(
        item_id="i-1",
        title="Toy Story",
        text="A cowboy doll is threatened by a new spaceman figure.",
        category="Animation",
        tags=["pixar", "family"],
        ts=TS,
    )
    text = item.encoder_text()
    for part in ("Toy Story", "Animation", "pixar", "family", "cowboy doll"):
        assert part in text
    assert text.index("Toy Story") < text.index("cowboy doll")


def test_encoder_text_skips_empty_parts() -> None:
    assert ItemUpsert(item_id="i", title="Heat", ts=TS).encoder_text() == "Heat"
    only_text = ItemUpsert(item_id="i", text="body", ts=TS).encoder_text()
    assert only_text == "body"
    assert "Category" not in only_text and "Tags" not in only_text


def test_trusted_batch_decoding_round_trips_what_the_agents_send() -> None:
    from genre.schemas import CoClicks, UserClick, UserClicks

    event = ClickEvent(event_id="e1", user_id="u1", item_id="i7", ts=1.7e9, type="view")
    clicks = [
        UserClick(event=event, produced_at=1.7e9 + i, source_partition=i, source_offset=5 + i)
        for i in range(3)
    ]
    assert UserClicks.from_trusted_bytes(UserClicks(clicks=clicks).to_bytes()) == clicks
    co = [("a", ["b", "c"], 1.0, 1.7e9), ("x", [], 0.0, 1.7e9 + 1)]
    assert CoClicks.from_trusted_bytes(CoClicks.encode(co)) == co
    # The compact rows are what the validated model writes too.
    assert CoClicks.from_trusted_bytes(CoClicks(records=co).to_bytes()) == co
