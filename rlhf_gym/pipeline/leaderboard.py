"""``rlhf-gym leaderboard``: every agent on one frontier, over several seeds, with standard errors.

Runs the pipeline (:func:`rlhf_gym.pipeline.run_pipeline`) once per seed, each into its own
folder ``out/seedN`` (so a killed leaderboard resumes where it stopped), then pools the
seeds' summary rows: per policy the mean and standard error of gold gain, proxy gain, KL,
length, training seconds and the gold gain as a share of best-of-n's at the same KL (the
KL-efficiency that Gao et al. 2022 measured RL against). Writes ``leaderboard.md``,
``leaderboard.csv`` (means and standard errors), ``leaderboard_seeds.csv`` (every seed's rows)
and ``leaderboard.png`` (gold and proxy gain against KL, with error bars).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agents.registry import AGENTS
from rlhf_common.config_cli import config_command
from rlhf_common.io import atomic_path
from rlhf_common.training import claim_run_folder
from rlhf_gym.pipeline.config import RESUMABLE_CHANGES, PipelineConfig
from rlhf_gym.pipeline.layout import RunLayout
from rlhf_gym.pipeline.report import BEST_OF_N_COLOR, agent_color, save_figure, summary_rows, write_csv

__all__ = ["LeaderboardConfig", "cli", "leaderboard_rows", "mean_se", "run_leaderboard"]

COLUMNS = ("gold_gain", "proxy_gain", "kl", "response_length", "gain_ratio", "train_seconds", "train_episodes")
"""The pooled columns: gains are over the SFT reference of the same seed."""


@dataclass
class LeaderboardConfig(PipelineConfig):
    """The pipeline's settings, run for ``num_seeds`` seeds: ``seed``, ``seed + 1``, ...

    With the defaults (every registered agent, the shipped policy and reward model, 128 held-out
    prompts x 16 samples) it takes about an hour and a half on 2 idle CPU cores (README, Leaderboard).
    """

    out: str = "runs/leaderboard"
    """Leaderboard folder: one pipeline run per seed in ``seedN/``, the pooled tables and plot at the top."""
    agents: str = ",".join(AGENTS)
    """Comma-separated agents, names of ``agents.registry.AGENTS``; default: every registered agent."""
    num_seeds: int = 3
    """Pipeline runs, seeds ``seed`` to ``seed + num_seeds - 1``; standard errors need at least 2."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_seeds < 1:
            raise ValueError(f"--num-seeds {self.num_seeds} must be >= 1.")

    @property
    def seeds(self) -> list[int]:
        """The seeds, in order."""
        return list(range(self.seed, self.seed + self.num_seeds))

    def seed_config(self, seed: int) -> PipelineConfig:
        """The pipeline run of one seed."""
        fields = {k: v for k, v in asdict(self).items() if k != "num_seeds"}
        return PipelineConfig(**{**fields, "seed": seed, "out": str(Path(self.out) / f"seed{seed}")})


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def _seed_rows(root: Path, seed: int, agents: Sequence[str]) -> list[dict[str, Any]]:
    """One seed's summary rows with gains over its SFT reference."""
    rows = summary_rows(RunLayout(root / f"seed{seed}"), agents)
    if not rows or rows[0]["policy"] != "SFT reference":
        return []
    base = rows[0]
    return [{"seed": seed, **row, "gold_gain": row["gold"] - base["gold"], "proxy_gain": row["proxy"] - base["proxy"]}
            for row in rows]


