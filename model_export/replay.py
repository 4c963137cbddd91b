"""A click log as integer arrays, its temporal split, and a replay of the stream's state.

Ranking models are trained and evaluated the way GENRE serves them: events arrive
in time order, and before each click the model sees only what the stream knew
then (the user's history, time-decayed popularity, co-click edges). Learned
weights are frozen after training; the *state* keeps moving through validation
and test, as it does in production.

The replay folds each click with the stream's own code (``genre.core.features``:
the same ``UserStateRules``, ``GraphRules``, co-click evidence and ranker
features the stream agents and the scorer use), so a model is trained on
exactly the inputs it is served: pruning, click weights, de-duplication and
all. Only full ranking (every item at once, for evaluation) reads trending and
co-click scores into dense arrays, through the same decay and neighbour rules.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from genre.core.features import (
    ITEM_IDS,
    PROFILE_FEATURE,
    FeatureSpec,
    ItemState,
    UserState,
    accumulate,
    apply_evidence,
    candidate_features,
    click_evidence,
    co_click_scores,
    decayed,
    profile_match,
)
from genre.core.features.candidates import (
    NO_CANDIDATES,
    Candidates,
    SourceSpec,
    best_unseen,
    blend,
    first_unseen,
    ranked,
)
from genre.core.features.graph_embedding import GraphEmbeddings
from genre.schemas import ClickEvent, ItemUpsert

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}

__all__ = ["PROFILE_FEATURE", "FeatureSpec"]  # re-exported for model_export's callers


class ReplayError(ValueError):
    """A click log cannot be replayed; the message says what is wrong with it."""


@dataclass(frozen=True)
class Interactions:
    """A time-ordered click log over a fixed catalogue, integer-coded.

    ``items`` index ``item_ids`` (the whole catalogue, clicked or not);
    ``split`` is TRAIN/VALID/TEST per event. Every click is kept, re-clicks and
    re-sent events included, because the stream folds them too; ``query`` marks
    the clicks a model is asked to predict (a user's first click on an item).
    """

    users: np.ndarray  # int32 [N]
    items: np.ndarray  # int32 [N]
    ts: np.ndarray  # float64 [N], non-decreasing
    split: np.ndarray  # int8 [N]
    user_ids: list[str]
    item_ids: list[str]
    titles: list[str]
    #: Per event: its event id and its kind (``ClickEvent.type``); None: "e<index>", click.
    event_ids: list[str] | None = None
    kinds: list[str] | None = None
    #: Bool [N]: True for the clicks models predict; None: every click.
    query: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        """Catalogue size."""
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        """Distinct users in the log."""
        return len(self.user_ids)

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def indices(self, split: int) -> np.ndarray:
        """Event indices in one split, in time order."""
        return np.flatnonzero(self.split == split)

    def is_query(self, e: int) -> bool:
        """Whether event ``e`` is one a model predicts (not a re-click or a re-send)."""
        return True if self.query is None else bool(self.query[e])

    def event_id(self, e: int) -> str:
        """Event ``e``'s id."""
        return f"e{e}" if self.event_ids is None else self.event_ids[e]

    def kind(self, e: int) -> str:
        """Event ``e``'s kind (click, view, rate, purchase)."""
        return "click" if self.kinds is None else self.kinds[e]

    def train_items(self) -> np.ndarray:
        """Bool mask of items clicked at least once in the training split."""
        mask = np.zeros(self.n_items, bool)
        mask[self.items[self.split == TRAIN]] = True
        return mask


def temporal_split(n: int, fractions: tuple[float, float] = (0.8, 0.9)) -> np.ndarray:
    """Split ``n`` time-ordered events: the first 80% train, the next 10% valid, the rest test."""
    lo, hi = fractions
    if not 0.0 < lo < hi < 1.0:
        raise ReplayError(
            f"split fractions must satisfy 0 < train < train+valid < 1, got {lo}, {hi}"
        )
    split = np.full(n, TEST, np.int8)
    split[: int(n * hi)] = VALID
    split[: int(n * lo)] = TRAIN
    return split


def build_interactions(
    items: Sequence[ItemUpsert],
    clicks: Sequence[ClickEvent],
    fractions: tuple[float, float] = (0.8, 0.9),
) -> Interactions:
    """Code clicks against a catalogue, order them by time (stable) and split them.

    Clicks on items outside the catalogue are an error (the stream dead-letters
    them; a training log should not contain them). Every click is kept for the
    replay; only a user's first click on an item that is not a re-sent event is
    a query (ranking excludes items a user already had).
    """
    if not items:
        raise ReplayError("the catalogue is empty; load items (ItemUpsert) before clicks")
    if not clicks:
        raise ReplayError("the click log is empty")
    item_index = {it.item_id: i for i, it in enumerate(items)}
    unknown = sorted({c.item_id for c in clicks if c.item_id not in item_index})
    if unknown:
        raise ReplayError(
            f"{len(unknown)} clicked item ids are not in the catalogue (first: {unknown[:5]}); "
            "pass the item file that goes with this click log"
        )
    order = sorted(range(len(clicks)), key=lambda i: clicks[i].ts)
    user_index: dict[str, int] = {}
    pairs: set[tuple[int, int]] = set()
    event_ids: set[str] = set()
    users, its, ts, ids, kinds, query = [], [], [], [], [], []
    for i in order:
        c = clicks[i]
        u = user_index.setdefault(c.user_id, len(user_index))
        it = item_index[c.item_id]
        query.append((u, it) not in pairs and c.event_id not in event_ids)
        pairs.add((u, it))
        event_ids.add(c.event_id)
        users.append(u)
        its.append(it)
        ts.append(c.ts)
        ids.append(c.event_id)
        kinds.append(str(c.type))
    n = int(sum(query))
    if n < 10:
        raise ReplayError(f"only {n} distinct (user, item) clicks; need at least 10 to split")
    return Interactions(
        users=np.asarray(users, np.int32),
        items=np.asarray(its, np.int32),
        ts=np.asarray(ts, np.float64),
        split=temporal_split(len(users), fractions),
        user_ids=list(user_index),
        item_ids=[it.item_id for it in items],
        titles=[it.title for it in items],
        event_ids=ids,
        kinds=kinds,
        query=np.asarray(query, bool),
    )


@dataclass(frozen=True)
class ProfileTrack:
    """LLM user profiles along a click log, as the stream's profile agent writes them.

    ``after_event[e]`` is the row of ``vectors`` that becomes the clicking user's
    profile once event ``e`` is applied (-1: none falls due). The ranker's profile
    feature is max(0, cos(profile, item text vector)), 0 before a user's first profile.
    """

    after_event: np.ndarray  # int32 [n_events]
    vectors: np.ndarray  # float32 [P, D], unit length

    def __post_init__(self) -> None:
        if self.after_event.ndim != 1 or self.vectors.ndim != 2:
            raise ValueError("after_event must be [n_events] and vectors [P, D]")
        if self.after_event.size and int(self.after_event.max()) >= len(self.vectors):
            raise ValueError("after_event points past the profile vectors")


def profile_schedule(
    data: Interactions, every_k_clicks: int, recent: int, history_len: int
) -> list[tuple[int, tuple[int, ...]]]:
    """When the stream asks for each profile, and from which items: (event, item indices).

    The fold's own rule (``UserStateRules.take_profile``) on user states folded
    with the stream's rules (``history_len`` history items kept).
    """
    rules = FeatureSpec(history_size=history_len).user_rules()
    states = [UserState() for _ in range(data.n_users)]
    index = {item: i for i, item in enumerate(data.item_ids)}
    out = []
    for e in range(len(data)):
        state = states[int(data.users[e])]
        event_id = data.event_id(e)
        if rules.is_duplicate(state, event_id):
            continue
        item = data.item_ids[int(data.items[e])]
        rules.apply(
            state,
            item_id=item,
            event_id=event_id,
            kind=data.kind(e),
            ts=float(data.ts[e]),
            item_vector=None,
        )
        due = rules.take_profile(state, every_k_clicks, recent)
        if due is not None:
            out.append((e, tuple(index[i] for i in due)))
    return out


class StreamReplay:
    """Replays a click log, keeping the state the stream keeps, one event at a time.

    ``run()`` yields each event index *before* the event is applied; while the
    caller holds it, the query methods describe the world as the stream saw it
    just before that click.
    """

    def __init__(
        self,
        data: Interactions,
        spec: FeatureSpec,
        text_vectors: np.ndarray | None = None,
        profiles: ProfileTrack | None = None,
    ) -> None:
        if PROFILE_FEATURE in spec.feature_names and (profiles is None or text_vectors is None):
            raise ReplayError("the profile feature needs a ProfileTrack and the text vectors")
        if profiles is not None and len(profiles.after_event) != len(data):
            raise ReplayError(
                f"profile track covers {len(profiles.after_event)} events, the log has {len(data)}"
            )
        self.data = data
        self.spec = spec
        self.rules = spec.user_rules()
        self.graph_rules = spec.graph_rules()
        self.profiles = profiles
        self.user_profile = np.full(data.n_users, -1, np.int64)
        n = data.n_items
        self.text_vectors = text_vectors
        self.item_index = {item: i for i, item in enumerate(data.item_ids)}
        self.rows = ITEM_IDS.rows(data.item_ids)  # catalogue index -> ITEM_IDS row
        self.index_of_row = {row: i for i, row in enumerate(self.rows.tolist())}
        self._in_graph = np.zeros(n, bool)  # items the graph holds (trending's universe)
        #: The stream's state: one UserState per user, one ItemState per graph item.
        self.users = [UserState() for _ in range(data.n_users)]
        self.graph: dict[str, ItemState] = {}
        # Dense copies of each item's trending sum (pop, pop_ts), for full ranking.
        self.pop = np.zeros(n)
        self.pop_ts = np.zeros(n)
        # Baseline-only state (not stream rules): popularity at other half-lives, and
        # item-kNN co-occurrence over each user's whole click history.
        self.popularity = {
            hl: (np.zeros(n), np.zeros(n)) for hl in (*spec.popularity_half_lives, np.inf)
        }
        self.co_counts = np.zeros((n, n), np.float32)  # users who clicked both (item-kNN)
        self.item_counts = np.zeros(n, np.float32)
        #: Item-to-item transitions: how often a user clicked column j right after row i.
        self.transitions = np.zeros((n, n), np.float32)
        self.clicked: list[list[int]] = [[] for _ in range(data.n_users)]
        # The graph source's embeddings with this replay's fold-ins, and when (event time).
        self._folded: tuple[GraphEmbeddings, GraphEmbeddings, float] | None = None

    def run(self, stop: int | None = None) -> Iterator[int]:
        """Yield event indices in time order (up to ``stop``), applying each after the yield."""
        end = len(self.data) if stop is None else min(stop, len(self.data))
        for e in range(end):
            yield e
            self.apply(e)

    def apply(self, e: int) -> None:
        """Fold event ``e`` into the state with the stream's rules."""
        data = self.data
        u, item, ts = int(data.users[e]), int(data.items[e]), float(data.ts[e])
        state = self.users[u]
        event_id = data.event_id(e)
        if self.rules.is_duplicate(state, event_id):
            return  # a re-sent event: the stream skips it too
        item_id = data.item_ids[item]
        neighbours = self.rules.apply(
            state,
            item_id=item_id,
            event_id=event_id,
            kind=data.kind(e),
            ts=ts,
            item_vector=None if self.text_vectors is None else self.text_vectors[item],
        )
        evidence = click_evidence(item_id, neighbours, ts)
        self.graph.update(apply_evidence(self.graph_rules, evidence, self.graph.get))
        self._in_graph[item] = True
        for nbr in neighbours:
            self._in_graph[self.item_index[nbr]] = True
        clicked = self.graph[item_id]
        self.pop[item], self.pop_ts[item] = clicked.pop, clicked.pop_ts or 0.0
        for hl, (value, last) in self.popularity.items():
            value[item], last[item] = accumulate(value[item], last[item], ts, 1.0, hl)
        past = self.clicked[u]
        if past:
            self.transitions[past[-1], item] += 1.0
            rows = np.asarray(past, np.int64)
            self.co_counts[item, rows] += 1.0
            self.co_counts[rows, item] += 1.0
        self.item_counts[item] += 1.0
        past.append(item)
        if self.profiles is not None and self.profiles.after_event[e] >= 0:
            self.user_profile[u] = self.profiles.after_event[e]

    # -- queries: the state just before the event currently yielded ---------------

    def history(self, user: int) -> np.ndarray:
        """The user's last ``history_len`` items, oldest first, left-padded with -1."""
        out = np.full(self.spec.history_len, -1, np.int32)
        recent = self.users[user].history[-self.spec.history_len :]
        if recent:
            out[-len(recent) :] = [self.item_index[i] for i in recent]
        return out

    def has_seen(self, user: int, item: int) -> bool:
        """Whether the user already interacted with ``item`` (the scorer's seen filter)."""
        state = self.users[user]
        item_id = self.data.item_ids[item]
        return item_id in state.seen or item_id in state.history

    def seen_mask(self, user: int) -> np.ndarray:
        """Bool [n_items]: items the user already interacted with (never ranked)."""
        state = self.users[user]
        mask = np.zeros(self.data.n_items, bool)
        seen = [self.item_index[i] for i in (*state.seen, *state.history)]  # ids, in order
        if seen:
            mask[seen] = True
        return mask

    def profile_vector(self, user: int) -> np.ndarray | None:
        """The user's current LLM profile vector, None before the first."""
        row = self.user_profile[user]
        return None if self.profiles is None or row < 0 else self.profiles.vectors[row]

    def features(self, user: int, items: np.ndarray | slice, now: float) -> np.ndarray:
        """Float32 [len(items), F]: the scorer's raw features, ``spec.feature_names`` in
        order. For candidate items, the scorer's own code (``candidate_features``); for
        every item (``slice(None)``), the same rules over dense arrays."""
        if not isinstance(items, slice):
            ids = [self.data.item_ids[int(i)] for i in items]
            vectors = None if self.text_vectors is None else self.text_vectors[items]
            return candidate_features(
                self.spec,
                self.graph_rules,
                self.graph.get,
                ids,
                now,
                history=self.users[user].history,
                candidate_vectors=vectors,
                profile=self.profile_vector(user),
            )
        columns = []
        for name in self.spec.feature_names:
            if name == "trending":
                hl = self.spec.trending_half_life_s
                columns.append(decayed(self.pop, self.pop_ts, now, hl).astype(np.float32))
            elif name == "co_click":
                columns.append(self.co_click(user, now))
            elif name == PROFILE_FEATURE:
                assert self.text_vectors is not None
                columns.append(profile_match(self.text_vectors, self.profile_vector(user)))
        return np.stack(columns, axis=-1)

    def co_click(self, user: int, now: float) -> np.ndarray:
        """Float32 [n_items]: co-click scores from the user's recent items (the scorer's
        ``co_click_scores``), 0 for items without one."""
        scores = co_click_scores(
            self.spec, self.graph_rules, self.graph.get, self.users[user].history, now
        )
        return scores.lookup(self.rows).astype(np.float32)

    def popularity_at(self, half_life_s: float, now: float) -> np.ndarray:
        """Float32 [n_items]: decayed click counts at one of the replayed half-lives."""
        value, last = self.popularity[half_life_s]
        return decayed(value, last, now, half_life_s).astype(np.float32)

    def item_knn(self, user: int, recent: int = 20) -> np.ndarray:
        """Float32 [n_items]: cosine item-kNN scores from the user's last ``recent`` clicks."""
        rows = self.clicked[user][-recent:]
        if not rows:
            return np.zeros(self.data.n_items, np.float32)
        counts = np.maximum(self.item_counts, 1.0)
        block = self.co_counts[np.asarray(rows, np.int64)]  # [R, n]
        norm = np.sqrt(counts[np.asarray(rows, np.int64)])[:, None] * np.sqrt(counts)[None, :]
        return (block / norm).sum(axis=0).astype(np.float32)

    def next_item(self, user: int) -> np.ndarray:
        """Float32 [n_items]: how often each item was clicked right after the user's last
        click (the item-to-item transitions baseline), zeros before the first click."""
        past = self.clicked[user]
        if not past:
            return np.zeros(self.data.n_items, np.float32)
        return self.transitions[past[-1]].copy()

    def prerank(self, user: int, now: float, plan: CandidatePlan) -> tuple[np.ndarray, np.ndarray]:
        """The serving scorer's candidates for this user, as its sources and blend gather
        them (``core.features.candidates``): the blend score of every proposed item
        (float32 [n_items], NaN elsewhere) and the ``rank_candidates`` best unseen ones
        the learned ranker would re-rank (bool [n_items])."""
        state = self.users[user]
        per_source = [(s.weight, self._source(s, user, now, plan.graph)) for s in plan.sources]
        blended = blend(per_source)
        index = self.index_of_row
        positions = np.asarray([index.get(r, -1) for r in blended.rows.tolist()], np.int64)
        known = np.concatenate([state.seen.rows, ITEM_IDS.rows(state.history)])
        keep = (positions >= 0) & ~np.isin(blended.rows, known)
        names = ITEM_IDS.names
        rows = blended.rows
        scores = np.full(self.data.n_items, np.nan, np.float32)
        scores[positions[positions >= 0]] = blended.scores[positions >= 0]
        chosen = np.zeros(self.data.n_items, bool)
        chosen[positions[ranked(blended, keep, plan.rank_candidates, lambda k: names[rows[k]])]] = (
            True
        )
        return scores, chosen

    def _source(
        self, source: SourceSpec, user: int, now: float, graph: GraphEmbeddings | None = None
    ) -> Candidates:
        """One source's candidates, as the serving source computes them."""
        state = self.users[user]
        if source.name == "graph":
            if graph is None:
                raise ReplayError("the graph source needs the graph model's embeddings")
            embeddings = self._graph_embeddings(graph, source, now)
            recent = int(source.params.get("recent_items", self.spec.co_click_recent))
            query = embeddings.query(state.history, recent)
            if query is None:
                return NO_CANDIDATES
            extra = min(len(state.seen), int(source.params.get("max_overfetch", 100)))
            ((found, similarity),) = embeddings.search(query[None, :], source.limit + extra)
            return Candidates(found, similarity)
        if source.name == "co_click":
            recent = int(source.params.get("recent_items", self.spec.co_click_recent))
            scores = self.graph_rules.neighbour_scores(self.graph.get, state.history[-recent:], now)
            cands = Candidates(scores.rows, scores.scores, scores.because)
            return best_unseen(cands, state.seen, source.limit)
        if source.name in ("ann", "profile"):
            query = state.vector if source.name == "ann" else self.profile_vector(user)
            if query is None or self.text_vectors is None or not len(query):
                return NO_CANDIDATES
            extra = min(len(state.seen), int(source.params.get("max_overfetch", 100)))
            sims = self.text_vectors @ query
            top = np.argsort(-sims, kind="stable")[: source.limit + extra]
            return Candidates(self.rows[top], sims[top].astype(np.float64))
        if source.name == "trending":
            in_graph = np.flatnonzero(self._in_graph)
            pops = decayed(
                self.pop[in_graph], self.pop_ts[in_graph], now, self.spec.trending_half_life_s
            )
            order = in_graph[np.argsort(-pops, kind="stable")[: source.limit * 4]]
            trending = Candidates(
                self.rows[order],
                decayed(self.pop[order], self.pop_ts[order], now, self.spec.trending_half_life_s),
            )
            return trending.take(first_unseen(trending.rows, state.seen, source.limit))
        raise ReplayError(f"the evaluation cannot replay candidate source {source.name!r}")

    def _graph_embeddings(
        self, graph: GraphEmbeddings, source: SourceSpec, now: float
    ) -> GraphEmbeddings:
        """``graph`` with the fold-ins of the items the graph holds and training did not,
        recomputed every ``refresh_s`` of event time (the serving source: wall time)."""
        refresh_s = float(source.params.get("refresh_s", 5.0))
        folded = self._folded
        if folded is not None and folded[0] is graph and now - folded[2] < refresh_s:
            return folded[1]
        names = self.data.item_ids
        untrained = [
            names[i] for i in np.flatnonzero(self._in_graph) if not graph.is_trained(self.rows[i])
        ]
        embeddings = graph.with_fold_ins(
            untrained,
            self.graph.get,
            now,
            self.graph_rules.edge_half_life_s,
            int(source.params.get("min_neighbours", 1)),
        )
        self._folded = (graph, embeddings, now)
        return embeddings

    def user_vector(self, user: int) -> np.ndarray:
        """The user's decayed-mean text vector (zeros before the first click)."""
        vector = self.users[user].vector
        if vector is None:
            dim = 0 if self.text_vectors is None else self.text_vectors.shape[1]
            return np.zeros(dim, np.float32)
        return vector


@dataclass
class QueryBatch:
    """Full-ranking queries: one row per evaluated click, every item a candidate.

    Every array is a snapshot taken just before the click was applied.
    """

    events: np.ndarray  # int64 [B] event indices
    users: np.ndarray  # int32 [B]
    targets: np.ndarray  # int32 [B] the clicked item
    ts: np.ndarray  # float64 [B]
    history: np.ndarray  # int32 [B, H], -1 padded on the left
    exclude: np.ndarray  # bool [B, n_items]: already seen (never ranked)
    features: np.ndarray  # float32 [B, n_items, F] the scorer's raw features
    popularity: dict[float, np.ndarray]  # half-life -> float32 [B, n_items]
    item_knn: np.ndarray  # float32 [B, n_items]
    next_item: np.ndarray  # float32 [B, n_items] transitions from the user's last click
    user_vectors: np.ndarray  # float32 [B, D] decayed-mean text vectors
    #: With a ``CandidatePlan``: the serving blend's score of every candidate of the
    #: configured sources (NaN for items no source proposed), and which of them the
    #: learned ranker would re-rank (the best ``rank_candidates`` of the blend).
    blend: np.ndarray | None = None  # float32 [B, n_items]
    prerank: np.ndarray | None = None  # bool [B, n_items]

    def __len__(self) -> int:
        return int(self.events.shape[0])


@dataclass(frozen=True)
class CandidatePlan:
    """How the scorer gathers and pre-ranks candidates (``scorer.candidates`` and
    ``ranker.rank_candidates``), for the evaluation to replay."""

    sources: tuple[SourceSpec, ...]
    rank_candidates: int
    #: The graph model's embeddings, for a ``graph`` source (trained on the TRAIN split).
    graph: GraphEmbeddings | None = None

    @property
    def uses_graph(self) -> bool:
        """Whether a source is the graph model's (it needs ``graph``)."""
        return any(s.name == "graph" for s in self.sources)


def snapshot(
    replay: StreamReplay, events: Sequence[int], plan: CandidatePlan | None = None
) -> QueryBatch:
    """Build a ``QueryBatch`` for events whose state is the replay's current state.

    Call it while ``run()`` is paused on the *last* of ``events`` only when the
    others belong to different users and nothing was applied in between; the
    evaluator calls it one event at a time and stacks (``stack_queries``).
    """
    data = replay.data
    rows: list[dict[str, Any]] = []
    for e in events:
        u, now = int(data.users[e]), float(data.ts[e])
        rows.append(
            {
                "history": replay.history(u),
                "exclude": replay.seen_mask(u),
                "features": replay.features(u, slice(None), now),
                "popularity": {hl: replay.popularity_at(hl, now) for hl in replay.popularity},
                "item_knn": replay.item_knn(u),
                "next_item": replay.next_item(u),
                "user_vectors": replay.user_vector(u).copy(),
                **(
                    {}
                    if plan is None
                    else dict(zip(("blend", "prerank"), replay.prerank(u, now, plan), strict=True))
                ),
            }
        )
    idx = np.asarray(events, np.int64)
    return QueryBatch(
        events=idx,
        users=data.users[idx],
        targets=data.items[idx],
        ts=data.ts[idx],
        history=np.stack([r["history"] for r in rows]),
        exclude=np.stack([r["exclude"] for r in rows]),
        features=np.stack([r["features"] for r in rows]),
        popularity={hl: np.stack([r["popularity"][hl] for r in rows]) for hl in replay.popularity},
        item_knn=np.stack([r["item_knn"] for r in rows]),
        next_item=np.stack([r["next_item"] for r in rows]),
        user_vectors=np.stack([r["user_vectors"] for r in rows]),
        blend=None if plan is None else np.stack([r["blend"] for r in rows]),
        prerank=None if plan is None else np.stack([r["prerank"] for r in rows]),
    )


def stack_queries(batches: Sequence[QueryBatch]) -> QueryBatch:
    """Concatenate query batches."""
    first = batches[0]
    return QueryBatch(
        events=np.concatenate([b.events for b in batches]),
        users=np.concatenate([b.users for b in batches]),
        targets=np.concatenate([b.targets for b in batches]),
        ts=np.concatenate([b.ts for b in batches]),
        history=np.concatenate([b.history for b in batches]),
        exclude=np.concatenate([b.exclude for b in batches]),
        features=np.concatenate([b.features for b in batches]),
        popularity={
            hl: np.concatenate([b.popularity[hl] for b in batches]) for hl in first.popularity
        },
        item_knn=np.concatenate([b.item_knn for b in batches]),
        next_item=np.concatenate([b.next_item for b in batches]),
        user_vectors=np.concatenate([b.user_vectors for b in batches]),
        blend=None if first.blend is None else np.concatenate([b.blend for b in batches]),  # type: ignore[misc]
        prerank=None if first.prerank is None else np.concatenate([b.prerank for b in batches]),  # type: ignore[misc]
    )
