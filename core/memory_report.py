"""What a worker's memory holds: process RSS, sizes of named structures, allocation sites.

Served as JSON on ``/debug/memory`` by every worker. The allocation sites come
from the standard library's ``tracemalloc`` and are there only when the process
was started with tracing on (``PYTHONTRACEMALLOC=1 genre worker``), which costs
CPU; the rest is always cheap. Written here, not taken from a library, because
the report is about GENRE's own structures (tables, caches, buffers), which no
generic profiler names.
"""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def memory_mb(pid: int | str | None = "self") -> tuple[float, float]:
    """(current, peak) resident set of a process in MiB: VmRSS and VmHWM from /proc.

    (nan, nan) when ``pid`` is None, the process is gone or /proc is unreadable.
    """
    rss = hwm = float("nan")
    if pid is None:
        return rss, hwm
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, hwm


def rss_mb() -> float | None:
    """This process's resident set in MB (Linux ``/proc``), or None elsewhere."""
    rss, _ = memory_mb()
    return None if math.isnan(rss) else round(rss, 1)


def allocation_sites(limit: int = 25) -> dict[str, Any]:
    """The ``limit`` source lines holding the most traced memory, or why there are none."""
    if not tracemalloc.is_tracing():
        return {
            "tracing": False,
            "hint": "start the worker with PYTHONTRACEMALLOC=1 to list allocation sites "
            "(slows it down; use it to diagnose, not in production)",
        }
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    stats = snapshot.statistics("lineno")
    traced, peak = tracemalloc.get_traced_memory()
    return {
        "tracing": True,
        "traced_mb": round(traced / 2**20, 1),
        "traced_peak_mb": round(peak / 2**20, 1),
        "top": [
            {
                "site": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
                "mb": round(s.size / 2**20, 2),
                "blocks": s.count,
            }
            for s in stats[:limit]
        ],
    }


def memory_report(
    sizes: Mapping[str, Callable[[], int | None]], *, limit: int = 25
) -> dict[str, Any]:
    """RSS, each named structure's size (entries; None when counting would be too dear),
    and the top allocation sites when tracing."""
    counted: dict[str, int | None] = {}
    for name, size in sizes.items():
        try:
            counted[name] = size()
        except Exception as exc:  # a report must never fail the page
            counted[name] = None
            counted[f"{name}_error"] = str(exc)  # type: ignore[assignment]
    return {"rss_mb": rss_mb(), "entries": counted, "allocations": allocation_sites(limit)}
