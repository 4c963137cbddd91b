"""Serving the learned ranker: three ONNX graphs from a manifest, onnxruntime only.

The scorer worker gathers candidates from its sources, then asks ``OnnxRanker``
to score their union per user: item representations come from the item tower
(cached per item), the user vector from the user encoder, and scores plus
attention weights from the scorer. The attention names the history item that
explains each pick. ``RankerHandle`` watches the model directory and swaps in a
new manifest version between batches, so no request is dropped by a reload.
``OnnxRanker`` is the project's only ONNX runner of the ranker: ``genre export
ranker`` checks parity through ``OnnxRanker.for_parity`` (wired in ``genre/export.py``).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genre.core.onnx_runtime import CPU, OnnxModel
from genre.core.telemetry import METRICS
from genre.schemas.manifest import ManifestError, verify_files
from genre.schemas.ranker_manifest import RANKER_GRAPHS, RankerManifest, load_ranker_manifest

log = logging.getLogger("genre.ranker")

#: Item representations kept per worker (one [dim] float32 row each).
REP_CACHE_SIZE = 200_000


@dataclass(frozen=True)
class RankerOutput:
    """Scores and attention for one batch; rows padded to the longest list."""

    scores: np.ndarray  # float32 [B, C]
    attention: np.ndarray  # float32 [B, C, H]: H is the longest history, left-padded


class OnnxRanker:
    """One loaded ranker version: item tower, user encoder, scorer and the id vocabulary.

    The three graphs are plain numpy methods (:meth:`item_tower`, :meth:`user_encoder`,
    :meth:`scorer`); :meth:`encode_items` and :meth:`score` build the worker's batches on
    them, and the exporter's parity check calls them directly (:meth:`for_parity`), so the
    code that serves is the code that was checked against PyTorch.
    """

    def __init__(
        self,
        model_dir: Path | str,
        precision: str = "fp32",
        providers: Sequence[str] | str = "auto",
        threads: int | None = None,
        *,
        manifest: RankerManifest | None = None,
    ) -> None:
        """Open the three graphs of ``precision`` in ``model_dir``.

        Without ``manifest`` (serving), manifest.json is read and every file verified
        against it first; a given ``manifest`` is trusted as is (see :meth:`for_parity`).
        """
        self.dir = Path(model_dir)
        if manifest is None:
            manifest = load_ranker_manifest(self.dir)
            verify_files(self.dir, manifest)  # type: ignore[arg-type]
        self.manifest: RankerManifest = manifest
        self.precision = precision
        self.graphs: dict[str, OnnxModel] = {
            name: OnnxModel(
                self.dir / manifest.graph(name, precision).path, providers, threads=threads
            )
            for name in RANKER_GRAPHS
        }
        vocab = json.loads((self.dir / manifest.vocab).read_text())
        self.id_rows = {item: row for row, item in enumerate(vocab, start=1)}
        cfg = manifest.config
        self.dim = int(cfg["dim"])
        self.text_dim = int(cfg["text_dim"])
        self.history_len = int(cfg["history_len"])
        self.n_features = int(cfg["n_features"])
        self._reps: OrderedDict[str, np.ndarray] = OrderedDict()

    @classmethod
    def for_parity(
        cls,
        manifest: RankerManifest,
        model_dir: Path | str,
        precision: str,
        providers: Sequence[str] | str = (CPU,),
    ) -> OnnxRanker:
        """Open a fresh export before its manifest.json is written (the exporter's parity check).

        ``manifest`` is the exporter's draft (files, graphs, vocab; no parity yet); its
        files are not verified, and the graphs run on CPU unless ``providers`` says otherwise.
        """
        return cls(model_dir, precision, providers, manifest=manifest)

    @property
    def version(self) -> str:
        """``<manifest version>/<precision>``."""
        return f"{self.manifest.version}/{self.precision}"

    @property
    def provider(self) -> str:
        """The execution provider the scorer graph runs on."""
        return (self.graphs["score_head"].providers or [CPU])[0]

    def cached_reps(self, ids: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """Representations already computed, and the ids still missing."""
        hits, misses = {}, []
        for item in ids:
            rep = self._reps.get(item)
            if rep is None:
                misses.append(item)
            else:
                hits[item] = rep
        return hits, misses

    def item_tower(self, text: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Item tower: text float32 [N, text_dim], id rows int64 [N] (0: unknown) -> [N, dim]."""
        return self.graphs["item_tower"].run({"text": text, "ids": ids})["item"]

    def user_encoder(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """User encoder: item vectors [B, H, dim], mask [B, H] (1: a click) -> user [B, dim]."""
        return self.graphs["user_encoder"].run({"history": history, "mask": mask})["user"]

    def score_head(
        self,
        user: np.ndarray,
        history: np.ndarray,
        mask: np.ndarray,
        candidates: np.ndarray,
        features: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scorer: user [B, dim], history, mask, candidates [B, C, dim], features [B, C, F]
        -> scores [B, C], attention [B, C, H]."""
        out = self.graphs["score_head"].run(
            {
                "user": user,
                "history": history,
                "mask": mask,
                "candidates": candidates,
                "features": features,
            }
        )
        return out["scores"], out["attention"]

    def encode_items(self, ids: Sequence[str], text: np.ndarray) -> dict[str, np.ndarray]:
        """Run the item tower on text vectors [N, text_dim] and cache the rows."""
        if not ids:
            return {}
        rows = np.asarray([self.id_rows.get(i, 0) for i in ids], np.int64)
        reps = dict(zip(ids, self.item_tower(text, rows), strict=True))
        for item, rep in reps.items():
            self._reps[item] = rep
        while len(self._reps) > REP_CACHE_SIZE:
            self._reps.popitem(last=False)
        return reps

    def forget(self, ids: Sequence[str]) -> None:
        """Drop cached representations (the item's text changed or it was deleted)."""
        for item in ids:
            self._reps.pop(item, None)

    def score(
        self,
        histories: Sequence[Sequence[str]],
        candidates: Sequence[Sequence[str]],
        features: np.ndarray,
        reps: dict[str, np.ndarray],
    ) -> RankerOutput:
        """Score each user's candidates. ``features`` is float32 [B, C, F] (raw values)."""
        b = len(histories)
        hist = [list(h)[-self.history_len :] for h in histories]
        h_len = max(1, max(len(h) for h in hist))
        c_len = max(1, max(len(c) for c in candidates))
        history = np.zeros((b, h_len, self.dim), np.float32)
        mask = np.zeros((b, h_len), np.float32)
        cands = np.zeros((b, c_len, self.dim), np.float32)
        for i, (h, c) in enumerate(zip(hist, candidates, strict=True)):
            if h:  # left-padded: the most recent click is last, as in training
                history[i, h_len - len(h) :] = [reps[x] for x in h]
                mask[i, h_len - len(h) :] = 1.0
            if c:
                cands[i, : len(c)] = [reps[x] for x in c]
        start = time.perf_counter()
        user = self.user_encoder(history, mask)
        scores, attention = self.score_head(user, history, mask, cands, features[:, :c_len])
        METRICS.inference_seconds.labels("ranker", self.provider).observe(
            time.perf_counter() - start
        )
        return RankerOutput(scores, attention)


class RankerHandle:
    """The ranker currently served, reloaded when the manifest's version changes."""

    def __init__(
        self,
        model_dir: Path,
        precision: str,
        providers: Sequence[str] | str,
        threads: int | None,
        required: bool,
    ) -> None:
        self.dir = Path(model_dir)
        self.precision = precision
        self.providers = providers
        self.threads = threads
        self.current: OnnxRanker | None = None
        self._stamp: tuple[float, int] | None = None
        if required or (self.dir / "manifest.json").is_file():
            self.current = self._load()  # at start-up a broken model is an error
            log.info("ranker %s loaded from %s", self.current.version, self.dir)

    def _manifest_stamp(self) -> tuple[float, int] | None:
        try:
            st = (self.dir / "manifest.json").stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime, st.st_size)

    def _load(self) -> OnnxRanker:
        self._stamp = self._manifest_stamp()
        ranker = OnnxRanker(self.dir, self.precision, self.providers, self.threads)
        METRICS.model_info.labels("ranker", ranker.version).set(1)
        return ranker

    def maybe_reload(self) -> bool:
        """Load a new version if manifest.json changed; keep serving the old one on failure.

        Blocking (hashes and opens graphs): call it off the event loop. The swap
        is a single reference assignment, so a batch that already holds the old
        ranker finishes with it and the next batch uses the new one.
        """
        stamp = self._manifest_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            new = self._load()
        except (ManifestError, OSError, ValueError) as exc:
            log.warning("ranker in %s not reloaded (%s); still serving the old one", self.dir, exc)
            METRICS.fallbacks.labels("ranker-reload", type(exc).__name__).inc()
            return False
        old = self.current
        if old is not None and old.version == new.version:
            return False
        self.current = new
        if old is not None:
            METRICS.model_info.labels("ranker", old.version).set(0)
        log.info("ranker reloaded: %s -> %s", old.version if old else None, new.version)
        return True
