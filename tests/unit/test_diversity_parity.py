"""The scorer's diversity step and ``genre evaluate``'s re-ranking give the same list for the
same inputs (scores, item vectors, trending popularity), and ``scorer.diversity`` is
validated and off by default."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from genre.core.config import GenreConfig
from genre.core.features import FeatureSpec
from genre.core.features.diversity import DiversityRule
from genre.core.features.ranking import trending_scores
from genre.model_export.evaluate import rerank_scores
from genre.workers.diversity import diversity_rule
from genre.workers.scorer import ScorerWorker
from tests.unit.test_scorer import NOW, VECTORS, _ctx, _graph, _views

DIVERSE = {"enabled": True, "mmr_lambda": 0.3, "popularity_weight": 0.5, "candidates": 4}


class _Queries:
    def __init__(self, exclude: np.ndarray) -> None:
        self.exclude = exclude

    def __len__(self) -> int:
        return len(self.exclude)


def _config(**scorer: object) -> GenreConfig:
    return GenreConfig(encoder={"dim": 3}, scorer={"top_k": 3, **scorer})


def _published(worker: ScorerWorker) -> list[tuple[str, float]]:
    worker.prepare()
    user = _ctx(["a", "b"], user="u1", vector=np.array([0.8, 0.6, 0.0], np.float32))
    (scored,) = worker.score([user])
    return [(i["item_id"], i["score"]) for i in orjson.loads(scored.value)["items"]]


def test_scorer_and_evaluation_rerank_alike() -> None:
    graph = _graph()
    plain = _published(ScorerWorker(_config(top_k=4), _views(graph), "v1"))
    diverse = _published(ScorerWorker(_config(diversity=DIVERSE), _views(graph), "v1"))
    assert [i for i, _ in diverse] != [i for i, _ in plain][:3]  # the step changed the list

    # The evaluation's side: the same model scores over the whole catalogue (items that
    # were no candidate and seen items cannot be listed), vectors and popularity.
    ids = list(VECTORS)
    scores = np.full((1, len(ids)), -np.inf)
    for item, score in plain:
        scores[0, ids.index(item)] = score
    exclude = np.isin(np.asarray(ids), ["a", "b"])[None, :]
    vectors = np.asarray([VECTORS[i] for i in ids], np.float32)
    graph_rules = FeatureSpec.from_streams(_config().streams).graph_rules()  # the scorer's
    popularity = trending_scores(graph_rules, graph.state, ids, NOW)[None, :]
    rule = DiversityRule(DIVERSE["mmr_lambda"], DIVERSE["popularity_weight"], 4)
    out = rerank_scores(scores, _Queries(exclude), rule, vectors, popularity, k=3)  # type: ignore[arg-type]
    offline = [ids[j] for j in np.argsort(-np.where(exclude, -np.inf, out)[0], kind="stable")[:3]]
    assert offline == [i for i, _ in diverse]


def test_diversity_is_off_by_default_and_identity_rules_are_off() -> None:
    cfg = GenreConfig()
    assert cfg.scorer.diversity.enabled is False
    assert diversity_rule(cfg.scorer.diversity) is None
    on = _config(diversity={"enabled": True, "mmr_lambda": 1.0, "candidates": 4}).scorer
    assert diversity_rule(on.diversity) is None  # lambda 1 and no penalty: today's lists
    assert diversity_rule(_config(diversity=DIVERSE).scorer.diversity) == DiversityRule(0.3, 0.5, 4)


def test_off_keeps_the_lists_exactly() -> None:
    graph = _graph()
    plain = _published(ScorerWorker(_config(), _views(graph), "v1"))
    identity = {"enabled": True, "mmr_lambda": 1.0, "candidates": 4}
    same = _published(ScorerWorker(_config(diversity=identity), _views(graph), "v1"))
    assert same == plain


@pytest.mark.parametrize(
    ("diversity", "complaint"),
    [
        ({"mmr_lambda": 1.5}, "mmr_lambda"),
        ({"popularity_weight": -1}, "popularity_weight"),
        ({"enabled": True, "candidates": 2}, "at least scorer.top_k"),
        ({"lambda": 0.5}, "lambda"),
    ],
)
def test_bad_diversity_settings_are_refused(diversity: dict, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        _config(diversity=diversity)
