"""RocksDB-backed tables (``streams.store: rocksdb://``): real broker, real worker process.

The worker folds clicks into RocksDB files under ``data_dir/faust``; after a
clean stop the test reads those files directly, edits one user's state behind
the changelog's back, restarts the worker and checks that the restarted worker
carried on from the RocksDB state (Faust replays a changelog only past the
offset stored next to the data). A worker that silently used memory tables
would have no files to read, and one that rebuilt its tables from the whole
changelog would drop the edit. Keys are the users' raw UTF-8 ids (the bytes producers
key clicks with) and values the typed ``UserState``'s JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from genre.core.features import UserState
from genre.streams.app import partition_for

from .conftest import Pipeline, click, running_pipeline

rocksdict = pytest.importorskip(
    "rocksdict",
    reason="rocksdict (the pinned RocksDB binding in the 'embedded' extra) is not installed",
)

pytestmark = pytest.mark.broker

#: Faust's key for the last changelog offset stored in each partition's database.
OFFSET_KEY = b"__faust\0offset__"


def users_in_partition(partition: int, partitions: int, n: int, prefix: str) -> list[str]:
    """The first ``n`` user ids ``<prefix>-<i>`` whose table key hashes to ``partition``."""
    users = (f"{prefix}-{i}" for i in range(10_000))
    picked = [u for u in users if partition_for(u, partitions) == partition]
    return picked[:n]


def read_db(path: Path) -> dict[bytes, bytes]:
    """Every key and value of one closed RocksDB database (Faust stores raw bytes)."""
    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    try:
        return dict(db.items())
    finally:
        db.close()


def write_db(path: Path, key: bytes, value: bytes) -> None:
    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    try:
        db.put(key, value)
    finally:
        db.close()


@pytest.fixture
def rocks_pipeline(broker: Any, encoder_dir: Path, tmp_path: Path) -> Any:
    with running_pipeline(
        tmp_path, broker.bootstrap, encoder_dir, streams={"store": "rocksdb://"}
    ) as p:
        yield p


def test_user_state_lives_in_rocksdb_and_survives_a_restart(rocks_pipeline: Pipeline) -> None:
    p = rocks_pipeline
    partitions = p.topics.user_clicks.partitions
    assert partitions == 2
    # Two users on partition 0 (one of them is edited later), one on partition 1.
    kept, tail = users_in_partition(0, partitions, 2, "rk")
    (other,) = users_in_partition(1, partitions, 1, "rk")
    first = [click(f"{kept}-{i}", kept, f"space-{i}", ts=1_700_000_100.0 + i) for i in range(3)]
    p.send_clicks(first)
    p.recommendations(until_triggers={f"{kept}-2"})
    # Later writes on the same partition, so the edited user's record is not the
    # last one of its changelog partition.
    more = [click(f"{tail}-{i}", tail, f"crime-{i}", ts=1_700_000_110.0 + i) for i in range(2)]
    more += [click(f"{other}-{i}", other, f"cooking-{i}", ts=1_700_000_120.0 + i) for i in range(2)]
    p.send_clicks(more)
    p.recommendations(until_triggers={f"{tail}-1", f"{other}-1"})
    assert p.worker.stop() == 0, p.worker.log_tail()

    faust_dir = p.config.path("faust")
    dbs = {path.name: path for path in faust_dir.rglob("user-state-*.db")}
    assert set(dbs) == {"user-state-0.db", "user-state-1.db"}, sorted(faust_dir.rglob("*"))
    for path in dbs.values():
        assert (path / "CURRENT").is_file()
    # The item graph is a GlobalTable read on every scored candidate: kept in memory
    # on purpose (streams/app.py), so it has no RocksDB files.
    assert not list(faust_dir.rglob("item-graph-*.db"))

    # Each key lives in the database of the partition its changelog record went to.
    part0, part1 = read_db(dbs["user-state-0.db"]), read_db(dbs["user-state-1.db"])
    key = {u: u.encode() for u in (kept, tail, other)}  # raw UTF-8, as producers key clicks
    assert key[kept] in part0 and key[tail] in part0 and key[other] not in part0
    assert key[other] in part1 and key[kept] not in part1
    state = orjson.loads(part0[key[kept]])
    assert state["clicks"] == 3
    assert state["history"] == ["space-0", "space-1", "space-2"]
    assert orjson.loads(part1[key[other]])["clicks"] == 2
    assert set(UserState.from_bytes(part0[key[kept]]).seen) == {"space-0", "space-1", "space-2"}
    for part in (part0, part1):
        assert int(part[OFFSET_KEY]) >= 0  # the changelog offset the data is up to

    # Edit the kept user in RocksDB only (a click count no changelog record holds). If the
    # restarted worker read the whole changelog again, the changelog's value would win.
    state["clicks"] = 100
    write_db(dbs["user-state-0.db"], key[kept], orjson.dumps(state))

    p.worker.start(ready_timeout_s=120)
    after = [click(f"{kept}-{i}", kept, f"animation-{i}", ts=1_700_000_200.0 + i) for i in (3, 4)]
    after.append(click(f"{other}-2", other, "cooking-2", ts=1_700_000_210.0))
    p.send_clicks(after)
    p.recommendations(until_triggers={f"{kept}-4", f"{other}-2"})

    states = p.user_states([kept, other])
    kept_state = states[kept]
    assert kept_state is not None
    assert kept_state["clicks"] != 5, "state was rebuilt from the changelog, not read from RocksDB"
    assert kept_state["clicks"] == 102
    assert kept_state["history"] == [
        "space-0",
        "space-1",
        "space-2",
        "animation-3",
        "animation-4",
    ]
    other_state = states[other]
    assert other_state is not None
    assert other_state["clicks"] == 3
    assert other_state["history"] == ["cooking-0", "cooking-1", "cooking-2"]
    # The restarted worker counts its users from RocksDB (sampled on a timer).
    p.worker.wait_metric("genre_users_tracked", 3, timeout_s=30)
