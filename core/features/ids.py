"""Item ids as small integers, so per-item work runs on numpy arrays.

One table per process (``ITEM_IDS``): a row per item id ever seen, never
reused, so an index cached on an item's state stays valid. Reads are lock-free
dict lookups; adding an id takes a lock (the scorer's thread and the event loop
both add).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

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

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """Rows of ``item_ids`` as int64, in order (new ids are added)."""
        get = self._rows.get
        out = [get(i) for i in item_ids]
        if None in out:
            out = [self.row(i) for i in item_ids]
        return np.asarray(out, np.int64)


#: The process's table (every graph state caches its edges against it).
ITEM_IDS = ItemIds()
