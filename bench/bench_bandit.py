"""Does Thompson allocation (``core/bandit.py``) move traffic to the better arm? A simulation.

A stream of ``--clicks`` clicks from ``--users`` users (activity log-normal, so a
few users click a lot) is split between arms whose online HR@10 is known: each
click is a hit with its arm's rate. A user's arm is ``assign(position, shares)``
with ``position`` a salted hash of the user id, as the scorer will do; the
allocation is recomputed every ``--every`` clicks from the hits seen so far (as
the live worker would every few seconds). Policies: a fixed even split, and
``ThompsonAllocator`` with each ``--floors`` value. Every policy sees the same
users, clicks and hit draws for one seed (common random numbers), over
``--seeds`` seeds; figures are the mean and the 5-95% band over seeds.

Scenarios, with rates from GENRE's own demo figures (docs/models.md, "Online"):

* ``k2``: the ranker after the hot-path rebuild (0.0953, demo_ranker_after.json)
  against the same ranker before it (0.0586);
* ``k3``: the ranker after the rebuild (0.0953), the ranker on raw item text
  before the LLM step (0.0637) and the blend scorer before the LLM step (0.0396);
* ``k2_close``: 0.0637 against 0.0586, a gap inside the demo's run-to-run noise;
* ``aa``: two arms at 0.0953 (an A/A test): regret is 0 whatever the split; it
  shows how far Thompson's shares wander when there is nothing to learn.

Regret is expected hits lost against sending every click to the best arm:
``sum(best_rate - rate(arm of click))``.

    python bench/bench_bandit.py            # ~1 min on the 2-core machine

Prints a table, writes ``bench/results/bandit.json`` and ``bench/results/bandit.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from machine import cpu_name, save_result
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from genre.core.bandit import FixedAllocator, ThompsonAllocator, assign_indices

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results" / "bandit.json"
CURVE_POINTS = 40


@dataclass(frozen=True)
class Scenario:
    """Arms and their true online hit rates."""

    name: str
    about: str
    rates: dict[str, float]

    @property
    def arms(self) -> list[str]:
        return sorted(self.rates)

    @property
    def rate_vector(self) -> npt.NDArray[np.float64]:
        return np.array([self.rates[a] for a in self.arms])

    @property
    def best(self) -> int:
        """Index (in sorted arm order) of the best arm; the first of equals."""
        return int(np.argmax(self.rate_vector))


SCENARIOS = (
    Scenario(
        "k2",
        "ranker after the hot-path rebuild vs before it",
        {"ranker": 0.0953, "ranker_before_rebuild": 0.0586},
    ),
    Scenario(
        "k3",
        "ranker after the rebuild, ranker before the LLM step, blend",
        {"ranker": 0.0953, "ranker_raw_text": 0.0637, "blend": 0.0396},
    ),
    Scenario(
        "k2_close",
        "ranker before the LLM step vs before the rebuild (gap within run noise)",
        {"ranker_raw_text": 0.0637, "ranker_before_rebuild": 0.0586},
    ),
    Scenario("aa", "A/A: two identical arms", {"a": 0.0953, "b": 0.0953}),
)


@dataclass(frozen=True)
class Stream:
    """One seed's traffic: each click's user position and its uniform hit draw."""

    positions: npt.NDArray[np.float64]
    uniforms: npt.NDArray[np.float64]
    #: every user's position, to count users whose arm changes at an update
    user_positions: npt.NDArray[np.float64]


def user_position(salt: str, user_id: str) -> float:
    """A user's position in [0, 1): the salted blake2b hash, as the experiment assignment."""
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def make_stream(seed: int, clicks: int, users: int) -> Stream:
    """Clicks from ``users`` users with log-normal activity, and one uniform per click."""
    rng = np.random.default_rng([seed, 0xB4])
    salt = f"bench-bandit-{seed}"
    positions = np.array([user_position(salt, f"u{i}") for i in range(users)])
    activity = rng.lognormal(0.0, 1.0, size=users)
    cdf = np.cumsum(activity / activity.sum())
    cdf[-1] = 1.0
    who = np.minimum(np.searchsorted(cdf, rng.random(clicks), side="right"), users - 1)
    return Stream(positions=positions[who], uniforms=rng.random(clicks), user_positions=positions)


