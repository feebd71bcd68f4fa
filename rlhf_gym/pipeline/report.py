"""The report of a pipeline run: ``report.md``, PNG plots and CSV tables, from the run's own files.

:class:`~rlhf_gym.pipeline.layout.RunLayout` names every file a run directory holds; the
pipeline writes them stage by stage and :func:`write_report` reads them back, so the report can be
re-rendered at any time (``rlhf-gym report --out DIR``), also from a partial run.

Plots (matplotlib, Agg backend):

* ``training_curves.png``: proxy (reward-model) and gold score of each agent's training
  batches against episodes, the SFT reference as a dashed line;
* ``frontier.png``: gold and proxy score against KL(pi || pi_ref) per response: the
  best-of-n curve (n = 1..64) and each agent's training path and held-out evaluation;
* ``reward_model.png``: the reward model's held-out pairwise accuracy next to the ceiling
  (the agreement of two independent simulated labelers) and chance.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.best_of_n import matched_best_of_n
from agents.registry import AGENTS, get_agent
from rlhf_common.config_cli import run_command
from rlhf_common.io import atomic_path
from rlhf_common.training import read_log
from rlhf_gym.pipeline.layout import RunLayout

__all__ = ["agent_color", "format_table", "load_curves", "save_figure", "summary_rows", "write_csv", "write_report"]

BEST_OF_N_COLOR = "tab:blue"
"""The best-of-n curve's colour in the plots."""


def _label(name: str) -> str:
    """An agent's display name (``agents.registry``)."""
    return get_agent(name).label


def agent_color(name: str) -> str:
    """An agent's plot colour: its registry entry's, else one of matplotlib's default cycle."""
    return get_agent(name).color or f"C{list(AGENTS).index(name) % 10}"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_curves(layout: RunLayout, agents: Sequence[str]) -> dict[str, list[dict[str, float]]]:
    """Each finished-or-running agent's training rows: ``episodes``, ``score``, ``gold_score``, ``kl``."""
    curves = {}
    for name in agents:
        rows = read_log(layout.agent_dir(name) / "progress.csv")
        if not rows:
            continue
        batch = _read_json(layout.config)["batch_size"] if layout.config.is_file() else None
        out = []
        for row in rows:
            # Our agents log iterations of batch_size episodes; the SB3 run logs its episode count itself.
            episodes = float(row["episodes"]) if row.get("episodes") else float(row["step"]) * (batch or 1)
            out.append({"episodes": episodes, **{k: _float(row.get(k)) for k in ("score", "gold_score", "kl")}})
        curves[name] = out
    return curves


