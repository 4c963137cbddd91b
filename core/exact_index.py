"""Exact cosine top-k over all item vectors held in one matrix.

qdrant-client's local mode is itself an exact search, but it scores one query
at a time in Python and builds a result object per hit (~7 ms per query over
1.7k items here). The same exact answer for a whole batch of users is one
matrix product and a threshold scan (~0.3 ms per query). The scorer uses
this index when Qdrant runs in local mode; against a Qdrant server it queries
the server (HNSW). No library offers a small, mutable, in-process exact index
with string ids, so it is written here.

Cost grows linearly with the catalogue (bench/bench_search.py): at 1M
384-d items a batch of 64 queries is one [64, 384] x [384, 1M] product, done
in row blocks so the score matrix never exceeds a few MB per block.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np

from genre.core.vectorstore import Hit, StoredVector, VectorStoreError

# Rows scored per block: [B, 65536] float32 scores are 16 MiB for B = 64.
_BLOCK_ROWS = 65_536
# Columns per tile of the threshold scan (see _above).
_TILE = 256
# Below any cosine similarity: a row whose running threshold is this accepts everything.
_FLOOR = np.float32(-2.0)


class ExactIndex:
    """Mutable matrix of unit vectors with string ids; thread-safe; exact top-k."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._matrix = np.zeros((max(capacity, 1), dim), np.float32)  # [C, D]
        self._ids: list[str | None] = []
        self._pos: dict[str, int] = {}
        self._free: list[int] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pos)

    def _rows(self, vectors: np.ndarray, n: int | None, what: str) -> np.ndarray:
        """``vectors`` as a [n, dim] float32 matrix of unit rows, or a clear error."""
        vecs = np.asarray(vectors, np.float32)
        if vecs.ndim == 1 and vecs.size and (n is None or n == 1):
            vecs = vecs[None, :]
        if vecs.size == 0 and (n is None or n == 0):
            return np.zeros((0, self.dim), np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim or (n is not None and len(vecs) != n):
            want = f"[{n if n is not None else 'n'}, {self.dim}]"
            raise VectorStoreError(
                f"exact index holds {self.dim}-d vectors; {what} got shape "
                f"{list(vecs.shape)}, expected {want}"
            )
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs / np.where(norms > 0, norms, 1.0)

    def upsert(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Insert or replace vectors (normalised here, as cosine needs)."""
        vecs = self._rows(vectors, len(ids), "upsert")
        with self._lock:
            for key, vec in zip(ids, vecs, strict=True):
                row = self._pos.get(key)
                if row is None:
                    row = self._free.pop() if self._free else self._append_row()
                    self._pos[key] = row
                    self._ids[row] = key
                self._matrix[row] = vec

    def load(self, items: Iterable[StoredVector]) -> int:
        """Add stored items (e.g. a scroll of the Qdrant collection); returns how many."""
        loaded = 0
        batch: list[StoredVector] = []
        for item in items:
            batch.append(item)
            if len(batch) == 10_000:
                loaded += self._load_batch(batch)
                batch = []
        return loaded + self._load_batch(batch)

    def _load_batch(self, batch: list[StoredVector]) -> int:
        if batch:
            self.upsert([s.id for s in batch], np.stack([s.vector for s in batch]))
        return len(batch)

    def delete(self, ids: Iterable[str]) -> None:
        """Remove ids (unknown ids are ignored)."""
        with self._lock:
            for key in ids:
                row = self._pos.pop(key, None)
                if row is not None:
                    self._ids[row] = None
                    self._matrix[row] = 0.0
                    self._free.append(row)

    def search_batch(self, queries: np.ndarray, limit: int) -> list[list[Hit]]:
        """Top-``limit`` items by cosine similarity for each query row, best first."""
        return [
            [Hit(key, score, {}) for key, score in zip(ids, scores, strict=True)]
            for ids, scores in self.search_ids(queries, limit)
        ]

    def search_ids(self, queries: np.ndarray, limit: int) -> list[tuple[list[str], list[float]]]:
        """``search_batch`` as (ids, scores) lists per query: no object per hit."""
        if limit < 1:
            raise VectorStoreError(f"search limit must be 1 or more, got {limit}")
        q = self._rows(queries, None, "search_batch")  # [B, D]
        if len(q) == 0:
            return []
        with self._lock:
            k = min(limit, len(self._pos))
            if k <= 0:
                return [([], []) for _ in range(len(q))]
            rows, scores = self._top_k(q, k)  # [B, k] each, best first
            ids = self._ids
            return [
                ([ids[r] for r in rr], ss)  # type: ignore[misc]
                for rr, ss in zip(rows.tolist(), scores.tolist(), strict=True)
            ]

    def _top_k(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the k best live rows per query (caller holds the lock).

        Scores are computed one block of rows at a time. The first block seeds a
        per-query threshold (its k-th best score); later blocks only keep the
        entries above it, so the work per block is one comparison instead of a
        partition, and the threshold rises as better rows turn up.
        """
        n, b = len(self._ids), len(q)
        if n <= _BLOCK_ROWS:
            return self._top_k_one_block(q, k, n)
        dead = np.zeros(n, bool)
        if self._free:
            dead[self._free] = True
        cand_q: list[np.ndarray] = []  # query index of each candidate
        cand_r: list[np.ndarray] = []  # row of each candidate
        cand_s: list[np.ndarray] = []  # its score
        thr = np.full(b, _FLOOR, np.float32)
        for start in range(0, n, _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, n)
            scores = q @ self._matrix[start:stop].T  # [B, R]
            dead_here = np.flatnonzero(dead[start:stop])
            if len(dead_here):
                scores[:, dead_here] = -np.inf
            if (thr == _FLOOR).any():
                # No threshold yet (first block, or fewer than k live rows so far):
                # take this block's k best per query by partition.
                kk = min(k, stop - start)
                part = np.argpartition(scores, stop - start - kk, axis=1)[:, -kk:]  # [B, kk]
                best = np.take_along_axis(scores, part, axis=1)
                qi = np.repeat(np.arange(b), kk)
                ri, si = part.ravel(), best.ravel()
                live = si > -np.inf
                qi, ri, si = qi[live], ri[live], si[live]
            else:
                qi, ri, si = _above(scores, thr)
            cand_q.append(qi)
            cand_r.append(ri + start)
            cand_s.append(si)
            if sum(len(c) for c in cand_q) > 4 * k * b or (thr == _FLOOR).any():
                # Keep the k best per query so far; their k-th score is the new threshold.
                kept = _best_per_query(
                    np.concatenate(cand_q), np.concatenate(cand_r), np.concatenate(cand_s), k
                )
                cand_q, cand_r, cand_s = [kept[0]], [kept[1]], [kept[2]]
                thr = _kth_scores(kept[0], kept[2], b, k)
        qi, ri, si = _best_per_query(
            np.concatenate(cand_q), np.concatenate(cand_r), np.concatenate(cand_s), k
        )
        # Exactly k live rows exist for every query (k <= live rows), so the result is dense.
        return ri.reshape(b, k), si.reshape(b, k)

    def _top_k_one_block(self, q: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``_top_k`` for a catalogue that fits one block: one product, one partition,
        then a sort of the k kept per query (score descending, row ascending on ties)."""
        scores = q @ self._matrix[:n].T  # [B, n]
        if self._free:
            scores[:, self._free] = -np.inf
        part = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)  # rows ascending
        best = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-best, axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(best, order, axis=1)

    def _append_row(self) -> int:
        row = len(self._ids)
        if row == len(self._matrix):
            grown = np.zeros((max(2 * len(self._matrix), 1), self.dim), np.float32)
            grown[:row] = self._matrix
            self._matrix = grown
        self._ids.append(None)
        return row


def _above(scores: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, column, score) of every entry of ``scores`` [B, R] above its row's threshold.

    ``np.nonzero`` over the whole block costs more than the matrix product that
    made it, and almost nothing passes once the thresholds are warm: compare the
    maxima of 256-column tiles first and look inside the few tiles that pass.
    """
    b, r = scores.shape
    tiled = r - r % _TILE
    parts_q, parts_c = [], []
    if tiled:
        tiles = scores[:, :tiled].reshape(b, tiled // _TILE, _TILE)  # view, no copy
        tq, tt = np.nonzero(tiles.max(axis=2) > thr[:, None])
        if len(tq):
            hq, hc = np.nonzero(tiles[tq, tt] > thr[tq, None])  # [hits, _TILE] gathered
            parts_q.append(tq[hq])
            parts_c.append(tt[hq] * _TILE + hc)
    if tiled < r:
        tq, tc = np.nonzero(scores[:, tiled:] > thr[:, None])
        parts_q.append(tq)
        parts_c.append(tc + tiled)
    if not parts_q:
        empty = np.zeros(0, np.intp)
        return empty, empty, np.zeros(0, np.float32)
    qi, ci = np.concatenate(parts_q), np.concatenate(parts_c)
    return qi, ci, scores[qi, ci]


def _best_per_query(
    qi: np.ndarray, ri: np.ndarray, si: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (at most) k best candidates of each query, grouped by query, best first.

    Order: query, then score descending, then row ascending.
    """
    order = np.lexsort((ri, -si, qi))
    qi, ri, si = qi[order], ri[order], si[order]
    starts = np.searchsorted(qi, qi, side="left")  # first index of each entry's query
    keep = (np.arange(len(qi)) - starts) < k
    return qi[keep], ri[keep], si[keep]


def _kth_scores(qi: np.ndarray, si: np.ndarray, b: int, k: int) -> np.ndarray:
    """Per query: the k-th best kept score, or the floor while fewer than k are kept."""
    thr = np.full(b, _FLOOR, np.float32)
    counts = np.bincount(qi, minlength=b)
    full = np.flatnonzero(counts >= k)
    if len(full):
        ends = np.cumsum(counts)  # qi is grouped by query, best first
        thr[full] = si[ends[full] - 1]
    return thr
