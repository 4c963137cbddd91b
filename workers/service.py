"""Assemble and run one GENRE worker process: stream agents plus the ONNX workers."""

from __future__ import annotations

import gc
import logging
import sys

import faust
from threadpoolctl import threadpool_limits

from genre.core.broker import ensure_genre_topics, wait_for_broker
from genre.core.config import GenreConfig
from genre.core.exact_index import ExactIndex
from genre.core.state_guard import check_state
from genre.core.text_encoder import TextEncoder
from genre.core.vectorstore import VectorStore, open_vector_store
from genre.llm.client import LLMClient, build_llm
from genre.streams.agents import register_graph_agent, register_stream_agents
from genre.streams.app import (
    ROLES,
    GenreStreams,
    build_streams,
    check_role,
    follows_item_vectors,
    role_app_id,
    role_runs,
)
from genre.streams.item_vectors import register_item_vector_follower
from genre.streams.views import views_of
from genre.workers.experiments import ArmedScorer
from genre.workers.item_encoder import ItemEncoderWorker, register_item_encoder_agent
from genre.workers.profiles import ProfileWorker, register_profile_agent
from genre.workers.ranker import RankerHandle
from genre.workers.scorer import ListScorer, ScorerWorker, register_scorer

log = logging.getLogger("genre.worker")


def load_encoder(config: GenreConfig) -> TextEncoder:
    """The ONNX text encoder named by ``encoder.dir`` (export it with `genre export encoder`)."""
    enc = config.encoder
    encoder = TextEncoder.from_manifest(
        config.path(enc.dir), providers=enc.providers, threads=enc.threads
    )
    if encoder.dim != enc.dim:
        raise ValueError(
            f"encoder.dim is {enc.dim} in {config.source} but the model in "
            f"{config.path(enc.dir)} makes {encoder.dim}-d vectors; set encoder.dim: {encoder.dim}"
        )
    return encoder


def load_ranker(config: GenreConfig) -> RankerHandle | None:
    """The learned ranker per ``ranker.enabled``: None when off (or auto with no model)."""
    r = config.ranker
    if r.enabled == "off":
        return None
    model_dir = config.path(r.dir)
    required = r.enabled == "on"
    if required and not (model_dir / "manifest.json").is_file():
        raise FileNotFoundError(
            f"ranker.enabled is 'on' but {model_dir} holds no manifest.json; run `genre train` "
            "and `genre export ranker`, or set ranker.enabled: auto"
        )
    handle = RankerHandle(model_dir, r.precision, r.providers, r.threads, required)
    if handle.current is None:
        log.info("no ranker in %s: blending candidates (ranker.enabled: auto)", model_dir)
    return handle


def role_config(config: GenreConfig, role: str) -> GenreConfig:
    """``config`` for one role's process: in Qdrant local mode, a folder of its own.

    Local mode lets one process open a folder, so split roles on one machine keep
    separate stores (``<qdrant.path>/<role>``); with a server they share it.
    """
    if role == "all" or config.qdrant.url is not None:
        return config
    qdrant = config.qdrant.model_copy(update={"path": f"{config.qdrant.path}/{role}"})
    return config.model_copy(update={"qdrant": qdrant})


def build_worker(
    config: GenreConfig, *, store: VectorStore | None = None, role: str = "all"
) -> GenreStreams:
    """Build the Faust app of one role (one of ``ROLES``) with its agents attached."""
    config = role_config(config, check_role(role))
    encodes, scores = role_runs(role, "encoder"), role_runs(role, "scorer")
    # The scorer part encodes text too (LLM profiles) and names the encoder's version.
    encoder = load_encoder(config) if encodes or scores else None
    dim = encoder.dim if encoder is not None else config.encoder.dim
    store = store if store is not None else open_vector_store(config)
    store.ensure_collection(config.qdrant.items_collection, dim)
    store.ensure_collection(config.qdrant.users_collection, dim)
    streams = build_streams(config, store=store, role=role)
    if config.qdrant.url is None and scores:
        # Local mode: search an exact in-memory index (same answers, ~20x faster).
        # The item-vectors follower fills it; a process that also encodes loads what
        # its own folder holds (items stored before that topic existed).
        streams.index = ExactIndex(dim)
        if encodes:
            loaded = streams.index.load(store.scroll(config.qdrant.items_collection))
            log.info("exact item index: %d items loaded from local Qdrant", loaded)
    if role_runs(role, "stream"):
        register_stream_agents(streams)
    if scores:
        register_graph_agent(streams)
    ranker = load_ranker(config) if scores else None

    def forget_items(ids: list[str]) -> None:
        if ranker is not None and ranker.current is not None:
            ranker.current.forget(ids)  # their text vector changed: recompute on next use

    if follows_item_vectors(role):
        register_item_vector_follower(streams, forget_items)
    llm = load_llm(config, role)
    if encodes:
        assert encoder is not None
        item_llm = llm if config.llm.items.enabled else None
        register_item_encoder_agent(
            streams, ItemEncoderWorker(streams, encoder, forget_items, llm=item_llm)
        )
    if scores:
        assert encoder is not None
        if llm is not None and config.llm.profiles.enabled:
            register_profile_agent(streams, ProfileWorker(streams, encoder, llm))
        worker: ListScorer
        if config.experiments.active:
            worker = ArmedScorer(config, views_of(streams), encoder.version, ranker)
        else:
            worker = ScorerWorker(config, views_of(streams), encoder.version, ranker)
        register_scorer(streams, worker)
    if encoder is not None:
        streams.ready["encoder"] = True
    return streams


