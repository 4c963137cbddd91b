"""The package layout and the one-way import rule (DESIGN.md, "Layout")."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

#: top-level folder -> import namespace
FOLDERS = {
    "schemas": "genre.schemas",
    "core": "genre.core",
    "llm": "genre.llm",
    "streams": "genre.streams",
    "workers": "genre.workers",
    "model_export": "genre.model_export",
    "genre": "genre",
}

ENTRY_POINTS = ("genre.cli", "genre.demo", "genre.process", "genre.__main__")
PROJECT_PACKAGES = tuple(v for v in FOLDERS.values() if v != "genre")

#: folder -> the genre.* packages its modules may import (anything else under genre.* is out)
ALLOWED = {
    "schemas": ("genre.schemas",),
    "core": ("genre.core", "genre.schemas"),
    "llm": ("genre.core", "genre.schemas", "genre.llm"),
    "streams": ("genre.core", "genre.schemas", "genre.streams"),
    "model_export": ("genre.core", "genre.schemas", "genre.llm", "genre.model_export"),
    "workers": ("genre.core", "genre.schemas", "genre.llm", "genre.streams", "genre.workers"),
}

#: third-party roots that must never be imported on the serving side
TRAINING_ONLY = ("torch", "transformers")


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO_ROOT)
    ns = FOLDERS[rel.parts[0]]
    parts = [p for p in rel.with_suffix("").parts[1:] if p != "__init__"]
    return ".".join([ns, *parts])


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


@cache
def _imports(path: Path) -> tuple[tuple[str, int], ...]:
    """Every module imported anywhere in ``path`` (module level or in functions), with line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path)
    package = module if _is_package(path) else module.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            # `from genre import cli` imports genre.cli
            out.extend((f"{target}.{alias.name}", node.lineno) for alias in node.names)
    return tuple(out)


def _files(folder: str) -> list[Path]:
    return sorted((REPO_ROOT / folder).rglob("*.py"))


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _is_project(name: str) -> bool:
    return name == "genre" or name.startswith("genre.")


def _real_module(name: str) -> bool:
    """Drop the `from X import attr` expansion when `X.attr` is an attribute, not a module."""
    if not _is_project(name):
        return True
    parts = name.split(".")
    folder = {v: k for k, v in FOLDERS.items()}.get(".".join(parts[:2]))
    if folder is None:
        # genre.<x>: the entry-point package itself
        if len(parts) == 1:
            return True
        return (REPO_ROOT / "genre" / f"{parts[1]}.py").exists() or (
            REPO_ROOT / "genre" / parts[1]
        ).is_dir()
    rel = Path(folder, *parts[2:])
    return (
        len(parts) == 2
        or (REPO_ROOT / rel).with_suffix(".py").exists()
        or (REPO_ROOT / rel).is_dir()
    )


def _violations(folder: str) -> list[str]:
    allowed = ALLOWED[folder]
    bad = []
    for path in _files(folder):
        for name, line in _imports(path):
            if not _is_project(name) or not _real_module(name):
                continue
            if not _within(name, allowed):
                bad.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {name}")
    return bad


def test_every_folder_has_python_files() -> None:
    for folder in FOLDERS:
        assert _files(folder), f"{folder}/ has no .py files"


def test_import_collector_sees_nested_imports() -> None:
    # guard the collector itself: imports inside functions count too
    src = "def f():\n    import torch\n    from genre.model_export import encoder\n"
    tree = ast.parse(src)
    names = {
        n.names[0].name if isinstance(n, ast.Import) else n.module
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
    }
    assert names == {"torch", "genre.model_export"}
    some = REPO_ROOT / "workers" / "scorer.py"
    assert any(name == "genre.core.registry" for name, _ in _imports(some))


