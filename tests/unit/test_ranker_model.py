"""The ranker's offline half: replayed features equal the stream's, metrics, model, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genre.core.config import RankerTrainSettings
from genre.model_export.metrics import RankingMetrics, ndcg_at_k, target_ranks, top_k
from genre.model_export.ranker import GenreRanker, RankerShape
from genre.model_export.replay import (
    TEST,
    TRAIN,
    VALID,
    FeatureSpec,
    ReplayError,
    StreamReplay,
    build_interactions,
    snapshot,
    stack_queries,
    temporal_split,
)
from genre.model_export.train import (
    RankerInputs,
    TrainingSampler,
    _hide_ids,
    score_queries,
    torch_threads,
    train_ranker,
)
from genre.schemas import ClickEvent, ItemUpsert

T0 = 1_700_000_000.0


def _log(n_users: int, n_items: int, clicks: int, seed: int, hours: float = 1.0):
    """Users walking their group's items in order; timestamps spread over days."""
    rng = np.random.default_rng(seed)
    items = [ItemUpsert(item_id=f"m{i}", title=f"movie {i}") for i in range(n_items)]
    half = n_items // 2
    events = []
    for u in range(n_users):
        base = (u % 2) * half
        start = int(rng.integers(half))
        for k in range(clicks):
            events.append(
                ClickEvent(
                    event_id=f"e{u}-{k}",
                    user_id=f"u{u}",
                    item_id=f"m{base + (start + k) % half}",
                    ts=T0 + 3600.0 * hours * k + 60.0 * u + float(rng.uniform(0, 30)),
                )
            )
    return items, events


def test_temporal_split_fractions() -> None:
    split = temporal_split(100)
    assert (
        (split[:80] == TRAIN).all() and (split[80:90] == VALID).all() and (split[90:] == TEST).all()
    )
    with pytest.raises(ReplayError, match="fractions"):
        temporal_split(10, (0.9, 0.8))


def test_build_interactions_rejects_unknown_items_and_marks_repeats() -> None:
    items = [ItemUpsert(item_id=f"m{i}", title=f"m{i}") for i in range(3)]
    clicks = [ClickEvent(event_id=f"e{i}", user_id="u", item_id="m9", ts=T0 + i) for i in range(12)]
    with pytest.raises(ReplayError, match="not in the catalogue"):
        build_interactions(items, clicks)
    clicks = [
        ClickEvent(event_id=f"e{i}", user_id=f"u{i % 5}", item_id=f"m{i % 3}", ts=T0 + i)
        for i in range(40)
    ]
    data = build_interactions(items, clicks)
    # Every click is replayed (the stream folds re-clicks too); only first clicks are queries.
    assert len(data) == 40
    assert int(data.query.sum()) == 15  # 5 users x 3 distinct items
    assert (np.diff(data.ts) >= 0).all()
    # A re-sent event (same id) is never a query, even on a new item.
    resent = clicks[0].model_copy(update={"item_id": "m2", "ts": T0 + 99})
    again = build_interactions(items, [*clicks, resent])
    assert not again.is_query(len(again) - 1)


def _batch(scores_shape, targets, exclude_rows=()):
    items, events = _log(n_users=2, n_items=10, clicks=6, seed=0)
    data = build_interactions(items, events)
    replay = StreamReplay(data, FeatureSpec())
    snaps = []
    for e in replay.run():
        if len(snaps) < scores_shape[0] and e >= 4:
            snaps.append(snapshot(replay, [e]))
    batch = stack_queries(snaps)
    batch.targets = np.asarray(targets, np.int32)
    batch.exclude = np.zeros(scores_shape, bool)
    for r, c in exclude_rows:
        batch.exclude[r, c] = True
    return batch


def test_target_ranks_count_ties_against_the_target_and_skip_excluded() -> None:
    batch = _batch((2, 10), targets=[3, 0], exclude_rows=[(1, 9)])
    scores = np.zeros((2, 10), np.float32)
    assert target_ranks(scores, batch).tolist() == [10, 9]  # constant scorer: last place
    scores[0, 3] = 1.0
    scores[1, 9] = 5.0  # excluded: does not count
    scores[1, 0] = 2.0
    assert target_ranks(scores, batch).tolist() == [1, 1]
    assert top_k(scores, batch, 2)[1, 0] == 0
    m = RankingMetrics(n_items=10)
    m.add(scores, batch)
    assert m.result()["hr@10"] == 1.0 and m.result()["ndcg@10"] == 1.0 and m.result()["mrr"] == 1.0


