"""The scorer: users waiting for a list -> candidates -> blended or learned ranking ->
filtered, explained lists -> ``genre.recommendations`` (and Qdrant ``users``).

``ScorerWorker.score`` is plain, synchronous and Faust-free: it reads the worker
through ``ScorerViews`` and runs on the scorer's own thread (numpy and ONNX
Runtime release the GIL), so the event loop keeps folding clicks while a batch is
scored. ``register_scorer`` wires it to the process: a task that takes waiting
users from ``PendingScores`` (filled by this process's fold in role ``all``, or by
the score-requests agent in role ``scorer``), scores them on that thread and
publishes the lists from the loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from genre.core.config import GenreConfig
from genre.core.features import (
    ITEM_IDS,
    FeatureSpec,
    NeighbourScores,
    candidate_features,
    decode_vector,
)
from genre.core.features.candidates import Candidates, blend, ranked
from genre.core.features.ids import seen_rows
from genre.core.features.ranking import trending_scores
from genre.core.features.spec import PROFILE_FEATURE, RANKER_FEATURES
from genre.core.registry import Registry
from genre.core.telemetry import METRICS
from genre.core.vectorstore import StoredVector
from genre.schemas import ScoreRequests
from genre.schemas.manifest import ManifestError
from genre.schemas.records import SCHEMA_VERSION
from genre.streams.app import GenreStreams, chunk_records, table_get
from genre.streams.batching import ack_events, take_ready
from genre.streams.score_context import ScoreContext, SubmittedBatch, from_request
from genre.streams.views import ScorerViews
from genre.workers.candidates import CoClickSource, build_sources, count_candidates
from genre.workers.diversity import DiversityStep, diversity_rule, list_diversity
from genre.workers.ranker import OnnxRanker, RankerHandle

log = logging.getLogger("genre.scorer")

#: History items an "ann" pick is explained against (the most similar one is named).
EXPLAIN_RECENT = 10

SOURCE_REASONS = {
    "trending": "trending now",
    "ann": "matches your taste",
    "co_click": "often watched together with your recent picks",
    "profile": "matches your interest profile",
    "graph": "liked by people who liked your recent picks",
}

_WORD = re.compile(r"[a-z0-9]+")

#: Per source: (name, blend weight, candidates per user of the batch).
SourceCandidates = tuple[str, float, list[Candidates]]


@dataclass(frozen=True, slots=True)
class Scored:
    """A ranked item before explanation: score, winning source, evidence item."""

    item_id: str
    score: float
    source: str
    because: str | None


class Filter(Protocol):
    """Removes candidates a user must not see."""

    def keep(self, ctx: ScoreContext, rows: np.ndarray) -> np.ndarray:
        """Bool per candidate (``ITEM_IDS`` rows): may this user be shown it?"""
        ...


FILTERS: Registry[Filter] = Registry("filter", "scorer.filters[].name")


@FILTERS.register("seen")
class SeenFilter:
    """Drops items the user has already interacted with (history and seen set)."""

    def keep(self, ctx: ScoreContext, rows: np.ndarray) -> np.ndarray:
        known = np.concatenate([seen_rows(ctx.seen), ITEM_IDS.rows(ctx.history)])
        return ~np.isin(rows, known)


class Ranking(Protocol):
    """Combines per-source candidates into one ranked list (``scorer.name``)."""

    name: str

    def rank(
        self,
        per_source: Sequence[tuple[str, float, Candidates]],
        keep: Callable[[np.ndarray], np.ndarray],
        top_k: int,
    ) -> list[Scored]: ...


RANKINGS: Registry[Ranking] = Registry("scorer", "scorer.name")


@RANKINGS.register("blend")
class BlendRanking:
    """Weighted sum of per-source scores, each min-max normalised to [0, 1] per user.

    Normalising per user and source puts cosine similarities, co-click weights
    and popularity counts on one scale, so the YAML weights mean what they say.
    It ranks the lists of the blend scorer and pre-ranks the learned ranker's
    candidates (``core.features.candidates.blend``, which the evaluation replays).
    """

    name = "blend"

    def rank(
        self,
        per_source: Sequence[tuple[str, float, Candidates]],
        keep: Callable[[np.ndarray], np.ndarray],
        top_k: int,
    ) -> list[Scored]:
        blended = blend([(weight, cands) for _, weight, cands in per_source])
        ids = ITEM_IDS.names
        rows = blended.rows
        best = ranked(blended, keep(rows), top_k, lambda k: ids[rows[k]])
        return [
            Scored(
                ids[int(rows[k])],
                float(blended.scores[k]),
                per_source[int(blended.source[k])][0],
                ids[int(blended.because[k])] if blended.because[k] >= 0 else None,
            )
            for k in best.tolist()
        ]


@dataclass(slots=True)
class ScoredList:
    """One user's list, ready to publish: the record's bytes and what the loop needs."""

    ctx: ScoreContext
    items: list[str]
    value: bytes
    generated_at: float
    hops: dict[str, float]
    arm: str | None = None


def explain(scored: Scored, ctx: ScoreContext, items: dict[str, StoredVector]) -> str:
    """A human-readable reason: the profile interest it matches, the history item behind
    it, else the source's phrase."""
    if scored.source == "profile" and ctx.profile_interests:
        interest = matching_interest(ctx.profile_interests, items.get(scored.item_id))
        if interest:
            return f"matches your interest in {interest}"
    because = scored.because
    if because is None and scored.source == "ann":
        because = _most_similar_recent(scored.item_id, ctx.history[-EXPLAIN_RECENT:], items)
    title = _title(items.get(because)) if because else ""
    if title:
        return f"because you watched {title}"
    return SOURCE_REASONS.get(scored.source, f"from {scored.source}")


