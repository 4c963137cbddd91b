"""LLM backends: an OpenAI-compatible endpoint, a local transformers model, and the
deterministic offline backend every failure falls back to.

A network backend exposes ``name``, ``async complete(messages) -> str`` (the answer's
text; raises ``LLMCallError`` with a reason code) and ``async aclose()``. The offline
backend answers the tasks directly and never fails.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from genre.core.config import ConfigError, LLMConfig
from genre.llm.guard import (
    CATEGORIES_MAX,
    INTERESTS_MAX,
    KEYWORDS_MAX,
    SUMMARY_MAX,
    ItemEnrichment,
    LLMCallError,
    UserProfile,
    clean_text,
)

# --------------------------------------------------------------------------- offline


def _split(text: str) -> list[str]:
    return text.split()


STOP_WORDS = frozenset(
    _split(
        """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    even ever few for from further get gets got had has have having he her here hers
    herself him himself his how however i if in into is it its itself just like made make
    makes many may me more most much must my myself new no nor not now of off on once one
    only or other our ours ourselves out over own same she should so some such than that
    the their theirs them themselves then there these they this those through to too two
    under until up upon us very via was we were what when where which while who whom why
    will with within without would yet you your yours yourself yourselves
    released film movie item product story title untitled
    """
    )
)

#: keyword -> category, for items and profiles when no model is at hand.
LEXICON: dict[str, str] = {
    **dict.fromkeys(
        _split(
            "space alien aliens galaxy planet planets robot robots spaceship starship "
            "astronaut cyborg future futuristic mars sci-fi"
        ),
        "sci-fi",
    ),
    **dict.fromkeys(
        _split(
            "crime murder murders detective police heist gangster gangsters mafia cop cops "
            "thief killer noir"
        ),
        "crime",
    ),
    **dict.fromkeys(_split("thriller suspense conspiracy spy spies assassin"), "thriller"),
    **dict.fromkeys(_split("love romance romantic wedding lovers"), "romance"),
    **dict.fromkeys(_split("comedy funny comic humor humour hilarious"), "comedy"),
    **dict.fromkeys(
        _split("horror ghost ghosts vampire vampires zombie zombies monster haunted demon"),
        "horror",
    ),
    **dict.fromkeys(_split("war soldier soldiers army battle"), "war"),
    **dict.fromkeys(_split("magic wizard wizards dragon dragons fairy witch fantasy"), "fantasy"),
    **dict.fromkeys(_split("animated animation cartoon"), "animation"),
    **dict.fromkeys(_split("documentary"), "documentary"),
    **dict.fromkeys(_split("cowboy cowboys western sheriff outlaw"), "western"),
    **dict.fromkeys(_split("adventure quest treasure journey expedition"), "adventure"),
    **dict.fromkeys(_split("children kids family"), "family"),
    **dict.fromkeys(_split("music musical band singer"), "music"),
    **dict.fromkeys(_split("sport sports football baseball boxing basketball"), "sports"),
    **dict.fromkeys(_split("drama"), "drama"),
}

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
#: Characters of input text the offline backend reads (ItemUpsert allows 20,000).
OFFLINE_TEXT_MAX = 20_000


def _words(text: str) -> list[str]:
    out = []
    for word in _WORD.findall(text[:OFFLINE_TEXT_MAX].lower()):
        word = re.sub(r"['’]s$", "", word)
        short = len(word) < 3 if word.isascii() else len(word) < 2
        if not short and word not in STOP_WORDS:
            out.append(word)
    return out


def _ranked(scores: Counter[str]) -> list[str]:
    """Keys by score, ties in first-seen order (Counter keeps insertion order)."""
    order = {key: i for i, key in enumerate(scores)}
    return sorted(scores, key=lambda k: (-scores[k], order[k]))


def _human_join(parts: Sequence[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


class OfflineBackend:
    """Deterministic enrichment without a model: keyword counts, a lexicon, templates."""

    name = "offline"

    def enrich(self, title: str, category: str, tags: Sequence[str], text: str) -> ItemEnrichment:
        """Keywords by weighted frequency (title x3, tags x2, text x1), categories from the
        item's category and tags plus the lexicon, and a templated summary."""
        scores: Counter[str] = Counter()
        for word in _words(title):
            scores[word] += 3
        for tag in tags:
            phrase = clean_text(tag, 40).lower()
            if phrase and phrase not in STOP_WORDS:
                scores[phrase] += 2
        for word in _words(text):
            scores[word] += 1
        keywords = _ranked(scores)[:KEYWORDS_MAX]

        categories: list[str] = []
        for raw in [category, *tags]:
            cat = clean_text(raw, 40).lower()
            if cat and cat not in categories:
                categories.append(cat)
        for word in _ranked(scores):
            mapped = LEXICON.get(word)
            if mapped and mapped not in categories:
                categories.append(mapped)
        categories = categories[:CATEGORIES_MAX]

        head = clean_text(title, 200) or "Untitled item"
        if categories:
            head += f" ({', '.join(categories[:3])})"
        body = clean_text(text, SUMMARY_MAX)
        sentence = re.split(r"(?<=[.!?])\s", body, maxsplit=1)[0] if body else ""
        if sentence:
            summary = f"{head}: {sentence}"
        elif keywords:
            summary = f"{head}, about {_human_join(keywords[:3])}."
        else:
            summary = f"{head}."
        return ItemEnrichment(summary=summary, keywords=keywords, categories=categories)

    def profile(self, titles: Sequence[str]) -> UserProfile:
        """Interests: the lexicon categories the titles' words point to, then the most
        frequent words; "Enjoys X, Y and Z"."""
        cats: Counter[str] = Counter()
        words: Counter[str] = Counter()
        for title in titles:
            for word in dict.fromkeys(_words(title)):  # once per title
                words[word] += 1
                if word in LEXICON:
                    cats[LEXICON[word]] += 1
        interests = _ranked(cats)
        interests += [w for w in _ranked(words) if w not in interests]
        interests = interests[:INTERESTS_MAX]
        if not interests:
            return UserProfile(profile="No clear preferences yet.", interests=[])
        return UserProfile(profile=f"Enjoys {_human_join(interests[:3])}.", interests=interests)


