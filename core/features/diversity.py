"""Diversity re-ranking and list diversity, one rule for the scorer and the evaluation.

``diversify`` re-orders each user's best ``N`` candidates with maximal marginal
relevance (MMR) over unit item vectors, plus an exposure control that lifts the
long tail (a penalty on each candidate's popularity). The live scorer
(``workers/scorer.py``) and ``genre evaluate`` (``model_export/evaluate.py``)
call it with the same inputs, so a lambda measured offline is the lambda served.

Per row, over its valid candidates (``scores`` finite, already in the order the
model ranks them):

* relevance ``r = (s - min s) / (max s - min s)`` (1 for a row of equal scores);
* exposure ``e = log1p(p) / log1p(max p)`` of the popularity ``p`` (0 with no
  popularity), so ``r' = r - popularity_weight * e``;
* greedy MMR: pick ``argmax(lam * r' - (1 - lam) * max(0, max_{j picked} cos(i, j)))``
  ``k`` times; the rest follow in the input order.

``lam = 1`` and ``popularity_weight = 0`` return the input order exactly.
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Below any real relevance: marks picked and invalid (padding) candidates.
_TAKEN = -np.inf


@dataclass(frozen=True, slots=True)
class DiversityRule:
    """The knobs of ``diversify`` (``scorer.diversity`` in the YAML)."""

    mmr_lambda: float = 1.0
    popularity_weight: float = 0.0
    candidates: int = 50

    @property
    def is_identity(self) -> bool:
        """True when the rule keeps the input order (no MMR, no exposure penalty)."""
        return self.mmr_lambda >= 1.0 and self.popularity_weight == 0.0


def relevance(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Float64 [B, N]: scores min-max scaled to [0, 1] per row over valid entries."""
    s = np.where(valid, scores.astype(np.float64), np.nan)
    with np.errstate(invalid="ignore"):
        lo = np.nanmin(np.where(valid.any(axis=1, keepdims=True), s, 0.0), axis=1, keepdims=True)
        hi = np.nanmax(np.where(valid.any(axis=1, keepdims=True), s, 0.0), axis=1, keepdims=True)
    span = hi - lo
    rel = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 1.0)
    return np.where(valid, rel, 0.0)


def exposure(popularity: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Float64 [B, N] in [0, 1]: log-scaled popularity relative to the row's most popular."""
    logp = np.log1p(np.maximum(np.where(valid, popularity.astype(np.float64), 0.0), 0.0))
    top = logp.max(axis=1, keepdims=True)
    return np.where(top > 0, logp / np.where(top > 0, top, 1.0), 0.0)


def diversify(
    scores: np.ndarray,
    vectors: np.ndarray,
    rule: DiversityRule,
    k: int,
    popularity: np.ndarray | None = None,
) -> np.ndarray:
    """Int [B, N]: a permutation of each row's positions, MMR picks first.

    ``scores`` float [B, N], each row in the model's order (best first is not
    required); ``-inf`` or NaN marks padding, which stays last. ``vectors`` float
    [B, N, D] unit item vectors (zeros for an item without one: similar to none).
    ``popularity`` float [B, N] (e.g. the decayed trending count), needed only
    with ``rule.popularity_weight``. ``k``: how many positions MMR picks; the
    rest keep their score order.
    """
    scores = np.asarray(scores)
    b, n = scores.shape
    valid = np.isfinite(scores)
    base = np.argsort(np.where(valid, -scores.astype(np.float64), np.inf), axis=1, kind="stable")
    if rule.is_identity or n == 0:
        return base
    gain = relevance(scores, valid)
    if rule.popularity_weight and popularity is not None:
        gain = gain - rule.popularity_weight * exposure(popularity, valid)
    lam = float(rule.mmr_lambda)
    vecs = np.asarray(vectors, np.float32)
    value = np.where(valid, lam * gain, _TAKEN)
    max_sim = np.zeros((b, n))
    rows = np.arange(b)
    step_of = np.full((b, n), -1, np.int64)  # the MMR step that picked each position
    for step in range(min(k, n)):
        # Ties go to the earlier position in the score order, as the identity rule does.
        objective = np.where(np.isfinite(value), value - (1.0 - lam) * max_sim, _TAKEN)
        ordered = np.take_along_axis(objective, base, axis=1)
        at = np.argmax(ordered, axis=1)
        took = np.isfinite(ordered[rows, at])  # False once a row has no valid item left
        pick = base[rows, at]
        step_of[rows[took], pick[took]] = step
        value[rows, pick] = _TAKEN
        # Similarity to the new pick only: k x N per row, not the whole N x N matrix.
        sims = np.einsum("bnd,bd->bn", vecs, vecs[rows, pick])
        max_sim = np.maximum(max_sim, np.where(took[:, None], sims, -np.inf))
    rank_in_base = np.empty((b, n), np.int64)
    rank_in_base[rows[:, None], base] = np.arange(n)
    key = np.where(step_of >= 0, step_of, n + rank_in_base)
    return np.argsort(key, axis=1, kind="stable")


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance ``1 - cos`` of one list's item vectors [L, D]
    (0 for fewer than two items). Rows are normalised here; a zero row counts as
    distance 1 from everything."""
    v = np.asarray(vectors, np.float64)
    if len(v) < 2:
        return 0.0
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = np.where(norms > 0, v / np.where(norms > 0, norms, 1.0), 0.0)
    sims = v @ v.T
    n = len(v)
    off = (sims.sum() - np.trace(sims)) / (n * (n - 1))
    return float(1.0 - off)


def intra_list_diversity_batch(vectors: np.ndarray) -> np.ndarray:
    """Float64 [B]: ``intra_list_diversity`` of each list of ``vectors`` [B, L, D]."""
    v = np.asarray(vectors, np.float64)
    b, n = v.shape[0], v.shape[1]
    if n < 2:
        return np.zeros(b)
    norms = np.linalg.norm(v, axis=2, keepdims=True)
    v = np.where(norms > 0, v / np.where(norms > 0, norms, 1.0), 0.0)
    sims = np.einsum("bld,bmd->blm", v, v)
    off = (sims.sum(axis=(1, 2)) - np.trace(sims, axis1=1, axis2=2)) / (n * (n - 1))
    return 1.0 - off
