"""The scorer worker: candidates -> blended, filtered, explained lists -> topic and Qdrant."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from genre.core.registry import Registry
from genre.core.telemetry import METRICS, measured_batch
from genre.core.vectorstore import StoredVector
from genre.schemas import Recommendation, RecommendedItem, ScoreRequest, ScoreRequests
from genre.schemas.manifest import ManifestError
from genre.streams.agents import graph_rules
from genre.streams.app import CHUNKS_PER_BATCH, GenreStreams, chunk_records, table_get
from genre.streams.state import decode_vector, neighbour_scores, user_vector
from genre.workers.candidates import Candidate, CoClickSource, build_sources, count_candidates
from genre.workers.ranker import OnnxRanker, RankerHandle

log = logging.getLogger("genre.scorer")

#: How often user vectors and lists are written to Qdrant ``users``: often enough
#: that the stored list trails the published one by well under a second.
USERS_FLUSH_S = 0.25

#: History items an "ann" pick is explained against (the most similar one is named).
EXPLAIN_RECENT = 10

#: Per-candidate features this worker can compute for the ranker (a manifest names the
#: ones its graphs take, in their order): decayed trending count, co-click score, and
#: the cosine of the user's LLM profile with the item (0 without a profile).
RANKER_FEATURES = ("trending", "co_click", "profile")

SOURCE_REASONS = {
    "trending": "trending now",
    "ann": "matches your taste",
    "co_click": "often watched together with your recent picks",
    "profile": "matches your interest profile",
}

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True, slots=True)
class Scored:
    """A ranked item before explanation: blended score, winning source, evidence item."""

    item_id: str
    score: float
    source: str
    because: str | None


class Filter(Protocol):
    """Removes candidates a user must not see."""

    def predicate(self, request: ScoreRequest) -> Callable[[str], bool]:
        """A test ``item_id -> keep?`` for one request, built once per request."""
        ...


FILTERS: Registry[Filter] = Registry("filter", "scorer.filters[].name")


@FILTERS.register("seen")
class SeenFilter:
    """Drops items the user has already interacted with (history and seen set)."""

    def predicate(self, request: ScoreRequest) -> Callable[[str], bool]:
        excluded = frozenset(request.seen_items).union(request.recent_items)
        return lambda item_id: item_id not in excluded


class Scorer(Protocol):
    """Combines per-source candidates into one ranked list."""

    name: str

    def rank(
        self,
        per_source: Sequence[tuple[str, float, dict[str, Candidate]]],
        keep: Any,
        top_k: int,
    ) -> list[Scored]: ...


SCORERS: Registry[Scorer] = Registry("scorer", "scorer.name")


@SCORERS.register("blend")
class BlendScorer:
    """Weighted sum of per-source scores, each min-max normalised to [0, 1] per user.

    Normalising per user and source puts cosine similarities, co-click weights
    and popularity counts on one scale, so the YAML weights mean what they say.
    """

    name = "blend"

    def rank(
        self,
        per_source: Sequence[tuple[str, float, dict[str, Candidate]]],
        keep: Any,
        top_k: int,
    ) -> list[Scored]:
        totals: dict[str, float] = {}
        best: dict[str, tuple[float, str, str | None]] = {}
        for name, weight, candidates in per_source:
            if not candidates or weight <= 0:
                continue
            raw = np.fromiter((c.score for c in candidates.values()), np.float64)
            lo, hi = float(raw.min()), float(raw.max())
            span = hi - lo
            for item, cand in candidates.items():
                if not keep(item):
                    continue
                norm = (cand.score - lo) / span if span > 0 else 1.0
                contribution = weight * norm
                totals[item] = totals.get(item, 0.0) + contribution
                if item not in best or contribution > best[item][0]:
                    best[item] = (contribution, name, cand.because)
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        return [Scored(item, score, best[item][1], best[item][2]) for item, score in ranked]


def explain(scored: Scored, request: ScoreRequest, items: dict[str, StoredVector]) -> str:
    """A human-readable reason: the profile interest it matches, the history item behind
    it, else the source's phrase."""
    if scored.source == "profile" and request.profile_interests:
        interest = matching_interest(request.profile_interests, items.get(scored.item_id))
        if interest:
            return f"matches your interest in {interest}"
    because = scored.because
    if because is None and scored.source == "ann":
        because = _most_similar_recent(
            scored.item_id, request.recent_items[-EXPLAIN_RECENT:], items
        )
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
    """Turns score requests into published recommendations, a micro-batch at a time."""

    def __init__(
        self, streams: GenreStreams, model_version: str, ranker: RankerHandle | None = None
    ) -> None:
        cfg = streams.config.scorer
        self.streams = streams
        self.ranker = ranker
        self.graph_rules = graph_rules(streams)
        if ranker is not None and ranker.current is not None:
            check_ranker_features(ranker.current, streams)
        self.top_k = cfg.top_k
        self.sources = build_sources(streams)
        self.scorer = SCORERS.create(cfg.name)
        self.filters = [FILTERS.create(f.name, **f.params) for f in cfg.filters]
        self.model_version = (
            f"{cfg.name}+{'+'.join(s.name for s, _ in self.sources)}@{model_version}"
        )
        self.users_collection = streams.config.qdrant.users_collection
        #: user_id -> (vector, payload) not yet written to Qdrant; a background task
        #: flushes it, so vector-store writes never delay the next scoring batch.
        self.pending_users: dict[str, tuple[list[float], dict[str, Any]]] = {}
        self._warned_stateless = False
        METRICS.model_info.labels("scorer", self.model_version).set(1)

    async def handle(self, requests: list[ScoreRequest]) -> list[Recommendation]:
        """Score a batch (latest request per user wins) and publish each list."""
        latest: dict[str, ScoreRequest] = {}
        for req in requests:
            latest[req.user_id] = req
            self.streams.observe_event_time(req.trigger_ts)
        batch = [self._with_state(req) for req in latest.values()]
        per_source = []
        for source, weight in self.sources:
            start = time.perf_counter()
            try:
                candidates = await source.generate(batch)
            except Exception as exc:  # an outage of one source must not stall the stream
                log.warning("candidate source %s failed (%s); ranking without it", source.name, exc)
                METRICS.fallbacks.labels(f"source:{source.name}", type(exc).__name__).inc()
                continue
            METRICS.inference_seconds.labels(f"source:{source.name}", "cpu").observe(
                time.perf_counter() - start
            )
            count_candidates(source.name, candidates)
            per_source.append((source.name, weight, candidates))
        keeps = [self._keep(req) for req in batch]
        ranked: list[list[Scored]] | None = None
        version = self.model_version
        learned = self.ranker.current if self.ranker is not None else None
        if learned is not None:
            try:
                ranked = await self._rank_learned(learned, batch, per_source, keeps)
                version = f"ranker@{learned.version}+{'+'.join(s.name for s, _ in self.sources)}"
            except Exception as exc:  # a model failure degrades to the blend, never stalls
                log.warning("ranker %s failed (%s); blending instead", learned.version, exc)
                METRICS.fallbacks.labels("ranker", type(exc).__name__).inc()
        if ranked is None:
            ranked = [
                self.scorer.rank(
                    [(name, w, cands[i]) for name, w, cands in per_source], keep, self.top_k
                )
                for i, keep in enumerate(keeps)
            ]
        needed: set[str] = set()
        for req, scored in zip(batch, ranked, strict=True):
            needed.update(s.item_id for s in scored)
            needed.update(s.because for s in scored if s.because)
            needed.update(req.recent_items[-EXPLAIN_RECENT:])
        try:
            items = await self.streams.items(needed)
        except Exception as exc:  # titles only: explain from what is cached
            log.warning("item lookup for explanations failed (%s); using the cache", exc)
            METRICS.fallbacks.labels("explain", type(exc).__name__).inc()
            items, _ = self.streams.catalog.cached(needed)
        recs = []
        now = time.time()
        for req, scored in zip(batch, ranked, strict=True):
            rec = Recommendation(
                user_id=req.user_id,
                items=[
                    RecommendedItem(
                        item_id=s.item_id,
                        score=round(s.score, 6),
                        source=s.source,
                        reason=explain(s, req, items),
                        title=_title(items.get(s.item_id)),
                    )
                    for s in scored
                ],
                model_version=version,
                trigger_event_id=req.trigger_event_id,
                generated_at=now,
                latency_ms=round(max(0.0, (now - req.trigger_produced_at) * 1000.0), 3),
            )
            recs.append(rec)
        await self._publish(batch, recs)
        return recs

    def _keep(self, request: ScoreRequest) -> Callable[[str], bool]:
        tests = [f.predicate(request) for f in self.filters]
        return lambda item: all(test(item) for test in tests)

    async def _rank_learned(
        self,
        ranker: OnnxRanker,
        batch: list[ScoreRequest],
        per_source: Sequence[tuple[str, float, list[dict[str, Candidate]]]],
        keeps: list[Callable[[str], bool]],
    ) -> list[list[Scored]]:
        """Re-rank the union of every source's candidates with the learned ranker."""
        origins: list[dict[str, str]] = []  # per request: item -> the first source proposing it
        for i, keep in enumerate(keeps):
            origin: dict[str, str] = {}
            for name, _, cands in per_source:
                for item in cands[i]:
                    if item not in origin and keep(item):
                        origin[item] = name
            origins.append(origin)
        histories = [req.recent_items[-ranker.history_len :] for req in batch]
        needed = {x for o in origins for x in o} | {x for h in histories for x in h}
        reps, missing = ranker.cached_reps(list(needed))
        if missing:
            stored = await self.streams.items(missing)
            have = [m for m in missing if m in stored]
            if have:
                text = np.stack([stored[m].vector for m in have])
                reps.update(await self.streams.in_model(ranker.encode_items, have, text))
        histories = [[x for x in h if x in reps] for h in histories]
        candidates = [[x for x in o if x in reps] for o in origins]
        text: dict[str, StoredVector] = {}
        if "profile" in ranker.manifest.feature_names:
            text = await self.streams.items({x for c in candidates for x in c})
        features = self._features(ranker, batch, candidates, text)
        out = await self.streams.in_model(ranker.score, histories, candidates, features, reps)
        h_len = out.attention.shape[-1]
        ranked = []
        for i, (hist, cands) in enumerate(zip(histories, candidates, strict=True)):
            scores = out.scores[i, : len(cands)]
            top = np.argsort(-scores, kind="stable")[: self.top_k]
            attention = out.attention[i, :, h_len - len(hist) :] if hist else None
            ranked.append(
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
        return ranked

    def _features(
        self,
        ranker: OnnxRanker,
        batch: list[ScoreRequest],
        candidates: list[list[str]],
        text: dict[str, StoredVector],
    ) -> np.ndarray:
        """Float32 [B, C, F]: the features the manifest names, in its order, computed
        from the stream's state exactly as the training replay computed them (trending
        and co-click decayed to the event time; profile: max(0, cos(profile, item)))."""
        now = self.streams.event_now()
        rules = self.graph_rules
        names = list(ranker.manifest.feature_names)
        recent = int(ranker.manifest.feature_spec.get("co_click_recent", 10))
        c_len = max(1, max(len(c) for c in candidates))
        features = np.zeros((len(batch), c_len, len(names)), np.float32)
        popularity: dict[str, float] = {}
        graph = self.streams.graph
        # The co_click source already computed these scores for this batch when its
        # window and rules match the manifest's (decayed to the event time it saw,
        # which later clicks may have moved on by at most this batch's duration).
        reusable = None
        for source, _ in self.sources:
            if (
                isinstance(source, CoClickSource)
                and source.recent_items == recent
                and source.rules == rules
            ):
                reusable = source.last_scores
        # Each column is filled from a list in one slice assignment: element-wise
        # numpy writes cost ~0.1 us each, for ~300 candidates x features x users.
        for i, (req, cands) in enumerate(zip(batch, candidates, strict=True)):
            if "trending" in names:
                pops = []
                for item in cands:
                    pop = popularity.get(item)
                    if pop is None:
                        state = table_get(graph, item)
                        pop = popularity[item] = rules.popularity(state, now) if state else 0.0
                    pops.append(pop)
                features[i, : len(cands), names.index("trending")] = pops
            if "co_click" in names:
                co = reusable.get(req.user_id) if reusable is not None else None
                if co is None:
                    co = neighbour_scores(
                        lambda key: table_get(graph, key), req.recent_items[-recent:], rules, now
                    )
                features[i, : len(cands), names.index("co_click")] = [
                    co[item][0] if item in co else 0.0 for item in cands
                ]
            if "profile" in names and req.profile_vector is not None and cands:
                col = names.index("profile")
                profile = np.asarray(req.profile_vector, np.float32)
                rows = [j for j, item in enumerate(cands) if item in text]
                if rows:
                    matrix = np.stack([text[cands[j]].vector for j in rows])
                    features[i, rows, col] = np.maximum(matrix @ profile, 0.0)
        return features

    def _with_state(self, request: ScoreRequest) -> ScoreRequest:
        """The request with the user's history, seen set, vector and profile.

        A stream role in another process sends the state along (``clicks`` > 0).
        Otherwise it comes from the user table: score requests and user clicks are
        co-partitioned (same key, same partition count), so the worker scoring a
        user also holds that user's state.
        """
        users = self.streams.users
        if request.clicks:
            vector = decode_vector(request.vector_b64) if request.vector_b64 else None
            update: dict[str, Any] = {"vector": vector}
        elif users is None:
            # A scorer role, and the request came without the state: it was written by
            # an all-in-one worker (mixed deployments) or before the split.
            if not self._warned_stateless:
                log.warning(
                    "score requests arrive without the user's state, which a scorer role "
                    "needs (it keeps no user table); run stream roles, not `--role all` "
                    "workers, next to scorer roles. Ranking such users cold."
                )
                self._warned_stateless = True
            METRICS.fallbacks.labels("scorer", "no_state_in_request").inc()
            return request
        else:
            state = users.get(request.user_id)
            if state is None:
                log.warning("no state for user %s on this worker; ranking cold", request.user_id)
                METRICS.fallbacks.labels("scorer", "no_user_state").inc()
                return request
            # Vectors stay float32 arrays (model_copy does not validate): as Python
            # float lists they cost ~9 KB per pending user and a conversion each way.
            update = {
                "recent_items": state["history"],
                "seen_items": state["seen"],
                "vector": user_vector(state),
                "clicks": state["clicks"],
            }
        profile = self.streams.profiles.get(request.user_id)
        if profile:
            update["profile_vector"] = user_vector(profile)
            update["profile_interests"] = profile["interests"]
        return request.model_copy(update=update)

    async def _publish(self, batch: list[ScoreRequest], recs: list[Recommendation]) -> None:
        topic = self.streams.topics.recommendations
        for rec in recs:
            await topic.send(key=rec.user_id.encode(), value=rec.to_bytes())
            latest = self.streams.latest_lists
            previous = table_get(latest, rec.user_id)
            latest[rec.user_id] = latest_list_entry(rec, previous)
            METRICS.click_to_recommendation_ms.observe(rec.latency_ms)
        METRICS.recommendations.inc(len(recs))
        METRICS.events_out.labels(topic.get_topic_name()).inc(len(recs))
        for req, rec in zip(batch, recs, strict=True):
            if req.vector is not None and len(req.vector):
                self.pending_users[req.user_id] = (
                    req.vector,
                    {
                        "items": [i.item_id for i in rec.items],
                        "generated_at": rec.generated_at,
                        "model_version": rec.model_version,
                        "clicks": req.clicks,
                    },
                )

    async def flush_users(self) -> int:
        """Write pending user vectors and lists to Qdrant ``users`` (latest per user)."""
        if not self.pending_users:
            return 0
        pending, self.pending_users = self.pending_users, {}
        ids = list(pending)
        try:
            await self.streams.in_store(
                self.streams.store.upsert,
                self.users_collection,
                ids,
                np.asarray([pending[u][0] for u in ids], np.float32),
                [pending[u][1] for u in ids],
            )
        except Exception as exc:  # vector store down: keep the writes for the next flush
            log.warning("writing %d users to Qdrant failed (%s); will retry", len(ids), exc)
            METRICS.fallbacks.labels("users-write", type(exc).__name__).inc()
            self.pending_users = {**pending, **self.pending_users}  # newer entries win
            return 0
        return len(ids)


def latest_list_entry(rec: Recommendation, previous: Any) -> dict[str, Any]:
    """The ``latest-lists`` value after publishing ``rec``: its items, when it was made,
    and the list before it (what a click made before ``rec`` was published could hit)."""
    return {
        "items": [i.item_id for i in rec.items],
        "at": rec.generated_at,
        "prev": list_shown_at(previous, rec.generated_at),
    }


def list_shown_at(entry: Any, when: float) -> list[str]:
    """The items of the user's list that was the latest at ``when`` (Unix seconds).

    An online hit is a click on an item of the list the user had when clicking.
    A lagging scorer may have published a newer list since: then the one before
    it counts. Entries written before lists were dated are plain item lists.
    """
    if entry is None:
        return []
    if isinstance(entry, list):
        return entry
    return entry["items"] if entry["at"] <= when else entry["prev"]


def check_ranker_features(ranker: OnnxRanker, streams: GenreStreams) -> None:
    """Refuse a ranker whose features this worker cannot compute; warn on drifted rules."""
    names = tuple(ranker.manifest.feature_names)
    unknown = [n for n in names if n not in RANKER_FEATURES]
    if unknown:
        raise ManifestError(
            f"ranker {ranker.version} takes features {names}, this worker computes "
            f"{RANKER_FEATURES}; re-train and re-export it with this GENRE version"
        )
    if "profile" in names and not streams.config.llm.profiles.enabled:
        log.warning(
            "ranker %s was trained with LLM profiles but llm.profiles.enabled is false; "
            "its profile feature will be 0 for every user (enable profiles or re-train)",
            ranker.version,
        )
    trained = ranker.manifest.training.get("llm") or {}
    llm = streams.config.llm
    if "items" in trained and bool(trained["items"]) != llm.items.enabled:
        log.warning(
            "ranker %s was trained on %s item text but llm.items.enabled is %s; item vectors "
            "will differ from training (re-train with the current config)",
            ranker.version,
            "enriched" if trained["items"] else "raw",
            llm.items.enabled,
        )
    spec, s = ranker.manifest.feature_spec, streams.config.streams
    for key in ("trending_half_life_s", "edge_half_life_s", "co_click_window"):
        if key in spec and float(spec[key]) != float(getattr(s, key)):
            log.warning(
                "ranker %s was trained with %s=%s but streams.%s is %s; its features will "
                "drift from training (re-train with the current config)",
                ranker.version,
                key,
                spec[key],
                key,
                getattr(s, key),
            )


def register_scorer_agent(streams: GenreStreams, worker: ScorerWorker) -> None:
    """Attach the scorer agent (consumes score requests in micro-batches)."""
    cfg = streams.config.scorer
    topic = streams.topics.score_requests
    name = topic.get_topic_name()
    within = cfg.batch_within_ms / 1000

    @streams.app.task
    async def flush_users() -> None:
        # Flush every USERS_FLUSH_S; the finally clause writes what is left at shutdown.
        try:
            while True:
                await asyncio.sleep(USERS_FLUSH_S)
                await worker.flush_users()
        finally:
            await worker.flush_users()

    if worker.ranker is not None:
        handle = worker.ranker

        @streams.app.timer(streams.config.ranker.reload_s)
        async def reload_ranker() -> None:
            if await streams.in_model(handle.maybe_reload) and handle.current is not None:
                check_ranker_features(handle.current, streams)

    @streams.app.agent(topic, name="genre.scorer")
    async def scorer(stream: Any) -> None:
        async for events in stream.take_events(CHUNKS_PER_BATCH, within=within):
            await streams.items_read()
            records = chunk_records(events)
            # Latest request per user across the whole batch: a user's older requests
            # ask for a list that the newer one replaces anyway. Under a backlog a
            # batch holds several requests per active user, and scoring each user
            # once is what keeps the scorer from falling further behind.
            latest: dict[str, ScoreRequest] = {}
            n_requests = 0
            hits = 0
            for rec in records:
                for req in ScoreRequests.from_bytes(rec.value).requests:
                    latest.pop(req.user_id, None)  # re-insert: order by latest request
                    latest[req.user_id] = req
                    n_requests += 1
                    if req.clicked_items:
                        entry = table_get(streams.latest_lists, req.user_id)
                        shown = list_shown_at(entry, req.trigger_produced_at)
                        hits += sum(item in shown for item in req.clicked_items)
            METRICS.online_hits.inc(hits)
            if n_requests > len(latest):
                superseded = n_requests - len(latest)
                METRICS.superseded_requests.inc(superseded)
                # consumed too: measured_batch below counts only the requests scored
                METRICS.events_in.labels(name).inc(superseded)
            requests = list(latest.values())
            # Score at most scorer.batch_size users at a time: bounded model batches.
            for start in range(0, len(requests), cfg.batch_size):
                part = requests[start : start + cfg.batch_size]
                with measured_batch("scorer", name, len(part)):
                    await worker.handle(part)
                await streams.producer_ebb()
