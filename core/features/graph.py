"""The item graph: time-decayed co-click edges and trending counts, and the rules on them.

The stream's graph agent folds co-click evidence into ``ItemState``s with
``GraphRules``; the scorer reads them through ``neighbour_scores`` and
``GraphRules.popularity``; the training replay does both with the same code.

States are replaced, never changed in place, once published (``ItemState.copy``
before an update): the scorer reads them from another thread.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from genre.core.features.decay import accumulate, decayed
from genre.core.features.ids import ITEM_IDS


@dataclass(slots=True)
class ItemState:
    """One item's co-click edges (neighbour -> [weight, last event time]) and popularity."""

    edges: dict[str, list[float]] = field(default_factory=dict)
    pop: float = 0.0
    pop_ts: float | None = None
    #: The edges as arrays (neighbour rows in ``ITEM_IDS``, weights, last times), made
    #: on first read of a published state (``edge_arrays``).
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, compare=False, repr=False
    )

    def copy(self) -> ItemState:
        """A copy to update: edge lists are replaced on update, so a shallow copy is enough."""
        return ItemState(dict(self.edges), self.pop, self.pop_ts)

    def edge_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neighbour rows (``ITEM_IDS``), weights and last event times, as arrays."""
        arrays = self.arrays
        if arrays is None:
            edges = self.edges
            rows = ITEM_IDS.rows(list(edges))
            wl = np.asarray(list(edges.values()), np.float64).reshape(-1, 2)
            arrays = self.arrays = (rows, wl[:, 0].copy(), wl[:, 1].copy())
        return arrays

    def to_bytes(self) -> bytes:
        """The state as JSON bytes (its changelog form)."""
        return orjson.dumps({"edges": self.edges, "pop": self.pop, "pop_ts": self.pop_ts})

    @classmethod
    def from_bytes(cls, payload: bytes) -> ItemState:
        """Parse ``to_bytes`` output; ValueError for anything else."""
        raw = orjson.loads(payload)
        try:
            return cls(
                {k: [float(w), float(t)] for k, (w, t) in raw["edges"].items()},
                float(raw["pop"]),
                raw["pop_ts"],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not an item state: {exc!r} in {payload[:200]!r}") from exc


#: Edges an item may hold beyond ``max_neighbours`` before the weakest are pruned:
#: pruning scans every edge, so it runs once per this many new neighbours, not per
#: click. Deterministic in the order edges are added, whatever the batching.
PRUNE_SLACK = 0.25


@dataclass(frozen=True)
class GraphRules:
    """Time-decayed co-click edges and trending counts (``streams`` config)."""

    edge_half_life_s: float
    trending_half_life_s: float
    max_neighbours: int

    def add_neighbours(
        self, state: ItemState, neighbours: Sequence[str], ts: float, weight: float = 1.0
    ) -> None:
        """Strengthen edges to ``neighbours`` at event time ``ts``, then prune.

        An item keeps at most ``max_neighbours * (1 + PRUNE_SLACK)`` edges; past that
        it keeps the ``max_neighbours`` strongest (weights decayed to ``ts``).
        """
        edges = state.edges
        state.arrays = None
        hl = self.edge_half_life_s
        for nbr in neighbours:
            old = edges.get(nbr)
            if old is None:
                edges[nbr] = [weight, ts]
            else:
                w, last = accumulate(old[0], old[1], ts, weight, hl)
                edges[nbr] = [w, last]
        if len(edges) > self.max_neighbours * (1.0 + PRUNE_SLACK):
            self._prune(edges, ts)

    def _prune(self, edges: dict[str, list[float]], ts: float) -> None:
        excess = len(edges) - self.max_neighbours
        hl = self.edge_half_life_s
        weights = [(decayed(w, last, ts, hl), nbr) for nbr, (w, last) in edges.items()]
        for _, nbr in heapq.nsmallest(excess, weights):
            del edges[nbr]

    def add_click(self, state: ItemState, ts: float, weight: float = 1.0) -> None:
        """Count a click toward the item's decayed popularity."""
        last = ts if state.pop_ts is None else state.pop_ts
        state.pop, state.pop_ts = accumulate(state.pop, last, ts, weight, self.trending_half_life_s)

    def popularity(self, state: ItemState | None, now: float) -> float:
        """The item's trending score decayed to ``now`` (0 for an unknown item)."""
        if state is None or state.pop_ts is None:
            return 0.0
        return decayed(state.pop, state.pop_ts, now, self.trending_half_life_s)

    def neighbour_scores(
        self,
        states: Callable[[str], ItemState | None],
        recent_items: Sequence[str],
        now: float,
    ) -> NeighbourScores:
        """Co-click scores of every neighbour of the user's recent items, and for each
        the recent item that contributed most. ``recent_items`` oldest first; more
        recent ones count more (1, 1/2, 1/3, ...), as in session-based item-kNN. Edge
        weights are decayed to ``now``.

        Column-wise: each recent item's edges are arrays (``ItemState.edge_arrays``),
        summed per neighbour in one ``bincount``, in the order a loop over the recent
        items (most recent first) and their edges would add them.
        """
        rate = -math.log(2.0) / self.edge_half_life_s
        rows, contributions, sources = [], [], []
        for rank, item in enumerate(reversed(recent_items)):
            state = states(item)
            if state is None or not state.edges:
                continue
            nbrs, weights, last = state.edge_arrays()
            decay_factor = np.exp(rate * np.maximum(now - last, 0.0))
            rows.append(nbrs)
            contributions.append((1.0 / (rank + 1)) * weights * decay_factor)
            sources.append(np.full(len(nbrs), ITEM_IDS.row(item), np.int64))
        if not rows:
            return NeighbourScores.empty()
        all_rows = np.concatenate(rows)
        all_c = np.concatenate(contributions)
        unique, inverse = np.unique(all_rows, return_inverse=True)
        totals = np.bincount(inverse, weights=all_c, minlength=len(unique))
        # The largest single contribution per neighbour, the earliest (most recent
        # item) on ties: sort by neighbour, contribution descending, position.
        order = np.lexsort((np.arange(len(all_c)), -all_c, inverse))
        first = np.flatnonzero(np.r_[True, inverse[order][1:] != inverse[order][:-1]])
        return NeighbourScores(unique, totals, np.concatenate(sources)[order[first]])


