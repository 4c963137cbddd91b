"""Model-manifest format shared by the offline export side and the serving workers.

A model directory holds ``manifest.json`` plus the files it lists (ONNX graph, tokenizer, ...).
Every file is recorded with its SHA-256 and size so a worker can refuse a corrupted or
half-copied model before serving a single request.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST_FILENAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
REEXPORT_HINT = "re-run `genre export encoder` (add --force to overwrite) to rebuild the model"
RANKER_REEXPORT_HINT = "re-run `genre export ranker` to rebuild the ranker from its checkpoint"


def reexport_hint(model_name: str) -> str:
    """How to rebuild the model called ``model_name`` (the ranker or the text encoder)."""
    return RANKER_REEXPORT_HINT if model_name == "genre-ranker" else REEXPORT_HINT


class ManifestError(RuntimeError):
    """Raised when a model manifest is missing, malformed, or does not match the files on disk."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestFile(_Strict):
    """One file belonging to a model, relative to the manifest directory."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    role: str | None = None  # e.g. "model", "tokenizer"


class TensorSpec(_Strict):
    """A graph input or output; symbolic dimensions are strings (e.g. "batch")."""

    name: str
    dtype: str
    shape: list[int | str]


class ParityReport(_Strict):
    """Numerical agreement of the exported graph with the reference framework."""

    max_abs_error: float = Field(ge=0)
    mean_cosine: float
    n_samples: int = Field(ge=0)
    backend: str  # e.g. "onnxruntime 1.20.1 CPUExecutionProvider vs torch 2.5.1"


class ModelSource(_Strict):
    """Where the weights came from."""

    package: str
    version: str
    model_name: str | None = None


class ModelManifest(_Strict):
    """The manifest.json written next to an exported model."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str
    version: str
    created_at: datetime
    kind: str  # e.g. "text_encoder"
    files: list[ManifestFile]
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    embedding_dim: int | None = None
    max_length: int | None = None
    parity: ParityReport | None = None
    source: ModelSource
    extra: dict[str, Any] = Field(default_factory=dict)

    def file(self, role: str) -> ManifestFile:
        """Return the single file with the given role (e.g. "model")."""
        matches = [f for f in self.files if f.role == role]
        if len(matches) != 1:
            raise ManifestError(
                f"manifest {self.name}@{self.version} lists {len(matches)} files with role "
                f"{role!r} (expected exactly 1); {REEXPORT_HINT}"
            )
        return matches[0]


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file, streamed in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def describe_file(model_dir: Path, rel_path: str, role: str | None = None) -> ManifestFile:
    """Hash and size a file inside ``model_dir`` into a ManifestFile entry."""
    full = Path(model_dir) / rel_path
    return ManifestFile(
        path=Path(rel_path).as_posix(),
        sha256=sha256_file(full),
        bytes=full.stat().st_size,
        role=role,
    )


def utcnow() -> datetime:
    """Timezone-aware current UTC time (used for created_at)."""
    return datetime.now(UTC)


def load_manifest(model_dir: Path | str) -> ModelManifest:
    """Read and validate ``<model_dir>/manifest.json``."""
    path = Path(model_dir) / MANIFEST_FILENAME
    if not path.is_file():
        raise ManifestError(f"no {MANIFEST_FILENAME} in {Path(model_dir)}; {REEXPORT_HINT}")
    try:
        return ModelManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ManifestError(
            f"{path} is not a valid model manifest: {exc}; {REEXPORT_HINT}"
        ) from exc


def write_manifest(model_dir: Path | str, manifest: ModelManifest) -> Path:
    """Atomically write ``manifest.json`` into ``model_dir`` and return its path."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / MANIFEST_FILENAME
    tmp = path.with_suffix(".json.tmp")
    payload = json.dumps(manifest.model_dump(mode="json"), indent=2, ensure_ascii=False)
    tmp.write_text(payload + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def verify_files(model_dir: Path | str, manifest: ModelManifest | None = None) -> ModelManifest:
    """Check every listed file exists with the recorded size and SHA-256; raise ManifestError."""
    model_dir = Path(model_dir)
    manifest = manifest if manifest is not None else load_manifest(model_dir)
    problems: list[str] = []
    root = model_dir.resolve()
    for entry in manifest.files:
        full = (model_dir / entry.path).resolve()
        if not full.is_relative_to(root):
            problems.append(f"{entry.path}: path escapes the model directory")
            continue
        if not full.is_file():
            problems.append(f"{entry.path}: missing")
            continue
        size = full.stat().st_size
        if size != entry.bytes:
            problems.append(f"{entry.path}: size {size} bytes, manifest says {entry.bytes}")
            continue
        digest = sha256_file(full)
        if digest != entry.sha256:
            problems.append(
                f"{entry.path}: sha256 {digest[:12]}…, manifest says {entry.sha256[:12]}…"
            )
    if problems:
        raise ManifestError(
            f"model files in {model_dir} do not match {MANIFEST_FILENAME} "
            f"({manifest.name}@{manifest.version}): "
            + "; ".join(problems)
            + f". Fix: {reexport_hint(manifest.name)}"
        )
    return manifest