def matching_interest(interests: Sequence[str], stored: StoredVector | None) -> str | None:
    """The first profile interest that shares a word with the item's title, category,
    tags or enrichment; None when none does (no reason is better than a wrong one)."""
    if stored is None:
        return None
    p = stored.payload
    enrichment = p.get("enrichment") or {}
    fields = [p.get("title", ""), p.get("category", ""), *(p.get("tags") or ())]
    fields += [*(enrichment.get("keywords") or ()), *(enrichment.get("categories") or ())]
    words = set(_WORD.findall(" ".join(str(f) for f in fields).lower()))
    for interest in interests:
        if words.intersection(_WORD.findall(interest.lower())):
            return interest
    return None


def _most_similar_recent(
    item_id: str, recent: Sequence[str], items: dict[str, StoredVector]
) -> str | None:
    target = items.get(item_id)
    history = [items[i] for i in recent if i in items]
    if target is None or not history:
        return None
    sims = np.stack([h.vector for h in history]) @ target.vector  # [H]
    return history[int(np.argmax(sims))].id


def _title(stored: StoredVector | None) -> str:
    return str(stored.payload.get("title", "")) if stored else ""


class ScorerWorker:
    """Turns users waiting for a list into ranked, filtered, explained lists."""

    def __init__(
        self,
        config: GenreConfig,
        views: ScorerViews,
        model_version: str,
        ranker: RankerHandle | None = None,
        arm: str | None = None,
    ) -> None:
        cfg = config.scorer
        #: The A/B arm this scorer serves (``experiments.arms``), named on its lists.
        self.arm = arm
        self.views = views
        self.config = config
        self.features = FeatureSpec.from_streams(config.streams)
        self.ranker = ranker
        if ranker is not None and ranker.current is not None:
            check_ranker_features(ranker.current, config)
        self.top_k = cfg.top_k
        self.rank_candidates = config.ranker.rank_candidates
        rule = diversity_rule(cfg.diversity)
        self.diversity = DiversityStep(rule, cfg.top_k, config.encoder.dim) if rule else None
        #: Items ranked per user: the diversity step picks the list from its candidates.
        self.list_len = max(cfg.top_k, rule.candidates) if rule else cfg.top_k
        self.sources = build_sources(config, views, self.features)
        self.ranking = RANKINGS.create(cfg.name)
        self.blend = BlendRanking()
        self.filters = [FILTERS.create(f.name, **f.params) for f in cfg.filters]
        sources = "+".join(s.name for s, _ in self.sources)
        self.model_version = f"{cfg.name}+{sources}@{model_version}"
        METRICS.model_info.labels("scorer", self.model_version).set(1)

    def prepare(self) -> None:
        """Refresh the sources' shared state (on the event loop, before a batch)."""
        for source, _ in self.sources:
            source.prepare()

    def observe_arm(self, arm: str, clicks: int, hits: int) -> None:
        """Online outcome of a list of ``arm``: only an experiment (``ArmedScorer``)
        keeps them; a list from an experiment since switched off is left uncounted."""

    def score(self, batch: Sequence[ScoreContext]) -> list[ScoredList]:
        """Rank, filter and explain one list per context (blocking: the scorer thread)."""
        started = time.time()
        per_source = self._candidates(batch)
        keeps = [self._keep(ctx) for ctx in batch]
        ranked: list[list[Scored]] | None = None
        version = self.model_version
        learned = self.ranker.current if self.ranker is not None else None
        if learned is not None:
            try:
                ranked = self._rank_learned(learned, batch, per_source, keeps)
                sources = "+".join(s.name for s, _ in self.sources)
                version = f"ranker@{learned.version}+{sources}"
            except Exception as exc:  # a model failure degrades to the blend, never stalls
                log.warning("ranker %s failed (%s); blending instead", learned.version, exc)
                METRICS.fallbacks.labels("ranker", type(exc).__name__).inc()
        if ranked is None:
            ranked = [
                self.ranking.rank(
                    [(name, w, cands[i]) for name, w, cands in per_source], keep, self.list_len
                )
                for i, keep in enumerate(keeps)
            ]
        if self.diversity is not None:
            ranked = self._diversify(self.diversity, ranked)
        return self._lists(batch, ranked, version, started)

    def _diversify(self, step: DiversityStep, ranked: list[list[Scored]]) -> list[list[Scored]]:
        """``scorer.diversity``: each list picked from its best candidates by MMR and the
        exposure control (``core.features.diversity``, as ``genre evaluate`` replays it)."""
        start = time.perf_counter()
        now = self.views.clock.now()
        rules = self.features.graph_rules()
        cache: dict[str, float] = {}

        def vectors(ids: Sequence[str]) -> dict[str, np.ndarray]:
            stored, _ = self.views.items.cached(ids)
            return {item: v.vector for item, v in stored.items()}

        def popularity(ids: Sequence[str]) -> np.ndarray:
            return trending_scores(rules, self.views.graph.state, ids, now, cache)

        lists = [[(s.item_id, s.score) for s in lst] for lst in ranked]
        orders = step.order(lists, vectors, popularity)
        METRICS.inference_seconds.labels("diversity", "cpu").observe(time.perf_counter() - start)
        return [[lst[j] for j in order] for lst, order in zip(ranked, orders, strict=True)]

    def _candidates(self, batch: Sequence[ScoreContext]) -> list[SourceCandidates]:
        per_source = []
        for source, weight in self.sources:
            start = time.perf_counter()
            try:
                candidates = source.generate(batch)
            except Exception as exc:  # an outage of one source must not stall the stream
                log.warning("candidate source %s failed (%s); ranking without it", source.name, exc)
                METRICS.fallbacks.labels(f"source:{source.name}", type(exc).__name__).inc()
                continue
            METRICS.inference_seconds.labels(f"source:{source.name}", "cpu").observe(
                time.perf_counter() - start
            )
            count_candidates(source.name, candidates)
            per_source.append((source.name, weight, candidates))
        return per_source

    def _keep(self, ctx: ScoreContext) -> Callable[[np.ndarray], np.ndarray]:
        """This user's filters as one test over candidate rows."""
        filters = self.filters

        def keep(rows: np.ndarray) -> np.ndarray:
            verdict = np.ones(len(rows), bool)
            for f in filters:
                verdict &= f.keep(ctx, rows)
            return verdict

        return keep

    def _lists(
        self,
        batch: Sequence[ScoreContext],
        ranked: list[list[Scored]],
        version: str,
        started: float,
    ) -> list[ScoredList]:
        needed: set[str] = set()
        for ctx, scored in zip(batch, ranked, strict=True):
            needed.update(s.item_id for s in scored)
            needed.update(s.because for s in scored if s.because)
            needed.update(ctx.history[-EXPLAIN_RECENT:])
        items, _ = self.views.items.cached(needed)
        now = time.time()
        out = []
        for ctx, scored in zip(batch, ranked, strict=True):
            timings = hops(ctx, started, now)
            record = {
                "schema_version": SCHEMA_VERSION,
                "user_id": ctx.user_id,
                "items": [
                    {
                        "item_id": s.item_id,
                        "score": round(s.score, 6),
                        "source": s.source,
                        "reason": explain(s, ctx, items),
                        "title": _title(items.get(s.item_id)),
                    }
                    for s in scored
                ],
                "model_version": version,
                "trigger_event_id": ctx.trigger_event_id,
                "generated_at": now,
                "latency_ms": round(max(0.0, (now - ctx.trigger_produced_at) * 1000.0), 3),
                "arm": self.arm,
                "hops": timings,
            }
            ids = [s.item_id for s in scored]
            ild = list_diversity([items[i].vector for i in ids if i in items])
            if ild is not None:
                METRICS.list_diversity.observe(ild)
            out.append(ScoredList(ctx, ids, orjson.dumps(record), now, timings, self.arm))
        return out

    def _rank_learned(
        self,
        ranker: OnnxRanker,
        batch: Sequence[ScoreContext],
        per_source: Sequence[SourceCandidates],
        keeps: list[Callable[[np.ndarray], np.ndarray]],
    ) -> list[list[Scored]]:
        """Re-rank the best of the blend (``ranker.rank_candidates``) with the learned ranker."""
        origins: list[dict[str, str]] = []  # per user: candidate -> its strongest source
        ids = ITEM_IDS.names
        names = [name for name, _, _ in per_source]
        for i, keep in enumerate(keeps):
            blended = blend([(w, cands[i]) for _, w, cands in per_source])
            rows = blended.rows
            pre = ranked(blended, keep(rows), self.rank_candidates, _namer(ids, rows))
            origins.append({ids[rows[k]]: names[blended.source[k]] for k in pre.tolist()})
        histories = [list(ctx.history[-ranker.history_len :]) for ctx in batch]
        needed = {x for o in origins for x in o} | {x for h in histories for x in h}
        reps, missing = ranker.cached_reps(list(needed))
        if missing:
            stored, _ = self.views.items.cached(missing)
            have = [m for m in missing if m in stored]
            if have:
                text = np.stack([stored[m].vector for m in have])
                reps.update(ranker.encode_items(have, text))
        histories = [[x for x in h if x in reps] for h in histories]
        candidates = [[x for x in o if x in reps] for o in origins]
        features = self._features(ranker, batch, candidates)
        out = ranker.score(histories, candidates, features, reps)
        h_len = out.attention.shape[-1]
        lists = []
        for i, (hist, cands) in enumerate(zip(histories, candidates, strict=True)):
            scores = out.scores[i, : len(cands)]
            top = np.argsort(-scores, kind="stable")[: self.list_len]
            attention = out.attention[i, :, h_len - len(hist) :] if hist else None
            lists.append(
                [
                    Scored(
                        cands[j],
                        float(scores[j]),
                        origins[i][cands[j]],
                        hist[int(np.argmax(attention[j]))] if attention is not None else None,
                    )
                    for j in top
                ]
            )
        return lists

    def _features(
        self, ranker: OnnxRanker, batch: Sequence[ScoreContext], candidates: list[list[str]]
    ) -> np.ndarray:
        """Float32 [B, C, F]: the features the manifest names, in its order, by the same
        code the training replay used (``core.features.candidate_features``)."""
        now = self.views.clock.now()
        spec = ranker_spec(ranker, self.features)
        rules = spec.graph_rules()
        state_of = self.views.graph.state
        c_len = max(1, max(len(c) for c in candidates))
        features = np.zeros((len(batch), c_len, len(spec.feature_names)), np.float32)
        # The co_click source computed these scores for this batch when its window and
        # rules match the manifest's (decayed to the event time it saw, which later
        # clicks may have moved on by at most this batch's duration).
        reusable: dict[str, NeighbourScores] = {}
        for source, _ in self.sources:
            if (
                isinstance(source, CoClickSource)
                and source.recent_items == spec.co_click_recent
                and source.rules == rules
            ):
                reusable = source.last_scores
        popularity: dict[str, float] = {}
        need_text = PROFILE_FEATURE in spec.feature_names
        for i, (ctx, cands) in enumerate(zip(batch, candidates, strict=True)):
            if not cands:
                continue
            vectors = None
            if need_text:
                stored, _ = self.views.items.cached(cands)
                dim = self.config.encoder.dim
                vectors = np.stack(
                    [stored[c].vector if c in stored else np.zeros(dim, np.float32) for c in cands]
                )
            features[i, : len(cands)] = candidate_features(
                spec,
                rules,
                state_of,
                cands,
                now,
                history=ctx.history,
                co_scores=reusable.get(ctx.user_id),
                candidate_vectors=vectors,
                profile=ctx.profile_vector,
                popularity=popularity,
            )
        return features


