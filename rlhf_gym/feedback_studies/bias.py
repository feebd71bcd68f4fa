"""``rlhf-gym bias-study``: a length-biased labeler, the reward model it teaches, the audit, the fix, and RL on both.

1. Feedback: the SFT policy's samples for openings of training fortunes, ranked by a simulated
   labeler that adds ``bias_per_char`` per character to the gold score
   (:func:`rlhf_gym.pipeline.feedback.simulated_labels`).
2. Two reward models on the same labels, seed and steps: plain Bradley-Terry ("biased") and
   ``--debias length`` (length as a covariate, :mod:`reward_models.debias`).
3. The audit (:mod:`reward_models.audit`) of the default reward model and both, on gold-scored SFT
   samples of the evaluation prompts, and on the held-out labeled pairs.
4. PPOKL (default settings, same budget and seed) against each, evaluated as the pipeline does
   (:func:`rlhf_gym.pipeline.evaluate.evaluate_policy`): gold, proxy, KL and response length.

Each stage's output is kept in ``out`` and reused, so a killed study resumes.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reward_models import HFRewardModel, load_preferences
from reward_models.audit import (
    audit_pairs,
    audit_scores,
    binned_means,
    cheap_features,
    gold_pair_accuracy,
    load_scored_samples,
)
from rlhf_common.config_cli import config_command
from rlhf_common.io import atomic_path, write_json_atomic
from rlhf_common.training import claim_run_folder, quiet_transformers, read_log, set_torch_threads
from rlhf_gym.feedback_studies.common import (
    RLStudyConfig,
    feedback_prompts,
    gold_samples,
    read_json,
    train_and_evaluate,
)
from rlhf_gym.pipeline.feedback import FeedbackConfig, simulated_labels
from rlhf_gym.pipeline.report import save_figure

REWARD_MODELS = {"clean": ("clean", None), "biased": ("biased", None), "debiased": ("biased", "length")}
"""The reward models trained here, name: (whose labels, ``--debias``); the audit adds the shipped default one."""


@dataclass
class BiasStudyConfig(RLStudyConfig):
    """What ``rlhf-gym bias-study`` runs; each field is also a ``--flag``."""

    out: str = "runs/feedback_bias"
    """Study folder: labels, reward models, audits, PPOKL runs, results.json and results.md. Re-running resumes."""
    plot: str = "docs/rm_length_bias.png"
    """Where the summary figure goes."""
    bias_per_char: float = 0.01
    """The labeler's length bias per character, in gold units (one std of SFT response length, 32 characters,
    is worth 0.32, about 0.6 gold std)."""


def train_reward_models(config: BiasStudyConfig, work: Path, policy: Path) -> dict[str, dict[str, Any]]:
    """Steps 1-2: one collection labeled by a clean and by the length-biased labeler, then :data:`REWARD_MODELS`.

    "clean" is the reference: what the same samples teach without the bias.
    """
    from reward_models.train import RewardTrainConfig, train_reward_model

    prompts = feedback_prompts(config.rm_prompts, config.seed)
    folders = {"clean": work / "feedback_clean", "biased": work / "feedback"}
    for labels, folder in folders.items():
        if labels == "clean" and not (folder / "collection.jsonl").is_file():  # the biased labels' samples
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folders["biased"] / "collection.jsonl", folder / "collection.jsonl")
        simulated_labels(policy, prompts, folder, FeedbackConfig(
            num_generations=config.num_generations, labeler_temperature=config.labeler_temperature,
            bias_per_char=config.bias_per_char if labels == "biased" else 0.0, seed=config.seed,
            progress=config.progress))
    records = {}
    for name, (labels, debias) in REWARD_MODELS.items():
        record_path, feedback = work / f"rm_{name}.json", folders[labels]
        if (record := read_json(record_path)) is None:
            result = train_reward_model(RewardTrainConfig(
                model=str(policy), data=str(feedback / "preferences_train.jsonl"),
                val_data=str(feedback / "preferences_val.jsonl"), out=str(work / f"rm_{name}"),
                reference_data=str(feedback / "collection.jsonl"), learning_rate=config.rm_learning_rate,
                seed=config.seed, progress=config.progress, debias=debias))
            record = {"path": str(result.out), "labels": labels, "val_accuracy": result.val.accuracy,
                      "steps": result.steps, "seconds": round(result.seconds, 1),
                      "debias": read_json(result.out / "debias.json")}
            write_json_atomic(record_path, record)
        records[name] = record
    return records


def run_audits(samples: Path, pairs_file: Path, paths: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Step 3: each reward model's audit on the gold-scored samples and on the held-out labeled pairs."""
    prompts, responses, gold = load_scored_samples(samples)
    features = cheap_features(responses)
    items = load_preferences(pairs_file)
    flat = [(it.prompt, r) for it in items for r in it.responses]
    audits = {}
    for name, path in paths.items():
        with quiet_transformers():
            rm = HFRewardModel(path)
        scores = rm.score(prompts, responses)
        result = audit_scores(scores, gold, features)
        result.update(gold_pair_accuracy(scores, gold, prompts))
        result["pairs"] = audit_pairs(rm.score([p for p, _ in flat], [r for _, r in flat]), items)
        result["residual_bins"] = [b.tolist() for b in binned_means(features["length"], result.pop("residual"))]
        audits[name] = result
    return audits


