"""Vectors as compact text: the form user and profile vectors take in records and changelogs."""

from __future__ import annotations

import base64

import numpy as np


def encode_vector(vector: np.ndarray) -> str:
    """A float32 vector as base64 text: a quarter of the bytes of a JSON float list."""
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode("ascii")


def decode_vector(text: str) -> np.ndarray:
    """The float32 vector that ``encode_vector`` wrote; ValueError for text that is not one."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError(f"a base64 float32 vector has a multiple of 4 bytes, not {len(raw)}")
    return np.frombuffer(raw, "<f4").astype(np.float32)
