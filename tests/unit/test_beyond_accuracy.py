"""model_export/metrics.py beyond accuracy (ILD, novelty, Gini of exposure, coverage) and
the evaluation's diversity re-ranking of full-ranking scores, with hand-computed values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from genre.core.features.diversity import DiversityRule
from genre.model_export.evaluate import diversity_name, rerank_scores
from genre.model_export.metrics import RankingMetrics, gini, self_information


@dataclass
class Queries:
    """What the metrics read of a ``QueryBatch``."""

    exclude: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def events(self) -> np.ndarray:
        return np.arange(len(self.targets))

    @property
    def history(self) -> np.ndarray:
        return np.full((len(self.targets), 1), -1)


def test_gini_by_hand() -> None:
    assert gini(np.array([1.0, 1.0, 1.0, 1.0])) == 0.0
    # sorted [0, 0, 0, 4]: sum((2i - n - 1) x_i) = 3 * 4 = 12; / (n * total) = 12 / 16.
    assert gini(np.array([0.0, 4.0, 0.0, 0.0])) == pytest.approx(0.75)
    # sorted [1, 3]: (-1 * 1 + 1 * 3) / (2 * 4) = 0.25.
    assert gini(np.array([3.0, 1.0])) == pytest.approx(0.25)
    assert gini(np.zeros(3)) == 0.0


def test_self_information_is_add_one_smoothed() -> None:
    # counts [2, 0, 1]: shares (3/6, 1/6, 2/6).
    info = self_information(np.array([2, 0, 1]))
    assert info.tolist() == pytest.approx([1.0, np.log2(6), np.log2(3)])


def test_beyond_accuracy_metrics_by_hand() -> None:
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    m = RankingMetrics(n_items=4, k=2, vectors=vectors, train_counts=np.array([2, 0, 1, 1]))
    # Two queries. Query 0 ranks items 0 > 1 > 2 > 3; query 1 ranks 2 > 0 > 1 > 3
    # with item 3 already seen.
    scores = np.array([[4.0, 3.0, 2.0, 1.0], [3.0, 2.0, 4.0, 9.0]])
    exclude = np.array([[False] * 4, [False, False, False, True]])
    m.add(scores, Queries(exclude, np.array([1, 0])))  # type: ignore[arg-type]
    out = m.result()
    # Ranks: query 0's target (1) is 2nd, query 1's target (0) is 2nd.
    assert out["hr@2"] == 1.0 and out["ndcg@2"] == pytest.approx(round(1 / np.log2(3), 4))
    # Lists [0, 1] (same direction: distance 0) and [2, 0] (orthogonal: 1).
    assert out["ild@2"] == 0.5
    # Shares (3/8, 1/8, 2/8, 2/8): list 0 (log2 8/3 + 3) / 2, list 1 (2 + log2 8/3) / 2.
    novelty = ((np.log2(8 / 3) + 3) / 2 + (2 + np.log2(8 / 3)) / 2) / 2
    assert out["novelty@2"] == pytest.approx(round(novelty, 4))
    # Exposure [2, 1, 1, 0]: sorted [0, 1, 1, 2], (-3*0 - 1 + 1 + 3*2) / (4 * 4) = 6/16.
    assert out["gini@2"] == pytest.approx(0.375)
    assert out["coverage@2"] == 0.75


def test_metrics_without_vectors_keep_the_old_keys() -> None:
    m = RankingMetrics(n_items=3)
    m.add(np.array([[1.0, 2.0, 3.0]]), Queries(np.zeros((1, 3), bool), np.array([2])))  # type: ignore[arg-type]
    assert "ild@10" not in m.result() and "novelty@10" not in m.result()


def test_rerank_scores_moves_the_dissimilar_item_up_and_keeps_the_rest() -> None:
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 9.0]])
    batch = Queries(np.array([[False, False, False, False, True]]), np.array([0]))
    popularity = np.zeros((1, 5))
    same = rerank_scores(scores, batch, DiversityRule(1.0, 0.0, 3), vectors, popularity, k=3)  # type: ignore[arg-type]
    assert np.argsort(-np.where(batch.exclude, -np.inf, same))[0, :4].tolist() == [0, 1, 2, 3]
    out = rerank_scores(scores, batch, DiversityRule(0.5, 0.0, 3), vectors, popularity, k=3)  # type: ignore[arg-type]
    ranked = np.argsort(-np.where(batch.exclude, -np.inf, out))[0]
    # Among the best 3 unseen (0, 1, 2), MMR puts 2 before 1; item 3 stays below them.
    assert ranked[:4].tolist() == [0, 2, 1, 3]
    assert diversity_name(DiversityRule(0.5, 0.1)) == "genre+mmr(lambda=0.5,pop=0.1)"