def run_bias_study(config: BiasStudyConfig) -> dict[str, Any]:
    """All four steps of the module docstring; writes results.json, results.md and the plot."""
    from agents.lm import load_causal_lm
    from text_env.defaults import default_policy_path, default_reward_model_path

    started = time.monotonic()
    set_torch_threads(config.num_threads)
    work = claim_run_folder(config.out, config, free=("plot", "num_threads", "progress"))
    policy = default_policy_path()
    with quiet_transformers():
        reference = load_causal_lm(policy).requires_grad_(False)
    rms = train_reward_models(config, work, policy)
    paths = {"default": default_reward_model_path(), **{n: Path(r["path"]) for n, r in rms.items()}}
    audits = run_audits(gold_samples(config, work / "audit_samples.jsonl", reference),
                        work / "feedback" / "preferences_val.jsonl", paths)
    rl = {name: train_and_evaluate(config, work, name, paths[name], reference) for name in ("biased", "debiased")}
    results = {"config": asdict(config), "reward_models": rms, "audits": audits,
               "rl": {n: {"sft": _brief(r["sft"]), "ppo": _brief(r["ppo"]), "train_seconds": r["train_seconds"]}
                      for n, r in rl.items()},
               "seconds_this_call": round(time.monotonic() - started, 1)}
    write_json_atomic(work / "results.json", results)
    with atomic_path(work / "results.md") as tmp:
        Path(tmp).write_text(results_markdown(results), encoding="utf-8")
    plot_study(Path(config.plot), audits, {n: read_log(work / f"ppo_{n}" / "progress.csv") for n in rl})
    return results


def _brief(evaluation: dict[str, Any]) -> dict[str, float]:
    return {k: evaluation[k] for k in ("gold", "gold_sem", "proxy", "kl", "response_length", "eos_fraction")}


def results_markdown(results: dict[str, Any]) -> str:
    """The audit table and the RL table, as in the README."""
    lines = ["| reward model | length coef. ± s.e. | R^2 added by length | punctuation coef. | repetition coef. "
             "| R^2 of gold alone | prefers the longer of a labeled pair (labels) | held-out accuracy: its labels "
             "| gold |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, a in results["audits"].items():
        t, p = a["terms"], a["pairs"]
        acc = results["reward_models"].get(name, {}).get("val_accuracy")
        acc_text = "" if acc is None else f"{acc:.3f}"
        lines.append(
            f"| {name} | {t['length']['coef']:+.3f} ± {t['length']['se']:.3f} | {t['length']['incremental_r2']:.3f} "
            f"| {t['punctuation']['coef']:+.3f} ± {t['punctuation']['se']:.3f} "
            f"| {t['repetition']['coef']:+.3f} ± {t['repetition']['se']:.3f} | {a['r2_gold']:.3f} "
            f"| {p['rm_prefers_longer']:.3f} ({p['labels_prefer_longer']:.3f}) | {acc_text} "
            f"| {a['gold_pair_accuracy']:.3f} |")
    lines += ["", "| policy | reward model | gold ± s.e. | proxy | KL (nats) | response tokens | train time |",
              "|---|---|---|---|---|---|---|"]
    for name, r in results["rl"].items():
        for row, label, secs in (("sft", "SFT", ""), ("ppo", "PPOKL", f"{r['train_seconds'] / 60:.1f} min")):
            e = r[row]
            lines.append(f"| {label} | {name} | {e['gold']:+.3f} ± {e['gold_sem']:.3f} | {e['proxy']:+.3f} "
                         f"| {e['kl']:.2f} | {e['response_length']:.1f} | {secs} |")
    return "\n".join(lines) + "\n"


def plot_study(path: Path, audits: dict[str, dict[str, Any]], logs: dict[str, list[dict[str, str]]]) -> None:
    """Residual-after-gold against length per reward model; PPOKL's gold and response length while training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), layout="constrained")
    for name, a in audits.items():
        axes[0].plot(*a["residual_bins"], "o-", label=f"{name} (length coef. {a['terms']['length']['coef']:+.2f})")
    axes[0].axhline(0.0, color="grey", lw=0.8)
    axes[0].set(xlabel="response length (characters, decile means)", ylabel="score left after gold (std units)",
                title="Audit: reward-model score beyond gold")
    for name, rows in logs.items():
        steps = np.array([float(r["timesteps"]) for r in rows])
        axes[1].plot(steps, [float(r["gold_score"]) for r in rows], label=f"PPOKL vs {name}")
        axes[2].plot(steps, [float(r["response_length"]) for r in rows], label=f"PPOKL vs {name}")
    axes[1].set(xlabel="tokens", ylabel="gold score (training batches)", title="RL: gold")
    axes[2].set(xlabel="tokens", ylabel="response tokens", title="RL: response length")
    for ax in axes:
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)


def cli(argv: list[str] | None = None) -> int:
    """``rlhf-gym bias-study``: audit and debias a length-biased reward model, and RL against both."""

    def run(config: BiasStudyConfig) -> None:
        results = run_bias_study(config)
        print(results_markdown(results), end="")
        print(f"wrote {config.out}/results.json, results.md and {config.plot}")

    return config_command(argv, "rlhf-gym bias-study", "Length-biased labels: the reward model's audit before and "
                          "after --debias length, and PPOKL against both.", BiasStudyConfig, run)
