"""A click log as integer arrays, its temporal split, and a replay of the stream's state.

Ranking models are trained and evaluated the way GENRE serves them: events arrive
in time order, and before each click the model sees only what the stream knew
then (the user's history, time-decayed popularity, co-click edges). Learned
weights are frozen after training; the *state* keeps moving through validation
and test, as it does in production.

The replayed features follow the stream's own rules (``streams.state``): the same
half-lives, co-click window and recency weights, so a model trained here sees
the same inputs as the scorer worker. They are re-implemented on dense arrays
because model_export may not import the stream package (DESIGN.md import rule)
and because full ranking needs them for every item at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from genre.schemas import ClickEvent, ItemUpsert

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}
LN2 = float(np.log(2.0))


class ReplayError(ValueError):
    """A click log cannot be replayed; the message says what is wrong with it."""


@dataclass(frozen=True)
class Interactions:
    """A time-ordered click log over a fixed catalogue, integer-coded.

    ``items`` index ``item_ids`` (the whole catalogue, clicked or not);
    ``split`` is TRAIN/VALID/TEST per event.
    """

    users: np.ndarray  # int32 [N]
    items: np.ndarray  # int32 [N]
    ts: np.ndarray  # float64 [N], non-decreasing
    split: np.ndarray  # int8 [N]
    user_ids: list[str]
    item_ids: list[str]
    titles: list[str]

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
    them; a training log should not contain them). Repeated (user, item) clicks
    after the first are dropped: ranking excludes items a user already had.
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
    seen: set[tuple[int, int]] = set()
    users, its, ts = [], [], []
    for i in order:
        c = clicks[i]
        u = user_index.setdefault(c.user_id, len(user_index))
        it = item_index[c.item_id]
        if (u, it) in seen:
            continue
        seen.add((u, it))
        users.append(u)
        its.append(it)
        ts.append(c.ts)
    n = len(users)
    if n < 10:
        raise ReplayError(f"only {n} distinct (user, item) clicks; need at least 10 to split")
    return Interactions(
        users=np.asarray(users, np.int32),
        items=np.asarray(its, np.int32),
        ts=np.asarray(ts, np.float64),
        split=temporal_split(n, fractions),
        user_ids=list(user_index),
        item_ids=[it.item_id for it in items],
        titles=[it.title for it in items],
    )


@dataclass(frozen=True)
class FeatureSpec:
    """The stream rules the replayed features follow (defaults = genre.yaml's ``streams``)."""

    trending_half_life_s: float = 86400.0
    edge_half_life_s: float = 7 * 86400.0
    co_click_window: int = 5
    co_click_recent: int = 10
    user_vector_half_life_s: float = 86400.0
    history_len: int = 50
    #: Extra popularity half-lives replayed for the popularity baseline's tuning
    #: (seconds; ``inf`` = all-time counts).
    popularity_half_lives: tuple[float, ...] = (3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0)

    #: Names of the per-candidate features the GENRE scorer takes, in order.
    feature_names: tuple[str, ...] = ("trending", "co_click")


#: The per-candidate feature the ranker gets when it is trained with LLM profiles.
PROFILE_FEATURE = "profile"


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

    The user-state agent's rule: a profile falls due once a user has clicked
    ``every_k_clicks`` times since the last one, written from the last ``recent``
    items of the history (re-clicked items move to the end, ``history_len`` kept).
    """
    histories: list[list[int]] = [[] for _ in range(data.n_users)]
    clicks = np.zeros(data.n_users, np.int64)
    profiled = np.zeros(data.n_users, np.int64)
    out = []
    for e in range(len(data)):
        u, item = int(data.users[e]), int(data.items[e])
        history = [i for i in histories[u] if i != item]
        history.append(item)
        histories[u] = history[-history_len:]
        clicks[u] += 1
        if clicks[u] - profiled[u] >= every_k_clicks:
            profiled[u] = clicks[u]
            out.append((e, tuple(histories[u][-recent:])))
    return out


@dataclass
class _Decayed:
    """Per-slot exponentially decayed sums, decayed lazily on read (as the stream does)."""

    half_life_s: float
    value: np.ndarray
    last: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.last = np.zeros_like(self.value)

    def add(self, index: int | np.ndarray | tuple, ts: float, weight: float = 1.0) -> None:
        if np.isinf(self.half_life_s):
            self.value[index] += weight
            return
        age = np.maximum(ts - self.last[index], 0.0)
        self.value[index] = self.value[index] * np.exp(-LN2 * age / self.half_life_s) + weight
        self.last[index] = np.maximum(self.last[index], ts)

    def read(self, index: int | np.ndarray | tuple | slice, now: float) -> np.ndarray:
        if np.isinf(self.half_life_s):
            return self.value[index].astype(np.float32)
        age = np.maximum(now - self.last[index], 0.0)
        return (self.value[index] * np.exp(-LN2 * age / self.half_life_s)).astype(np.float32)


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
        self.profiles = profiles
        self.user_profile = np.full(data.n_users, -1, np.int64)
        n = data.n_items
        self.text_vectors = text_vectors
        self.trending = _Decayed(spec.trending_half_life_s, np.zeros(n))
        self.popularity = {
            hl: _Decayed(hl, np.zeros(n)) for hl in (*spec.popularity_half_lives, np.inf)
        }
        self.edges = _Decayed(spec.edge_half_life_s, np.zeros((n, n)))
        self.co_counts = np.zeros((n, n), np.float32)  # users who clicked both (item-kNN)
        self.item_counts = np.zeros(n, np.float32)
        self.histories: list[list[int]] = [[] for _ in range(data.n_users)]
        self.seen: list[set[int]] = [set() for _ in range(data.n_users)]
        dim = 0 if text_vectors is None else text_vectors.shape[1]
        self.user_vectors = np.zeros((data.n_users, dim), np.float32)
        self.user_vector_ts = np.full(data.n_users, np.nan)

    def run(self, stop: int | None = None) -> Iterator[int]:
        """Yield event indices in time order (up to ``stop``), applying each after the yield."""
        end = len(self.data) if stop is None else min(stop, len(self.data))
        for e in range(end):
            yield e
            self.apply(e)

    def apply(self, e: int) -> None:
        """Fold event ``e`` into the state (stream rules: streams.state)."""
        u, item, ts = int(self.data.users[e]), int(self.data.items[e]), float(self.data.ts[e])
        history = self.histories[u]
        window = history[-self.spec.co_click_window :] if self.spec.co_click_window else []
        neighbours = np.asarray(sorted(set(window) - {item}), np.int64)
        self.trending.add(item, ts)
        for pop in self.popularity.values():
            pop.add(item, ts)
        if neighbours.size:
            self.edges.add((item, neighbours), ts)
            self.edges.add((neighbours, item), ts)
        if history:
            past = np.asarray(history, np.int64)
            self.co_counts[item, past] += 1.0
            self.co_counts[past, item] += 1.0
        self.item_counts[item] += 1.0
        history.append(item)
        self.seen[u].add(item)
        if self.text_vectors is not None:
            self._update_user_vector(u, item, ts)
        if self.profiles is not None and self.profiles.after_event[e] >= 0:
            self.user_profile[u] = self.profiles.after_event[e]

    def _update_user_vector(self, u: int, item: int, ts: float) -> None:
        vec = self.text_vectors[item]  # type: ignore[index]
        last = self.user_vector_ts[u]
        if not np.isnan(last):
            factor = np.exp(-LN2 * max(ts - last, 0.0) / self.spec.user_vector_half_life_s)
            vec = self.user_vectors[u] * factor + vec
        norm = float(np.linalg.norm(vec))
        self.user_vectors[u] = vec / norm if norm > 0 else vec
        self.user_vector_ts[u] = ts

    # -- queries: the state just before the event currently yielded ---------------

    def history(self, user: int) -> np.ndarray:
        """The user's last ``history_len`` items, oldest first, left-padded with -1."""
        out = np.full(self.spec.history_len, -1, np.int32)
        recent = self.histories[user][-self.spec.history_len :]
        if recent:
            out[-len(recent) :] = recent
        return out

    def seen_mask(self, user: int) -> np.ndarray:
        """Bool [n_items]: items the user already interacted with."""
        mask = np.zeros(self.data.n_items, bool)
        if self.seen[user]:
            mask[list(self.seen[user])] = True
        return mask

    def features(self, user: int, items: np.ndarray | slice, now: float) -> np.ndarray:
        """Float32 [len(items), F]: the scorer's raw features, ``spec.feature_names``
        in order (trending, co_click, and profile when trained with profiles)."""
        columns = []
        for name in self.spec.feature_names:
            if name == "trending":
                columns.append(self.trending.read(items, now))
            elif name == "co_click":
                columns.append(self.co_click(user, items, now))
            elif name == PROFILE_FEATURE:
                columns.append(self.profile_match(user, items))
            else:
                raise ReplayError(f"unknown feature {name!r} in FeatureSpec.feature_names")
        return np.stack(columns, axis=-1)

    def profile_match(self, user: int, items: np.ndarray | slice) -> np.ndarray:
        """max(0, cos(the user's current profile, each item's text vector)); 0 without one."""
        assert self.text_vectors is not None and self.profiles is not None
        block = self.text_vectors[items]
        row = self.user_profile[user]
        if row < 0:
            return np.zeros(len(block), np.float32)
        return np.maximum(block @ self.profiles.vectors[row], 0.0).astype(np.float32)

    def co_click(self, user: int, items: np.ndarray | slice, now: float) -> np.ndarray:
        """Co-click score of ``items`` from the user's recent items (weights 1, 1/2, 1/3...)."""
        recent = self.histories[user][-self.spec.co_click_recent :]
        if not recent:
            size = self.data.n_items if isinstance(items, slice) else len(items)
            return np.zeros(size, np.float32)
        rows = np.asarray(recent[::-1], np.int64)  # most recent first
        weights = 1.0 / np.arange(1, rows.size + 1)
        if isinstance(items, slice):
            block = self.edges.read(rows, now)[:, items]
        else:
            block = self.edges.read(np.ix_(rows, np.asarray(items, np.int64)), now)
        return (weights[:, None] * block).sum(axis=0).astype(np.float32)

    def popularity_at(self, half_life_s: float, now: float) -> np.ndarray:
        """Float32 [n_items]: decayed click counts at one of the replayed half-lives."""
        return self.popularity[half_life_s].read(slice(None), now)

    def item_knn(self, user: int, recent: int = 20) -> np.ndarray:
        """Float32 [n_items]: cosine item-kNN scores from the user's last ``recent`` items."""
        rows = self.histories[user][-recent:]
        if not rows:
            return np.zeros(self.data.n_items, np.float32)
        counts = np.maximum(self.item_counts, 1.0)
        block = self.co_counts[np.asarray(rows, np.int64)]  # [R, n]
        norm = np.sqrt(counts[np.asarray(rows, np.int64)])[:, None] * np.sqrt(counts)[None, :]
        return (block / norm).sum(axis=0).astype(np.float32)

    def user_vector(self, user: int) -> np.ndarray:
        """The user's decayed-mean text vector (zeros before the first click)."""
        return self.user_vectors[user]


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
    user_vectors: np.ndarray  # float32 [B, D] decayed-mean text vectors

    def __len__(self) -> int:
        return int(self.events.shape[0])


def snapshot(replay: StreamReplay, events: Sequence[int]) -> QueryBatch:
    """Build a ``QueryBatch`` for events whose state is the replay's current state.

    Call it while ``run()`` is paused on the *last* of ``events`` only when the
    others belong to different users and nothing was applied in between; the
    evaluator calls it one event at a time and stacks (``stack_queries``).
    """
    data = replay.data
    rows = []
    for e in events:
        u, now = int(data.users[e]), float(data.ts[e])
        rows.append(
            {
                "history": replay.history(u),
                "exclude": replay.seen_mask(u),
                "features": replay.features(u, slice(None), now),
                "popularity": {hl: replay.popularity_at(hl, now) for hl in replay.popularity},
                "item_knn": replay.item_knn(u),
                "user_vectors": replay.user_vector(u).copy(),
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
        user_vectors=np.stack([r["user_vectors"] for r in rows]),
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
        user_vectors=np.concatenate([b.user_vectors for b in batches]),
    )