def _namer(ids: Sequence[str], rows: np.ndarray) -> Callable[[int], str]:
    """Position in a blend -> its item id (for ``ranked``'s tie-breaks)."""

    def name_of(k: int) -> str:
        return ids[rows[k]]

    return name_of


def ranker_spec(ranker: OnnxRanker, serving: FeatureSpec) -> FeatureSpec:
    """The serving spec with the feature names (and co-click window) the ranker was
    trained with."""
    trained = ranker.manifest.feature_spec
    return FeatureSpec(
        **{
            **serving.__dict__,
            "feature_names": tuple(ranker.manifest.feature_names),
            "co_click_recent": int(trained.get("co_click_recent", serving.co_click_recent)),
        }
    )


def hops(ctx: ScoreContext, started: float, done: float) -> dict[str, float]:
    """Where a list's latency went (ms): see ``Recommendation.hops``."""
    return {
        "ingest": round(max(0.0, ctx.taken_at - ctx.trigger_produced_at) * 1000.0, 3),
        "fold": round(max(0.0, ctx.folded_at - ctx.taken_at) * 1000.0, 3),
        "handoff": round(max(0.0, ctx.received_at - ctx.folded_at) * 1000.0, 3),
        "wait": round(max(0.0, started - ctx.received_at) * 1000.0, 3),
        "score": round(max(0.0, done - started) * 1000.0, 3),
    }