def _float(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def _ema(values: Sequence[float], alpha: float = 0.3) -> list[float]:
    """Exponential moving average: the trend of a noisy per-batch curve."""
    out: list[float] = []
    for v in values:
        out.append(v if not out or math.isnan(out[-1]) else alpha * v + (1 - alpha) * out[-1])
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as a CSV with every key any row has (atomically); nothing for no rows."""
    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)


# ---- plots -------------------------------------------------------------------------------
def _plot_training(layout: RunLayout, curves: dict[str, list[dict[str, float]]], reference: dict | None) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for ax, key, title in ((axes[0], "score", "Proxy score (reward model)"), (axes[1], "gold_score", "Gold score")):
        for name, rows in curves.items():
            x = [r["episodes"] for r in rows]
            y = [r[key] for r in rows]
            ax.plot(x, y, color=agent_color(name), alpha=0.25, linewidth=1)
            ax.plot(x, _ema(y), color=agent_color(name), linewidth=2, marker="o", markersize=3, label=_label(name))
        if reference is not None:
            ax.axhline(reference["proxy" if key == "score" else "gold"], color="black", linestyle="--",
                       linewidth=1, label="SFT reference (held-out)")
        ax.set_title(f"{title} of training batches")
        ax.set_xlabel("training episodes")
        ax.set_ylabel(title.split(" (")[0])
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)
    fig.suptitle("Learning curves: same prompts and seed (faint: per batch; bold: moving average)")
    path = layout.png("training_curves")
    save_figure(fig, path)
    return path


def _plot_frontier(layout: RunLayout, curves: dict[str, list[dict[str, float]]], bon: dict | None,
                   evals: dict[str, dict]) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 6), layout="constrained")
    for ax, key, ylabel in ((axes[0], "gold", "gold score"), (axes[1], "proxy", "proxy score (reward model)")):
        if bon is not None:
            line = bon.get("dense", bon["curve"])  # every n when measured, else powers of two
            ax.plot([r["kl"] for r in line], [r[key] for r in line], "-", color=BEST_OF_N_COLOR, linewidth=2,
                    label="best-of-n from the SFT policy (held-out)")
            ax.plot([r["kl"] for r in bon["curve"]], [r[key] for r in bon["curve"]], "o", color=BEST_OF_N_COLOR)
            for r in bon["curve"]:
                ax.annotate(f"n={r['n']}", (r["kl"], r[key]), textcoords="offset points", xytext=(4, -12), fontsize=8,
                            color=BEST_OF_N_COLOR)
        for name, rows in curves.items():
            train_key = "gold_score" if key == "gold" else "score"
            ax.plot(_ema([r["kl"] for r in rows]), _ema([r[train_key] for r in rows]), color=agent_color(name),
                    alpha=0.45, linewidth=1.5, marker=".", label=f"{_label(name)}: training path (moving average)")
        for name, ev in evals.items():
            ax.plot([ev["kl"]], [ev[key]], marker="*", markersize=16, color=agent_color(name), markeredgecolor="black",
                    linestyle="none", label=f"{_label(name)}: final policy (held-out)")
        ax.set_xlabel("KL(policy || SFT reference), nats per response")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel.capitalize().split(' (')[0]} against KL")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=9)
    fig.suptitle("Reward-KL frontier: higher at the same KL is better (best-of-n KL = ln n - (n-1)/n)")
    path = layout.png("frontier")
    save_figure(fig, path)
    return path


def _plot_reward_model(layout: RunLayout, rm: dict) -> Path:
    import matplotlib.pyplot as plt

    bars = [
        ("reward model vs labeler\n(held-out rankings)", rm["accuracy"], "tab:blue"),
        ("ceiling: labeler vs\nindependent labeler", rm["ceiling"], "tab:gray"),
        ("reward model vs\nnoise-free gold order", rm["gold_accuracy"], "tab:cyan"),
        ("labeler vs\nnoise-free gold order", rm["labeler_gold_agreement"], "lightgray"),
    ]
    if rm.get("training") and rm["training"].get("val_accuracy") is not None:
        bars.insert(1, ("reward model vs labeler\n(its validation split)", rm["training"]["val_accuracy"], "tab:olive"))
    fig, ax = plt.subplots(figsize=(9, 4.5), constrained_layout=True)
    names, values, colors = zip(*bars, strict=True)
    ax.bar(range(len(values)), values, color=colors, edgecolor="black")
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=10)
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1, label="chance (0.5)")
    ax.set_xticks(range(len(values)), names, fontsize=9)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("pairwise accuracy / agreement")
    ax.set_title(f"Reward model: pairwise accuracy on {rm['pairs']} held-out pairs "
                 f"(SFT samples of {rm['prompts']} evaluation prompts)")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    path = layout.png("reward_model")
    save_figure(fig, path)
    return path


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# ---- tables --------------------------------------------------------------------------------
def summary_rows(layout: RunLayout, agents: Sequence[str]) -> list[dict[str, Any]]:
    """One row per policy: the SFT reference, best-of-n for each n, then each finished agent.

    An agent's row also holds best-of-n at its KL (``bon_n``, ``bon_gold``) and ``gain_ratio``:
    its gold gain over the SFT reference divided by best-of-n's gain at the same KL (None when
    its KL is beyond the largest n measured or best-of-n gains nothing there).
    """
    rows: list[dict[str, Any]] = []
    bon = _read_json(layout.best_of_n)
    if bon is not None:
        for r in bon["curve"]:
            name = "SFT reference" if r["n"] == 1 else f"best-of-{r['n']}"
            rows.append({"policy": name, "gold": r["gold"], "proxy": r["proxy"], "kl": r["kl"],
                         "response_length": r["response_length"], "train_episodes": 0, "train_seconds": 0.0,
                         "eval_episodes": r["episodes"]})
    for name in agents:
        ev = _read_json(layout.agent_eval(name))
        if ev is None:
            continue
        row = {"policy": _label(name), "gold": ev["gold"], "proxy": ev["proxy"], "kl": ev["kl"],
               "response_length": ev["response_length"], "train_episodes": ev["train_episodes"],
               "train_seconds": ev["train_seconds"], "eval_episodes": ev["episodes"],
               "bon_n": None, "bon_gold": None, "gain_ratio": None}
        dense = bon.get("dense", []) if bon is not None else []
        row["bon_max_n"] = dense[-1]["n"] if dense else None
        matched = matched_best_of_n(dense, ev["kl"])
        if matched is not None:
            base = bon["curve"][0]["gold"]
            row.update(bon_n=round(matched["n"], 2), bon_gold=matched["gold"])
            if matched["gold"] > base:
                row["gain_ratio"] = (ev["gold"] - base) / (matched["gold"] - base)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The summary rows as a Markdown table."""
    lines = ["| policy | gold score | proxy score | KL (nats) | length (tokens) | training episodes | training s "
             "| gold gain / best-of-n's at same KL |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("gain_ratio") is not None:
            versus = f"{r['gain_ratio']:.2f} (n = {r['bon_n']:.1f}: {r['bon_gold']:+.3f})"
        elif r.get("bon_gold") is not None:
            versus = f"n/a (best-of-{r['bon_n']:.1f} gains nothing)"
        elif r.get("bon_max_n"):
            versus = f"n/a (KL beyond best-of-{r['bon_max_n']}'s)"
        else:
            versus = ""
        lines.append(f"| {r['policy']} | {r['gold']:+.3f} | {r['proxy']:+.3f} | {r['kl']:.2f} | "
                     f"{r['response_length']:.1f} | {r['train_episodes']} | {r['train_seconds']:.0f} | {versus} |")
    return "\n".join(lines)


def _md(text: str) -> str:
    """Text made safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ").strip() or "(empty)"


def _samples_section(bon: dict | None, evals: dict[str, dict]) -> list[str]:
    if bon is None:
        return []
    out = ["## Samples before and after", "",
           "The same held-out prompts: the first sample of each policy, and the reward model's favourite of "
           f"{bon['max_n']} SFT samples.", ""]
    for i, sample in enumerate(bon["samples"]):
        out += [f"**Prompt {i + 1}:** `{_md(sample['prompt'])}`", "", "| policy | response | gold |", "|---|---|---|"]
        out.append(f"| SFT reference | {_md(sample['response'])} | {sample['gold']:+.2f} |")
        out.append(f"| best-of-{bon['max_n']} | {_md(sample['best_response'])} | {sample['best_gold']:+.2f} |")
        for name, ev in evals.items():
            if i < len(ev["samples"]):
                s = ev["samples"][i]
                out.append(f"| {_label(name)} | {_md(s['response'])} | {s['gold']:+.2f} |")
        out.append("")
    return out


def write_report(root: str | os.PathLike[str], agents: Sequence[str] | None = None) -> Path:
    """Write ``report.md``, the PNGs and the CSV tables from what the run in ``root`` has finished.

    ``agents``: whose results to include; default: every registered agent the run has results of.
    """
    import matplotlib

    matplotlib.use("Agg")
    layout = RunLayout(Path(root))
    agents = list(AGENTS) if agents is None else agents
    setup, sft, rm = _read_json(layout.setup), _read_json(layout.sft), _read_json(layout.reward_model)
    bon = _read_json(layout.best_of_n)
    evals = {name: ev for name in agents if (ev := _read_json(layout.agent_eval(name))) is not None}
    curves = load_curves(layout, agents)
    reference = None
    if bon is not None:
        first = bon["curve"][0]
        reference = {"gold": first["gold"], "proxy": first["proxy"]}

    rows = summary_rows(layout, agents)
    write_csv(layout.summary_csv, rows)
    write_csv(layout.curves_csv, [{"agent": name, **r} for name, rs in curves.items() for r in rs])
    if bon is not None:
        write_csv(layout.best_of_n_csv, bon["curve"])

    md = ["# rlhf-gym pipeline report", ""]
    if setup is not None:
        md += ["## Step 0: set-up", "", f"- policy: `{setup['policy']}` ({setup['policy_source']}, "
               f"{setup['parameters'] / 1e6:.2f} M parameters)",
               f"- training prompts: `{setup['prompts']}` ({setup['n_prompts']}); evaluation prompts: "
               f"`{setup['eval_prompts']}` (first {setup['n_eval_prompts']} used)",
               f"- reward model: {setup['reward_model']}", ""]
    if sft is not None:
        md += ["## Step 1: the SFT policy", ""]
        card = sft.get("model_card")
        if card:
            md.append(f"- from the model card: SFT validation loss {card['val_loss']:.3f} nats/token "
                      f"(perplexity {card['val_perplexity']:.1f}) after {card['steps']} steps")
        md += [f"- measured on {sft['samples']} samples ({sft['prompts']} evaluation prompts x "
               f"{sft['num_generations']}): "
               f"gold score {sft['gold']:+.3f} (std {sft['gold_std']:.3f}), length {sft['response_length']:.1f} "
               f"tokens, {100 * sft['eos_fraction']:.0f}% ended by EOS",
               f"- gold scorer (the true objective, never the reward): `{sft['gold_scorer']}`", ""]
    if rm is not None:
        plot = _plot_reward_model(layout, rm)
        md += ["## Step 2: the reward model", "",
               f"{rm['source']}. Held-out pairwise accuracy against a simulated labeler (temperature "
               f"{rm['labeler_temperature']}): **{rm['accuracy']:.3f}**; ceiling (two independent labelers agree "
               f"on) **{rm['ceiling']:.3f}**; against the noise-free gold order: {rm['gold_accuracy']:.3f}. "
               f"Its scores of the SFT samples: mean {rm['proxy_mean']:+.2f}, std {rm['proxy_std']:.2f}.", "",
               f"![reward model]({plot.name})", ""]
    if rows:
        md += ["## Step 3: RL against the reward model", "",
               "Held-out evaluation prompts; KL is the per-response sum of log pi - log pi_ref (k1) for the "
               "agents, ln n - (n-1)/n for best-of-n.", "", format_table(rows), ""]
    if curves:
        md += [f"![training curves]({_plot_training(layout, curves, reference).name})", ""]
    if bon is not None or evals:
        md += [f"![reward-KL frontier]({_plot_frontier(layout, curves, bon, evals).name})", ""]
    md += _samples_section(bon, evals)
    times = [(name, data["seconds"]) for name, data in (("step 0", setup), ("step 1", sft), ("step 2", rm),
                                                         ("best-of-n", bon), *evals.items()) if data]
    if times:
        md += ["Stage times (seconds, training plus evaluation for agents): "
               + ", ".join(f"{_label(n) if n in AGENTS else n} {s:.0f}" for n, s in times) + ".", ""]
    md += ["## Raw data", "", f"`{layout.summary_csv.name}`, `{layout.curves_csv.name}`, "
           f"`{layout.best_of_n_csv.name}`; each agent's `progress.csv` and TensorBoard events are in "
           f"`{layout.agent_dir('NAME').parent.name}/NAME/` (`tensorboard --logdir {layout.root}`).", ""]
    with atomic_path(layout.report) as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")
    return layout.report


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym report --out DIR``: re-render the report of a (finished or partial) pipeline run."""
    parser = argparse.ArgumentParser(prog="rlhf-gym report", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the pipeline's output folder")
    args = parser.parse_args(argv)

    def main() -> None:
        if not RunLayout(Path(args.out)).setup.is_file():
            raise ValueError(f"--out {args.out} holds no pipeline run (no step0_setup.json); "
                             "run `rlhf-gym pipeline --out DIR` first.")
        print(f"wrote {write_report(args.out)}")

    return run_command("rlhf-gym report", main)


if __name__ == "__main__":
    sys.exit(cli())
