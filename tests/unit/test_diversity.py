"""core/features/diversity.py: the MMR and exposure rule, and list diversity, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from genre.core.features.diversity import (
    DiversityRule,
    diversify,
    exposure,
    intra_list_diversity,
    intra_list_diversity_batch,
    relevance,
)

#: Items 0 and 1 point the same way, 2 is orthogonal to both, 3 is halfway.
VECTORS = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [np.sqrt(0.5), np.sqrt(0.5)]]])
SCORES = np.array([[4.0, 3.0, 2.0, 1.0]])


def test_lambda_one_returns_the_input_order() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 30))
    vectors = rng.normal(size=(5, 30, 8))
    order = diversify(scores, vectors, DiversityRule(1.0), k=10)
    assert (order == np.argsort(-scores, axis=1, kind="stable")).all()


def test_ties_keep_the_input_order_when_off() -> None:
    order = diversify(np.array([[1.0, 1.0, 1.0]]), np.zeros((1, 3, 2)), DiversityRule(), k=3)
    assert order.tolist() == [[0, 1, 2]]


def test_a_low_lambda_picks_the_dissimilar_item_second() -> None:
    # lambda 0.5: item 1 gains 0.5 * 2/3 - 0.5 * 1 < 0; item 2 gains 0.5 * 1/3 - 0 > 0.
    order = diversify(SCORES, VECTORS, DiversityRule(0.5), k=2)
    assert order.tolist() == [[0, 2, 1, 3]]


def test_mmr_by_hand_over_three_picks() -> None:
    # lambda 0.6, relevance [1, 2/3, 1/3, 0]. After 0: item 1 0.4 - 0.4 = 0, item 2 0.2,
    # item 3 0 - 0.4 * 0.707 < 0: pick 2. After 0, 2: item 1 0.4 - 0.4 = 0, item 3
    # -0.4 * 0.707: pick 1; the rest (3) follows.
    order = diversify(SCORES, VECTORS, DiversityRule(0.6), k=3)
    assert order.tolist() == [[0, 2, 1, 3]]


def test_a_high_lambda_keeps_relevance_first() -> None:
    order = diversify(SCORES, VECTORS, DiversityRule(0.95), k=4)
    assert order.tolist() == [[0, 1, 2, 3]]


def test_exposure_penalty_lifts_a_tail_item() -> None:
    # Equal-ish relevance, item 0 is a blockbuster, item 1 a tail item.
    scores = np.array([[1.0, 0.9, 0.0]])
    popularity = np.array([[1000.0, 1.0, 10.0]])
    vectors = np.zeros((1, 3, 2))
    off = diversify(scores, vectors, DiversityRule(1.0, 0.0), k=3, popularity=popularity)
    on = diversify(scores, vectors, DiversityRule(1.0, 0.5), k=3, popularity=popularity)
    assert off.tolist() == [[0, 1, 2]]
    assert on.tolist()[0][0] == 1


def test_padding_stays_last_and_rows_are_independent() -> None:
    scores = np.array([[2.0, -np.inf, 1.0, np.nan], [1.0, 2.0, 3.0, 4.0]])
    vectors = np.ones((2, 4, 2)) / np.sqrt(2)
    order = diversify(scores, vectors, DiversityRule(0.3), k=4)
    assert order[0, :2].tolist() == [0, 2]
    assert sorted(order[0, 2:].tolist()) == [1, 3]
    assert sorted(order[1].tolist()) == [0, 1, 2, 3]
    assert order[1, 0] == 3  # all vectors identical: relevance decides the first pick


def test_relevance_and_exposure_scaling_by_hand() -> None:
    valid = np.array([[True, True, True, False]])
    rel = relevance(np.array([[3.0, 1.0, 2.0, 9.0]]), valid)
    assert rel.tolist() == [[1.0, 0.0, 0.5, 0.0]]
    assert relevance(np.array([[5.0, 5.0]]), np.array([[True, True]])).tolist() == [[1.0, 1.0]]
    e = exposure(np.array([[np.e - 1, 0.0, np.e**2 - 1, 100.0]]), valid)
    assert e[0].tolist() == pytest.approx([0.5, 0.0, 1.0, 0.0])


def test_intra_list_diversity_by_hand() -> None:
    # Pairs: (0,1) cos 1 -> 0; (0,2) cos 0 -> 1; (1,2) cos 0 -> 1: mean 2/3.
    assert intra_list_diversity(VECTORS[0, :3]) == pytest.approx(2 / 3)
    assert intra_list_diversity(VECTORS[0, :1]) == 0.0
    # Unnormalised rows are normalised first.
    assert intra_list_diversity(np.array([[3.0, 0.0], [0.0, 2.0]])) == pytest.approx(1.0)
    batch = intra_list_diversity_batch(np.stack([VECTORS[0, :3], VECTORS[0, [0, 1, 1]]]))
    assert batch.tolist() == pytest.approx([2 / 3, 0.0])