def check_ranker_features(ranker: OnnxRanker, config: GenreConfig) -> None:
    """Refuse a ranker whose features this worker cannot compute; warn on drifted rules."""
    names = tuple(ranker.manifest.feature_names)
    unknown = [n for n in names if n not in RANKER_FEATURES]
    if unknown:
        raise ManifestError(
            f"ranker {ranker.version} takes features {names}, this worker computes "
            f"{RANKER_FEATURES}; re-train and re-export it with this GENRE version"
        )
    if PROFILE_FEATURE in names and not config.llm.profiles.enabled:
        log.warning(
            "ranker %s was trained with LLM profiles but llm.profiles.enabled is false; "
            "its profile feature will be 0 for every user (enable profiles or re-train)",
            ranker.version,
        )
    trained = ranker.manifest.training.get("llm") or {}
    llm = config.llm
    if "items" in trained and bool(trained["items"]) != llm.items.enabled:
        log.warning(
            "ranker %s was trained on %s item text but llm.items.enabled is %s; item vectors "
            "will differ from training (re-train with the current config)",
            ranker.version,
            "enriched" if trained["items"] else "raw",
            llm.items.enabled,
        )
    drift = FeatureSpec.from_streams(config.streams).drift(ranker.manifest.feature_spec)
    for key, (was, now) in drift.items():
        log.warning(
            "ranker %s was trained with %s=%s but streams give %s; its features will drift "
            "from training (re-train with the current config)",
            ranker.version,
            key,
            was,
            now,
        )


