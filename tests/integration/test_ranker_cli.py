"""`genre evaluate`, `genre train` and `genre export ranker` on a small JSONL click log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from genre.core.config import GenreConfig
from genre.schemas import ClickEvent
from genre.schemas.ranker_manifest import load_ranker_manifest

from .conftest import GENRES, catalog

pytestmark = pytest.mark.timeout(600)

MODELS = ("genre", "popularity", "item_knn", "transitions", "content", "bpr", "sasrec", "lightgcn")
# The serving blend alone, and GENRE re-ranking only the blend's top 100 (what serves),
# each again with the graph model's source added (the graph ablation).
SERVING = ("blend", "genre@blend100", "blend+graph", "genre@blend100+graph")


def genre(*args: str, timeout: float = 480) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "genre", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def workspace(encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A config with a small ranker, and a click log where users stay in one genre."""
    root = tmp_path_factory.mktemp("ranking")
    data = GenreConfig().model_dump(mode="json")
    data["data_dir"] = str(root / "data")
    data["encoder"]["dir"] = str(encoder_dir)
    data["ranker"]["train"].update(
        {"epochs": 3, "dim": 16, "heads": 2, "negatives": 8, "batch_size": 64, "threads": 1}
    )
    config = root / "genre.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    items = root / "items.jsonl"
    items.write_text("".join(i.to_bytes().decode() + "\n" for i in catalog()))
    rng = np.random.default_rng(0)
    genres = list(GENRES)
    lines = []
    for u in range(40):
        genre_name = genres[u % len(genres)]
        order = rng.permutation(len(GENRES[genre_name]))
        for k, i in enumerate(order):
            event = ClickEvent(
                event_id=f"e{u}-{k}",
                user_id=f"u{u}",
                item_id=f"{genre_name}-{i}",
                ts=1_700_000_000.0 + 3600.0 * k + 30.0 * u,
            )
            lines.append(event.to_bytes().decode())
    clicks = root / "clicks.jsonl"
    clicks.write_text("\n".join(lines) + "\n")
    return {"root": root, "config": config, "items": items, "clicks": clicks}