# --------------------------------------------------------------------------- openai


class OpenAIBackend:
    """POST {base_url}/chat/completions, OpenAI's request and response shapes."""

    def __init__(self, config: LLMConfig) -> None:
        self.name = f"openai:{config.model}"
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._api_key = config.api_key  # SecretStr: revealed only into the request header
        # Reads may take the whole budget (generation is slow); connecting gets a share
        # of it, so a dead host is retried within llm.timeout_s rather than eating it.
        self._timeout = httpx.Timeout(
            config.timeout_s, connect=config.timeout_s / (config.retries + 1)
        )
        self._limits = httpx.Limits(max_connections=config.max_concurrency * 2)
        self._body: dict[str, Any] = {
            "model": config.model,
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        if config.json_mode:
            self._body["response_format"] = {"type": "json_object"}
        # One connection pool per event loop: an httpx client must not cross loops
        # (the *_sync methods run on a private loop).
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]
        self._clients = weakref.WeakKeyDictionary()

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            headers = {"Content-Type": "application/json"}
            if self._api_key is not None:
                headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
            client = httpx.AsyncClient(timeout=self._timeout, limits=self._limits, headers=headers)
            self._clients[loop] = client
        return client

    async def complete(self, messages: list[dict[str, str]]) -> str:
        """The answer's text; ``LLMCallError`` on timeouts, HTTP errors, broken bodies."""
        try:
            resp = await self._client().post(self._url, json={**self._body, "messages": messages})
        except httpx.TimeoutException:
            raise LLMCallError(
                "timeout", "the endpoint did not answer in time", retryable=True
            ) from None
        except httpx.TransportError as exc:
            raise LLMCallError(
                "connection", f"cannot reach the endpoint: {type(exc).__name__}", retryable=True
            ) from None
        if resp.status_code != 200:
            code = resp.status_code
            raise LLMCallError(
                f"http_{code}",
                f"the endpoint answered HTTP {code}",
                retryable=code == 429 or code >= 500,
            )
        try:
            content = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMCallError("bad_response", "not a chat-completions response") from None
        if not isinstance(content, str):
            raise LLMCallError("invalid_json", "the answer has no text", transport=False)
        return content

    async def aclose(self) -> None:
        """Close the connection pool of the running loop; forget the others."""
        loop = asyncio.get_running_loop()
        client = self._clients.pop(loop, None)
        self._clients.clear()
        if client is not None:
            await client.aclose()


