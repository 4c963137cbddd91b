"""Manifest of an exported GENRE ranker: three ONNX graphs in three precisions, plus vocab.

Written by ``genre export ranker`` (model_export), read by the scorer worker
(workers). A worker serves only what a manifest lists, after checking hashes.

Graphs and their tensors (symbolic axes: batch, items, history, candidates):

- ``item_tower``: text [items, text_dim] f32, ids [items] i64 -> item [items, dim]
- ``user_encoder``: history [batch, history, dim], mask [batch, history] -> user [batch, dim]
- ``scorer``: user, history, mask, candidates [batch, candidates, dim],
  features [batch, candidates, n_features] -> scores [batch, candidates],
  attention [batch, candidates, history]
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genre.schemas.manifest import ManifestError, ManifestFile, TensorSpec

RANKER_KIND: Final = "ranker"
RANKER_GRAPHS = ("item_tower", "user_encoder", "score_head")
Precision = Literal["fp32", "fp16", "int8"]
RANKER_HINT = "run `genre train` then `genre export ranker` to rebuild it"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RankParity(_Strict):
    """Agreement of one exported graph with PyTorch on held-out inputs."""

    max_abs_error: float = Field(ge=0)
    top10_agreement: float | None = Field(
        default=None, ge=0, le=1, description="Mean overlap of top-10 candidates (scorer only)."
    )
    n_samples: int = Field(ge=0)
    backend: str


class GraphFile(_Strict):
    """One ONNX file of one graph at one precision."""

    path: str
    precision: Precision
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parity: RankParity | None = None


class RankerManifest(_Strict):
    """manifest.json of an exported ranker directory."""

    schema_version: int = 1
    name: str = "genre-ranker"
    kind: Literal["ranker"] = RANKER_KIND
    version: str
    created_at: datetime
    opset: int = Field(ge=17)
    config: dict[str, Any]  # RankerShape: text_dim, n_ids, dim, heads, n_features, history_len
    feature_spec: dict[str, Any]  # the stream rules the features were trained with
    feature_names: list[str]
    vocab: str = "vocab.json"  # JSON list of item ids; id-embedding row i + 1 is vocab[i]
    graphs: dict[str, list[GraphFile]]  # graph name -> one entry per precision
    files: list[ManifestFile]
    metrics: dict[str, Any] = Field(default_factory=dict)  # evaluation figures
    training: dict[str, Any] = Field(default_factory=dict)

    def graph(self, name: str, precision: str) -> GraphFile:
        """The file of graph ``name`` at ``precision``; raises ManifestError when absent."""
        for entry in self.graphs.get(name, []):
            if entry.precision == precision:
                return entry
        have = [g.precision for g in self.graphs.get(name, [])]
        raise ManifestError(
            f"ranker {self.version} has no {precision} {name!r} graph (has: {have or 'none'}); "
            f"choose one of those in ranker.precision or {RANKER_HINT}"
        )


def load_ranker_manifest(model_dir: Path | str) -> RankerManifest:
    """Read and validate ``<model_dir>/manifest.json`` as a ranker manifest."""
    path = Path(model_dir) / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"no manifest.json in {Path(model_dir)}; {RANKER_HINT}")
    try:
        manifest = RankerManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ManifestError(f"{path} is not a valid ranker manifest: {exc}; {RANKER_HINT}") from exc
    if sorted(manifest.graphs) != sorted(RANKER_GRAPHS):
        raise ManifestError(
            f"{path} lists the graphs {sorted(manifest.graphs)}, but this GENRE serves "
            f"{list(RANKER_GRAPHS)}: the ranker was exported by another version; {RANKER_HINT}"
        )
    return manifest


def write_ranker_manifest(model_dir: Path | str, manifest: RankerManifest) -> Path:
    """Atomically write ``manifest.json`` (written last, so readers never see a partial model)."""
    path = Path(model_dir) / "manifest.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    os.replace(tmp, path)
    return path
