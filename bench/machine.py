"""What the benchmarks record about the machine and their processes' memory, and how
they save their results.

The bench scripts run as ``python bench/<name>.py``, so this folder is on
``sys.path`` and they import this module as ``machine``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def save_result(result: dict[str, Any], path: Path, indent: int = 2) -> None:
    """Write ``result`` to ``path`` as indented JSON and print it as one JSON line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent) + "\n")
    print(json.dumps(result))
