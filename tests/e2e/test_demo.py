"""`genre demo` end to end: the real broker, worker process, ONNX encoder and ml-100k."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.broker
def test_demo_json_summary(encoder_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "genre.yaml"
    # Share the dataset and model caches with the rest of the suite; the run dir is new.
    config.write_text(
        f"data_dir: {REPO / '.cache'}\n"
        f"encoder: {{dir: {encoder_dir}}}\n"
        "demo: {drain_timeout_s: 60}\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "genre",
            "demo",
            "--config",
            str(config),
            "--events",
            "600",
            "--rate",
            "300",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["events_in"] == 600
    assert summary["events_consumed_by_worker"] == 600
    assert summary["events_dlq"] == 0
    assert summary["recommendations_out"] > 0
    assert summary["users_with_recommendations"] == summary["users_seen"] > 0
    assert summary["throughput_eps"] > 0
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99"}
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] < 60_000  # within the drain
    # No bound on online_hit_rate_at_10 here: 600 clicks replayed at 300/s from cold
    # users give 0.0 (a user's next click mostly comes before the list for the last
    # one); `make demo` (20,000 clicks at 100/s) is where it is measured.
    assert isinstance(summary["online_hit_rate_at_10"], float)
    assert "GENRE demo" in out.stderr  # the summary table
    assert sum(summary["model_versions"].values()) == summary["recommendations_out"]
    assert summary["window"] == "last 600 of 100000 clicks"
    # The GENRE step runs by default with the offline backend: every item enriched
    # before it was encoded, profiles written as users pass every_k_clicks.
    llm = summary["llm"]
    assert llm["backend"] == "offline" and llm["items"] and llm["profiles"]
    assert llm["items_enriched"] == {"offline": 1682}
    assert llm["profiles_generated"]["offline"] > 0