class UsersWriter:
    """Writes user vectors and latest lists to Qdrant ``users``, off the hot path.

    The latest entry per user waits here (at most ``max_pending``: past it the
    oldest are dropped and counted); a task writes them every ``every_s`` on the
    vector-store thread.
    """

    def __init__(self, streams: GenreStreams, every_s: float, max_pending: int) -> None:
        self.streams = streams
        self.every_s = every_s
        self.max_pending = max_pending
        self.collection = streams.config.qdrant.users_collection
        self.pending: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}

    def add(self, scored: ScoredList, version: str) -> None:
        """Remember a published list (latest per user)."""
        ctx = scored.ctx
        if ctx.vector is None or not len(ctx.vector):
            return
        self.pending.pop(ctx.user_id, None)
        self.pending[ctx.user_id] = (
            ctx.vector,
            {
                "items": scored.items,
                "generated_at": scored.generated_at,
                "model_version": version,
                "clicks": ctx.clicks,
            },
        )
        if len(self.pending) > self.max_pending:
            del self.pending[next(iter(self.pending))]
            METRICS.fallbacks.labels("users-write", "backlog").inc()

    async def flush(self) -> int:
        """Write what is pending; on failure keep it for the next flush (newer wins)."""
        if not self.pending:
            return 0
        pending, self.pending = self.pending, {}
        ids = list(pending)
        try:
            await self.streams.in_store(
                self.streams.store.upsert,
                self.collection,
                ids,
                np.stack([pending[u][0] for u in ids]).astype(np.float32),
                [pending[u][1] for u in ids],
            )
        except Exception as exc:  # vector store down: keep the writes for the next flush
            log.warning("writing %d users to Qdrant failed (%s); will retry", len(ids), exc)
            METRICS.fallbacks.labels("users-write", type(exc).__name__).inc()
            self.pending = {**pending, **self.pending}
            return 0
        return len(ids)


