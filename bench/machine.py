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

# The benches measure their child processes with the same reader the workers use.
from genre.core.memory_report import memory_mb

__all__ = ["cpu_name", "memory_mb", "save_result"]


def cpu_name() -> str:
    """CPU model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save_result(result: dict[str, Any], path: Path, indent: int = 2) -> None:
    """Write ``result`` to ``path`` as indented JSON and print it as one JSON line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=indent) + "\n")
    print(json.dumps(result))
