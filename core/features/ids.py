"""Item ids as small integers, so per-item work runs on numpy arrays.

One table per process (``ITEM_IDS``): a row per item id ever seen, never
reused, so an index cached on an item's state stays valid. Reads are lock-free
dict lookups; adding an id takes a lock (the scorer's thread and the event loop
both add).
"""

from __future__ import annotations

import threading
from collections.abc import Container, Iterator, Sequence

import numpy as np


class ItemIds:
    """Interns item ids: id -> row, row -> id."""

    def __init__(self) -> None:
        self._rows: dict[str, int] = {}
        self.names: list[str] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.names)

    def row(self, item_id: str) -> int:
        """The id's row, added if new."""
        row = self._rows.get(item_id)
        if row is None:
            with self._lock:
                row = self._rows.get(item_id)
                if row is None:
                    row = self._rows[item_id] = len(self.names)
                    self.names.append(item_id)
        return row

    def find(self, item_id: str) -> int | None:
        """The id's row, or None if this process never saw the id (nothing is added)."""
        return self._rows.get(item_id)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Rows of ``item_ids`` as int64, in order (new ids are added)."""
        get = self._rows.get
        out = [get(i) for i in item_ids]
        if None in out:
            out = [self.row(i) for i in item_ids]
        return np.asarray(out, np.int64)


#: The process's table (every graph state caches its edges against it).
ITEM_IDS = ItemIds()


class SeenItems:
    """An ordered set of item ids (oldest first) held as int32 rows of ``ITEM_IDS``.

    A user's seen set: 4 bytes per item instead of a dict entry (~100 bytes), and
    the scorer filters candidates with one ``np.isin`` on rows. Immutable: adding
    returns a new set, so a scorer holding one never sees it change.
    """

    __slots__ = ("rows",)

    def __init__(self, rows: np.ndarray | None = None) -> None:
        self.rows = np.zeros(0, np.int32) if rows is None else rows

    @classmethod
    def of(cls, item_ids: Sequence[str]) -> SeenItems:
        """The set of ``item_ids``, in that order."""
        return cls(ITEM_IDS.rows(list(item_ids)).astype(np.int32))

    def __contains__(self, item_id: object) -> bool:
        row = ITEM_IDS.find(item_id) if isinstance(item_id, str) else None
        return row is not None and bool((self.rows == row).any())

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[str]:
        names = ITEM_IDS.names
        return (names[r] for r in self.rows.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SeenItems):
            return bool(np.array_equal(self.rows, other.rows))
        return NotImplemented

    def __repr__(self) -> str:
        return f"SeenItems({list(self)!r})"

    def added(self, item_id: str, limit: int) -> SeenItems:
        """This set with ``item_id`` added last (if new), keeping the newest ``limit``."""
        row = ITEM_IDS.row(item_id)
        if (self.rows == row).any():
            return self
        rows = np.append(self.rows, np.int32(row))
        return SeenItems(rows[-limit:] if len(rows) > limit else rows)


def seen_rows(seen: Container[str]) -> np.ndarray:
    """The ``ITEM_IDS`` rows of a seen set (``SeenItems``, or any container of ids)."""
    if isinstance(seen, SeenItems):
        return seen.rows
    return ITEM_IDS.rows(list(seen))  # type: ignore[call-overload]