@dataclass(frozen=True, slots=True)
class NeighbourScores:
    """Co-click scores: neighbour rows (``ITEM_IDS``, sorted), their scores, and the row
    of the recent item that contributed most to each."""

    rows: np.ndarray  # int64 [K], sorted
    scores: np.ndarray  # float64 [K]
    because: np.ndarray  # int64 [K]

    @classmethod
    def empty(cls) -> NeighbourScores:
        """No neighbours."""
        none = np.zeros(0, np.int64)
        return cls(none, np.zeros(0, np.float64), none)

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        """Scores of ``rows`` (0 for rows without one), float64."""
        out = np.zeros(len(rows), np.float64)
        if len(self.rows) and len(rows):
            at = np.minimum(np.searchsorted(self.rows, rows), len(self.rows) - 1)
            hit = self.rows[at] == rows
            out[hit] = self.scores[at[hit]]
        return out

    def as_dict(self) -> dict[str, tuple[float, str]]:
        """item -> (score, the recent item that contributed most)."""
        names = ITEM_IDS.names
        return {
            names[r]: (float(s), names[b])
            for r, s, b in zip(
                self.rows.tolist(), self.scores.tolist(), self.because.tolist(), strict=True
            )
        }


@dataclass(frozen=True, slots=True)
class CoClickEvidence:
    """What one click tells the graph about one item: its neighbours in the clicking
    user's recent history, and how much the click counts toward its popularity."""

    item_id: str
    neighbours: tuple[str, ...]
    clicks: float
    ts: float


def click_evidence(item_id: str, neighbours: Sequence[str], ts: float) -> list[CoClickEvidence]:
    """The graph updates one click makes: the clicked item gains a click and edges to
    ``neighbours``; each neighbour gains an edge back to it. In this order."""
    out = [CoClickEvidence(item_id, tuple(neighbours), 1.0, ts)]
    out.extend(CoClickEvidence(nbr, (item_id,), 0.0, ts) for nbr in neighbours)
    return out


def apply_evidence(
    rules: GraphRules,
    evidence: Sequence[CoClickEvidence],
    state_of: Callable[[str], ItemState | None],
) -> dict[str, ItemState]:
    """Fold evidence into copies of the items' states, in order; returns the new states
    (the caller writes each once). The states ``state_of`` returns are not changed."""
    touched: dict[str, ItemState] = {}
    for ev in evidence:
        state = touched.get(ev.item_id)
        if state is None:
            old = state_of(ev.item_id)
            state = touched[ev.item_id] = ItemState() if old is None else old.copy()
        if ev.neighbours:
            rules.add_neighbours(state, ev.neighbours, ev.ts)
        if ev.clicks:
            rules.add_click(state, ev.ts, ev.clicks)
    return touched
