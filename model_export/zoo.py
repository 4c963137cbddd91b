"""Every baseline ``genre evaluate`` can compare with GENRE, by name (``--models``)."""

from __future__ import annotations

from typing import Any

from genre.model_export.baselines import (
    BPR,
    Baseline,
    ContentCosine,
    ItemKNN,
    Popularity,
    SASRec,
    Transitions,
)
from genre.model_export.graph_model import LightGCN

__all__ = ["BASELINES", "build_baselines"]

BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls
    for cls in (Popularity, ItemKNN, Transitions, ContentCosine, BPR, SASRec, LightGCN)
}


def build_baselines(names: list[str] | None = None, **overrides: dict[str, Any]) -> list[Baseline]:
    """Instantiate baselines by name (all, in ``BASELINES`` order, when ``names`` is None).

    ``overrides`` maps a baseline name to constructor arguments, e.g.
    ``build_baselines(["bpr"], bpr={"epochs": 5})``.
    """
    names = list(BASELINES) if names is None else list(names)
    unknown = sorted({*names, *overrides} - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {sorted(BASELINES)}")
    stray = sorted(set(overrides) - set(names))
    if stray:
        raise ValueError(f"overrides given for baselines not being built: {stray}")
    return [BASELINES[name](**overrides.get(name, {})) for name in names]