def test_evaluate_ranks_every_model_on_one_split(workspace: dict[str, Path]) -> None:
    out_dir = workspace["root"] / "report"
    done = genre(
        "evaluate",
        "-c",
        str(workspace["config"]),
        "--clicks",
        str(workspace["clicks"]),
        "--items",
        str(workspace["items"]),
        "--quick",
        "--out-dir",
        str(out_dir),
        "--json",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(summary["models"]) == set(MODELS) | set(SERVING)
    assert summary["split"] == {"train": 192, "valid": 24, "test": 24}
    for name, row in summary["models"].items():
        assert {"hr@10", "ndcg@10", "mrr", "coverage@10"} <= set(row), name
        assert 0.0 <= row["ndcg@10"] <= row["hr@10"] <= 1.0
        assert row["queries"] == 24
    # Users stay within one genre of 6 items: content similarity must find the rest.
    assert summary["models"]["content"]["ndcg@10"] > 0.5
    # Every model's figures per segment; here every test user clicked in train.
    for name, segments in summary["segments"].items():
        assert segments["known_users"]["queries"] == 24, name
        assert segments["new_users_test"]["queries"] == 0, name
    assert "NDCG@10 by segment" in (out_dir / "evaluation.md").read_text()
    assert (out_dir / "evaluation.md").read_text().count("| ") > 6
    assert (out_dir / "evaluation.png").stat().st_size > 1000
    assert Path(summary["checkpoint"]).is_file()


def test_train_graph_writes_embeddings_the_graph_source_loads(
    workspace: dict[str, Path],
) -> None:
    from genre.core.features.graph_embedding import load_graph_embeddings

    cfg = ["-c", str(workspace["config"])]
    log = ["--clicks", str(workspace["clicks"]), "--items", str(workspace["items"])]
    done = genre("train", *cfg, *log, "--model", "graph")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["model"] == "lightgcn" and summary["test"]["queries"] == 24
    assert {"blend", "blend+graph", "lightgcn"} <= set(summary["models"])
    embeddings, info = load_graph_embeddings(Path(summary["dir"]))
    assert Path(summary["dir"]) == workspace["root"] / "data" / "models" / "graph"
    assert len(embeddings) == info["items"] > 0 and embeddings.dim == info["dim"]
    assert np.isfinite(embeddings.vectors).all()
    # Users stay in one genre: an item's nearest embedded neighbour shares its genre.
    ids = info_ids(embeddings)
    nearest = embeddings.vectors @ embeddings.vectors.T
    np.fill_diagonal(nearest, -np.inf)
    same = [
        ids[i].split("-")[0] == ids[int(j)].split("-")[0] for i, j in enumerate(nearest.argmax(1))
    ]
    assert np.mean(same) > 0.75
    bad = genre("train", *cfg, *log, "--model", "nope")
    assert bad.returncode == 2 and "ranker or graph" in bad.stdout + bad.stderr


def info_ids(embeddings: Any) -> list[str]:
    from genre.core.features.ids import ITEM_IDS

    return [ITEM_IDS.names[r] for r in embeddings.rows]


def test_train_then_export_writes_a_servable_manifest(workspace: dict[str, Path]) -> None:
    cfg = ["-c", str(workspace["config"])]
    log = ["--clicks", str(workspace["clicks"]), "--items", str(workspace["items"])]
    done = genre("train", *cfg, *log, "--epochs", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert 1 <= summary["best_epoch"] <= 2 and len(summary["epochs"]) <= 2
    assert Path(summary["report"]["plot"]).stat().st_size > 1000
    assert "hr@10" in summary["test"]

    done = genre("export", "ranker", *cfg, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = load_ranker_manifest(workspace["root"] / "data" / "models" / "ranker")
    assert manifest.opset >= 17
    assert {g.precision for g in manifest.graphs["score_head"]} == {"fp32", "fp16", "int8"}
    fp32 = manifest.graph("score_head", "fp32").parity
    assert fp32 is not None and fp32.max_abs_error < 1e-4
    # The default config enriches items and writes profiles: the ranker takes the
    # profile feature, and the manifest says what the LLM added to its training.
    assert manifest.feature_names == ["trending", "co_click", "profile"]
    llm = manifest.training["llm"]
    assert llm["backend"] == "offline" and llm["items"] and llm["profiles"]
    assert llm["items_origin"] == {"offline": len(catalog())}
    assert llm["profiles_written"] > 0


def test_enrichment_ablation_reports_three_variants(workspace: dict[str, Path]) -> None:
    out_dir = workspace["root"] / "ablation"
    done = genre(
        "evaluate",
        "-c",
        str(workspace["config"]),
        "--clicks",
        str(workspace["clicks"]),
        "--items",
        str(workspace["items"]),
        "--ablation",
        "enrichment",
        "--epochs",
        "1",
        "--out-dir",
        str(out_dir),
        "--json",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["backend"] == "offline"
    assert list(summary["ablation"]) == ["off", "items", "items+profiles"]
    for row in summary["ablation"].values():
        assert 0.0 <= row["ndcg@10"] <= row["hr@10"] <= 1.0
    detail = summary["detail"]
    assert not detail["off"]["llm"]["items"] and not detail["off"]["llm"]["profiles"]
    assert detail["items"]["llm"]["items_origin"] == {"offline": len(catalog())}
    assert detail["items+profiles"]["llm"]["profiles_written"] > 0
    # The served variant (items+profiles, the default config) is saved for export.
    assert Path(detail["items+profiles"]["checkpoint"]).is_file()
    assert "checkpoint" not in detail["off"]
    assert (out_dir / "ablation_enrichment.md").read_text().count("| items+profiles |") == 1


def test_a_log_with_unknown_items_is_refused_with_the_reason(workspace: dict[str, Path]) -> None:
    bad = workspace["root"] / "bad.jsonl"
    bad.write_text(
        ClickEvent(event_id="x", user_id="u", item_id="nope", ts=1.7e9).to_bytes().decode() + "\n"
    )
    done = genre(
        "evaluate",
        "-c",
        str(workspace["config"]),
        "--clicks",
        str(bad),
        "--items",
        str(workspace["items"]),
    )
    assert done.returncode == 2
    assert "not in the catalogue" in done.stderr
    missing = genre("train", "-c", str(workspace["config"]), "--clicks", str(bad))
    assert missing.returncode == 2 and "--items" in missing.stderr
