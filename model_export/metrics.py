"""Full-ranking metrics: every item the user has not interacted with is a candidate.

Beyond accuracy (HR, NDCG, MRR), each model's top-K lists are measured for
intra-list diversity (mean pairwise cosine distance of the item text vectors,
the rule the live scorer's ``genre_list_diversity`` observes), catalogue
coverage, novelty (mean self-information ``-log2`` of an item's share of the
training clicks, add-one smoothed so an item without training clicks is finite)
and the Gini index of exposure (0: every item shown equally often, towards 1:
a few items take every slot).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from genre.core.features.diversity import intra_list_diversity_batch
from genre.model_export.replay import TEST, TRAIN, VALID, Interactions, QueryBatch

K = 10
#: A query's user "has a short history" below this many items in it.
SHORT_HISTORY = 5
#: The segments ``segment_masks`` splits test queries into; the first three partition
#: them by when the user first clicked, the last two cut across.
SEGMENTS = ("known_users", "new_users_valid", "new_users_test", "short_history", "new_items")


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


def gini(exposure: np.ndarray) -> float:
    """Gini index of non-negative counts (one per catalogue item); 0 when all are zero."""
    x = np.sort(np.asarray(exposure, np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def self_information(train_counts: np.ndarray) -> np.ndarray:
    """Float64 [n_items]: ``-log2`` of each item's add-one smoothed share of training clicks."""
    counts = np.asarray(train_counts, np.float64)
    return -np.log2((counts + 1.0) / (counts.sum() + len(counts)))


@dataclass
class RankingMetrics:
    """Accumulates HR@K, NDCG@K, MRR and coverage@K over query batches, plus
    ILD@K, novelty@K and the Gini index of exposure when given the item ``vectors``
    and the training click ``train_counts``."""

    n_items: int
    k: int = K
    vectors: np.ndarray | None = None
    train_counts: np.ndarray | None = None
    ranks: list[np.ndarray] = field(default_factory=list)
    recommended: set[int] = field(default_factory=set)
    ild: list[np.ndarray] = field(default_factory=list)
    novelty: list[np.ndarray] = field(default_factory=list)
    exposure: np.ndarray | None = None
    #: Per query, in ``ranks`` order: its event index and its user's history length.
    events: list[np.ndarray] = field(default_factory=list)
    history_lens: list[np.ndarray] = field(default_factory=list)

    def add(self, scores: np.ndarray, batch: QueryBatch) -> None:
        """Score one batch (``scores``: float [B, n_items])."""
        self.ranks.append(target_ranks(scores, batch))
        self.events.append(np.asarray(batch.events, np.int64))
        self.history_lens.append((np.asarray(batch.history) >= 0).sum(axis=1))
        best = top_k(scores, batch, self.k)
        shown = np.take_along_axis(~batch.exclude, best, axis=1)  # never count seen items
        self.recommended.update(np.unique(best[shown]).tolist())
        self.add_lists(best, shown)

    def add_lists(self, best: np.ndarray, shown: np.ndarray) -> None:
        """Beyond-accuracy figures of lists ``best`` (int [B, K]); ``shown`` masks real slots."""
        if self.exposure is None:
            self.exposure = np.zeros(self.n_items, np.float64)
        np.add.at(self.exposure, best[shown], 1.0)
        if self.vectors is not None:
            vectors = np.where(shown[..., None], self.vectors[best], 0.0)
            self.ild.append(intra_list_diversity_batch(vectors))
        if self.train_counts is not None:
            info = self_information(self.train_counts)[best]
            per_list = (info * shown).sum(axis=1) / np.maximum(shown.sum(axis=1), 1)
            self.novelty.append(per_list)

    def result(self) -> dict[str, float]:
        """The metrics so far, rounded to 4 decimals, plus the query count."""
        ranks = np.concatenate(self.ranks) if self.ranks else np.zeros(0, np.int64)
        if ranks.size == 0:
            raise ValueError("no queries were scored")
        hit = ranks <= self.k
        out: dict[str, float] = {
            f"hr@{self.k}": round(float(hit.mean()), 4),
            f"ndcg@{self.k}": round(float((hit / np.log2(ranks + 1.0)).mean()), 4),
            "mrr": round(float((1.0 / ranks).mean()), 4),
            f"coverage@{self.k}": round(len(self.recommended) / self.n_items, 4),
        }
        if self.ild:
            out[f"ild@{self.k}"] = round(float(np.concatenate(self.ild).mean()), 4)
        if self.novelty:
            out[f"novelty@{self.k}"] = round(float(np.concatenate(self.novelty).mean()), 4)
        if self.exposure is not None:
            out[f"gini@{self.k}"] = round(gini(self.exposure), 4)
        out["queries"] = int(ranks.size)
        return out

    def by_segment(self, data: Interactions) -> dict[str, dict[str, float]]:
        """HR@K, NDCG@K and MRR over the queries of each of ``SEGMENTS`` and their count
        (the count only for a segment without queries)."""
        ranks = np.concatenate(self.ranks)
        masks = segment_masks(data, np.concatenate(self.events), np.concatenate(self.history_lens))
        out: dict[str, dict[str, float]] = {}
        for name, mask in masks.items():
            r = ranks[mask]
            hit = r <= self.k
            out[name] = {"queries": int(r.size)}
            if r.size:  # an empty segment has its count only
                out[name] |= {
                    f"hr@{self.k}": round(float(hit.mean()), 4),
                    f"ndcg@{self.k}": round(float((hit / np.log2(r + 1.0)).mean()), 4),
                    "mrr": round(float((1.0 / r).mean()), 4),
                }
        return out


def segment_masks(
    data: Interactions, events: np.ndarray, history_lens: np.ndarray
) -> Mapping[str, np.ndarray]:
    """Bool [Q] per segment of ``SEGMENTS`` for queries ``events`` (event indices):
    users whose first click was in train / valid / test, users with fewer than
    ``SHORT_HISTORY`` items in their history at query time, and clicks on items no
    training click had touched (items that arrived after training)."""
    first = np.zeros(data.n_users, np.int64)
    users, first_event = np.unique(data.users, return_index=True)  # events are in time order
    first[users] = first_event
    first_split = data.split[first[data.users[events]]]
    return {
        "known_users": first_split == TRAIN,
        "new_users_valid": first_split == VALID,
        "new_users_test": first_split == TEST,
        "short_history": np.asarray(history_lens) < SHORT_HISTORY,
        "new_items": ~data.train_items()[data.items[events]],
    }


def ndcg_at_k(scores: np.ndarray, batch: QueryBatch, k: int = K) -> float:
    """NDCG@k of one batch (for early stopping and tuning)."""
    ranks = target_ranks(scores, batch)
    return float(((ranks <= k) / np.log2(ranks + 1.0)).mean())
