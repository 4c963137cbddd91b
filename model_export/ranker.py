"""GENRE's learned ranker in PyTorch: item tower, NRMS-style user encoder, DIN-style score head.

Three modules, exported as three ONNX graphs so a worker can cache item
representations and encode a user once per batch:

- ``ItemTower``: item text vector (the ONNX text encoder's output) projected,
  plus a learned id embedding for items seen in training (index 0 = unknown,
  a fixed zero vector, so new items are represented by their text alone).
- ``UserEncoder``: multi-head self-attention over the last clicks, then
  additive attention pooling (NRMS, Wu et al. 2019).
- ``ScoreHead``: candidate-aware attention over the history (DIN, Zhou et al.
  2018) and an MLP over the user, the attended interest, the candidate and the
  stream's per-candidate features (time-decayed trending and co-click scores).
  It returns a score per (user, candidate) and the attention weights that the
  worker turns into explanations.

A learned "null click" is prepended to every history, so users with no history
still get a well-defined (feature- and content-driven) score: cold start falls
back to trending and content, as the worker's candidate sources do.

Attention is written with plain matmuls and additive masks (-1e4, safe in fp16)
rather than ``nn.MultiheadAttention``: the exported graph then stays a handful
of MatMul/Softmax nodes that ONNX Runtime fuses and int8 quantises well.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

MASK_VALUE = -1e4


@dataclass(frozen=True)
class RankerShape:
    """Shapes and sizes; saved in checkpoints and the manifest."""

    text_dim: int = 384
    n_ids: int = 1  # id embedding rows incl. the unknown row 0
    dim: int = 64
    heads: int = 4
    n_features: int = 2
    history_len: int = 50
    dropout: float = 0.1

    def to_dict(self) -> dict[str, int | float]:
        """JSON-able form."""
        return asdict(self)


def _masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis where ``mask`` (1 = keep) broadcasts onto ``logits``."""
    return torch.softmax(logits + (1.0 - mask) * MASK_VALUE, dim=-1)


def with_null(history: Tensor, mask: Tensor, null: Tensor) -> tuple[Tensor, Tensor]:
    """Prepend the learned null click: [B, H, D] -> [B, 1 + H, D], mask [B, 1 + H]."""
    b = history.shape[0]
    null_row = null.reshape(1, 1, -1).expand(b, 1, history.shape[-1])
    ones = torch.ones_like(mask[:, :1])
    return torch.cat([null_row, history], dim=1), torch.cat([ones, mask], dim=1)


class ItemTower(nn.Module):
    """(text vector, id index) -> item representation [.., dim]."""

    def __init__(self, cfg: RankerShape) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.LayerNorm(cfg.dim))
        self.ids = nn.Embedding(cfg.n_ids, cfg.dim, padding_idx=0)
        nn.init.normal_(self.ids.weight, std=0.02)
        with torch.no_grad():
            self.ids.weight[0].zero_()

    def forward(self, text: Tensor, ids: Tensor) -> Tensor:
        return self.project(text) + self.ids(ids)


class UserEncoder(nn.Module):
    """NRMS user encoder: self-attention over clicks, additive attention pooling."""

    def __init__(self, cfg: RankerShape) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.null = nn.Parameter(torch.zeros(cfg.dim))
        self.position = nn.Parameter(torch.zeros(1 + cfg.history_len, cfg.dim))
        nn.init.normal_(self.position, std=0.02)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.pool_key = nn.Linear(cfg.dim, cfg.dim)
        self.pool_query = nn.Linear(cfg.dim, 1, bias=False)

    def forward(self, history: Tensor, mask: Tensor) -> Tensor:
        """history [B, H, D] (oldest first, left-padded), mask [B, H] -> user vector [B, D]."""
        x, m = with_null(history, mask, self.null)
        x = x + self.position[-x.shape[1] :]  # right-aligned: the last click has one position
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # [B, h, n, d/h]
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        attn = _masked_softmax(logits, m[:, None, None, :])
        mixed = (attn @ v).transpose(1, 2).reshape(b, n, d)
        x = self.norm(x + self.drop(self.out(mixed)))
        pool = self.pool_query(torch.tanh(self.pool_key(x))).squeeze(-1)  # [B, n]
        weights = _masked_softmax(pool, m)
        return (weights.unsqueeze(-1) * x).sum(dim=1)


class ScoreHead(nn.Module):
    """DIN-style score head: candidate-aware attention over the history, then an MLP."""

    def __init__(self, cfg: RankerShape) -> None:
        super().__init__()
        d = cfg.dim
        self.null = nn.Parameter(torch.zeros(d))
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.features = nn.Sequential(nn.Linear(cfg.n_features, d), nn.ReLU())
        self.mlp = nn.Sequential(
            nn.Linear(6 * d, d),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(d, d // 2),
            nn.ReLU(),
            nn.Linear(d // 2, 1),
        )
        # A direct path for the stream's features: popularity alone is a strong ranker.
        self.linear_features = nn.Linear(cfg.n_features, 1)

    def forward(
        self, user: Tensor, history: Tensor, mask: Tensor, candidates: Tensor, features: Tensor
    ) -> tuple[Tensor, Tensor]:
        """user [B, D], history [B, H, D], mask [B, H], candidates [B, C, D],
        features [B, C, F] raw (non-negative) -> scores [B, C], attention [B, C, H]."""
        x, m = with_null(history, mask, self.null)
        d = x.shape[-1]
        logits = self.query(candidates) @ self.key(x).transpose(1, 2) / math.sqrt(d)
        attn = _masked_softmax(logits, m[:, None, :])  # [B, C, 1 + H]
        interest = attn @ self.value(x)  # [B, C, D]
        u = user.unsqueeze(1).expand_as(candidates)
        f = torch.log1p(features)
        joined = torch.cat(
            [candidates, u, interest, candidates * u, candidates * interest, self.features(f)],
            dim=-1,
        )
        scores = self.mlp(joined).squeeze(-1) + self.linear_features(f).squeeze(-1)
        return scores, attn[:, :, 1:]


class GenreRanker(nn.Module):
    """The three modules together, for training and for the PyTorch side of parity checks."""

    def __init__(self, cfg: RankerShape) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_tower = ItemTower(cfg)
        self.user_encoder = UserEncoder(cfg)
        self.score_head = ScoreHead(cfg)

    def forward(
        self,
        history_text: Tensor,
        history_ids: Tensor,
        mask: Tensor,
        cand_text: Tensor,
        cand_ids: Tensor,
        features: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Scores [B, C] and attention [B, C, H] from raw item inputs."""
        history = self.item_tower(history_text, history_ids) * mask.unsqueeze(-1)
        candidates = self.item_tower(cand_text, cand_ids)
        user = self.user_encoder(history, mask)
        return self.score_head(user, history, mask, candidates, features)

    def score_items(
        self, history: Tensor, mask: Tensor, item_reps: Tensor, features: Tensor
    ) -> Tensor:
        """Scores [B, n] against precomputed representations of the whole catalogue [n, D]."""
        history = history * mask.unsqueeze(-1)
        user = self.user_encoder(history, mask)
        candidates = item_reps.unsqueeze(0).expand(history.shape[0], -1, -1)
        scores, _ = self.score_head(user, history, mask, candidates, features)
        return scores
