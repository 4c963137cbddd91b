"""Training GENRE's ranker on a click log: sampled negatives, early stopping, checkpoints.

Training samples come from the stream replay (``replay.StreamReplay``): for each
training click, the user's history and the stream's features *as they were just
before that click*, the clicked item as the positive and uniformly sampled
items as negatives (sampled softmax). Early stopping uses full-ranking NDCG@10
on validation clicks, the metric the evaluation reports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from genre.core.config import RankerTrainSettings
from genre.model_export.metrics import ndcg_at_k
from genre.model_export.ranker import GenreRanker, RankerShape
from genre.model_export.replay import FeatureSpec, Interactions, QueryBatch, StreamReplay


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` intra-op threads, restoring the previous count (None: unchanged).

    The models are small: on a busy machine, torch's default thread pool spends
    more time waiting at barriers than computing, so one thread can be faster.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class TrainingSet:
    """Per training click: history, candidates (positive first) and their features."""

    history: np.ndarray  # int32 [N, H], -1 padded
    candidates: np.ndarray  # int32 [N, 1 + K]
    valid: np.ndarray  # bool [N, 1 + K]: False for negatives the user had seen
    features: np.ndarray  # float32 [N, 1 + K, F]

    def __len__(self) -> int:
        return int(self.history.shape[0])


class TrainingSampler:
    """Collects training samples while the replay passes over training clicks."""

    def __init__(self, n_items: int, negatives: int, seed: int) -> None:
        self.n_items = n_items
        self.negatives = negatives
        self.rng = np.random.default_rng(seed)
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def observe(self, replay: StreamReplay, e: int) -> None:
        """Record event ``e`` (call while the replay is paused on it)."""
        data = replay.data
        u, target, now = int(data.users[e]), int(data.items[e]), float(data.ts[e])
        negs = self.rng.integers(0, self.n_items, self.negatives, dtype=np.int32)
        cands = np.concatenate([[target], negs]).astype(np.int32)
        fresh = [c != target and not replay.has_seen(u, int(c)) for c in cands.tolist()]
        valid = np.asarray([True, *fresh[1:]], bool)
        self.rows.append((replay.history(u), cands, valid, replay.features(u, cands, now)))

    def build(self) -> TrainingSet:
        """Stack what was collected."""
        if not self.rows:
            raise ValueError("no training clicks were observed; is the training split empty?")
        h, c, v, f = (np.stack(col) for col in zip(*self.rows, strict=True))
        return TrainingSet(h, c, v, f)


@dataclass
class TrainResult:
    """A trained model and how training went."""

    model: GenreRanker
    id_of_item: np.ndarray  # int64 [n_items]: catalogue index -> id-embedding row (0 = unknown)
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def id_mapping(data: Interactions) -> np.ndarray:
    """Catalogue index -> id-embedding row: 1.. for items clicked in training, 0 otherwise."""
    known = data.train_items()
    ids = np.zeros(data.n_items, np.int64)
    ids[known] = np.arange(1, int(known.sum()) + 1)
    return ids


class RankerInputs:
    """Turns catalogue indices into the model's tensors (text vectors, id rows, masks)."""

    def __init__(self, text_vectors: np.ndarray, id_of_item: np.ndarray) -> None:
        pad = np.zeros((1, text_vectors.shape[1]), np.float32)
        self.text = torch.from_numpy(np.concatenate([text_vectors.astype(np.float32), pad]))
        self.ids = torch.from_numpy(np.concatenate([id_of_item, [0]]).astype(np.int64))

    def items(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Text vectors and id rows; index -1 (padding) maps to zeros."""
        idx = torch.from_numpy(np.where(index < 0, len(self.ids) - 1, index).astype(np.int64))
        return self.text[idx], self.ids[idx]

    def history(self, history: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """History text, ids and mask (1.0 = a real click)."""
        text, ids = self.items(history)
        return text, ids, torch.from_numpy((history >= 0).astype(np.float32))


def score_queries(
    model: GenreRanker, inputs: RankerInputs, batch: QueryBatch, chunk: int = 64
) -> np.ndarray:
    """Full-ranking scores [B, n_items] for a query batch."""
    model.eval()
    n = inputs.text.shape[0] - 1
    out = np.empty((len(batch), n), np.float32)
    with torch.no_grad():
        reps = model.item_tower(*inputs.items(np.arange(n)))
        for lo in range(0, len(batch), chunk):
            sl = slice(lo, lo + chunk)
            h_text, h_ids, mask = inputs.history(batch.history[sl])
            history = model.item_tower(h_text, h_ids)
            features = torch.from_numpy(batch.features[sl])
            out[sl] = model.score_items(history, mask, reps, features).numpy()
    return out


def train_ranker(
    data: Interactions,
    text_vectors: np.ndarray,
    train_set: TrainingSet,
    valid: QueryBatch,
    spec: FeatureSpec,
    cfg: RankerTrainSettings,
    progress: Progress | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train with sampled softmax; keep the weights of the best validation NDCG@10.

    ``on_epoch(epoch, valid_ndcg)`` is called after each epoch's validation (``genre
    tune`` reports it to Optuna; an exception it raises, such as a pruned trial, ends
    training)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    id_of_item = id_mapping(data)
    model_cfg = RankerShape(
        text_dim=int(text_vectors.shape[1]),
        n_ids=int(id_of_item.max()) + 1,
        dim=cfg.dim,
        heads=cfg.heads,
        n_features=int(train_set.features.shape[-1]),
        history_len=spec.history_len,
        dropout=cfg.dropout,
    )
    model = GenreRanker(model_cfg)
    inputs = RankerInputs(text_vectors, id_of_item)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    result = TrainResult(model=model, id_of_item=id_of_item)
    best, best_state, stale = -1.0, None, 0
    start = time.perf_counter()
    n_batches = -(-len(train_set) // cfg.batch_size)
    task = (
        progress.add_task("training GENRE ranker", total=cfg.epochs * n_batches)
        if progress
        else None
    )
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(len(train_set))
        losses = []
        for lo in range(0, len(order), cfg.batch_size):
            rows = order[lo : lo + cfg.batch_size]
            loss = _step(model, inputs, train_set, rows, cfg.id_dropout, rng)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(loss.item())
            if progress is not None and task is not None:
                progress.advance(task)
        val = ndcg_at_k(score_queries(model, inputs, valid, cfg.eval_batch), valid)
        result.history.append(
            {"epoch": epoch, "loss": float(np.mean(losses)), "valid_ndcg@10": val}
        )
        if on_epoch is not None:
            on_epoch(epoch, val)
        if val > best:
            best, stale, result.best_epoch = val, 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if progress is not None and task is not None:
        progress.update(task, completed=cfg.epochs * n_batches)
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def _step(
    model: GenreRanker,
    inputs: RankerInputs,
    data: TrainingSet,
    rows: np.ndarray,
    id_dropout: float = 0.0,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    h_text, h_ids, mask = inputs.history(data.history[rows])
    c_text, c_ids = inputs.items(data.candidates[rows])
    if id_dropout > 0.0:  # the same rate for positives and negatives: no bias either way
        assert rng is not None
        h_ids = _hide_ids(h_ids, id_dropout, rng)
        c_ids = _hide_ids(c_ids, id_dropout, rng)
    features = torch.from_numpy(data.features[rows])
    scores, _ = model(h_text, h_ids, mask, c_text, c_ids, features)
    valid = torch.from_numpy(data.valid[rows])
    scores = scores.masked_fill(~valid, -1e9)
    target = torch.zeros(len(rows), dtype=torch.long)  # the positive is column 0
    return torch.nn.functional.cross_entropy(scores, target)


def _hide_ids(ids: torch.Tensor, rate: float, rng: np.random.Generator) -> torch.Tensor:
    """``ids`` with each entry replaced by the unknown id 0 with probability ``rate``."""
    hidden = torch.from_numpy(rng.random(tuple(ids.shape)) < rate)
    return ids.masked_fill(hidden, 0)


def save_checkpoint(
    path: Path, result: TrainResult, data: Interactions, spec: FeatureSpec, extra: dict[str, Any]
) -> Path:
    """Write weights, shapes, id vocabulary and feature rules to one ``.pt`` file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    vocab = [data.item_ids[i] for i in np.flatnonzero(result.id_of_item)]
    torch.save(
        {
            "state_dict": result.model.state_dict(),
            "config": result.model.cfg.to_dict(),
            "id_vocab": vocab,  # row i + 1 of the id embedding is vocab[i]
            "feature_spec": spec.as_manifest(),
            "history": result.history,
            "best_epoch": result.best_epoch,
            **extra,
        },
        path,
    )
    return path


def load_checkpoint(path: Path) -> tuple[GenreRanker, dict[str, Any]]:
    """Load a checkpoint written by ``save_checkpoint``: the model (eval mode) and its metadata."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; run `genre train` first")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = GenreRanker(RankerShape(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, blob


def write_report(path: Path, result: TrainResult, metrics: dict[str, Any]) -> tuple[Path, Path]:
    """Training report: JSON with the loss curve and metrics, and a PNG of the curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.mkdir(parents=True, exist_ok=True)
    report = {
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
        "epochs": result.history,
        "metrics": metrics,
    }
    json_path = path / "training_report.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    epochs = [h["epoch"] for h in result.history]
    fig, left = plt.subplots(figsize=(6, 3.5))
    left.plot(epochs, [h["loss"] for h in result.history], "o-", color="tab:blue")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (sampled softmax)", color="tab:blue")
    right = left.twinx()
    right.plot(epochs, [h["valid_ndcg@10"] for h in result.history], "s--", color="tab:red")
    right.set_ylabel("validation NDCG@10", color="tab:red")
    left.axvline(result.best_epoch, color="grey", lw=0.8, ls=":")
    fig.tight_layout()
    png_path = path / "loss_curve.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return json_path, png_path