def _tiny_model(seed: int = 0) -> GenreRanker:
    torch.manual_seed(seed)
    model = GenreRanker(RankerShape(text_dim=8, n_ids=5, dim=16, heads=2, history_len=6))
    return model.eval()


def test_padding_does_not_change_scores_and_cold_users_get_finite_scores() -> None:
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    h_text, c_text = torch.randn(2, 6, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    h_ids, c_ids = (
        torch.randint(0, 5, (2, 6), generator=g),
        torch.randint(0, 5, (2, 5), generator=g),
    )
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    feats = torch.rand(2, 5, 2, generator=g) * 10
    with torch.no_grad():
        scores, attention = model(h_text, h_ids, mask, c_text, c_ids, feats)
        garbage = h_text.clone()
        garbage[:, :3] = 1e3  # padded positions: anything there must be ignored
        scores2, _ = model(garbage, h_ids, mask, c_text, c_ids, feats)
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(scores[0], scores2[0])
    assert attention.shape == (2, 5, 6)
    assert float(attention[0, :, :3].abs().max()) < 1e-6  # no attention on padding
    assert float(attention[1].abs().max()) < 1e-6  # cold user: only the null click


def test_features_move_scores() -> None:
    model = _tiny_model()
    # Give the direct feature path a clear positive weight: more popular -> higher.
    with torch.no_grad():
        model.score_head.linear_features.weight.fill_(1.0)
    text = torch.zeros(1, 3, 8)
    ids = torch.zeros(1, 3, dtype=torch.long)
    mask = torch.zeros(1, 6)
    feats = torch.tensor([[[0.0, 0.0], [100.0, 0.0], [1000.0, 0.0]]])
    with torch.no_grad():
        scores, _ = model(
            torch.zeros(1, 6, 8), torch.zeros(1, 6, dtype=torch.long), mask, text, ids, feats
        )
    assert scores[0, 2] > scores[0, 1] > scores[0, 0]


@pytest.fixture(scope="module")
def trained():
    items, events = _log(n_users=40, n_items=40, clicks=14, seed=5)
    data = build_interactions(items, events)
    text = np.random.default_rng(0).standard_normal((data.n_items, 8)).astype(np.float32)
    spec = FeatureSpec(history_len=10)
    cfg = RankerTrainSettings(
        epochs=12, patience=4, batch_size=32, negatives=8, dim=16, heads=2, lr=5e-3
    )
    replay = StreamReplay(data, spec, text)
    sampler = TrainingSampler(data.n_items, cfg.negatives, cfg.seed)
    valid, test = [], []
    for e in replay.run():
        if data.split[e] == TRAIN:
            sampler.observe(replay, e)
        elif data.split[e] == VALID:
            valid.append(snapshot(replay, [e]))
        else:
            test.append(snapshot(replay, [e]))
    train_set = sampler.build()
    vb, tb = stack_queries(valid), stack_queries(test)
    with torch_threads(1):
        result = train_ranker(data, text, train_set, vb, spec, cfg)
        again = train_ranker(data, text, train_set, vb, spec, cfg)
    return data, text, result, again, tb


def test_training_learns_the_walks_and_is_reproducible(trained) -> None:
    data, text, result, again, test = trained
    inputs = RankerInputs(text, result.id_of_item)
    with torch_threads(1):
        scores = score_queries(result.model, inputs, test)
        scores_again = score_queries(again.model, RankerInputs(text, again.id_of_item), test)
    ndcg = ndcg_at_k(scores, test)
    popularity = ndcg_at_k(test.popularity[np.inf], test)
    rng = np.random.default_rng(0)
    random = np.mean([ndcg_at_k(rng.random(scores.shape), test) for _ in range(10)])
    assert ndcg > 2 * random and ndcg > popularity, (ndcg, popularity, random)
    np.testing.assert_array_equal(scores, scores_again)
    assert result.history[0]["loss"] > result.history[result.best_epoch - 1]["loss"]
    assert result.id_of_item.max() == data.train_items().sum()


def test_id_dropout_hides_ids_at_its_rate_and_only_then() -> None:
    ids = torch.arange(1, 20_001).reshape(100, 200)
    hidden = _hide_ids(ids, 0.1, np.random.default_rng(0))
    share = float((hidden == 0).float().mean())
    assert 0.09 < share < 0.11
    kept = hidden != 0
    assert torch.equal(hidden[kept], ids[kept])  # the rest keep their own id
    assert torch.equal(_hide_ids(ids, 0.0, np.random.default_rng(0)), ids)
