"""Dead letters: a stable identity per rejected record, and no serializer warnings."""

from __future__ import annotations

import base64
import warnings

from genre.schemas import ClickEvent, UserClick, UserClicks
from genre.schemas.records import ClickType
from genre.streams.app import dead_letter_key


def test_a_dead_letter_is_keyed_by_the_record_it_stands_for() -> None:
    key = dead_letter_key("genre.clicks", 3, 1207)
    assert key == b"genre.clicks/3/1207"
    # The same record rejected twice (before and after a restart) gets the same key;
    # any other record a different one.
    assert key == dead_letter_key("genre.clicks", 3, 1207)
    assert key != dead_letter_key("genre.clicks", 3, 1208)
    assert key != dead_letter_key("genre.clicks", 2, 1207)


def test_re_keyed_clicks_keep_their_type_and_producer_key() -> None:
    event = ClickEvent(event_id="e1", user_id="u1", item_id="i1", type="view", ts=1.7e9)
    wire = UserClicks(
        clicks=[
            UserClick(
                event=event,
                produced_at=1.7e9,
                source_partition=1,
                source_offset=9,
                source_key_b64=base64.b64encode(b"\x00raw").decode(),
            )
        ]
    ).to_bytes()
    (back,) = UserClicks.from_trusted_bytes(wire)
    assert back.event.type is ClickType.VIEW
    assert base64.b64decode(back.source_key_b64 or "") == b"\x00raw"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydantic's serializer warning fails the test
        assert back.event.to_bytes() == event.to_bytes()


def test_a_process_remembers_the_letters_it_wrote() -> None:
    """A record read twice by one process (a rebalance seeks back past uncommitted
    offsets) is dead-lettered once; the memory is bounded, oldest forgotten first."""
    from genre.streams.app import RecentKeys

    written = RecentKeys(2)
    first = dead_letter_key("genre.clicks", 0, 1)
    assert written.add(first) is True
    assert written.add(first) is False  # the repeat is not written
    written.add(dead_letter_key("genre.clicks", 0, 2))
    written.add(dead_letter_key("genre.clicks", 0, 3))
    assert written.add(first) is True  # forgotten after `size` newer letters
