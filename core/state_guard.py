"""Refuse to run on local state the broker no longer backs.

A worker keeps state on local disk (RocksDB tables, Qdrant local mode, Faust's
folder) that is only right together with what the broker holds: changelogs,
committed offsets, the item topics. If the broker loses its data (the embedded
broker's memory storage after a restart) or the worker is pointed at another
cluster, a restarted worker would carry on silently on state that no longer
matches: users lose clicks, old events are applied again, deleted items come
back from local Qdrant.

So every worker process leaves a *marker* on the broker, a record with a random
id in a compacted topic of its own (``<app id>-state-marker``), and keeps where it
wrote it next to its local state (``<data_dir>/state/<app id>.json``). At every
start the marker must still be there; if it is not, the worker stops with
``LostStateError`` (exit code 4) and the message names ``genre reset``, which
wipes the local state and the marker so the worker starts afresh.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genre.core.broker import ensure_topics

#: Exit code of a worker that refused to start on state the broker lost.
LOST_STATE_EXIT = 4


class LostStateError(RuntimeError):
    """The broker no longer holds the data this worker's local state was built on."""


@dataclass(frozen=True)
class Marker:
    """Where a worker's marker record is: topic, offset, and the id it carries."""

    topic: str
    offset: int
    marker_id: str


def marker_topic(app_id: str) -> str:
    """The topic that holds an app id's marker."""
    return f"{app_id}-state-marker"


def marker_path(data_dir: Path, app_id: str) -> Path:
    """Where a worker keeps its marker's position."""
    return data_dir / "state" / f"{app_id}.json"


def check_state(client_config: dict[str, Any], data_dir: Path, app_id: str) -> Marker:
    """Check this worker's marker is on the broker (first start: leave one); returns it.

    Raises ``LostStateError`` with the fix when the broker lost it.
    """
    path = marker_path(data_dir, app_id)
    topic = marker_topic(app_id)
    bootstrap = client_config["bootstrap.servers"]
    ensure_topics(bootstrap, {topic: 1}, compacted=[topic])
    if path.is_file():
        marker = Marker(**json.loads(path.read_text()))
        found = _read_at(client_config, topic, marker.offset)
        if found != marker.marker_id.encode():
            what = "no record" if found is None else f"another record ({found[:40]!r})"
            raise LostStateError(
                f"the broker at {bootstrap} holds {what} where this worker's marker was "
                f"({topic} offset {marker.offset}): it lost its data (an embedded broker "
                "with memory storage restarted?) or this is another cluster. The local "
                f"state under {data_dir} was built on data that is gone, and carrying on "
                "would silently drop users' clicks, re-apply old events and serve deleted "
                "items. Run `genre reset` to wipe the local state, then start the worker "
                "again (it rebuilds from what the broker holds now)."
            )
        return marker
    marker_id = uuid.uuid4().hex
    marker = Marker(topic, _write(client_config, topic, marker_id), marker_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(marker.__dict__))
    return marker


def _write(client_config: dict[str, Any], topic: str, marker_id: str) -> int:
    """Produce the marker record; returns its offset."""
    from confluent_kafka import Producer

    offsets: list[int] = []
    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            offsets.append(msg.offset())

    producer = Producer({**client_config, "acks": "all"})
    producer.produce(topic, key=b"marker", value=marker_id.encode(), on_delivery=delivered)
    producer.flush(30)
    if errors or not offsets:
        raise LostStateError(f"could not write the state marker to {topic}: {errors or 'timeout'}")
    return offsets[0]


def _read_at(client_config: dict[str, Any], topic: str, offset: int) -> bytes | None:
    """The value of the record at ``offset`` of partition 0, or None if there is none."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **client_config,
            "group.id": f"genre-state-check-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        if not low <= offset < high:
            return None
        consumer.assign([TopicPartition(topic, 0, offset)])
        msg = consumer.poll(10)
        if msg is None or msg.error() or msg.offset() != offset:
            return None
        return msg.value()
    finally:
        consumer.close()


def local_state(data_dir: Path, qdrant_folder: Path | None) -> list[Path]:
    """What ``genre reset`` removes: Faust's folders (tables), the markers, and in Qdrant
    local mode (``qdrant_folder``) the local Qdrant folder."""
    paths = [data_dir / "faust", data_dir / "state"]
    if qdrant_folder is not None:
        paths.append(qdrant_folder)
    return [p for p in paths if p.exists()]


def reset(paths: list[Path]) -> None:
    """Remove ``paths`` (folders or files)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
