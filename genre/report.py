"""`genre experiments report`: each A/B arm's online HR@10 from the topics themselves.

Reads ``genre.recommendations`` and ``genre.clicks`` from the beginning to their
ends. A click counts for the arm of the newest list the user had before it (the
list's ``generated_at`` against the click's record timestamp, the time it was
produced), and is a hit when its item is in that list's top ``k``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from genre.core.config import GenreConfig
from genre.core.experiments import ListSeen, arms_summary, online_outcomes
from genre.core.kafka_client import ConsumeStats, iter_timed_records
from genre.schemas import ClickEvent, Recommendation

T = TypeVar("T", bound=BaseModel)


def _read_whole(
    cfg: GenreConfig,
    topic: str,
    model: type[T],
    timeout_s: float,
    stats: ConsumeStats,
    progress: Progress,
    task: TaskID,
    what: str,
) -> Iterator[tuple[float, T]]:
    """Every ``model`` record of ``topic`` from the beginning to its end, with its
    record time, counting progress in ``task``."""
    progress.update(task, description=f"reading {topic}")
    records = iter_timed_records(
        cfg.kafka,
        topic,
        model,
        from_beginning=True,
        stop_at_end=True,
        timeout_s=timeout_s,
        stats=stats,
    )
    for n, timed in enumerate(records, 1):
        yield timed
        if n % 1000 == 0:
            progress.update(task, description=f"{n:,} {what} read")


def read_arms(cfg: GenreConfig, k: int, timeout_s: float, console: Console) -> dict[str, Any]:
    """Per-arm clicks, hits, online HR@k with 95% intervals, and the tests of the
    difference, from every list and click on the broker."""
    topics = cfg.kafka.topics
    lists: dict[str, list[ListSeen]] = defaultdict(list)
    clicks: list[tuple[str, str, float]] = []
    stats = {"recommendations": ConsumeStats(), "clicks": ConsumeStats()}
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("reading")
        for _, rec in _read_whole(
            cfg,
            topics.recommendations.name,
            Recommendation,
            timeout_s,
            stats["recommendations"],
            progress,
            task,
            "lists",
        ):
            lists[rec.user_id].append((rec.generated_at, [i.item_id for i in rec.items], rec.arm))
        for produced_at, click in _read_whole(
            cfg,
            topics.clicks.name,
            ClickEvent,
            timeout_s,
            stats["clicks"],
            progress,
            task,
            "clicks",
        ):
            clicks.append((click.user_id, click.item_id, produced_at))
    for seen in lists.values():
        seen.sort(key=lambda entry: entry[0])
    summary = arms_summary(online_outcomes(clicks, lists, k))
    summary["k"] = k
    summary["lists"] = sum(len(v) for v in lists.values())
    summary["clicks"] = len(clicks)
    summary["invalid_records"] = {name: s.invalid for name, s in stats.items()}
    return summary


def print_arms(console: Console, summary: dict[str, Any]) -> None:
    """The per-arm table and the tests of the difference, readable."""
    k = summary.get("k", 10)
    table = Table(title=f"Online HR@{k} by arm")
    for column in ("arm", "clicks", "hits", f"HR@{k}", "95% interval"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, row in summary["arms"].items():
        low, high = row["ci95"]
        table.add_row(
            arm,
            f"{row['clicks']:,}",
            f"{row['hits']:,}",
            f"{row['hit_rate']:.4f}",
            f"{low:.4f} – {high:.4f}",
        )
    console.print(table)
    for test in summary["tests"]:
        best, other = test["arms"]
        low, high = test["ci95"]
        console.print(
            f"{best} − {other}: {test['difference']:+.4f} (95% interval {low:+.4f} to "
            f"{high:+.4f}), z = {test['z']:.2f}, p = {test['p_value']:.4f}",
            highlight=False,
        )
    if not summary["arms"]:
        console.print(
            "no clicks were made on a list that names an arm (is experiments.enabled on?)"
        )
    if summary.get("clicks_before_a_list"):
        console.print(
            f"[dim]{summary['clicks_before_a_list']:,} clicks came before the user's first "
            "list and count for no arm[/dim]"
        )
