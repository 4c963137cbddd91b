"""Baseline rankers on a small synthetic log with real structure (model_export/baselines.py).

Two user groups each walk their own item cluster in a fixed cyclic order, so
the next click is predictable from the last one (SASRec) and from the group
(BPR). All users click in lock-step hours, so the temporal split puts the
early part of every user's walk in TRAIN and the end in VALID/TEST.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from genre.model_export.baselines import (
    BPR,
    Baseline,
    ContentCosine,
    ItemKNN,
    Popularity,
    SASRec,
    Transitions,
)
from genre.model_export.graph_model import LightGCN
from genre.model_export.metrics import RankingMetrics, ndcg_at_k, segment_masks
from genre.model_export.replay import (
    TEST,
    TRAIN,
    VALID,
    FeatureSpec,
    Interactions,
    QueryBatch,
    StreamReplay,
    build_interactions,
    snapshot,
    stack_queries,
)
from genre.model_export.zoo import BASELINES, build_baselines
from genre.schemas import ClickEvent, ItemUpsert

CLUSTER = 20  # items per cluster
USERS = 60
CLICKS = 12  # per user, consecutive items in the cluster's cycle
T0 = 1_700_000_000.0
DIM = 16

# Small and single-threaded so the whole file runs in seconds even on a busy box.
BPR_ARGS = {"dim": 16, "epochs": 25, "batch_size": 64, "lr": 0.03, "patience": 5, "num_threads": 1}
SAS_ARGS = {
    "hidden": 32,
    "max_len": 12,
    "epochs": 25,
    "batch_size": 16,
    "lr": 0.01,
    "negatives": 20,
    "dropout": 0.1,
    "patience": 5,
    "num_threads": 1,
}

LIGHTGCN_ARGS = {"dim": 16, "layers": 2, "epochs": 10, "batch_size": 64, "lr": 0.03}
LIGHTGCN_ARGS |= {"num_threads": 1}


@dataclasses.dataclass
class World:
    data: Interactions
    valid: QueryBatch
    test: QueryBatch
    cold: QueryBatch  # each user's first click: empty history, zero user vector
    text: np.ndarray


@pytest.fixture(scope="module")
def world() -> World:
    rng = np.random.default_rng(7)
    items = [
        ItemUpsert(item_id=f"i{c}-{j}", title=f"item {c}-{j}", ts=T0)
        for c in (0, 1)
        for j in range(CLUSTER)
    ]
    clicks = []
    for u in range(USERS):
        group, start = u % 2, int(rng.integers(CLUSTER))
        for k in range(CLICKS):
            clicks.append(
                ClickEvent(
                    event_id=f"e{u}-{k}",
                    user_id=f"u{u}",
                    item_id=f"i{group}-{(start + k) % CLUSTER}",
                    ts=T0 + 3600.0 * k + 10.0 * u + float(rng.uniform(0, 5)),
                )
            )
    data = build_interactions(items, clicks)
    text = rng.standard_normal((data.n_items, DIM)).astype(np.float32)
    replay = StreamReplay(data, FeatureSpec(), text)
    rows: dict[str, list[QueryBatch]] = {"valid": [], "test": [], "cold": []}
    first_seen: set[int] = set()
    for e in replay.run():
        u = int(data.users[e])
        if u not in first_seen:
            first_seen.add(u)
            rows["cold"].append(snapshot(replay, [e]))
        if data.split[e] == VALID:
            rows["valid"].append(snapshot(replay, [e]))
        elif data.split[e] == TEST:
            rows["test"].append(snapshot(replay, [e]))
    return World(
        data,
        valid=stack_queries(rows["valid"]),
        test=stack_queries(rows["test"]),
        cold=stack_queries(rows["cold"]),
        text=text,
    )


def _random_ndcg(batch: QueryBatch, n_items: int) -> float:
    """Mean NDCG@10 of random scorers (a few draws, to make the bar stable)."""
    draws = [
        ndcg_at_k(np.random.default_rng(s).random((len(batch), n_items)), batch) for s in range(20)
    ]
    return float(np.mean(draws))


@pytest.fixture(scope="module")
def fitted(world: World) -> dict[str, Baseline]:
    models = build_baselines(bpr=BPR_ARGS, sasrec=SAS_ARGS, lightgcn=LIGHTGCN_ARGS)
    for model in models:
        model.fit(world.data, world.valid, world.text, seed=0)
    return {m.name: m for m in models}


def test_world_has_the_intended_shape(world: World) -> None:
    # Every VALID/TEST user also clicked in TRAIN (BPR needs warm users), and cold rows are cold.
    train_users = set(world.data.users[world.data.split == TRAIN].tolist())
    assert set(world.test.users.tolist()) <= train_users
    assert len(world.valid) > 30 and len(world.test) > 30
    assert (world.cold.history == -1).all()
    assert not world.cold.user_vectors.any()


@pytest.mark.parametrize("name", list(BASELINES))
def test_scores_are_full_rank_and_finite(
    fitted: dict[str, Baseline], world: World, name: str
) -> None:
    for batch in (world.test, world.cold):
        scores = fitted[name].score(batch)
        assert scores.shape == (len(batch), world.data.n_items)
        assert scores.dtype == np.float32
        assert np.isfinite(scores).all()


def test_popularity_picks_a_replayed_half_life(fitted: dict[str, Baseline], world: World) -> None:
    model = fitted["popularity"]
    assert isinstance(model, Popularity)
    assert model.half_life in world.valid.popularity
    assert model.params["half_life_s"] == model.half_life
    assert len(model.history) == len(world.valid.popularity)
    best = max(h["val_ndcg@10"] for h in model.history)
    assert model.params["val_ndcg@10"] == best


@pytest.mark.parametrize("name", ["bpr", "sasrec", "item_knn"])
def test_learned_models_beat_random(fitted: dict[str, Baseline], world: World, name: str) -> None:
    random = _random_ndcg(world.test, world.data.n_items)
    ndcg = ndcg_at_k(fitted[name].score(world.test), world.test)
    assert ndcg > random + 0.15, f"{name}: test NDCG@10 {ndcg:.3f} vs random {random:.3f}"


def test_sasrec_learns_the_sequence(fitted: dict[str, Baseline], world: World) -> None:
    # The next item is the cluster successor of the last one: SASRec should nearly nail it.
    ndcg = ndcg_at_k(fitted["sasrec"].score(world.test), world.test)
    assert ndcg > 0.6, ndcg


@pytest.mark.parametrize("name", ["bpr", "sasrec"])
def test_training_keeps_best_weights_and_history(fitted: dict[str, Baseline], name: str) -> None:
    model = fitted[name]
    assert 1 <= len(model.history) <= model.epochs  # type: ignore[attr-defined]
    assert all(np.isfinite(h["loss"]) for h in model.history)
    best = max(h["val_ndcg@10"] for h in model.history)
    assert model.params["val_ndcg@10"] == pytest.approx(best)


@pytest.mark.parametrize("cls,args", [(BPR, BPR_ARGS), (SASRec, SAS_ARGS)])
def test_same_seed_same_scores(world: World, cls: type[Baseline], args: dict) -> None:
    small = {**args, "epochs": 3}
    runs = []
    for seed in (0, 0, 1):
        model = cls(**small)
        model.fit(world.data, world.valid, world.text, seed=seed)
        runs.append(model.score(world.test))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_fit_leaves_torch_state_alone(world: World) -> None:
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    SASRec(**{**SAS_ARGS, "epochs": 1}).fit(world.data, world.valid, world.text, seed=3)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_state)


def _order(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores.astype(np.float64), kind="stable")


def test_content_cold_user_gets_popularity_order(fitted: dict[str, Baseline], world: World) -> None:
    model = fitted["content"]
    test = world.test
    zeroed = dataclasses.replace(test, user_vectors=np.zeros_like(test.user_vectors))
    scores = model.score(zeroed)
    pop = test.popularity[np.inf]
    for row in range(len(test)):
        np.testing.assert_array_equal(_order(scores[row]), _order(pop[row]))
    # A warm user is ranked by text, not popularity.
    warm = model.score(test)
    assert any(not np.array_equal(_order(warm[r]), _order(pop[r])) for r in range(len(test)))
    cosine = test.user_vectors[0] @ (world.text / np.linalg.norm(world.text, axis=1)[:, None]).T
    np.testing.assert_allclose(warm[0], cosine, rtol=1e-5, atol=1e-6)


def test_sasrec_empty_history_gets_popularity_order(
    fitted: dict[str, Baseline], world: World
) -> None:
    # Cold rows are snapshots at each user's first click: nothing clicked yet by them, but
    # others have, so popularity is not flat for most rows.
    scores = fitted["sasrec"].score(world.cold)
    pop = world.cold.popularity[np.inf]
    for row in range(len(world.cold)):
        np.testing.assert_array_equal(_order(scores[row]), _order(pop[row]))


def test_item_knn_is_knn_plus_tiny_tie_break(fitted: dict[str, Baseline], world: World) -> None:
    scores = fitted["item_knn"].score(world.test)
    np.testing.assert_allclose(scores, world.test.item_knn, atol=2e-6)
    # Items with no co-clicks are ordered by all-time popularity, not left tied.
    row = 0
    zero = world.test.item_knn[row] == 0
    pop = world.test.popularity[np.inf][row][zero]
    s = scores[row][zero]
    assert (np.diff(s[np.argsort(pop, kind="stable")]) >= 0).all()
    assert len(np.unique(s)) == len(np.unique(pop))


def test_bpr_cold_user_scored_by_item_bias(fitted: dict[str, Baseline], world: World) -> None:
    model = fitted["bpr"]
    assert isinstance(model, BPR) and model.net is not None and model.warm is not None
    warm = model.warm
    model.warm = np.zeros_like(warm)  # as if no test user had clicked during TRAIN
    try:
        scores = model.score(world.test)
    finally:
        model.warm = warm
    bias = model.net.bias.weight[:, 0].detach().numpy()
    np.testing.assert_allclose(scores, np.broadcast_to(bias, scores.shape), rtol=1e-6)
    assert not np.allclose(model.score(world.test), scores)  # warm users use their embedding


def test_build_baselines() -> None:
    models = build_baselines()
    assert [m.name for m in models] == list(BASELINES)
    assert [type(m) for m in models] == [
        Popularity,
        ItemKNN,
        Transitions,
        ContentCosine,
        BPR,
        SASRec,
        LightGCN,
    ]
    (bpr,) = build_baselines(["bpr"], bpr={"epochs": 3})
    assert isinstance(bpr, BPR) and bpr.epochs == 3
    with pytest.raises(ValueError, match="unknown baselines"):
        build_baselines(["nope"])
    with pytest.raises(ValueError, match="not being built"):
        build_baselines(["popularity"], bpr={"epochs": 3})


def test_score_before_fit_is_an_error(world: World) -> None:
    for cls in (Popularity, ContentCosine, BPR, SASRec):
        with pytest.raises(RuntimeError, match="before fit"):
            cls().score(world.test)


def _rows(batch: QueryBatch, index: slice) -> QueryBatch:
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    out = {k: None if v is None else v[index] for k, v in fields.items() if k != "popularity"}
    return QueryBatch(**out, popularity={hl: p[index] for hl, p in batch.popularity.items()})


def test_fit_without_validation_queries(world: World) -> None:
    empty = _rows(world.valid, slice(0, 0))
    assert len(empty) == 0
    model = BPR(**{**BPR_ARGS, "epochs": 3})
    model.fit(world.data, empty, world.text)
    assert len(model.history) == 3  # no early stopping signal: lowest loss is kept
    assert np.isfinite(model.score(world.test)).all()
    pop = Popularity()
    pop.fit(world.data, empty, world.text)
    assert pop.half_life == next(iter(world.valid.popularity))


def test_transitions_count_what_followed_the_last_click(
    fitted: dict[str, Baseline], world: World
) -> None:
    # Each group walks its cluster in a fixed cycle: what followed item j is always j + 1.
    data, test = world.data, world.test
    last = test.history[:, -1]
    assert (last >= 0).all()
    for row in range(len(test)):
        name = data.item_ids[last[row]]
        group, j = name[1:].split("-")
        expected = data.item_ids.index(f"i{group}-{(int(j) + 1) % CLUSTER}")
        assert test.next_item[row].argmax() == expected
    scores = fitted["transitions"].score(test)
    # Counts first; the fallback popularity only orders what the counts leave tied.
    np.testing.assert_array_less(scores - test.next_item, 1.0 + 1e-6)
    assert (scores >= test.next_item - 1e-6).all()
    assert ndcg_at_k(scores, test) > 0.9
    # Before any click: the validated popularity order.
    model = fitted["transitions"]
    assert isinstance(model, Transitions)
    cold = model.score(world.cold)
    pop = model.fallback.score(world.cold)
    for row in range(len(world.cold)):
        np.testing.assert_array_equal(_order(cold[row]), _order(pop[row]))


def test_segments_split_queries_by_when_user_and_item_arrived() -> None:
    items = [ItemUpsert(item_id=f"i{j}", title=f"item {j}", ts=T0) for j in range(6)]
    # (user, item): 10 events -> 8 train, 1 valid, 1 test.
    log = [("a", 0), ("a", 1), ("b", 0), ("a", 2), ("b", 1), ("a", 3), ("b", 2), ("b", 3)]
    log += [("c", 4), ("d", 5)]
    clicks = [
        ClickEvent(event_id=f"e{n}", user_id=u, item_id=f"i{i}", ts=T0 + n)
        for n, (u, i) in enumerate(log)
    ]
    data = build_interactions(items, clicks)
    events = np.arange(len(data))
    masks = segment_masks(data, events, history_lens=np.arange(len(data)))
    assert masks["known_users"].tolist() == [True] * 8 + [False, False]
    assert masks["new_users_valid"].tolist() == [False] * 8 + [True, False]
    assert masks["new_users_test"].tolist() == [False] * 9 + [True]
    assert masks["short_history"].tolist() == [True] * 5 + [False] * 5
    assert masks["new_items"].tolist() == [False] * 8 + [True, True]


def test_metrics_by_segment_use_each_segments_own_queries(world: World) -> None:
    metrics = RankingMetrics(world.data.n_items)
    perfect = np.zeros((len(world.test), world.data.n_items), np.float32)
    perfect[np.arange(len(world.test)), world.test.targets] = 1.0
    metrics.add(perfect, world.test)
    segments = metrics.by_segment(world.data)
    assert segments["known_users"] == {
        "hr@10": 1.0,
        "ndcg@10": 1.0,
        "mrr": 1.0,
        "queries": len(world.test),
    }
    assert segments["new_users_test"] == {"queries": 0}