@pytest.mark.parametrize(
    "folder",
    [
        "schemas",
        "core",
        "llm",
        "streams",
        "model_export",
        "workers",
    ],
)
def test_one_way_imports(folder: str) -> None:
    bad = _violations(folder)
    assert not bad, f"{folder}/ may import only {ALLOWED[folder]}:\n" + "\n".join(bad)


def test_model_export_imports_nothing_else_upstream() -> None:
    # The part of the model_export rule that holds today: never streams/ or the entry points.
    bad = [
        v
        for v in _violations("model_export")
        if not v.split(" imports ")[1].startswith("genre.workers")
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder", ["schemas", "core", "llm", "streams", "workers"])
def test_serving_side_never_imports_torch(folder: str) -> None:
    bad = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {name}"
        for path in _files(folder)
        for name, line in _imports(path)
        if _within(name, TRAINING_ONLY) or _within(name, ("genre.model_export",))
    ]
    assert not bad, "\n".join(bad)


def test_nothing_outside_genre_imports_entry_points() -> None:
    bad = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {name}"
        for folder in ALLOWED
        for path in _files(folder)
        for name, line in _imports(path)
        if _within(name, ENTRY_POINTS) or name == "genre"
    ]
    assert not bad, "\n".join(bad)


def test_no_bare_top_level_imports_of_project_folders() -> None:
    # `import schemas` would only work from a checkout, never after install
    bad = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {name}"
        for folder in FOLDERS
        for path in _files(folder)
        for name, line in _imports(path)
        if name.split(".")[0] in FOLDERS and name.split(".")[0] != "genre"
    ]
    assert not bad, "\n".join(bad)


def test_installed_namespace(tmp_path: Path) -> None:
    # Run outside the checkout, so the repository root is not on sys.path (pytest puts it there).
    code = (
        "import importlib.util as u, json\n"
        "bare = ['schemas', 'workers', 'streams', 'core', 'model_export']\n"
        "ns = ['genre', 'genre.schemas', 'genre.core', 'genre.core.features', 'genre.streams',"
        " 'genre.workers', 'genre.model_export', 'genre.cli']\n"
        "print(json.dumps({'bare': {n: u.find_spec(n) is not None for n in bare},"
        " 'ns': {n: u.find_spec(n) is not None for n in ns}}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(proc.stdout)
    assert not any(found["bare"].values()), f"generic top-level modules importable: {found}"
    assert all(found["ns"].values()), f"genre.* packages missing: {found}"


def test_every_subpackage_is_packaged() -> None:
    """A folder with an ``__init__.py`` (like core/features) is in pyproject's package list
    and package-dir: an editable install finds it either way, a wheel only when listed."""
    import tomllib

    setup = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages, dirs = set(setup["packages"]), setup["package-dir"]
    for folder in FOLDERS:
        for init in sorted((REPO_ROOT / folder).rglob("__init__.py")):
            name = _module_name(init)
            assert name in packages, f"{name} is not in [tool.setuptools] packages"
            assert dirs.get(name) == init.parent.relative_to(REPO_ROOT).as_posix() or (
                name == "genre"
            ), f"{name} has no package-dir entry for {init.parent.relative_to(REPO_ROOT)}"


#: What the shared feature layer may import: it is the stream's, the training replay's
#: and the evaluation's, so no Kafka, Faust, model runtime or vector store.
FEATURES_ALLOWED = ("genre.core.features", "genre.core.registry")
FEATURES_FORBIDDEN = (
    "faust",
    "aiokafka",
    "confluent_kafka",
    "onnxruntime",
    "qdrant_client",
    *TRAINING_ONLY,
)


def test_the_feature_layer_is_numpy_only() -> None:
    files = _files("core/features")
    assert files
    bad = [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {name}"
        for path in files
        for name, line in _imports(path)
        if _within(name, FEATURES_FORBIDDEN)
        or (_is_project(name) and _real_module(name) and not _within(name, FEATURES_ALLOWED))
    ]
    assert not bad, "\n".join(bad)
