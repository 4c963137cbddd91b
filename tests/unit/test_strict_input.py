"""Strict identifiers and JSON: nothing is rewritten silently, nothing merged by accident."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from genre.schemas import ClickEvent, ItemUpsert, Rejection, parse_record
from genre.schemas.jsonschema import SCHEMA_DIR
from genre.schemas.records import ID_PATTERN

TS = 1_700_000_000.0


def _click(user_id: str) -> bytes:
    return (
        '{"event_id": "e1", "user_id": ' + json.dumps(user_id) + ", "
        '"item_id": "i1", "ts": 1700000000.0}'
    ).encode()


@pytest.mark.parametrize(
    ("user_id", "shown"),
    [
        ("u\u00001", "U+0000"),  # an escaped NUL
        ("u\t1", "U+0009"),
        ("u\u200b1", "U+200B"),  # zero-width space
        ("\ufeffu1", "U+FEFF"),  # byte-order mark
        ("u\u202e1", "U+202E"),  # right-to-left override
        ("u\u00851", "U+0085"),  # C1 control (next line)
    ],
)
def test_invisible_or_control_characters_are_refused(user_id: str, shown: str) -> None:
    result = parse_record(ClickEvent, _click(user_id))
    assert isinstance(result, Rejection)
    assert result.reason == "invalid_value"
    assert shown in result.error and "user_id" in result.error


@pytest.mark.parametrize("user_id", [" u1", "u1 ", "\tu1", "u1\n", "   "])
def test_surrounding_whitespace_is_refused_not_stripped(user_id: str) -> None:
    result = parse_record(ClickEvent, _click(user_id))
    assert isinstance(result, Rejection)
    assert result.reason == "invalid_value"
    assert result.error


@pytest.mark.parametrize("user_id", ["u 1", "user@example.com", "ユーザー", "Ünïcödé-42", "a"])
def test_printable_ids_are_taken_as_sent(user_id: str) -> None:
    result = parse_record(ClickEvent, _click(user_id))
    assert isinstance(result, ClickEvent)
    assert result.user_id == user_id


@pytest.mark.parametrize(
    "payload",
    [
        b'{"event_id":"e1","user_id":"u1","user_id":"u2","item_id":"i1","ts":1.7e9}',
        b'{"event_id":"e1","user_id":"u1","item_id":"i1","item_id":"i2","ts":1.7e9}',
        b'{"event_id":"e1","user_id":"u1","item_id":"i1","ts":1.7e9,"context":{"a":"1","a":"2"}}',
    ],
)
def test_duplicate_keys_are_refused(payload: bytes) -> None:
    result = parse_record(ClickEvent, payload)
    assert isinstance(result, Rejection)
    assert result.reason == "invalid_json"
    assert "more than once" in result.error


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_standard_json_numbers_are_refused(constant: bytes) -> None:
    payload = b'{"event_id":"e1","user_id":"u1","item_id":"i1","ts":' + constant + b"}"
    result = parse_record(ClickEvent, payload)
    assert isinstance(result, Rejection) and result.reason == "invalid_json"


def test_item_ids_follow_the_same_rules() -> None:
    bad = parse_record(ItemUpsert, b'{"item_id": "i1 ", "title": "x"}')
    assert isinstance(bad, Rejection) and bad.reason == "invalid_value"


@pytest.mark.parametrize(
    "value", ["u 1", "ok", "u\t1", " u1", "u1 ", "u\u200b1", "\ufeffx", "x\u2028", "a"]
)
def test_the_published_pattern_agrees_with_the_worker(value: str) -> None:
    """Producers in other languages validate with the JSON Schema; it must agree."""
    worker_accepts = isinstance(parse_record(ClickEvent, _click(value)), ClickEvent)
    assert bool(re.match(ID_PATTERN, value)) == worker_accepts
    record = {"event_id": "e1", "user_id": value, "item_id": "i1", "ts": TS}
    schema = json.loads((SCHEMA_DIR / "ClickEvent.json").read_text())
    valid = jsonschema.Draft202012Validator(schema).is_valid(record)
    assert valid == worker_accepts


def test_item_records_keyed_otherwise_are_refused_and_tombstones_delete() -> None:
    from genre.workers.item_encoder import item_upsert

    good = item_upsert(b"i1", b'{"item_id": "i1", "title": "Heat"}')
    assert isinstance(good, ItemUpsert) and not good.deleted
    unkeyed = item_upsert(None, b'{"item_id": "i1", "title": "Heat"}')
    assert isinstance(unkeyed, ItemUpsert)
    other = item_upsert(b"i2", b'{"item_id": "i1", "title": "Heat"}')
    assert isinstance(other, Rejection) and other.reason == "invalid_value"
    assert "'i2'" in other.error and "'i1'" in other.error
    tombstone = item_upsert(b"i1", None)
    assert isinstance(tombstone, ItemUpsert) and tombstone.deleted and tombstone.item_id == "i1"
    assert isinstance(item_upsert(None, None), Rejection)
    bad_key = item_upsert(b"i1\t", None)
    assert isinstance(bad_key, Rejection) and bad_key.reason == "invalid_value"