# --------------------------------------------------------------------------- transformers

TRANSFORMERS_MISSING = (
    "llm.backend is 'transformers' but the transformers package is not installed; "
    "install the optional extra (pip install 'genre-recsys[train]') "
    "or choose llm.backend: openai or offline"
)


class TransformersBackend:
    """A local causal LM through ``transformers``, loaded lazily from ``model_path`` with
    ``local_files_only=True`` (never downloaded). One generation at a time, in a thread.

    transformers (and so torch) is imported with ``importlib`` only when this backend is
    chosen: the default serving path never loads it.
    """

    def __init__(self, config: LLMConfig, model_path: Path) -> None:
        if importlib.util.find_spec("transformers") is None:
            raise ConfigError(TRANSFORMERS_MISSING)
        if not model_path.is_dir():
            raise ConfigError(
                f"llm.model_path {model_path} is not a folder; point it at a local model "
                f"saved with save_pretrained (model and tokenizer files)"
            )
        self.name = f"transformers:{model_path}"
        self._path = model_path
        self._max_tokens = config.max_tokens
        self._temperature = config.temperature
        self._timeout_s = config.timeout_s
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            tf = importlib.import_module("transformers")
            tokenizer = tf.AutoTokenizer.from_pretrained(self._path, local_files_only=True)
            model = tf.AutoModelForCausalLM.from_pretrained(self._path, local_files_only=True)
            model.eval()
            self._loaded = (tokenizer, model)
        return self._loaded

    def _generate(self, messages: list[dict[str, str]], deadline: float) -> str:
        with self._lock:
            if time.monotonic() >= deadline:  # its caller gave up while it queued
                raise LLMCallError("timeout", "timed out waiting for the local model")
            tokenizer, model = self._load()
            if getattr(tokenizer, "chat_template", None):
                enc = tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
                )
            else:
                prompt = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
                enc = tokenizer(prompt + "\n\nassistant:", return_tensors="pt")
            inputs = dict(enc) if isinstance(enc, Mapping) else {"input_ids": enc}
            kwargs: dict[str, Any] = {
                "max_new_tokens": self._max_tokens,
                "max_time": max(deadline - time.monotonic(), 0.01),
                "do_sample": self._temperature > 0,
                "pad_token_id": tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id,
            }
            if self._temperature > 0:
                kwargs["temperature"] = self._temperature
            out = model.generate(**inputs, **kwargs)
            prompt_len = inputs["input_ids"].shape[-1]
            return str(tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True))

    async def complete(self, messages: list[dict[str, str]]) -> str:
        """Generate in a worker thread; errors become ``backend_error``."""
        deadline = time.monotonic() + self._timeout_s
        try:
            return await asyncio.to_thread(self._generate, messages, deadline)
        except LLMCallError:
            raise
        except Exception as exc:
            raise LLMCallError(
                "backend_error", f"local model failed: {type(exc).__name__}: {exc}"
            ) from None

    async def aclose(self) -> None:
        """Drop the model (frees its memory once no generation holds it)."""
        self._loaded = None
