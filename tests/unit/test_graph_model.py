"""LightGCN on the small two-cluster log of ``test_baselines`` (model_export/graph_model.py).

The ``world`` fixture (two user groups, each walking its own 20-item cluster,
split in time) is shared with the baseline tests rather than rebuilt here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from genre.model_export.baselines import TIE_BREAK, _all_time
from genre.model_export.graph_model import LightGCN, normalized_adjacency
from genre.model_export.metrics import ndcg_at_k
from genre.model_export.replay import TRAIN, VALID, Interactions
from tests.unit import test_baselines as tb
from tests.unit.test_baselines import World

world = tb.world  # the module-scoped fixture, registered here under the same name

ARGS = {"dim": 16, "layers": 2, "epochs": 30, "batch_size": 64, "lr": 0.03, "patience": 5}
ARGS["num_threads"] = 1


def _group(data: Interactions) -> np.ndarray:
    """Int [n_items]: each item's cluster (item ids are ``i<cluster>-<j>``)."""
    return np.asarray([int(i[1]) for i in data.item_ids])


@pytest.fixture(scope="module")
def fitted(world: World) -> LightGCN:
    model = LightGCN(**ARGS)
    model.fit(world.data, world.valid, world.text, seed=0)
    return model


def test_adjacency_is_symmetric_normalised_and_deduplicated() -> None:
    # user 0 clicks item 0 twice and item 1 once; user 1 clicks item 1.
    adj = normalized_adjacency(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]), 2, 2).to_dense()
    expected = np.zeros((4, 4), np.float32)
    for u, i, w in ((0, 0, 1 / np.sqrt(2 * 1)), (0, 1, 1 / np.sqrt(2 * 2)), (1, 1, 1 / np.sqrt(2))):
        expected[u, 2 + i] = expected[2 + i, u] = w
    np.testing.assert_allclose(adj.numpy(), expected, rtol=1e-6)


def test_final_embeddings_are_the_mean_of_the_layers(world: World, fitted: LightGCN) -> None:
    assert fitted.net is not None
    train = world.data.split == TRAIN
    n_users, n_items = world.data.n_users, world.data.n_items
    adj = normalized_adjacency(world.data.users[train], world.data.items[train], n_users, n_items)
    dense = adj.to_dense().double().numpy()
    x = np.concatenate(
        [fitted.net.user.weight.detach().double().numpy(), fitted.net.item.weight.detach().numpy()]
    )
    layers = [x]
    for _ in range(fitted.layers):
        layers.append(dense @ layers[-1])
    expected = np.mean(layers, axis=0)[n_users:]
    np.testing.assert_allclose(fitted.item_embeddings(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["embedding", "history", "both"])
def test_ranks_own_cluster_above_the_other(world: World, fitted: LightGCN, mode: str) -> None:
    before, fitted.user_mode = fitted.user_mode, mode  # type: ignore[assignment]
    try:
        scores = fitted.score(world.test)
    finally:
        fitted.user_mode = before
    group = _group(world.data)
    rows = np.arange(len(world.test))
    target = scores[rows, world.test.targets]
    own = group[world.test.targets]
    other_best = np.where(group[None, :] != own[:, None], scores, -np.inf).max(axis=1)
    assert (target > other_best).all(), f"{mode}: {(target <= other_best).sum()} rows lose"
    random = tb._random_ndcg(world.test, world.data.n_items)
    assert ndcg_at_k(scores, world.test) > random + 0.15


def test_training_keeps_best_weights_and_history(world: World, fitted: LightGCN) -> None:
    assert 1 <= len(fitted.history) <= fitted.epochs
    assert all(np.isfinite(h["loss"]) for h in fitted.history)
    assert fitted.history[-1]["loss"] < fitted.history[0]["loss"]
    best = max(h["val_ndcg@10"] for h in fitted.history)
    assert fitted.params["val_ndcg@10"] == pytest.approx(best)
    train = world.data.split == TRAIN
    users, items = world.data.users[train].tolist(), world.data.items[train].tolist()
    pairs = set(zip(users, items, strict=True))
    assert fitted.params["train_pairs"] == len(pairs)


def test_same_seed_same_scores(world: World) -> None:
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    runs = []
    for seed in (0, 0, 1):
        model = LightGCN(**{**ARGS, "epochs": 3})
        model.fit(world.data, world.valid, world.text, seed=seed)
        runs.append(model.score(world.test))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_state)


