"""The scorer's diversity step: each ranked list's best candidates re-ordered by
``core.features.diversity.diversify`` (the rule ``genre evaluate`` measures), and the
per-list diversity the scorer reports (``genre_list_diversity``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from genre.core.config import DiversityConfig
from genre.core.features.diversity import DiversityRule, diversify, intra_list_diversity


def diversity_rule(cfg: DiversityConfig) -> DiversityRule | None:
    """The rule ``scorer.diversity`` sets, None when it leaves lists as they are."""
    rule = DiversityRule(cfg.mmr_lambda, cfg.popularity_weight, cfg.candidates)
    return rule if cfg.enabled and not rule.is_identity else None


class DiversityStep:
    """Re-orders ranked lists (best first) and cuts them to ``top_k``."""

    def __init__(self, rule: DiversityRule, top_k: int, dim: int) -> None:
        self.rule = rule
        self.top_k = top_k
        self.dim = dim

    def order(
        self,
        lists: Sequence[Sequence[tuple[str, float]]],
        vectors: Callable[[Sequence[str]], dict[str, np.ndarray]],
        popularity: Callable[[Sequence[str]], np.ndarray],
    ) -> list[list[int]]:
        """Per list, the positions to publish (at most ``top_k``), diversified.

        ``lists``: (item id, score) in ranked order, each at most ``rule.candidates``
        long; ``vectors`` maps item ids to unit vectors (an item without one counts
        as similar to none); ``popularity`` gives the items' decayed trending counts.
        """
        n = max((len(items) for items in lists), default=0)
        if n == 0:
            return [[] for _ in lists]
        b = len(lists)
        scores = np.full((b, n), -np.inf)
        vecs = np.zeros((b, n, self.dim), np.float32)
        pops = np.zeros((b, n))
        ids = sorted({item for items in lists for item, _ in items})
        have = vectors(ids)
        pop_of = dict(zip(ids, popularity(ids).tolist(), strict=True))
        for i, items in enumerate(lists):
            for j, (item, score) in enumerate(items):
                scores[i, j] = score
                if item in have:
                    vecs[i, j] = have[item]
                pops[i, j] = pop_of[item]
        order = diversify(scores, vecs, self.rule, self.top_k, pops)
        return [
            [int(j) for j in order[i, : min(self.top_k, len(items))]]
            for i, items in enumerate(lists)
        ]


def list_diversity(vectors: Sequence[np.ndarray]) -> float | None:
    """Intra-list diversity of one published list's item vectors; None under two items."""
    if len(vectors) < 2:
        return None
    return intra_list_diversity(np.stack(vectors))
