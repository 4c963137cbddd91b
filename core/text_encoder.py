"""Torch-free item text encoder: `tokenizers` + ONNX Runtime over an exported manifest dir."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from genre.core.onnx_runtime import OnnxModel
from genre.schemas.manifest import ManifestError, ModelManifest, verify_files

TEXT_ENCODER_KIND = "text_encoder"


class TextEncoder:
    """Encodes texts into L2-normalised float32 sentence embeddings with an ONNX graph."""

    def __init__(
        self,
        manifest: ModelManifest,
        model: OnnxModel,
        tokenizer: Tokenizer,
        output_name: str | None = None,
    ) -> None:
        """Wire an already-loaded manifest, session and tokenizer; prefer `from_manifest`."""
        self.manifest = manifest
        self.model = model
        self.max_length = int(manifest.max_length or 512)
        tokenizer.no_padding()  # we pad per batch ourselves
        tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer = tokenizer
        self.output_name = output_name or model.output_names[0]
        self._dim = int(manifest.embedding_dim or manifest.outputs[0].shape[-1])
        pad_id = tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad_id is None else pad_id

    @classmethod
    def from_manifest(
        cls,
        model_dir: Path | str,
        providers: Sequence[str] | str = "auto",
        threads: int | None = None,
        *,
        strict: bool | None = None,
    ) -> TextEncoder:
        """Load manifest.json, verify file hashes, open the ONNX graph and tokenizer.json."""
        model_dir = Path(model_dir)
        manifest = verify_files(model_dir)
        if manifest.kind != TEXT_ENCODER_KIND:
            raise ManifestError(
                f"{model_dir} holds a {manifest.kind!r} model, not a {TEXT_ENCODER_KIND!r}"
            )
        model = OnnxModel(
            model_dir / manifest.file("model").path, providers, threads=threads, strict=strict
        )
        tokenizer = Tokenizer.from_file(str(model_dir / manifest.file("tokenizer").path))
        return cls(manifest, model, tokenizer)

    @classmethod
    def for_parity(cls, manifest: ModelManifest, model_dir: Path | str) -> TextEncoder:
        """Open a fresh export on CPU before its manifest is written (used by the exporter)."""
        model_dir = Path(model_dir)
        model = OnnxModel(model_dir / manifest.file("model").path, ["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(model_dir / manifest.file("tokenizer").path))
        return cls(manifest, model, tokenizer)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self._dim

    @property
    def version(self) -> str:
        """Model version from the manifest (identifies the embedding space)."""
        return self.manifest.version

    @property
    def providers(self) -> list[str]:
        """Execution providers the session runs on."""
        return self.model.providers

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Encode texts to a float32 [N, dim] array of unit-norm vectors, in input order."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single str")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")

        encodings = self.tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        # Sort by length so each batch pads to a similar length; scatter back by index.
        order = np.argsort(lengths, kind="stable")
        need_types = self.model.has_input("token_type_ids")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            seq = int(lengths[idx].max())
            ids = np.full((len(idx), seq), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), seq), dtype=np.int64)
            for row, j in enumerate(idx):
                enc = encodings[j]
                n = len(enc.ids)
                ids[row, :n] = enc.ids
                mask[row, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if need_types:
                feeds["token_type_ids"] = np.zeros_like(ids)
            out[idx] = self.model.run(feeds)[self.output_name]
        return out

    def __repr__(self) -> str:
        return (
            f"TextEncoder({self.manifest.name}@{self.version}, dim={self.dim}, "
            f"max_length={self.max_length}, providers={self.providers})"
        )
