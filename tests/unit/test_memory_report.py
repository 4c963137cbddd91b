"""The /debug/memory report: structure sizes always, allocation sites under tracemalloc."""

from __future__ import annotations

import tracemalloc

from genre.core.memory_report import memory_report


def test_sizes_are_counted_and_a_failing_count_is_reported_not_raised() -> None:
    def broken() -> int:
        raise RuntimeError("store closed")

    report = memory_report({"users": lambda: 3, "broken": broken})
    assert report["entries"]["users"] == 3
    assert report["entries"]["broken"] is None
    assert report["entries"]["broken_error"] == "store closed"
    assert report["rss_mb"] > 0


def test_allocation_sites_name_the_line_that_holds_the_memory() -> None:
    tracemalloc.start()
    try:
        hoard = [bytes(1000) for _ in range(20_000)]  # ~20 MB from this line
        report = memory_report({}, limit=5)
    finally:
        tracemalloc.stop()
    allocations = report["allocations"]
    assert allocations["tracing"] is True
    top = allocations["top"][0]
    assert top["site"].endswith("test_memory_report.py:24")
    assert top["mb"] >= 19 and top["blocks"] >= 20_000
    assert allocations["traced_mb"] >= top["mb"]
    assert len(hoard) == 20_000


def test_without_tracing_the_report_says_how_to_turn_it_on() -> None:
    assert not tracemalloc.is_tracing()
    allocations = memory_report({})["allocations"]
    assert set(allocations) == {"tracing", "hint"}
    assert allocations["tracing"] is False
    assert "PYTHONTRACEMALLOC=1" in allocations["hint"]
