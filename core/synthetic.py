"""A synthetic click workload with a known structure, for scale tests and benchmarks.

The world (built once from a :class:`SyntheticSpec`, O(items + users) memory):

* **topics**, each with a vocabulary of words: the first 24 are fixed English
  themes written below (``space``, ``ocean``, ``cooking``...; no two themes
  share a word), further topics get readable pseudo-words made from syllables;
* **items**, each in one topic (a ``multi_topic_share`` of them in two), with a
  title, text, category and tags built from their topics' words, so a text
  encoder can find the topics; inside a topic the items have a random
  popularity rank and are clicked with probability proportional to
  ``rank ** -zipf_a`` (Zipf);
* **users**, each with a latent interest mixture over ``topics_per_user``
  topics (weights from a symmetric Dirichlet, main interest first) and an
  activity level (log-normal).

The click stream: sessions start as a Poisson process in event time
(``rate / session_len`` sessions per second, so ``rate`` clicks per second of
event time on average). Each session goes to a user drawn by activity who is
not busy (a user's next session starts at least ``session_gap_s`` after their
previous one ended), picks one topic from the user's mixture and clicks
``session_len`` items on average (geometric, capped at four times that) from
the topic's Zipf popularity, ``click_interval_s`` apart on average (capped at
four times that). A ``noise`` share of clicks go to a random topic instead.
Events come out with unique ids and non-decreasing timestamps (ms).

Everything is vectorised per chunk of sessions and lazy: a million events cost
the same memory as a thousand (plus the sessions still open). The same spec
gives identical bytes, and the first N events of a longer run are the events of
a run of N (the event count only truncates).

    spec = SyntheticSpec(seed=1, n_users=1000, n_items=500, n_topics=10, events=50_000)
    work = SyntheticWorkload(spec)
    for item in work.items(): ...                 # ItemUpsert records
    for keys, values in work.click_payloads(): ... # pre-serialised ClickEvents, keyed by user
    truth = work.truth()                           # topics, item topics, user mixtures
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from genre.schemas.records import MAX_TS, MIN_TS, ClickEvent, ItemUpsert

__all__ = [
    "THEMES",
    "ClickChunk",
    "SyntheticSpec",
    "SyntheticWorkload",
]

#: Fixed topic vocabularies: 24 themes of 24 words, no word in two themes.
THEMES: dict[str, tuple[str, ...]] = {
    name: tuple(words.split())
    for name, words in {
        "space": "galaxy orbit rocket astronaut nebula planet comet asteroid telescope satellite "
        "starship cosmos lunar solar meteor gravity spacewalk launchpad eclipse quasar alien "
        "voyager crater supernova",
        "ocean": "wave reef coral tide harbor sailor whale dolphin anchor lighthouse shipwreck "
        "island lagoon seaweed kelp seashell pirate mariner tsunami surfing beach fishing "
        "submarine octopus",
        "cooking": "recipe kitchen chef oven bread pasta sauce spice garlic butter dough soup "
        "salad dessert grill skillet flavor noodle baking simmer feast ginger onion casserole",
        "sports": "football soccer basketball tennis stadium coach league tournament goalkeeper "
        "athlete marathon sprint referee trophy champion match racket medal playoff jersey "
        "olympics hockey cricket volleyball",
        "music": "guitar piano melody rhythm concert orchestra song album drummer chorus jazz "
        "violin band lyrics symphony tempo harmony singer opera tune festival vinyl saxophone "
        "ballad",
        "gardening": "garden flower seed soil compost tulip rose vegetable greenhouse bloom "
        "pruning shovel tomato hedge lawn watering blossom mulch sapling fern ivy daisy orchid "
        "trowel",
        "history": "empire castle knight medieval dynasty pharaoh revolution archive chronicle "
        "battle ancient ruins monarch treaty crusade relic scroll colonial emperor legion siege "
        "manuscript heritage pyramid",
        "technology": "computer software robot algorithm network processor laptop smartphone "
        "internet database circuit silicon startup coding server gadget engineer digital "
        "hardware microchip cloud app cyber innovation",
        "finance": "market stock investor bank budget credit loan dividend portfolio currency "
        "inflation trader wealth savings tax economy profit fund mortgage asset bond exchange "
        "capital banker",
        "travel": "passport airport journey tourist luggage hotel backpack adventure map "
        "destination flight cruise itinerary souvenir vacation roadtrip border sightseeing "
        "hostel guidebook expedition railway compass visa",
        "wildlife": "lion tiger elephant safari jungle predator wolf eagle leopard savanna zebra "
        "giraffe gorilla rhino habitat migration herd bear fox owl cheetah antelope hyena "
        "buffalo",
        "medicine": "doctor hospital nurse surgery patient vaccine diagnosis clinic medicine "
        "therapy virus cure symptom prescription pharmacy cardiology emergency fever antibiotic "
        "surgeon ward recovery health pulse",
        "crime": "detective murder thief heist police suspect evidence crime gangster mafia alibi "
        "prison robbery investigation witness clue courtroom fugitive smuggler cop "
        "interrogation verdict undercover conspiracy",
        "romance": "love wedding kiss romance heart bride valentine couple passion flirt proposal "
        "honeymoon darling sweetheart affection lover embrace roses longing desire soulmate "
        "engagement courtship admirer",
        "horror": "ghost haunted vampire zombie monster demon curse nightmare witch graveyard "
        "skeleton scream shadow possessed creepy cellar phantom werewolf blood fear darkness "
        "coffin ritual spirit",
        "fashion": "dress runway designer model boutique fabric silk jewelry handbag sneakers "
        "couture stylist wardrobe tailor denim glamour perfume makeup jacket heels catwalk lace "
        "velvet trendsetter",
        "cars": "engine motor racing driver highway garage tire sedan truck turbo fuel pitstop "
        "brake convertible mechanic rally horsepower wheel chassis gearbox drifting motorway "
        "dashboard exhaust",
        "weather": "storm rain thunder lightning snow blizzard hurricane forecast drought "
        "sunshine breeze fog hail tornado monsoon frost humidity climate flood rainbow drizzle "
        "gale heatwave cyclone",
        "education": "school teacher student classroom homework exam university lecture "
        "professor library lesson campus graduate diploma textbook scholarship tutor semester "
        "curriculum kindergarten essay grade study quiz",
        "architecture": "building skyscraper bridge tower cathedral blueprint facade column arch "
        "dome concrete architect palace mansion brick staircase balcony courtyard villa "
        "pavilion steel foundation gallery atrium",
        "farming": "farm tractor barn cattle harvest wheat corn plough farmer dairy sheep hay "
        "orchard chicken pasture irrigation crop silo goat meadow rancher livestock pig fence",
        "mythology": "dragon wizard sorcery elf dwarf legend sword magic prophecy oracle titan "
        "griffin enchanted realm spell giant unicorn myth rune amulet fairy troll kingdom "
        "sorcerer",
        "gaming": "console controller arcade joystick level quest boss pixel multiplayer avatar "
        "puzzle speedrun esports gamer cartridge respawn loot dungeon strategy simulator "
        "sandbox platformer headset highscore",
        "coffee": "espresso latte barista cappuccino bean roast cafe mug brew mocha grinder aroma "
        "caffeine kettle teapot herbal matcha croissant breakfast morning cup filter decaf "
        "pastry",
    }.items()
}

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "x")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.]{1,32}$")
_WORDS_PER_TOPIC = 24
#: Sessions generated per chunk (about session_len times as many events): at most
#: this many, and at most a quarter of the users (a user gets one session per round).
_SESSIONS_PER_CHUNK = 4096
#: Draws for a session whose drawn user is busy; the second half draws users uniformly.
_USER_ROUNDS = 16
#: The busy share of users the effective gap and click interval are scaled down to.
_MAX_BUSY = 0.5


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic workload; the same spec gives the same bytes."""

    seed: int = 0
    n_users: int = 10_000
    n_items: int = 5_000
    n_topics: int = 20
    events: int = 1_000_000
    #: Zipf exponent of item popularity inside a topic (p(rank) ~ rank ** -zipf_a).
    zipf_a: float = 1.1
    #: Share of items that belong to a second topic too.
    multi_topic_share: float = 0.1
    #: Topics in each user's interest mixture, and the Dirichlet concentration of its weights.
    topics_per_user: int = 3
    dirichlet_alpha: float = 1.0
    #: Sigma of the log-normal user activity (0: every user equally active).
    activity_sigma: float = 1.0
    #: Mean clicks per session (geometric, at least 1, capped at 4x).
    session_len: float = 8.0
    #: Mean event time between two clicks of a session (exponential, capped at 4x).
    click_interval_s: float = 20.0
    #: Idle event time between the end of a user's session and their next one. Scaled
    #: down (with click_interval_s) when too few users could sustain ``rate``; see
    #: ``SyntheticWorkload.effective``.
    session_gap_s: float = 600.0
    #: Share of clicks that go to a random topic instead of the session's.
    noise: float = 0.05
    #: Event time of the first session (Unix seconds) and clicks per second of event time.
    start_ts: float = 1_700_000_000.0
    rate: float = 20.0
    #: Prefix of user ids (``syn-u12``), item ids (``syn-i7``) and event ids (``syn-s0-e5``).
    id_prefix: str = "syn"

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        checks = [
            (self.n_users >= 1, "n_users must be >= 1"),
            (self.n_topics >= 1, "n_topics must be >= 1"),
            (self.n_items >= self.n_topics, "n_items must be >= n_topics (every topic has items)"),
            (self.events >= 0, "events must be >= 0"),
            (self.zipf_a >= 0, "zipf_a must be >= 0"),
            (0 <= self.multi_topic_share <= 1, "multi_topic_share must be in [0, 1]"),
            (self.topics_per_user >= 1, "topics_per_user must be >= 1"),
            (self.dirichlet_alpha > 0, "dirichlet_alpha must be > 0"),
            (self.activity_sigma >= 0, "activity_sigma must be >= 0"),
            (self.session_len >= 1, "session_len must be >= 1"),
            (self.click_interval_s >= 0, "click_interval_s must be >= 0"),
            (self.session_gap_s >= 0, "session_gap_s must be >= 0"),
            (0 <= self.noise <= 1, "noise must be in [0, 1]"),
            (self.rate > 0, "rate must be > 0 events per second of event time"),
            (MIN_TS <= self.start_ts < MAX_TS, "start_ts must be Unix seconds in 1990..2100"),
            (
                self.start_ts + 2 * self.events / max(self.rate, 1e-300) < MAX_TS,
                "events / rate seconds of event time must end before 2100; raise rate",
            ),
            (bool(_PREFIX_RE.match(self.id_prefix)), "id_prefix must match [A-Za-z0-9_.]{1,32}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid synthetic spec: {message}")

    def workload(self) -> SyntheticWorkload:
        return SyntheticWorkload(self)

    def truth(self) -> dict[str, Any]:
        """The ground truth (see ``SyntheticWorkload.truth``)."""
        return SyntheticWorkload(self).truth()

    def user_id(self, index: int) -> str:
        return f"{self.id_prefix}-u{index}"

    def item_id(self, index: int) -> str:
        return f"{self.id_prefix}-i{index}"

    def event_id(self, index: int) -> str:
        return f"{self.id_prefix}-s{self.seed}-e{index}"


@dataclass(frozen=True)
class ClickChunk:
    """Consecutive events ``first .. first + len - 1`` as arrays (indices, seconds)."""

    first: int
    ts: np.ndarray  # float64 Unix seconds, rounded to ms, non-decreasing
    user: np.ndarray  # int64 user index
    item: np.ndarray  # int64 item index
    topic: np.ndarray  # int64 topic the click was drawn from (the session's, or noise)
    session: np.ndarray  # int64 session number (sessions are numbered in start order)

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class _Pending:
    """Generated events not yet emitted (their time is past the last session start)."""

    ts: np.ndarray = field(default_factory=lambda: np.empty(0))
    user: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    item: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    topic: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    session: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


def _pseudo_words(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        syllables = int(rng.integers(2, 4))
        w = (
            "".join(
                _ONSETS[int(rng.integers(len(_ONSETS)))] + _VOWELS[int(rng.integers(len(_VOWELS)))]
                for _ in range(syllables)
            )
            + _CODAS[int(rng.integers(len(_CODAS)))]
        )
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


def _zipf_cdf_segments(
    members: np.ndarray, topic_of: np.ndarray, n_topics: int, a: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated per-topic CDFs shifted by the topic index (one searchsorted samples any topic).

    ``members``/``topic_of`` are grouped by topic in rank order. Returns
    (cdf, offsets, counts, rank) where cdf[j] lies in (t, t + 1] for topic t.
    """
    counts = np.bincount(topic_of, minlength=n_topics)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(members)) - offsets[topic_of]
    weights = (rank + 1.0) ** -a
    cum = np.cumsum(weights)
    seg_end = cum[offsets + counts - 1]
    seg_before = np.concatenate(([0.0], seg_end[:-1]))
    cdf = (cum - seg_before[topic_of]) / (seg_end - seg_before)[topic_of] + topic_of
    cdf[offsets + counts - 1] = np.arange(n_topics) + 1.0  # exact segment ends
    return cdf, offsets, counts, rank


class SyntheticWorkload:
    """The world of a spec (topics, items, users) and its lazy click stream."""

    def __init__(self, spec: SyntheticSpec) -> None:
        spec.validate()
        self.spec = spec
        world_ss, text_ss, self._clicks_ss = np.random.SeedSequence(spec.seed).spawn(3)
        rng = np.random.default_rng(world_ss)
        self._text_ss = text_ss
        n_t, n_i, n_u = spec.n_topics, spec.n_items, spec.n_users

        # Topics and their words.
        names = list(THEMES)
        self.topic_names: list[str] = []
        self.topic_words: list[tuple[str, ...]] = []
        taken = {w for words in THEMES.values() for w in words}
        for t in range(n_t):
            if t < len(names):
                self.topic_names.append(names[t])
                self.topic_words.append(THEMES[names[t]])
            else:
                words = _pseudo_words(rng, _WORDS_PER_TOPIC, taken)
                self.topic_names.append(f"{words[0]}-{t}")
                self.topic_words.append(tuple(words))

        # Items: a balanced primary topic, sometimes a second one.
        self.item_primary = rng.permutation(np.arange(n_i) % n_t).astype(np.int64)
        self.item_second = np.full(n_i, -1, np.int64)
        if n_t > 1:
            multi = np.flatnonzero(rng.random(n_i) < spec.multi_topic_share)
            shift = rng.integers(1, n_t, size=len(multi))
            self.item_second[multi] = (self.item_primary[multi] + shift) % n_t
        # Topic membership lists in (random) popularity-rank order.
        has2 = np.flatnonzero(self.item_second >= 0)
        members = np.concatenate((np.arange(n_i), has2))
        member_topic = np.concatenate((self.item_primary, self.item_second[has2]))
        order = np.lexsort((rng.random(len(members)), member_topic))
        self._members = members[order]
        self._member_topic = member_topic[order]
        self._cdf, self._topic_offsets, self._topic_counts, member_rank = _zipf_cdf_segments(
            self._members, self._member_topic, n_t, spec.zipf_a
        )
        #: Popularity rank (0 = most popular) of each item in its primary topic.
        self.item_rank = np.empty(n_i, np.int64)
        primary_rows = self._member_topic == self.item_primary[self._members]
        self.item_rank[self._members[primary_rows]] = member_rank[primary_rows]

        # Users: k distinct topics each, Dirichlet weights (main interest first), activity.
        k = min(spec.topics_per_user, n_t)
        self.user_topics = np.empty((n_u, k), np.int64)
        for lo in range(0, n_u, 65_536):
            hi = min(n_u, lo + 65_536)
            keys = rng.random((hi - lo, n_t))
            self.user_topics[lo:hi] = np.argsort(keys, axis=1, kind="stable")[:, :k]
        weights = rng.dirichlet(np.full(k, spec.dirichlet_alpha), size=n_u)
        by_weight = np.argsort(-weights, axis=1, kind="stable")
        self.user_weights = np.take_along_axis(weights, by_weight, axis=1)
        self.user_topics = np.take_along_axis(self.user_topics, by_weight, axis=1)
        self._user_cumw = np.cumsum(self.user_weights, axis=1)
        self._user_cumw[:, -1] = 1.0
        self.user_activity = (
            rng.lognormal(0.0, spec.activity_sigma, n_u) if spec.activity_sigma else np.ones(n_u)
        )
        cum = np.cumsum(self.user_activity)
        self._activity_cdf = cum / cum[-1]

    # -- the effective session timing ------------------------------------------

    @cached_property
    def effective(self) -> dict[str, float]:
        """Session timing actually used: gap and click interval scaled so that at most
        half of the users are busy (in a session or its gap) at any time on average."""
        s = self.spec
        mean_len = self._mean_session_len
        sessions_per_s = s.rate / mean_len
        cycle = (mean_len - 1) * s.click_interval_s + s.session_gap_s
        scale = 1.0
        if cycle > 0:
            scale = min(1.0, _MAX_BUSY * s.n_users / (sessions_per_s * cycle))
        return {
            "session_gap_s": s.session_gap_s * scale,
            "click_interval_s": s.click_interval_s * scale,
            "sessions_per_s": sessions_per_s,
            "mean_session_len": mean_len,
            "scale": scale,
        }

    @cached_property
    def _max_session_len(self) -> int:
        return max(1, math.ceil(4 * self.spec.session_len))

    @cached_property
    def _mean_session_len(self) -> float:
        """1 + E[min(G, M - 1)] for G geometric with mean session_len - 1."""
        extra = self.spec.session_len - 1.0
        cap = self._max_session_len - 1
        if extra <= 0 or cap <= 0:
            return 1.0
        p = 1.0 / (1.0 + extra)  # geometric on 0, 1, ... with mean ``extra``
        return 1.0 + (1 - p) * (1 - (1 - p) ** cap) / p

    # -- items -----------------------------------------------------------------

    def item_topics(self, index: int) -> list[int]:
        second = int(self.item_second[index])
        return [int(self.item_primary[index])] + ([second] if second >= 0 else [])

    def items(self) -> Iterator[ItemUpsert]:
        """Every item as an ItemUpsert (text from its topics' words), in item-index order."""
        rng = np.random.default_rng(self._text_ss)
        spec = self.spec
        n_i = spec.n_items
        picks = rng.integers(0, _WORDS_PER_TOPIC, size=(n_i, 9))
        n_title = rng.integers(2, 4, size=n_i)
        for i in range(n_i):
            words = self.topic_words[int(self.item_primary[i])]
            p = picks[i]
            w = [words[j] for j in p]
            title = " ".join(x.capitalize() for x in w[: int(n_title[i])])
            category = self.topic_names[int(self.item_primary[i])]
            tags = list(dict.fromkeys(w[3:6]))
            text = f"A {category} story of {w[3]}, {w[4]} and {w[5]}, with {w[6]} and {w[7]}."
            second = int(self.item_second[i])
            if second >= 0:
                other = self.topic_words[second]
                extra = [other[j] for j in p[:3]]
                tags += [x for x in dict.fromkeys(extra) if x not in tags]
                text += f" Also {self.topic_names[second]}: {extra[0]}, {extra[1]} and {extra[2]}."
            yield ItemUpsert(
                item_id=spec.item_id(i),
                title=title,
                text=text,
                category=category,
                tags=tags,
                ts=spec.start_ts,
            )

    def item_payloads(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of every item: keyed by item id, compact JSON as ``send_item`` sends."""
        for item in self.items():
            yield item.item_id.encode(), item.to_bytes()

    # -- clicks ----------------------------------------------------------------

    def click_chunks(self, events: int | None = None) -> Iterator[ClickChunk]:
        """The first ``events`` (default spec.events) clicks, in chunks, as index arrays."""
        total = self.spec.events if events is None else events
        emitted = 0
        if total <= 0:
            return
        for chunk in self._raw_chunks():
            n = min(len(chunk), total - emitted)
            if n <= 0:
                break
            if n < len(chunk):
                chunk = ClickChunk(
                    emitted,
                    chunk.ts[:n],
                    chunk.user[:n],
                    chunk.item[:n],
                    chunk.topic[:n],
                    chunk.session[:n],
                )
            yield chunk
            emitted += n
            if emitted >= total:
                break

    def _raw_chunks(self) -> Iterator[ClickChunk]:
        spec = self.spec
        eff = self.effective
        rng = np.random.default_rng(self._clicks_ss)
        n_t, n_u = spec.n_topics, spec.n_users
        gap, interval = eff["session_gap_s"], eff["click_interval_s"]
        mean_start_gap = 1.0 / eff["sessions_per_s"]
        max_len = self._max_session_len
        free_at = np.full(n_u, -np.inf)
        pending = _Pending()
        t = 0.0  # event time of the last session start, seconds after start_ts
        first = 0
        n_sessions = 0
        S = int(np.clip(n_u // 4, _USER_ROUNDS, _SESSIONS_PER_CHUNK))
        while True:
            starts = t + np.cumsum(rng.exponential(mean_start_gap, S))
            t = float(starts[-1])
            if spec.session_len > 1:
                geo = rng.geometric(1.0 / spec.session_len, S)  # mean session_len, >= 1
                lengths = np.minimum(geo, max_len)
            else:
                lengths = np.ones(S, np.int64)
            n_clicks = int(lengths.sum())
            session_of = np.repeat(np.arange(S), lengths)
            firsts = np.cumsum(lengths) - lengths
            steps = np.minimum(rng.exponential(1.0, n_clicks), 4.0) * interval
            steps[firsts] = 0.0
            cum = np.cumsum(steps)
            offset = cum - cum[firsts][session_of]
            ends = starts + offset[firsts + lengths - 1]

            # Users: drawn by activity, skipping busy ones; each user once per round.
            users = np.full(S, -1, np.int64)
            open_ = np.arange(S)
            for rnd in range(_USER_ROUNDS):
                if not len(open_):
                    break
                if rnd < _USER_ROUNDS // 2:
                    cand = np.searchsorted(self._activity_cdf, rng.random(len(open_)), "right")
                    cand = np.minimum(cand, n_u - 1)
                else:
                    cand = rng.integers(0, n_u, len(open_))
                free = np.flatnonzero(free_at[cand] <= starts[open_])
                _, first_of = np.unique(cand[free], return_index=True)
                take = free[first_of]
                sessions = open_[take]
                users[sessions] = cand[take]
                free_at[cand[take]] = ends[sessions] + gap
                mask = np.ones(len(open_), bool)
                mask[take] = False
                open_ = open_[mask]

            # Topics: one per session from the user's mixture; noise clicks go anywhere.
            ok = users >= 0
            u_s = np.maximum(users, 0)
            pick = (rng.random(S)[:, None] > self._user_cumw[u_s]).sum(axis=1)
            pick = np.minimum(pick, self.user_topics.shape[1] - 1)
            s_topic = self.user_topics[u_s, pick]
            c_topic = s_topic[session_of]
            noisy = rng.random(n_clicks) < spec.noise
            c_topic[noisy] = rng.integers(0, n_t, int(noisy.sum()))
            pos = np.searchsorted(self._cdf, c_topic + rng.random(n_clicks), "right")
            seg_last = self._topic_offsets[c_topic] + self._topic_counts[c_topic] - 1
            c_item = self._members[np.minimum(pos, seg_last)]

            keep = ok[session_of]
            c_ts = (starts[session_of] + offset)[keep]
            ts = np.concatenate((pending.ts, c_ts))
            user = np.concatenate((pending.user, users[session_of][keep]))
            item = np.concatenate((pending.item, c_item[keep]))
            topic = np.concatenate((pending.topic, c_topic[keep]))
            session = np.concatenate((pending.session, (n_sessions + session_of)[keep]))
            n_sessions += S
            # Every later session starts after t: events up to t are final.
            done = ts <= t
            out = np.flatnonzero(done)
            out = out[np.argsort(ts[out], kind="stable")]
            rest = ~done
            pending = _Pending(ts[rest], user[rest], item[rest], topic[rest], session[rest])
            if len(out):
                abs_ts = np.round(spec.start_ts + ts[out], 3)
                yield ClickChunk(first, abs_ts, user[out], item[out], topic[out], session[out])
                first += len(out)

    def click_payloads(
        self, events: int | None = None
    ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """Per chunk: the user-id keys and the ClickEvent JSON values, pre-serialised.

        The bytes are what ``ClickEvent.to_bytes()`` gives for the same event.
        """
        for chunk in self.click_chunks(events):
            yield self.serialise(chunk)

    @cached_property
    def _templates(self) -> tuple[bytes, bytes]:
        spec = self.spec
        p = spec.id_prefix.encode()
        value = (
            b'{"event_id":"' + p + b"-s%d-e%%d" % spec.seed + b'","user_id":"' + p
            + b'-u%d","item_id":"' + p + b'-i%d","type":"click","ts":%r}'
        )  # fmt: skip
        return p + b"-u%d", value

    def serialise(self, chunk: ClickChunk) -> tuple[list[bytes], list[bytes]]:
        """(keys, values) of a chunk: user-id keys and compact ClickEvent JSON."""
        key, value = self._templates
        users = chunk.user.tolist()
        rows = zip(
            range(chunk.first, chunk.first + len(chunk)),
            users,
            chunk.item.tolist(),
            chunk.ts.tolist(),
            strict=True,
        )
        return [key % u for u in users], [value % r for r in rows]

    def clicks(self, events: int | None = None) -> Iterator[ClickEvent]:
        """The clicks as validated ClickEvent records (slow; for tests and small runs)."""
        for _, values in self.click_payloads(events):
            for v in values:
                yield ClickEvent.from_bytes(v)

    # -- ground truth ------------------------------------------------------------

    def truth(self) -> dict[str, Any]:
        """The structure the clicks were drawn from, JSON-ready.

        ``topics``: index, name, words; ``items``: item id -> {"topics": [primary,
        second?], "rank": popularity rank in the primary topic (0 = most popular)};
        ``users``: user id -> {"topics": [...], "weights": [...] (the interest
        mixture, main first), "activity": relative activity}; ``effective``: the
        session timing used (see ``effective``).
        """
        spec = self.spec
        return {
            "spec": asdict(spec),
            "effective": dict(self.effective),
            "topics": [
                {"topic": t, "name": self.topic_names[t], "words": list(self.topic_words[t])}
                for t in range(spec.n_topics)
            ],
            "items": {
                spec.item_id(i): {"topics": self.item_topics(i), "rank": int(self.item_rank[i])}
                for i in range(spec.n_items)
            },
            "users": {
                spec.user_id(u): {
                    "topics": self.user_topics[u].tolist(),
                    "weights": [round(w, 6) for w in self.user_weights[u].tolist()],
                    "activity": round(float(self.user_activity[u]), 6),
                }
                for u in range(spec.n_users)
            },
        }

    def write_truth(self, path: Path) -> None:
        path.write_text(json.dumps(self.truth(), separators=(",", ":")) + "\n")