def latest_list_entry(scored: ScoredList, previous: Any) -> dict[str, Any]:
    """The ``latest-lists`` value after publishing ``scored``: its items, when it was made,
    and the list before it (what a click made before it was published could hit)."""
    shown, shown_arm = list_shown_at(previous, scored.generated_at)
    return {
        "items": scored.items,
        "at": scored.generated_at,
        "arm": scored.arm,
        "prev": shown,
        "prev_arm": shown_arm,
    }


def list_shown_at(entry: Any, when: float) -> tuple[list[str], str | None]:
    """The items and arm of the user's list that was the latest at ``when`` (Unix s).

    An online hit is a click on an item of the list the user had when clicking.
    A lagging scorer may have published a newer list since: then the one before
    it counts.
    """
    if entry is None:
        return [], None
    if entry["at"] <= when:
        return entry["items"], entry.get("arm")
    return entry["prev"], entry.get("prev_arm")


class ListScorer(Protocol):
    """What the scoring task drives: ``ScorerWorker``, or ``ArmedScorer`` for A/B arms."""

    ranker: RankerHandle | None
    model_version: str

    def prepare(self) -> None: ...

    def score(self, batch: Sequence[ScoreContext]) -> list[ScoredList]: ...

    def observe_arm(self, arm: str, clicks: int, hits: int) -> None: ...