def make_policy(policy: str, arms: list[str], draws: int, seed: int) -> Any:
    """``fixed`` (even split) or ``thompson@<floor>``."""
    if policy == "fixed":
        return FixedAllocator({a: 1.0 / len(arms) for a in arms})
    floor = float(policy.split("@", 1)[1])
    return ThompsonAllocator(arms, floor=floor, draws=draws, seed=seed)


def simulate(
    scenario: Scenario, policy: str, stream: Stream, every: int, draws: int, seed: int
) -> dict[str, npt.NDArray[np.float64]]:
    """Per block of ``every`` clicks: best arm's traffic and allocated share, cumulative regret,
    and the share of all users whose arm changed at the update before the block."""
    arms, rates, best = scenario.arms, scenario.rate_vector, scenario.best
    alloc = make_policy(policy, arms, draws, seed)
    shares = alloc.shares()
    n_blocks = len(stream.positions) // every
    traffic = np.empty(n_blocks)
    allocated = np.empty(n_blocks)
    regret = np.empty(n_blocks)
    switched = np.zeros(n_blocks)
    user_arm = assign_indices(stream.user_positions, shares)
    lost = 0.0
    for b in range(n_blocks):
        if b:
            now = assign_indices(stream.user_positions, shares)
            switched[b] = float(np.mean(now != user_arm))
            user_arm = now
        sl = slice(b * every, (b + 1) * every)
        arm = assign_indices(stream.positions[sl], shares)
        hit = stream.uniforms[sl] < rates[arm]
        clicks = np.bincount(arm, minlength=len(arms))
        hits = np.bincount(arm, weights=hit, minlength=len(arms))
        for i, name in enumerate(arms):
            alloc.observe(name, int(clicks[i]), int(hits[i]))
        lost += float(np.sum(rates[best] - rates[arm]))
        traffic[b] = clicks[best] / every
        allocated[b] = shares[arms[best]]
        regret[b] = lost
        shares = alloc.shares()
    return {"traffic": traffic, "allocated": allocated, "regret": regret, "switched": switched}


def band(values: npt.ArrayLike, digits: int = 4) -> dict[str, float]:
    """Mean and 5th/95th percentiles over seeds (axis 0)."""
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(np.mean(arr)), digits),
        "p5": round(float(np.percentile(arr, 5)), digits),
        "p95": round(float(np.percentile(arr, 95)), digits),
    }


def curve_band(runs: npt.NDArray[np.float64]) -> dict[str, list[float]]:
    """Mean and 5-95% band over seeds at every block (runs: seeds x blocks)."""
    return {
        "mean": np.round(runs.mean(axis=0), 4).tolist(),
        "p5": np.round(np.percentile(runs, 5, axis=0), 4).tolist(),
        "p95": np.round(np.percentile(runs, 95, axis=0), 4).tolist(),
    }


def settled_block(allocated: npt.NDArray[np.float64], level: float) -> float:
    """First block from which the allocated share stays at or above ``level``; NaN if never.

    Block ``b``'s shares were computed from the first ``b * every`` clicks.
    """
    below = np.nonzero(allocated < level)[0]
    if not below.size:
        return 0.0
    return float(below[-1] + 1) if below[-1] + 1 < len(allocated) else float("nan")


