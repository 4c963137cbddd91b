"""Full-ranking metrics: every item the user has not interacted with is a candidate."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from genre.model_export.replay import QueryBatch

K = 10


def target_ranks(scores: np.ndarray, batch: QueryBatch) -> np.ndarray:
    """1-based rank of each click's item among the items the user had not seen.

    Ties count against the target (an item scoring the same as the target is
    ranked above it), so a constant scorer gets no credit.
    """
    scores = np.where(batch.exclude, -np.inf, scores.astype(np.float64))
    rows = np.arange(len(batch))
    target = scores[rows, batch.targets]
    if np.isneginf(target).any():
        raise ValueError("a target item is in its user's exclusion set; the split is inconsistent")
    better_or_tied = (scores >= target[:, None]).sum(axis=1)  # includes the target itself
    return better_or_tied.astype(np.int64)


def top_k(scores: np.ndarray, batch: QueryBatch, k: int = K) -> np.ndarray:
    """Int [B, k]: the k best unseen items per query."""
    masked = np.where(batch.exclude, -np.inf, scores)
    k = min(k, masked.shape[1])
    if k == masked.shape[1]:
        part = np.broadcast_to(np.arange(k), masked.shape).copy()
    else:
        part = np.argpartition(-masked, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(masked, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


@dataclass
class RankingMetrics:
    """Accumulates HR@K, NDCG@K, MRR and coverage@K over query batches."""

    n_items: int
    k: int = K
    ranks: list[np.ndarray] = field(default_factory=list)
    recommended: set[int] = field(default_factory=set)

    def add(self, scores: np.ndarray, batch: QueryBatch) -> None:
        """Score one batch (``scores``: float [B, n_items])."""
        self.ranks.append(target_ranks(scores, batch))
        best = top_k(scores, batch, self.k)
        shown = np.take_along_axis(~batch.exclude, best, axis=1)  # never count seen items
        self.recommended.update(np.unique(best[shown]).tolist())

    def result(self) -> dict[str, float]:
        """The metrics so far, rounded to 4 decimals, plus the query count."""
        ranks = np.concatenate(self.ranks) if self.ranks else np.zeros(0, np.int64)
        if ranks.size == 0:
            raise ValueError("no queries were scored")
        hit = ranks <= self.k
        return {
            f"hr@{self.k}": round(float(hit.mean()), 4),
            f"ndcg@{self.k}": round(float((hit / np.log2(ranks + 1.0)).mean()), 4),
            "mrr": round(float((1.0 / ranks).mean()), 4),
            f"coverage@{self.k}": round(len(self.recommended) / self.n_items, 4),
            "queries": int(ranks.size),
        }


def ndcg_at_k(scores: np.ndarray, batch: QueryBatch, k: int = K) -> float:
    """NDCG@k of one batch (for early stopping and tuning)."""
    ranks = target_ranks(scores, batch)
    return float(((ranks <= k) / np.log2(ranks + 1.0)).mean())
