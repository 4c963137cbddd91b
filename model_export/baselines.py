"""Baseline rankers for the streaming temporal protocol (``replay.py``, ``metrics.py``).

Every baseline scores *every* catalogue item for each query row of a
``QueryBatch`` (``score(batch) -> float32 [B, n_items]``, higher is better; the
evaluator masks the user's seen items itself). ``fit`` gets the integer-coded
log, the validation queries (for tuning and early stopping) and the items' text
vectors; learned weights are frozen after ``fit`` while the replayed state
(history, popularity, co-clicks) keeps moving, exactly as for the GENRE model.

Why hand-written rather than RecBole: RecBole implements all of these, but its
trainer and evaluator work on static user-level splits; they cannot run our
streaming protocol, in which each validation/test click is ranked against the
state just before it (per-click history, decayed popularity, online co-click
counts). Pinning RecBole would also conflict with our torch pin. Each model is
about 50 lines on torch, so owning them is cheaper than adapting the framework.

Determinism: training draws from a ``numpy.random.Generator(seed)`` and from
torch's CPU generator seeded inside ``torch.random.fork_rng`` (the caller's
global RNG state is restored afterwards). The torch thread count is left alone
unless a model is built with ``num_threads``, which applies only while that
model fits or scores and is restored after; identical results assume the same
thread count.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from rich.progress import Progress, TaskID
from torch import nn

from genre.model_export.metrics import K, ndcg_at_k
from genre.model_export.replay import TRAIN, Interactions, QueryBatch
from genre.model_export.train import torch_threads

__all__ = [
    "BPR",
    "Baseline",
    "ContentCosine",
    "ItemKNN",
    "Popularity",
    "SASRec",
    "Transitions",
]

#: Weight of the all-time-popularity tie-breaker added to sparse scores.
TIE_BREAK = 1e-6
#: Rows scored per forward pass at evaluation time (bounds memory).
SCORE_CHUNK = 1024


def _all_time(batch: QueryBatch) -> np.ndarray:
    """Float64 [B, n_items]: all-time popularity scaled into [0, 1)."""
    if np.inf not in batch.popularity:
        raise KeyError("the batch has no all-time popularity (half-life inf); replay it again")
    pop = batch.popularity[np.inf].astype(np.float64)
    return pop / (pop.max(axis=1, keepdims=True) + 1.0)


def _validate(scores: np.ndarray, valid: QueryBatch) -> float:
    """NDCG@10 of ``scores`` on ``valid`` (nan when there are no validation queries)."""
    return ndcg_at_k(scores, valid, K) if len(valid) else float("nan")


@contextmanager
def _seeded(seed: int) -> Iterator[np.random.Generator]:
    """Seed torch's CPU generator for the block (restoring it after) and yield a numpy one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield np.random.default_rng(seed)


class _Task:
    """An optional ``rich.progress`` task: every method is a no-op without a Progress."""

    def __init__(self, progress: Progress | None, description: str, total: int | None) -> None:
        self.progress = progress
        self.id: TaskID | None = (
            progress.add_task(description, total=total) if progress is not None else None
        )

    def advance(self, description: str | None = None) -> None:
        if self.progress is not None and self.id is not None:
            self.progress.update(self.id, advance=1, description=description)

    def finish(self, description: str | None = None) -> None:
        if self.progress is not None and self.id is not None:
            task = self.progress.tasks[self.progress.task_ids.index(self.id)]
            total = task.total if task.total is not None else task.completed
            self.progress.update(self.id, completed=total, description=description)


