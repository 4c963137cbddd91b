"""The report of a ``genre tune`` study: JSON, markdown, history and importance plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SHOWN = ("hr@10", "ndcg@10", "mrr", "coverage@10", "ild@10", "gini@10")


def write_report(study: Any, summary: dict[str, Any], paths: dict[str, Path]) -> None:
    """Write the JSON, the markdown and both plots (Agg backend) next to the study."""
    import matplotlib

    matplotlib.use("Agg")
    summary["importance"] = importances(study)
    summary["history"] = [
        {"number": t.number, "value": t.value, "state": t.state.name}
        for t in study.trials
        if t.state.name != "WAITING"
    ]
    paths["json"].write_text(json.dumps(summary, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(summary))
    plot_history(summary, paths["history"])
    plot_importance(summary["importance"], paths["importance"])


def importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA); empty with too few trials to say."""
    import optuna

    try:
        found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):
        return {}
    return {k: round(float(v), 4) for k, v in found.items()}


def plot_history(summary: dict[str, Any], path: Path) -> None:
    """Each trial's validation NDCG@10 and the best so far."""
    import matplotlib.pyplot as plt

    points = [(h["number"], h["value"]) for h in summary["history"] if h["value"] is not None]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    if points:
        xs, ys = zip(*points, strict=True)
        best = [max(ys[: i + 1]) for i in range(len(ys))]
        ax.plot(xs, ys, "o", ms=3, alpha=0.6, label="trial")
        ax.step(xs, best, where="post", color="tab:red", label="best so far")
    base = summary.get("base_valid_ndcg@10")
    if base is not None:
        ax.axhline(base, color="grey", ls=":", lw=1, label="base config (trial 0)")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation NDCG@10")
    what = summary["mode"] + (f" {summary['baseline']}" if summary.get("baseline") else "")
    ax.set_title(f"genre tune {summary['study']} ({what}, {summary['sampler']})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_importance(found: dict[str, float], path: Path) -> None:
    """Horizontal bars of parameter importance (a note when there are none)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(found), 4) + 1))
    if found:
        names = list(found)[::-1]
        ax.barh(names, [found[n] for n in names])
        ax.set_xlabel("importance (fANOVA)")
    else:
        ax.text(0.5, 0.5, "too few completed trials", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(summary: dict[str, Any]) -> str:
    """The report as markdown."""
    best = summary["best"]
    what = summary["mode"] + (f" {summary['baseline']}" if summary.get("baseline") else "")
    base = "defaults" if summary.get("baseline") else "base config"
    lines = [
        f"# genre tune: study {summary['study']} ({what})",
        "",
        f"{summary['trials']} trials ({summary['completed']} completed, {summary['pruned']} "
        f"pruned), sampler {summary['sampler']}, seed {summary['seed']}; objective: NDCG@10 "
        "on the temporal validation split (no test click read during the search).",
        f"Seconds per trial: {summary['seconds_per_trial']}.",
        "",
        f"Best trial #{best['number']}: validation NDCG@10 {best['valid_ndcg@10']:.4f} "
        f"({base}, trial 0: {_fmt(summary.get('base_valid_ndcg@10'))}).",
        "",
        "Test split, read once after the search:",
        "",
        "| config | " + " | ".join(SHOWN) + " |",
        "|---|" + "---:|" * len(SHOWN),
    ]
    for name, row in summary["test"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(k)) for k in SHOWN) + " |")
    lines += ["", "Best parameters:", ""]
    lines += [f"- `{k}`: {v}" for k, v in best["params"].items()]
    if summary.get("baseline"):
        lines += ["", f"Use: `genre evaluate --baseline-params {summary['files']['params']}`."]
    if summary.get("importance"):
        lines += ["", "Parameter importance (fANOVA):", ""]
        lines += [f"- `{k}`: {v}" for k, v in summary["importance"].items()]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"