def _order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores.astype(np.float64), kind="stable")


def test_cold_users_get_popularity_order(world: World, fitted: LightGCN) -> None:
    # Cold rows: each user's first click, empty history. As if nobody had TRAIN clicks:
    cold = world.cold
    assert fitted.warm is not None
    warm = fitted.warm
    fitted.warm = np.zeros_like(warm)
    try:
        scores = fitted.score(cold)
    finally:
        fitted.warm = warm
    np.testing.assert_array_equal(scores, _all_time(cold).astype(np.float32))
    pop = cold.popularity[np.inf]
    for row in range(len(cold)):
        np.testing.assert_array_equal(_order(scores[row]), _order(pop[row]))
    # The same rows for the (warm) users they really are: ranked by their embedding.
    assert not np.array_equal(fitted.score(cold), scores)


def test_new_user_with_history_is_scored_by_the_history_mean(
    world: World, fitted: LightGCN
) -> None:
    assert fitted.warm is not None
    warm = fitted.warm
    fitted.warm = np.zeros_like(warm)  # every test user arrived after training
    try:
        scores = fitted.score(world.test)
    finally:
        fitted.warm = warm
    items = fitted.item_embeddings().astype(np.float64)
    hist = world.test.history[0]
    mean = items[hist[hist >= 0]].mean(axis=0)
    expected = mean @ items.T + TIE_BREAK * _all_time(world.test)[0]
    np.testing.assert_allclose(scores[0], expected, rtol=1e-5, atol=1e-6)


def test_empty_train_split_is_a_clear_error(world: World) -> None:
    data = dataclasses.replace(world.data, split=np.full(len(world.data), VALID, np.int8))
    with pytest.raises(ValueError, match="TRAIN split is empty"):
        LightGCN(**ARGS).fit(data, world.valid, world.text)


def test_score_before_fit_and_bad_mode_are_errors(world: World) -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        LightGCN().score(world.test)
    with pytest.raises(ValueError, match="user_mode"):
        LightGCN(user_mode="mean")  # type: ignore[arg-type]


def _without_train_clicks(data: Interactions, item: int) -> Interactions:
    """``data`` with every TRAIN click on ``item`` moved to VALID (the item is untrained)."""
    split = data.split.copy()
    split[(data.items == item) & (split == TRAIN)] = VALID
    return dataclasses.replace(data, split=split)


def test_item_embeddings_and_untrained_items(world: World) -> None:
    untrained = 3
    data = _without_train_clicks(world.data, untrained)
    model = LightGCN(**{**ARGS, "epochs": 3})
    model.fit(data, world.valid, world.text, seed=0)
    emb = model.item_embeddings()
    assert emb.shape == (data.n_items, ARGS["dim"]) and emb.dtype == np.float32
    mask = model.trained_items()
    assert mask.dtype == bool and not mask[untrained] and mask.sum() == data.n_items - 1
    assert not emb[untrained].any()
    assert (np.linalg.norm(emb[mask], axis=1) > 0).all()
    # Untrained items score exactly the tie-breaker: 0 plus a sliver of popularity.
    scores = model.score(world.test)
    assert np.isfinite(scores).all() and scores.dtype == np.float32
    np.testing.assert_allclose(
        scores[:, untrained], TIE_BREAK * _all_time(world.test)[:, untrained], atol=1e-7
    )


def test_untrained_items_are_left_out_of_the_history_mean(world: World) -> None:
    untrained = 3
    model = LightGCN(**{**ARGS, "epochs": 2, "user_mode": "history"})
    model.fit(_without_train_clicks(world.data, untrained), world.valid, world.text, seed=0)
    items = model.item_embeddings().astype(np.float64)
    trained = np.flatnonzero(model.trained_items())[:2]
    batch = tb._rows(world.test, slice(0, 1))
    batch.history = np.array([[-1, -1, trained[0], untrained, trained[1]]], np.int32)
    expected = items[trained].mean(axis=0) @ items.T + TIE_BREAK * _all_time(batch)[0]
    np.testing.assert_allclose(model.score(batch)[0], expected, rtol=1e-5, atol=1e-6)
