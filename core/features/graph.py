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

import orjson

from genre.core.features.decay import accumulate, decayed


@dataclass(slots=True)
class ItemState:
    """One item's co-click edges (neighbour -> [weight, last event time]) and popularity."""

    edges: dict[str, list[float]] = field(default_factory=dict)
    pop: float = 0.0
    pop_ts: float | None = None

    def copy(self) -> ItemState:
        """A copy to update: edge lists are replaced on update, so a shallow copy is enough."""
        return ItemState(dict(self.edges), self.pop, self.pop_ts)

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
    ) -> dict[str, tuple[float, str]]:
        """Co-click candidates for a user: item -> (score, the recent item that contributed
        most). ``recent_items`` oldest first; more recent ones count more (1, 1/2, 1/3,
        ...), as in session-based item-kNN. Edge weights are decayed to ``now``."""
        totals: dict[str, float] = {}
        best: dict[str, tuple[float, str]] = {}
        # decay() inlined: this loop runs for every edge of every recent item of every
        # scored user (~1,000 times per user); a call per edge was a third of its time.
        rate = -math.log(2.0) / self.edge_half_life_s
        exp = math.exp
        for rank, item in enumerate(reversed(recent_items)):
            state = states(item)
            if state is None:
                continue
            position_weight = 1.0 / (rank + 1)
            for nbr, (weight, last) in state.edges.items():
                age = now - last
                contribution = position_weight * weight * (exp(rate * age) if age > 0 else 1.0)
                totals[nbr] = totals.get(nbr, 0.0) + contribution
                previous = best.get(nbr)
                if previous is None or contribution > previous[0]:
                    best[nbr] = (contribution, item)
        return {nbr: (total, best[nbr][1]) for nbr, total in totals.items()}


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