class Baseline:
    """Common interface: ``fit`` once, then ``score`` any number of query batches."""

    name: ClassVar[str] = "baseline"

    def __init__(self) -> None:
        #: Chosen hyper-parameters and facts for the report.
        self.params: dict[str, Any] = {}
        #: Per-epoch training record (learned models only).
        self.history: list[dict[str, float]] = []
        #: Called with (epoch, validation NDCG@10) after each epoch of early-stopped
        #: training (``genre tune`` prunes on it; it may raise to stop the fit).
        self.on_epoch: Callable[[int, float], None] | None = None

    def fit(
        self,
        data: Interactions,
        valid: QueryBatch,
        text_vectors: np.ndarray,
        *,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> None:
        """Train or tune on ``data`` (TRAIN split) using ``valid`` for model selection."""

    def score(self, batch: QueryBatch) -> np.ndarray:
        """Float32 [B, n_items]: a score for every catalogue item per query row."""
        raise NotImplementedError


class Popularity(Baseline):
    """Recent popularity: decayed click counts at the half-life that is best on validation.

    Ties (items decayed to zero) are broken by all-time popularity.
    """

    name = "popularity"

    def __init__(self) -> None:
        super().__init__()
        self.half_life: float | None = None

    def fit(
        self,
        data: Interactions,
        valid: QueryBatch,
        text_vectors: np.ndarray,
        *,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> None:
        """Pick the half-life in ``valid.popularity`` with the best NDCG@10 (ties: the first)."""
        candidates = list(valid.popularity)
        task = _Task(progress, self.name, len(candidates))
        best, best_ndcg = candidates[0], -math.inf
        for hl in candidates:
            self.half_life = hl
            value = _validate(self.score(valid), valid)
            self.history.append({"half_life_s": float(hl), "val_ndcg@10": value})
            if value > best_ndcg:
                best, best_ndcg = hl, value
            task.advance()
        self.half_life = best
        self.params = {"half_life_s": float(best), "val_ndcg@10": best_ndcg}
        task.finish(f"{self.name} (half-life {best:g} s)")

    def score(self, batch: QueryBatch) -> np.ndarray:
        if self.half_life is None:
            raise RuntimeError("Popularity.score called before fit")
        if self.half_life not in batch.popularity:
            raise KeyError(
                f"half-life {self.half_life} was not replayed for this batch "
                f"(have {sorted(batch.popularity)})"
            )
        pop = batch.popularity[self.half_life].astype(np.float64)
        return (pop + TIE_BREAK * _all_time(batch)).astype(np.float32)


class ItemKNN(Baseline):
    """Online item-kNN: cosine co-click scores from the user's recent items (``batch.item_knn``).

    A tiny all-time-popularity term breaks ties, so cold users get the popularity order.
    """

    name = "item_knn"

    def fit(
        self,
        data: Interactions,
        valid: QueryBatch,
        text_vectors: np.ndarray,
        *,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> None:
        """Nothing to learn; the co-click counts live in the replayed state."""
        task = _Task(progress, self.name, 1)
        self.params = {"val_ndcg@10": _validate(self.score(valid), valid)}
        task.finish()

    def score(self, batch: QueryBatch) -> np.ndarray:
        knn = batch.item_knn.astype(np.float64)
        return (knn + TIE_BREAK * _all_time(batch)).astype(np.float32)


class Transitions(Baseline):
    """Item-to-item transitions: how often each item was clicked right after the user's
    last click, counted online over the whole log so far (``batch.next_item``).

    Items the last click never led to are ordered by recent popularity, at the
    half-life that is best on validation (a user with no click gets that order).
    """

    name = "transitions"

    def __init__(self) -> None:
        super().__init__()
        self.fallback = Popularity()

    def fit(
        self,
        data: Interactions,
        valid: QueryBatch,
        text_vectors: np.ndarray,
        *,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> None:
        """Pick the fallback popularity's half-life on ``valid`` (as ``Popularity`` does)."""
        self.fallback.fit(data, valid, text_vectors, seed=seed)
        task = _Task(progress, self.name, 1)
        self.params = {
            "fallback_half_life_s": self.fallback.params["half_life_s"],
            "val_ndcg@10": _validate(self.score(valid), valid),
        }
        task.finish()

    def score(self, batch: QueryBatch) -> np.ndarray:
        pop = self.fallback.score(batch).astype(np.float64)
        pop /= pop.max(axis=1, keepdims=True) + 1.0  # [0, 1): below any transition count
        return (batch.next_item.astype(np.float64) + pop).astype(np.float32)


class ContentCosine(Baseline):
    """Cosine between the user's decayed-mean text vector and each item's text vector.

    Cold start: users whose vector is zero (no clicks yet, or a replay without
    text vectors) get the all-time popularity order instead.
    """

    name = "content"

    def __init__(self) -> None:
        super().__init__()
        self.item_vectors: np.ndarray | None = None

    def fit(
        self,
        data: Interactions,
        valid: QueryBatch,
        text_vectors: np.ndarray,
        *,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> None:
        """Store the L2-normalised item text vectors ([n_items, D])."""
        vectors = np.asarray(text_vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != data.n_items:
            raise ValueError(
                f"text_vectors must be [n_items={data.n_items}, D], got {vectors.shape}"
            )
        task = _Task(progress, self.name, 1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.item_vectors = vectors / np.where(norms > 0, norms, 1.0)
        self.params = {"dim": int(vectors.shape[1])}
        if len(valid):
            self.params["val_ndcg@10"] = _validate(self.score(valid), valid)
        task.finish()

    def score(self, batch: QueryBatch) -> np.ndarray:
        if self.item_vectors is None:
            raise RuntimeError("ContentCosine.score called before fit")
        users = batch.user_vectors.astype(np.float32)
        pop = _all_time(batch)
        if users.shape[1] == 0:  # replayed without text vectors: everyone is cold
            return pop.astype(np.float32)
        if users.shape[1] != self.item_vectors.shape[1]:
            raise ValueError(
                f"user vectors have dim {users.shape[1]} but item text vectors have "
                f"{self.item_vectors.shape[1]}; replay with the same text vectors as fit"
            )
        norms = np.linalg.norm(users, axis=1, keepdims=True)
        cold = norms[:, 0] == 0
        cosine = (users / np.where(norms > 0, norms, 1.0)) @ self.item_vectors.T
        return np.where(cold[:, None], pop, cosine).astype(np.float32)


def _early_stopping(
    model: Baseline,
    net: nn.Module,
    epochs: int,
    patience: int,
    train_epoch: Any,
    valid: QueryBatch,
    progress: Progress | None,
) -> None:
    """Run ``train_epoch() -> mean loss`` up to ``epochs`` times; keep the best weights on valid."""
    task = _Task(progress, model.name, epochs)
    best, best_epoch, best_state, bad = -math.inf, 0, copy.deepcopy(net.state_dict()), 0
    for epoch in range(1, epochs + 1):
        net.train()
        loss = float(train_epoch())
        net.eval()
        value = _validate(model.score(valid), valid)
        model.history.append({"epoch": epoch, "loss": loss, "val_ndcg@10": value})
        task.advance(f"{model.name} ep {epoch} loss {loss:.4f} val ndcg {value:.4f}")
        if model.on_epoch is not None:
            model.on_epoch(epoch, value)
        criterion = value if len(valid) else -loss  # no validation queries: lowest loss
        if criterion > best:
            best, best_epoch, best_state, bad = criterion, epoch, copy.deepcopy(net.state_dict()), 0
        else:
            bad += 1
            if bad >= patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    best_value = model.history[best_epoch - 1]["val_ndcg@10"]
    model.params.update(
        {"epochs_run": len(model.history), "best_epoch": best_epoch, "val_ndcg@10": best_value}
    )
    task.finish(f"{model.name} (best epoch {best_epoch}, val ndcg {best_value:.4f})")


class _BPRNet(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(n_items, dim)
        self.bias = nn.Embedding(n_items, 1)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        nn.init.zeros_(self.bias.weight)

    def pair(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return (self.user(u) * self.item(i)).sum(-1) + self.bias(i).squeeze(-1)


class BPR(Baseline):
    """BPR matrix factorisation (Rendle et al. 2009): user/item embeddings and an item bias.

    Trained on TRAIN-split clicks with uniform negative sampling and Adam;
    early stopping on validation NDCG@10. Users with no training clicks (cold)
    are scored by the item biases only.
    """

    name = "bpr"

    def __init__(
        self,
        dim: int = 64,
        epochs: int = 30,
        batch_size: int = 1024,
        lr: float = 5e-3,
        reg: float = 1e-4,
        patience: int = 2,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.epochs, self.batch_size = dim, epochs, batch_size
        self.lr, self.reg, self.patience = lr, reg, patience
        self.num_threads = num_threads
        self.net: _BPRNet | None = None
        self.warm: np.ndarray | None = None

    def fit(
        self,
        data: Interactions,
        valid: QueryBatch,
        text_vectors: np.ndarray,
        *,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> None:
        """Train from scratch on the TRAIN split (see the class docstring)."""
        train = data.split == TRAIN
        users = torch.as_tensor(data.users[train], dtype=torch.long)
        items = torch.as_tensor(data.items[train], dtype=torch.long)
        if users.numel() == 0:
            raise ValueError("the TRAIN split is empty; BPR has nothing to learn from")
        self.warm = np.zeros(data.n_users, bool)
        self.warm[data.users[train]] = True
        self.history = []
        self.params = {"dim": self.dim, "lr": self.lr, "reg": self.reg}
        with torch_threads(self.num_threads), _seeded(seed) as rng:
            self.net = net = _BPRNet(data.n_users, data.n_items, self.dim)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            n = users.numel()

            def train_epoch() -> float:
                order = torch.as_tensor(rng.permutation(n))
                negs = torch.as_tensor(rng.integers(0, data.n_items, n))
                total = 0.0
                for lo in range(0, n, self.batch_size):
                    idx = order[lo : lo + self.batch_size]
                    u, i, j = users[idx], items[idx], negs[idx]
                    diff = net.pair(u, i) - net.pair(u, j)
                    l2 = (
                        net.user(u).pow(2).sum()
                        + net.item(i).pow(2).sum()
                        + net.item(j).pow(2).sum()
                    ) / idx.numel()
                    loss = -nn.functional.logsigmoid(diff).mean() + self.reg * l2
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * idx.numel()
                return total / n

            _early_stopping(self, net, self.epochs, self.patience, train_epoch, valid, progress)

    def score(self, batch: QueryBatch) -> np.ndarray:
        with torch_threads(self.num_threads), torch.no_grad():
            return self._score(batch)

    def _score(self, batch: QueryBatch) -> np.ndarray:
        if self.net is None or self.warm is None:
            raise RuntimeError("BPR.score called before fit")
        users = np.asarray(batch.users, np.int64)
        warm = self.warm[users]
        items = self.net.item.weight
        bias = self.net.bias.weight[:, 0]
        u = self.net.user(torch.as_tensor(users)) * torch.as_tensor(warm)[:, None]
        return (u @ items.T + bias).numpy().astype(np.float32)


class _SASRecNet(nn.Module):
    """Item + positional embeddings, causal pre-LN transformer blocks, a final LayerNorm."""

    def __init__(
        self, n_items: int, hidden: int, max_len: int, blocks: int, heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.heads = heads
        self.item = nn.Embedding(n_items + 1, hidden, padding_idx=0)  # 0 = padding
        self.pos = nn.Embedding(max_len, hidden)
        nn.init.normal_(self.item.weight, std=hidden**-0.5)
        nn.init.normal_(self.pos.weight, std=hidden**-0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden,
            heads,
            dim_feedforward=hidden,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, blocks, norm=nn.LayerNorm(hidden), enable_nested_tensor=False
        )

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq``: long [B, L] (0 = padding) -> hidden states [B, L, hidden]."""
        length = seq.shape[1]
        pad = seq == 0
        x = self.item(seq) + self.pos(torch.arange(length))
        x = self.drop(x) * (~pad).unsqueeze(-1)
        # Causal, and padded keys hidden; each position may always see itself,
        # so fully padded rows never produce NaN.
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)
        blocked = (causal.unsqueeze(0) | pad.unsqueeze(1)) & ~torch.eye(length, dtype=torch.bool)
        mask = blocked.repeat_interleave(self.heads, dim=0)
        return self.encoder(x, mask=mask)


class SASRec(Baseline):
    """SASRec (Kang & McAuley 2018): next-item prediction with causal self-attention.

    Items are embedded at index ``item + 1`` (0 = padding) with learned
    positional embeddings; the last position's output is dotted with every item
    embedding (shared input/output table). Training uses each user's TRAIN-split
    sequence in time order, cut into windows of ``max_len + 1`` so every click
    is a target once, predicting the next item at every position.

    ``loss="sampled_softmax"`` (default): cross-entropy of the target against
    ``negatives`` uniform random items shared by the positions of a sequence
    (accidental hits masked). ``loss="bce"``: the original paper's binary
    cross-entropy with one uniform negative per position. On MovieLens-100k
    under this protocol the sampled softmax evaluated better on validation.
    Users with an empty history get the all-time popularity order.
    """

    name = "sasrec"

    def __init__(
        self,
        hidden: int = 64,
        max_len: int = 50,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
        epochs: int = 30,
        batch_size: int = 128,
        lr: float = 1e-3,
        negatives: int = 100,
        loss: Literal["sampled_softmax", "bce"] = "sampled_softmax",
        patience: int = 2,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        if loss not in ("sampled_softmax", "bce"):
            raise ValueError(f"loss must be 'sampled_softmax' or 'bce', got {loss!r}")
        self.hidden, self.max_len, self.blocks, self.heads = hidden, max_len, blocks, heads
        self.dropout, self.epochs, self.batch_size, self.lr = dropout, epochs, batch_size, lr
        self.negatives, self.loss, self.patience = negatives, loss, patience
        self.num_threads = num_threads
        self.net: _SASRecNet | None = None

    def _sequences(self, data: Interactions) -> torch.Tensor:
        """Long [S, max_len + 1]: TRAIN windows (item + 1), left-padded with 0."""
        train = np.flatnonzero(data.split == TRAIN)
        users, items = data.users[train], data.items[train] + 1
        order = np.argsort(users, kind="stable")  # events are time-ordered already
        bounds = np.flatnonzero(np.diff(users[order])) + 1
        width = self.max_len + 1
        rows: list[np.ndarray] = []
        for seq in np.split(items[order], bounds):
            end = len(seq)
            while end > 1:  # windows overlap by one item: each click is a target once
                start = max(0, end - width)
                row = np.zeros(width, np.int64)
                row[width - (end - start) :] = seq[start:end]
                rows.append(row)
                end = start + 1
        if not rows:
            raise ValueError("no user has two TRAIN clicks; SASRec has nothing to learn from")
        return torch.as_tensor(np.stack(rows))

    def _loss(
        self, h: torch.Tensor, target: torch.Tensor, rng: np.random.Generator
    ) -> torch.Tensor:
        net = self.net
        assert net is not None
        valid = target > 0
        n_items = net.item.num_embeddings - 1
        pos = (h * net.item(target)).sum(-1)  # [B, L]
        if self.loss == "bce":
            neg_ids = torch.as_tensor(rng.integers(1, n_items + 1, tuple(target.shape)))
            neg = (h * net.item(neg_ids)).sum(-1)
            loss = -nn.functional.logsigmoid(pos) - nn.functional.logsigmoid(-neg)
            return loss[valid].mean()
        neg_ids = torch.as_tensor(rng.integers(1, n_items + 1, (target.shape[0], self.negatives)))
        neg = torch.einsum("bld,bnd->bln", h, net.item(neg_ids))  # [B, L, N]
        hit = neg_ids.unsqueeze(1) == target.unsqueeze(-1)
        logits = torch.cat([pos.unsqueeze(-1), neg.masked_fill(hit, -torch.inf)], dim=-1)
        return -torch.log_softmax(logits, dim=-1)[..., 0][valid].mean()

    def fit(
        self,
        data: Interactions,
        valid: QueryBatch,
        text_vectors: np.ndarray,
        *,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> None:
        """Train from scratch on TRAIN-split sequences (see the class docstring)."""
        seqs = self._sequences(data)
        self.history = []
        self.params = {
            "hidden": self.hidden,
            "blocks": self.blocks,
            "max_len": self.max_len,
            "loss": self.loss,
            "negatives": self.negatives if self.loss == "sampled_softmax" else 1,
            "train_windows": int(seqs.shape[0]),
        }
        with torch_threads(self.num_threads), _seeded(seed) as rng:
            self.net = net = _SASRecNet(
                data.n_items, self.hidden, self.max_len, self.blocks, self.heads, self.dropout
            )
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)

            def train_epoch() -> float:
                order = torch.as_tensor(rng.permutation(seqs.shape[0]))
                total, count = 0.0, 0
                for lo in range(0, seqs.shape[0], self.batch_size):
                    batch = seqs[order[lo : lo + self.batch_size]]
                    loss = self._loss(net(batch[:, :-1]), batch[:, 1:], rng)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * batch.shape[0]
                    count += batch.shape[0]
                return total / count

            _early_stopping(self, net, self.epochs, self.patience, train_epoch, valid, progress)

    def score(self, batch: QueryBatch) -> np.ndarray:
        with torch_threads(self.num_threads), torch.no_grad():
            return self._score(batch)

    def _score(self, batch: QueryBatch) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("SASRec.score called before fit")
        self.net.eval()
        history = np.asarray(batch.history, np.int64)[:, -self.max_len :] + 1  # -1 -> 0 pad
        if history.shape[1] < self.max_len:
            history = np.pad(history, ((0, 0), (self.max_len - history.shape[1], 0)))
        items = self.net.item.weight[1:]
        out = np.empty((len(batch), items.shape[0]), np.float32)
        for lo in range(0, len(batch), SCORE_CHUNK):
            seq = torch.as_tensor(history[lo : lo + SCORE_CHUNK])
            out[lo : lo + SCORE_CHUNK] = (self.net(seq)[:, -1] @ items.T).numpy()
        cold = ~(history > 0).any(axis=1)
        if cold.any():
            out[cold] = _all_time(batch)[cold]
        return out