def load_llm(config: GenreConfig, role: str = "all") -> LLMClient | None:
    """The LLM client when this role enriches items or writes profiles, else None."""
    items = config.llm.items.enabled and role_runs(role, "encoder")
    profiles = config.llm.profiles.enabled and role_runs(role, "scorer")
    if not (items or profiles):
        return None
    llm = build_llm(config)
    log.info(
        "llm %s: item enrichment %s, profiles %s",
        llm.backend_name,
        "on" if config.llm.items.enabled else "off",
        "on" if config.llm.profiles.enabled else "off",
    )
    return llm


def prepare_kafka(config: GenreConfig) -> None:
    """Check the broker answers and create every configured topic."""
    k = config.kafka
    wait_for_broker(k.bootstrap_servers, k.connect_timeout_s)
    ensure_genre_topics(k.bootstrap_servers, k.topics)


#: Allocations between young-generation collections (CPython's default is 700).
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect less often, and never rescan what start-up built.

    A worker's heap is millions of small long-lived objects (user states, graph
    edges, models, modules); with CPython's default thresholds the collector
    rescanned them so often that it took 26% of the worker's wall time at
    2,000 clicks/s (``genre_gc_seconds_total``, bench/bench_scale.py). Freezing
    moves what exists after start-up out of the collector's sight (it is still
    freed by reference counting), and a 50,000-allocation young generation makes
    the older generations' scans ~70x rarer. Cyclic garbage still gets collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 10)


#: Seconds a thread may hold the GIL while another waits (CPython's default is 5 ms).
GIL_SWITCH_S = 0.001


def tune_threads() -> None:
    """Hand the GIL over every millisecond instead of every five, and give BLAS one
    thread.

    The scorer runs on its own thread; between its numpy and ONNX calls (which
    release the GIL) it runs Python, and the event loop that folds clicks waits
    for the GIL meanwhile. A shorter switch interval bounds that wait at ~1 ms.
    BLAS (the content search's matrix product) defaults to a thread per core; with
    the event loop, ONNX Runtime and often the broker on the same cores its threads
    wait on each other: a [64, 384] x [384, 10k] product took 33 ms on two threads
    of a busy 2-core machine and 21 ms on one.
    """
    sys.setswitchinterval(GIL_SWITCH_S)
    threadpool_limits(limits=1, user_api="blas")


def run_worker(config: GenreConfig, *, loglevel: str = "info", role: str = "all") -> None:
    """Run a worker of one role until interrupted (Ctrl-C stops it cleanly)."""
    check_role(role)
    prepare_kafka(config)
    # Before anything local is loaded: the broker must still back the local state.
    check_state(config.kafka.client_config(), config.path("."), role_app_id(config.app_id, role))
    streams = build_worker(config, role=role)
    tune_gc()
    tune_threads()
    worker = faust.Worker(streams.app, loglevel=loglevel, quiet=True)
    log.info(
        "worker %s (role %s) starting: metrics on http://127.0.0.1:%s/metrics",
        streams.app.conf.id,
        role,
        config.streams.web_port,
    )
    worker.execute_from_commandline()


__all__ = [
    "ROLES",
    "build_worker",
    "load_encoder",
    "load_llm",
    "load_ranker",
    "prepare_kafka",
    "role_config",
    "run_worker",
    "tune_gc",
]
