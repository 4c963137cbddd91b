"""Candidates as arrays, and the blend that ranks or pre-ranks them.

The scorer's sources produce ``Candidates`` per user; ``blend`` sums the
per-source min-max normalised scores with the configured weights. The scorer
uses it for the blend ranking and as the learned ranker's pre-ranking; the
evaluation replays the same sources and blend (``model_export.replay``), so
the pre-ranking's recall is measured on the code that serves.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genre.core.features.ids import ITEM_IDS, seen_rows


@dataclass(frozen=True, slots=True)
class Candidates:
    """One source's candidates for one user, as arrays: item rows (``ITEM_IDS``), raw
    scores on the source's own scale, and per item the row of the history item that
    explains it (-1: none). Arrays, not an object per item: sources make hundreds per
    user per list."""

    rows: np.ndarray  # int64 [K]
    scores: np.ndarray  # float64 [K]
    because: np.ndarray | None = None  # int64 [K]

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def of(cls, item_ids: Sequence[str], scores: Sequence[float] | np.ndarray) -> Candidates:
        """Candidates from item ids and scores."""
        return cls(ITEM_IDS.rows(item_ids), np.asarray(scores, np.float64))

    def item_ids(self) -> list[str]:
        """The candidates' item ids, in order."""
        names = ITEM_IDS.names
        return [names[r] for r in self.rows.tolist()]

    def take(self, positions: np.ndarray) -> Candidates:
        """The candidates at ``positions``, in that order."""
        because = None if self.because is None else self.because[positions]
        return Candidates(self.rows[positions], self.scores[positions], because)


NO_CANDIDATES = Candidates(np.zeros(0, np.int64), np.zeros(0, np.float64))


def first_unseen(rows: np.ndarray, seen: Container[str], limit: int) -> np.ndarray:
    """Positions of the first ``limit`` entries (in the given order) whose item is not in
    ``seen`` (a ``SeenItems``, or any container of item ids)."""
    return np.flatnonzero(~np.isin(rows, seen_rows(seen)))[:limit]


def best_unseen(cands: Candidates, seen: Container[str], limit: int) -> Candidates:
    """The ``limit`` best-scored candidates whose item is not in ``seen`` (stable order)."""
    order = np.argsort(-cands.scores, kind="stable")
    return cands.take(order[first_unseen(cands.rows[order], seen, limit)])


@dataclass(frozen=True, slots=True)
class Blended:
    """Every candidate of a user once: blended score, strongest source, its evidence."""

    rows: np.ndarray  # int64 [K], sorted
    scores: np.ndarray  # float64 [K]
    source: np.ndarray  # int64 [K]: index into the sources passed to ``blend``
    because: np.ndarray  # int64 [K]: evidence row, -1 none


def blend(per_source: Sequence[tuple[float, Candidates]]) -> Blended:
    """Weighted sum of per-source scores, each min-max normalised to [0, 1] over that
    source's candidates for this user (a source whose scores are all equal gives each
    its full weight). Each item is explained by its largest single contribution, the
    first source on ties.

    Normalising per user and source puts cosine similarities, co-click weights and
    popularity counts on one scale, so the YAML weights mean what they say.
    """
    rows, contributions, sources, because = [], [], [], []
    for index, (weight, cands) in enumerate(per_source):
        if not len(cands) or weight <= 0:
            continue
        lo, hi = float(cands.scores.min()), float(cands.scores.max())
        span = hi - lo
        norm = (cands.scores - lo) / span if span > 0 else np.ones(len(cands))
        rows.append(cands.rows)
        contributions.append(weight * norm)
        sources.append(np.full(len(cands), index, np.int64))
        because.append(
            cands.because if cands.because is not None else np.full(len(cands), -1, np.int64)
        )
    if not rows:
        none = np.zeros(0, np.int64)
        return Blended(none, np.zeros(0, np.float64), none, none)
    all_rows, all_c = np.concatenate(rows), np.concatenate(contributions)
    unique, inverse = np.unique(all_rows, return_inverse=True)
    totals = np.bincount(inverse, weights=all_c, minlength=len(unique))
    order = np.lexsort((np.arange(len(all_c)), -all_c, inverse))
    first = order[np.flatnonzero(np.r_[True, inverse[order][1:] != inverse[order][:-1]])]
    return Blended(unique, totals, np.concatenate(sources)[first], np.concatenate(because)[first])


def ranked(
    blended: Blended, keep: np.ndarray, top_k: int, name_of: Callable[[int], str]
) -> np.ndarray:
    """Positions in ``blended`` of the ``top_k`` best kept items (all kept for 0), best
    first; equal scores in item id order (``name_of(position)``), so every process
    ranks the same state the same way. Ids are looked at only where scores tie."""
    candidates = np.flatnonzero(keep)
    order = candidates[np.argsort(-blended.scores[candidates], kind="stable")]
    k = len(order) if not top_k else min(top_k, len(order))
    scores = blended.scores[order]
    # Ties that matter: inside the first k, or across the cut.
    window = scores[: k + 1] if k < len(order) else scores
    if len(window) < 2 or not (window[1:] == window[:-1]).any():
        return order[:k]
    # Slow path: order each run of equal scores by item id.
    out = order.copy()
    start = 0
    n = len(scores)
    while start < n and start < k + 1:
        stop = start + 1
        while stop < n and scores[stop] == scores[start]:
            stop += 1
        if stop - start > 1:
            run = out[start:stop]
            out[start:stop] = sorted(run.tolist(), key=name_of)
        start = stop
    return out[:k]


@dataclass(frozen=True)
class SourceSpec:
    """A candidate source as ``scorer.candidates`` configures it."""

    name: str
    weight: float
    limit: int
    params: dict[str, Any]


def source_specs(scorer: Any) -> tuple[SourceSpec, ...]:
    """The sources of a ``ScorerConfig`` (``config.scorer``)."""
    return tuple(
        SourceSpec(c.name, float(c.weight), int(c.limit), dict(c.params)) for c in scorer.candidates
    )