def leaderboard_rows(root: str | Path, seeds: Sequence[int], agents: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """``(pooled rows, every seed's rows)`` of the finished seeds under ``root``; pooled rows are in table order."""
    per_seed = [row for seed in seeds for row in _seed_rows(Path(root), seed, agents)]
    pooled: dict[str, dict[str, Any]] = {}
    for policy in dict.fromkeys(row["policy"] for row in per_seed):
        rows = [r for r in per_seed if r["policy"] == policy]
        out: dict[str, Any] = {"policy": policy, "seeds": len(rows)}
        for col in COLUMNS:
            values = [float(r[col]) for r in rows if r.get(col) is not None]
            out[col], out[f"{col}_se"] = mean_se(values) if values else (None, None)
            out[f"{col}_seeds"] = len(values)
        pooled[policy] = out
    references = [r for r in pooled.values() if r["train_episodes"] == 0]  # SFT and best-of-n
    trained = sorted((r for r in pooled.values() if r["train_episodes"] != 0),
                     key=lambda r: -math.inf if r["gain_ratio"] is None else r["gain_ratio"], reverse=True)
    return references + trained, per_seed


def _cell(row: dict[str, Any], col: str, digits: int, sign: str = "") -> str:
    """``mean ± se`` of a pooled column (``sign="+"`` prints the mean's sign), noting seeds that lack it."""
    mean, se, n = row.get(col), row.get(f"{col}_se"), row.get(f"{col}_seeds", 0)
    if mean is None:
        return "n/a"
    text = f"{mean:{sign}.{digits}f}" + (f" ± {se:.{digits}f}" if n > 1 else "")
    return text + (f" ({n} of {row['seeds']} seeds)" if n < row["seeds"] else "")


def format_leaderboard(rows: list[dict[str, Any]]) -> str:
    """The pooled rows as a Markdown table: mean ± standard error over seeds."""
    lines = ["| policy | gold gain | proxy gain | KL (nats) | gold gain / best-of-n's at same KL | length | "
             "training s | seeds |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {_cell(r, 'gold_gain', 3, '+')} | {_cell(r, 'proxy_gain', 2, '+')} | "
                     f"{_cell(r, 'kl', 2)} | {_cell(r, 'gain_ratio', 2)} | {_cell(r, 'response_length', 1)} | "
                     f"{_cell(r, 'train_seconds', 0)} | {r['seeds']} |")
    return "\n".join(lines)


def _plot(path: Path, rows: list[dict[str, Any]], names: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), layout="constrained")
    bon = [r for r in rows if r["train_episodes"] == 0]
    for ax, key, label in ((axes[0], "gold_gain", "gold gain"), (axes[1], "proxy_gain", "proxy gain")):
        ax.errorbar([r["kl"] for r in bon], [r[key] for r in bon], yerr=[r[f"{key}_se"] for r in bon], fmt="-o",
                    color=BEST_OF_N_COLOR, label="best-of-n from the SFT policy (n = 1, 2, 4, ...)")
        for r in rows:
            if r["train_episodes"] != 0:
                ax.errorbar([r["kl"]], [r[key]], xerr=[r["kl_se"]], yerr=[r[f"{key}_se"]], fmt="*", markersize=14,
                            color=agent_color(names[r["policy"]]), markeredgecolor="black", label=r["policy"])
        ax.set_xlabel("KL(policy || SFT reference), nats per response")
        ax.set_ylabel(f"{label} over the SFT reference")
        ax.set_title(f"{label.capitalize()} against KL (mean ± s.e. over seeds)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=9)
    save_figure(fig, path)


def run_leaderboard(config: LeaderboardConfig) -> list[dict[str, Any]]:
    """Run (or resume) every seed's pipeline, then pool them; returns the pooled rows."""
    from agents.registry import get_agent
    from rlhf_gym.pipeline.run import run_pipeline

    root = Path(config.out)
    claim_run_folder(root, config, RESUMABLE_CHANGES, fix="rerun with the same flags to resume it, "
                     "or pass another --out for a new leaderboard.")
    for seed in config.seeds:
        print(f"[rlhf-gym leaderboard] seed {seed} ({config.seeds.index(seed) + 1} of {config.num_seeds})", flush=True)
        run_pipeline(config.seed_config(seed))
    rows, per_seed = leaderboard_rows(root, config.seeds, config.agent_names)
    write_csv(root / "leaderboard.csv", rows)
    write_csv(root / "leaderboard_seeds.csv", per_seed)
    names = {get_agent(n).label: n for n in config.agent_names}
    _plot(root / "leaderboard.png", rows, names)
    table = format_leaderboard(rows)
    text = (f"# rlhf-gym leaderboard\n\nSeeds {', '.join(map(str, config.seeds))}; each agent trained on "
            f"{config.timesteps:,} tokens times its registry share, evaluated on {config.n_eval_prompts} held-out "
            f"prompts x {config.eval_samples} samples; mean ± standard error over seeds. Gains are over the SFT "
            f"reference of the same seed.\n\n{table}\n\n![leaderboard](leaderboard.png)\n")
    with atomic_path(root / "leaderboard.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"\n{table}\n\nwrote {root / 'leaderboard.md'}")
    return rows


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym leaderboard``: the pipeline over several seeds, every agent pooled on one frontier."""
    from rlhf_gym.pipeline.run import quietly

    return config_command(argv, "rlhf-gym leaderboard", __doc__.splitlines()[0].split(": ", 1)[1],
                          LeaderboardConfig, quietly(run_leaderboard))
