"""MovieLens-100k, fetched from the RecBole wheel on PyPI and loaded as GENRE records.

RecBole ships ML-100k as "atomic files" (tab-separated, typed headers such as
``item_id:token``). Fetching needs only pip and access to PyPI; the files are
cached so later calls work offline.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genre.schemas.records import ClickEvent, ClickType, ItemUpsert

__all__ = [
    "INTERACTION_DTYPE",
    "RECBOLE_SPEC",
    "RECBOLE_WHEEL_SHA256",
    "DatasetError",
    "MovieLens",
    "as_click_events",
    "fetch_ml100k",
    "load_ml100k",
]

DATASET = "ml-100k"
RECBOLE_SPEC = "recbole==1.2.1"
#: sha256 of recbole-1.2.1-py3-none-any.whl as served by PyPI.
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
_WHEEL_PREFIX = f"recbole/dataset_example/{DATASET}/"
#: Files that must be present for the cache to count as complete.
REQUIRED_FILES = (f"{DATASET}.inter", f"{DATASET}.item")

#: One rating: who, what, how much, when (Unix seconds).
INTERACTION_DTYPE = np.dtype(
    [("user_id", "U16"), ("item_id", "U16"), ("rating", "f4"), ("ts", "f8")]
)

_UNKNOWN = {"unknown", "unkonwn"}  # the .item file spells it both ways
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


class DatasetError(RuntimeError):
    """A dataset could not be fetched or read; the message says what failed and the fix."""


@dataclass(frozen=True)
class MovieLens:
    """MovieLens items as ``ItemUpsert`` records and ratings sorted by timestamp."""

    items: list[ItemUpsert]
    interactions: np.ndarray  # structured, INTERACTION_DTYPE, sorted by ts (stable)
    path: Path

    @property
    def n_users(self) -> int:
        """Number of distinct users with at least one rating."""
        return int(np.unique(self.interactions["user_id"]).size)

    @property
    def n_items(self) -> int:
        """Number of items in the catalogue."""
        return len(self.items)

    def __len__(self) -> int:
        return int(self.interactions.shape[0])


def _cached(target: Path) -> bool:
    return all((target / name).is_file() for name in REQUIRED_FILES)


def _manual_fix(target: Path) -> str:
    return (
        f"Fix: allow network access to PyPI (or set PIP_INDEX_URL to a reachable mirror), "
        f"or copy {', '.join(REQUIRED_FILES)} from RecBole's dataset_example/{DATASET} "
        f"into {target}/ by hand"
    )


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _pip_download(dest: Path, target: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        RECBOLE_SPEC,
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DatasetError(f"could not run pip ({exc}). {_manual_fix(target)}") from exc
    wheels = sorted(dest.glob("recbole-*.whl"))
    if proc.returncode != 0 or not wheels:
        output = (proc.stderr or proc.stdout or "").strip()
        tail = "\n".join(output.splitlines()[-8:])
        hint = ""
        if "No matching distribution" in output or "connection" in output.lower():
            hint = "pip could not reach a package index that has it (offline?). "
        raise DatasetError(
            f"downloading {DATASET} failed: `pip download {RECBOLE_SPEC}` exited with "
            f"code {proc.returncode}. pip said:\n{tail}\n{hint}{_manual_fix(target)}"
        )
    return wheels[0]


def _extract(wheel: Path, staging: Path, target: Path) -> None:
    digest = _sha256(wheel)
    if digest != RECBOLE_WHEEL_SHA256:
        raise DatasetError(
            f"{wheel.name} has sha256 {digest}, expected {RECBOLE_WHEEL_SHA256}; the index "
            f"served a different file. {_manual_fix(target)}"
        )
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [
                n for n in zf.namelist() if n.startswith(_WHEEL_PREFIX) and not n.endswith("/")
            ]
            for name in members:
                out = staging / Path(name).name
                with zf.open(name) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile as exc:
        raise DatasetError(
            f"{wheel.name} is not a valid wheel ({exc}). {_manual_fix(target)}"
        ) from exc
    missing = [n for n in REQUIRED_FILES if not (staging / n).is_file()]
    if missing:
        raise DatasetError(
            f"{wheel.name} has no {missing} under {_WHEEL_PREFIX}. {_manual_fix(target)}"
        )


def fetch_ml100k(cache_dir: Path, *, force: bool = False) -> Path:
    """Return ``cache_dir/ml-100k`` holding the RecBole atomic files, downloading if needed."""
    from rich.console import Console

    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / DATASET
    if _cached(target) and not force:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix=".ml100k-", dir=cache_dir) as tmp:
        tmp_path = Path(tmp)
        staging = tmp_path / DATASET
        staging.mkdir()
        with console.status(f"Downloading {RECBOLE_SPEC} from PyPI for {DATASET}..."):
            wheel = _pip_download(tmp_path / "wheel", target)
        with console.status(f"Extracting {DATASET} into {target}..."):
            _extract(wheel, staging, target)
            if target.exists():
                shutil.rmtree(target)
            staging.replace(target)  # same filesystem: readers never see a partial cache
    console.print(f"[green]✓[/green] {DATASET} cached in {target}")
    return target


def _resolve(path: Path) -> Path:
    path = Path(path).expanduser()
    if path.is_file():
        path = path.parent
    if not _cached(path) and _cached(path / DATASET):
        path = path / DATASET
    if not _cached(path):
        raise DatasetError(
            f"{path} does not hold {', '.join(REQUIRED_FILES)}; run fetch_ml100k(cache_dir) "
            f"first, or copy the files there by hand"
        )
    return path


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """Read a RecBole atomic file: header names (types stripped) and rows of strings."""
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        names = [h.split(":", 1)[0] for h in header]
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != len(names)), None)
    if bad is not None:
        raise DatasetError(
            f"{path}: line {bad + 2} has {len(rows[bad])} fields, header has {len(names)}"
        )
    return names, rows


def _column(names: list[str], wanted: str, path: Path) -> int:
    try:
        return names.index(wanted)
    except ValueError:
        raise DatasetError(f"{path}: no {wanted!r} column (columns: {names})") from None


def _load_items(path: Path) -> list[ItemUpsert]:
    names, rows = _read_atomic(path)
    c_id, c_title = _column(names, "item_id", path), _column(names, "movie_title", path)
    c_year, c_class = _column(names, "release_year", path), _column(names, "class", path)
    items = []
    for row in rows:
        item_id, title, year = row[c_id].strip(), row[c_title].strip(), row[c_year].strip()
        genres = [g for g in row[c_class].split() if g.lower() not in _UNKNOWN]
        if title.lower() in _UNKNOWN or not title:
            title = f"Unknown movie {item_id}"
        if not (year.isdigit() and len(year) == 4):
            m = _YEAR_IN_TITLE.search(title)
            year = m.group(1) if m else ""
        items.append(
            ItemUpsert(
                item_id=item_id,
                title=title,
                category=genres[0] if genres else "",
                tags=genres,
                text=f"Released {year}." if year else "",
            )
        )
    return items


def _load_interactions(path: Path) -> np.ndarray:
    names, rows = _read_atomic(path)
    cols = [_column(names, n, path) for n in ("user_id", "item_id", "rating", "timestamp")]
    arr = np.empty(len(rows), dtype=INTERACTION_DTYPE)
    try:
        for field, col in zip(INTERACTION_DTYPE.names or (), cols, strict=True):
            arr[field] = [r[col] for r in rows]
    except ValueError as exc:
        raise DatasetError(f"{path}: unparseable value ({exc})") from exc
    return arr[np.argsort(arr["ts"], kind="stable")]


def load_ml100k(path: Path) -> MovieLens:
    """Load ML-100k from a directory made by ``fetch_ml100k`` (or its cache dir)."""
    root = _resolve(path)
    return MovieLens(
        items=_load_items(root / f"{DATASET}.item"),
        interactions=_load_interactions(root / f"{DATASET}.inter"),
        path=root,
    )


def as_click_events(ml: MovieLens, limit: int | None = None) -> Iterator[ClickEvent]:
    """Ratings as ``rate`` click events in timestamp order, with stable ids ``ml100k-<i>``."""
    rows = ml.interactions if limit is None else ml.interactions[:limit]
    for index, row in enumerate(rows):
        yield ClickEvent(
            event_id=f"ml100k-{index}",
            user_id=str(row["user_id"]),
            item_id=str(row["item_id"]),
            type=ClickType.RATE,
            ts=float(row["ts"]),
            weight=float(row["rating"]),
        )
