"""Randomly initialised ranker checkpoints for export and serving tests (no training needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from genre.model_export.ranker import GenreRanker, RankerShape


def write_random_checkpoint(
    path: Path,
    cfg: RankerShape,
    vocab: list[str],
    *,
    seed: int = 0,
    spread: float = 0.2,
    feature_names: tuple[str, ...] = ("trending", "co_click"),
) -> Path:
    """A blob with ``save_checkpoint``'s keys; weights perturbed so no module is degenerate."""
    assert len(feature_names) == cfg.n_features, "one name per feature"
    torch.manual_seed(seed)
    model = GenreRanker(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(spread * torch.randn_like(p))
    torch.save(
        {
            "state_dict": model.state_dict(),
            "config": cfg.to_dict(),
            "id_vocab": vocab,
            "feature_spec": {
                "history_len": cfg.history_len,
                "co_click_recent": 10,
                "feature_names": list(feature_names),
            },
            "history": [{"epoch": 1, "loss": 2.5, "valid_ndcg@10": 0.1}],
            "best_epoch": 1,
            "dataset": "random",
        },
        path,
    )
    return path