def summarise(
    scenario: Scenario, runs: dict[str, list[dict[str, npt.NDArray[np.float64]]]], every: int
) -> dict[str, Any]:
    """Final figures and thinned curves for one scenario, every policy."""
    fixed_regret = np.array([r["regret"][-1] for r in runs["fixed"]])
    out: dict[str, Any] = {
        "about": scenario.about,
        "rates": scenario.rates,
        "best_arm": scenario.arms[scenario.best],
        "aa": bool(np.all(fixed_regret == 0)),
        "policies": {},
    }
    n_blocks = len(runs["fixed"][0]["regret"])
    step = max(1, n_blocks // CURVE_POINTS)
    keep = np.arange(step - 1, n_blocks, step)
    out["curve_clicks"] = ((keep + 1) * every).tolist()
    for policy, seed_runs in runs.items():
        traffic = np.stack([r["traffic"] for r in seed_runs])
        allocated = np.stack([r["allocated"] for r in seed_runs])
        regret = np.stack([r["regret"] for r in seed_runs])
        row: dict[str, Any] = {
            "final_allocated_share_best": band(allocated[:, -1]),
            "traffic_share_best_whole_run": band(traffic.mean(axis=1)),
            "traffic_share_best_last_10pct": band(traffic[:, -max(1, n_blocks // 10) :].mean(1)),
            "regret_at_n": band(regret[:, -1], 1),
            "users_switching_arm_per_run": band(
                np.stack([r["switched"] for r in seed_runs]).sum(axis=1), 3
            ),
        }
        if np.all(fixed_regret > 0):  # not an A/A scenario
            row["regret_ratio_vs_fixed"] = band(regret[:, -1] / fixed_regret, 3)
            if policy != "fixed":
                level = _share_at(policy, len(scenario.arms), 0.8)
                reach = [settled_block(a, level) for a in allocated]
                row["clicks_to_p_best_0.8"] = _clicks_band(reach, every)
        row["curves"] = {
            "traffic_share_best": curve_band(traffic[:, keep]),
            "cumulative_regret": curve_band(regret[:, keep]),
        }
        switched = np.cumsum(np.stack([r["switched"] for r in seed_runs]), axis=1)
        row["_full"] = {"traffic": traffic, "regret": regret, "switched": switched}
        out["policies"][policy] = row
    return out


def _share_at(policy: str, k: int, p_best: float) -> float:
    """The share Thompson gives an arm whose P(best) is ``p_best``."""
    floor = float(policy.split("@", 1)[1])
    return floor + (1.0 - k * floor) * p_best - 1e-9


def _clicks_band(blocks: list[float], every: int) -> dict[str, float]:
    """Median and 5-95% of the clicks of evidence a level needed (seeds that never settled
    are left out; ``reached`` counts the others)."""
    arr = np.array(blocks)
    ok = arr[~np.isnan(arr)]
    if ok.size == 0:
        nan = float("nan")
        return {"median": nan, "p5": nan, "p95": nan, "reached": 0, "of": int(arr.size)}
    clicks = ok * every
    return {
        "median": round(float(np.median(clicks)), 1),
        "p5": round(float(np.percentile(clicks, 5)), 1),
        "p95": round(float(np.percentile(clicks, 95)), 1),
        "reached": int(ok.size),
        "of": int(arr.size),
    }


def run_all(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Every scenario x seed x policy, with a progress bar."""
    policies = ["fixed", *(f"thompson@{f:g}" for f in args.floors)]
    total = len(SCENARIOS) * args.seeds * len(policies)
    results: dict[str, Any] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("simulating", total=total)
        for scenario in SCENARIOS:
            runs: dict[str, list[dict[str, npt.NDArray[np.float64]]]] = {p: [] for p in policies}
            for seed in range(args.seeds):
                stream = make_stream(seed, args.clicks, args.users)
                for policy in policies:
                    progress.update(task, description=f"{scenario.name} seed {seed} {policy}")
                    runs[policy].append(
                        simulate(scenario, policy, stream, args.every, args.draws, seed)
                    )
                    progress.advance(task)
            results[scenario.name] = summarise(scenario, runs, args.every)
    return results


def _fmt(b: dict[str, float], spec: str = ".3f") -> str:
    return f"{b['mean']:{spec}} [{b['p5']:{spec}}, {b['p95']:{spec}}]"


def print_table(results: dict[str, Any], console: Console, clicks: int) -> None:
    """One row per scenario and policy: mean [5%, 95%] over seeds."""
    table = Table(title=f"Thompson vs fixed split over {clicks:,} clicks (mean [5%, 95%])")
    for col in (
        "scenario",
        "policy",
        "final share of best",
        "best's traffic, last 10%",
        "regret at N (hits)",
        "regret / fixed",
        "users switched/run",
        "clicks until P(best)≥0.8 for good (median)",
    ):
        table.add_column(col, justify="left" if col in ("scenario", "policy") else "right")
    for name, sc in results.items():
        for policy, row in sc["policies"].items():
            ratio = row.get("regret_ratio_vs_fixed")
            reach = row.get("clicks_to_p_best_0.8")
            reach_s = "—"
            if reach and reach["reached"]:
                reach_s = f"{reach['median']:,.0f} [{reach['p5']:,.0f}, {reach['p95']:,.0f}]"
                if reach["reached"] < reach["of"]:
                    reach_s += f" ({reach['reached']}/{reach['of']} seeds)"
            table.add_row(
                name,
                policy,
                _fmt(row["final_allocated_share_best"]),
                _fmt(row["traffic_share_best_last_10pct"]),
                _fmt(row["regret_at_n"], ",.0f"),
                _fmt(ratio) if ratio else "—",
                _fmt(row["users_switching_arm_per_run"], ".2f"),
                reach_s,
            )
    console.print(table)


def plot(results: dict[str, Any], path: Path, every: int) -> str | None:
    """Per scenario: best arm's traffic share and cumulative regret over clicks (for an A/A
    scenario, where regret is 0, the users who switched arm instead)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    palette = ["0.35", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    fig, axes = plt.subplots(len(results), 2, figsize=(12, 3.2 * len(results)), squeeze=False)
    for row_axes, (name, sc) in zip(axes, results.items(), strict=True):
        ax_share, ax_regret = row_axes
        for i, (policy, row) in enumerate(sc["policies"].items()):
            colour = palette[i % len(palette)]
            full = row["_full"]
            x = (np.arange(full["traffic"].shape[1]) + 1) * every
            _band_plot(ax_share, x, full["traffic"], colour, policy)
            right = full["switched"] if sc["aa"] else full["regret"]
            _band_plot(ax_regret, x, right, colour, policy)
        rates = ", ".join(f"{a} {r:.4f}" for a, r in sc["rates"].items())
        ax_share.set_title(f"{name}: traffic share of {sc['best_arm']}\n({rates})", fontsize=9)
        ax_share.set_ylim(0, 1)
        ax_share.set_ylabel("share of clicks")
        if sc["aa"]:
            ax_regret.set_title(f"{name}: regret is 0; arm switches per user so far", fontsize=9)
            ax_regret.set_ylabel("switches per user")
        else:
            ax_regret.set_title(f"{name}: cumulative regret (expected hits lost)", fontsize=9)
            ax_regret.set_ylabel("hits")
        for ax in row_axes:
            ax.set_xlabel("clicks")
            ax.grid(alpha=0.3)
        ax_share.legend(fontsize=8, loc="lower right")
    fig.suptitle("Thompson allocation vs fixed split: mean and 5-95% band over seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _band_plot(
    ax: Any, x: npt.NDArray[np.int64], runs: npt.NDArray[np.float64], c: str, label: str
) -> None:
    """Mean line over seeds with a shaded 5-95% band."""
    lo, mean, hi = (
        np.percentile(runs, 5, axis=0),
        runs.mean(axis=0),
        np.percentile(runs, 95, axis=0),
    )
    ax.plot(x, mean, color=c, label=label, lw=1.4)
    ax.fill_between(x, lo, hi, color=c, alpha=0.18, lw=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clicks", type=int, default=200_000, help="clicks per run")
    p.add_argument("--every", type=int, default=1_000, help="clicks between allocation updates")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--draws", type=int, default=4_000, help="posterior samples per update")
    p.add_argument("--floors", type=float, nargs="+", default=[0.05, 0.1])
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True, width=200)
    results = run_all(args, console)
    print_table(results, console, args.clicks)
    png = plot(results, args.out.with_suffix(".png"), args.every)
    for sc in results.values():
        for row in sc["policies"].values():
            row.pop("_full")
    save_result(
        {
            "bench": "bandit",
            "cpu": cpu_name(),
            "clicks": args.clicks,
            "every": args.every,
            "seeds": args.seeds,
            "users": args.users,
            "user_activity": "log-normal(0, 1) weights; user position = blake2b(salt:user) / 2^64",
            "draws": args.draws,
            "floors": args.floors,
            "regret": "expected hits lost vs sending every click to the best arm",
            "scenarios": results,
            "plot": png,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