def register_scorer(streams: GenreStreams, worker: ListScorer) -> None:
    """Run ``worker`` in this process: the scoring task, the Qdrant ``users`` writer, the
    ranker's hot reload, and (role ``scorer``) the score-requests agent."""
    pending = streams.pending
    if pending is None:
        raise ValueError("register_scorer needs a process that runs the scorer part")
    cfg = streams.config.scorer
    topic = streams.topics.recommendations
    latest = streams.latest_lists
    writer = None
    if streams.config.users_write_interval:
        writer = UsersWriter(streams, streams.config.users_write_interval, cfg.users_max_pending)
    profiles = streams.profiles

    def attach_profiles(batch: list[ScoreContext]) -> None:
        if profiles is None:
            return
        for ctx in batch:
            entry = table_get(profiles, ctx.user_id)
            if entry:
                ctx.profile_vector = decode_vector(entry["vector"])
                ctx.profile_interests = tuple(entry["interests"])

    def count_hits(batch: list[ScoreContext]) -> None:
        hits = 0
        for ctx in batch:
            if ctx.clicked_items:
                shown, arm = list_shown_at(table_get(latest, ctx.user_id), ctx.trigger_produced_at)
                got = sum(item in shown for item in ctx.clicked_items)
                hits += got
                if arm is not None and shown:
                    worker.observe_arm(arm, len(ctx.clicked_items), got)
        if hits:
            METRICS.online_hits.inc(hits)

    async def publish(lists: list[ScoredList], batches: list[SubmittedBatch]) -> None:
        name = topic.get_topic_name()
        for scored, batch in zip(lists, batches, strict=True):
            user_id = scored.ctx.user_id
            await topic.send(key=user_id.encode(), value=scored.value)
            latest[user_id] = latest_list_entry(scored, table_get(latest, user_id))
            published = time.time()
            latency_ms = (published - scored.ctx.trigger_produced_at) * 1000.0
            METRICS.click_to_recommendation_ms.observe(latency_ms)
            if scored.arm is not None:
                METRICS.arm_lists.labels(scored.arm).inc()
                METRICS.arm_latency_ms.labels(scored.arm).observe(latency_ms)
            METRICS.hop_ms.labels("publish").observe((published - scored.generated_at) * 1000.0)
            if writer is not None:
                writer.add(scored, worker.model_version)
            await batch.settle()
        METRICS.recommendations.inc(len(lists))
        METRICS.events_out.labels(name).inc(len(lists))

    @streams.app.task
    async def score_pending() -> None:
        """Take waiting users, score them on the scorer thread, publish from the loop."""
        await streams.items_read()
        while True:
            taken = await pending.take(cfg.batch_size)
            METRICS.pending_users.set(len(pending))
            batch = [ctx for ctx, _ in taken]
            batches = [b for _, b in taken]
            count_hits(batch)
            attach_profiles(batch)
            worker.prepare()
            start = time.perf_counter()
            try:
                lists = await streams.in_model(worker.score, batch)
            except Exception:  # never stall the stream: the users are scored on their next click
                log.exception("scoring %d users failed; skipping them", len(batch))
                METRICS.fallbacks.labels("scorer", "error").inc()
                for b in batches:
                    await b.settle()
                continue
            METRICS.agent_batch_seconds.labels("scorer").observe(time.perf_counter() - start)
            METRICS.batch_size.labels("scorer").observe(len(batch))
            for scored in lists:
                for hop, ms in scored.hops.items():
                    METRICS.hop_ms.labels(hop).observe(ms)
            await publish(lists, batches)
            await streams.producer_ebb()

    if writer is not None:

        @streams.app.task
        async def write_users() -> None:
            # Every users_write_s; the finally clause writes what is left at shutdown.
            try:
                while True:
                    await asyncio.sleep(writer.every_s)
                    await writer.flush()
            finally:
                await writer.flush()

    reallocate = getattr(worker, "reallocate", None)
    if reallocate is not None and streams.config.experiments.policy == "thompson":

        @streams.app.timer(streams.config.experiments.update_s)
        async def reallocate_arms() -> None:
            shares = await streams.in_model(reallocate)
            log.info("arm shares now %s", {a: round(v, 3) for a, v in shares.items()})

    if worker.ranker is not None:
        handle = worker.ranker

        @streams.app.timer(streams.config.ranker.reload_s)
        async def reload_ranker() -> None:
            if await streams.in_model(handle.maybe_reload) and handle.current is not None:
                check_ranker_features(handle.current, streams.config)

    if not streams.runs("stream"):
        register_score_requests_agent(streams)


def register_score_requests_agent(streams: GenreStreams) -> None:
    """Role ``scorer``: take stream roles' score requests into ``PendingScores``; each
    chunk is acknowledged once its users' lists are published."""
    pending = streams.pending
    assert pending is not None
    topic = streams.topics.score_requests
    name = topic.get_topic_name()

    @streams.app.agent(topic, name="genre.score-requests")
    async def score_requests(stream: Any) -> None:
        async for events in take_ready(stream, 64):
            await streams.items_read()
            received = time.time()
            contexts = []
            for rec in chunk_records(events):
                for req in ScoreRequests.from_bytes(rec.value).requests:
                    contexts.append(from_request(req, received))
            METRICS.events_in.labels(name).inc(len(contexts))
            for ctx in contexts:
                streams.observe_event_time(ctx.trigger_ts)

            async def acknowledge(events: list[Any] = events) -> None:
                await ack_events(stream, events)

            pending.submit(contexts, acknowledge)
            METRICS.pending_users.set(len(pending))
