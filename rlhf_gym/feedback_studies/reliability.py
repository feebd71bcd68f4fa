"""``rlhf-gym reliability-study``: unreliable labelers, their estimated reliability, and weighted reward models.

1. Feedback: K samples of the default SFT policy for openings of training fortunes (as the default
   reward model's, :func:`rlhf_gym.feedback_studies.common.feedback_prompts`), each item ranked by
   ``labels_per_item`` of 5 simulated labelers (Bradley-Terry temperature 0.2, as the default
   reward model's labeler), drawn at random per item.
2. Three labeler panels on the same items, assignments and noise draws (a labeler's random
   stream does not depend on its flip probability): ``clean`` (no flips), ``unreliable``
   (two labelers reverse a ranking with probability ``unreliable_flip``) and ``adversarial``
   (one of those two at ``adversarial_flip`` instead).
3. The Dawid-Skene estimate (:mod:`reward_models.reliability`) of every labeler's flip rate, next
   to the true one: the share of its pair judgements against the gold order.
4. Reward models (the policy's backbone, the pipeline's settings, one epoch) on the clean labels,
   the mixed labels unweighted, weighted by labeler, and weighted per label (the posterior that
   the label's order is right); accuracy on held-out SFT samples of the evaluation prompts against
   the gold order.

Results are kept per run in ``out/results.json``, so a killed study resumes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reward_models import (
    HFRewardModel,
    PromptResponses,
    SimulatedLabeler,
    UpbeatGoldScorer,
    evaluate_preferences,
    load_collection,
)
from reward_models.reliability import estimate_reliability, row_judgements, weighted_rows
from rlhf_common.config_cli import config_command
from rlhf_common.io import write_json_atomic, write_jsonl_atomic
from rlhf_common.training import claim_run_folder, quiet_transformers, set_torch_threads
from rlhf_gym.pipeline.leaderboard import mean_se

LABELERS = ("l1", "l2", "l3", "l4", "l5")
"""The five simulated labelers; the last two are the unreliable ones."""


@dataclass
class ReliabilityStudyConfig:
    """What ``rlhf-gym reliability-study`` runs; each field is also a ``--flag``."""

    out: str = "runs/feedback_reliability"
    """Study folder: samples, results.json and results.md. Re-running resumes."""
    rm_prompts: int = 400
    """Training items: openings of training fortunes, num_generations SFT samples each."""
    n_heldout_prompts: int = 300
    """Evaluation prompts whose SFT samples measure the reward models against the gold order."""
    num_generations: int = 4
    """Responses per training item, ranked together."""
    heldout_generations: int = 8
    """SFT samples per evaluation prompt (8 give 28 pairs each)."""
    labels_per_item: int = 3
    """Labelers (of 5) who rank each item."""
    unreliable_flip: float = 0.4
    """Probability that an unreliable labeler reverses a whole ranking."""
    adversarial_flip: float = 0.9
    """The adversary's reversal probability (adversarial panel)."""
    labeler_temperature: float = 0.2
    """Bradley-Terry noise of every labeler in gold units (the default reward model's labeler)."""
    rm_learning_rate: float = 3e-4
    """Peak learning rate of the reward models (the pipeline's)."""
    rm_batch_size: int = 8
    """Rankings per optimiser step."""
    num_seeds: int = 3
    """Seeds 0..n-1 of the labelers, their assignment and the reward models (the samples are drawn once)."""
    bootstrap: int = 100
    """Item resamples for the standard errors of the estimated flip rates."""
    num_threads: int = 1
    """Torch CPU threads."""
    progress: bool = True
    """Show progress bars."""


def _panels(config: ReliabilityStudyConfig) -> dict[str, tuple[float, ...]]:
    """Each panel's flip probabilities, one per labeler."""
    u, a = config.unreliable_flip, config.adversarial_flip
    return {"clean": (0.0, 0.0, 0.0, 0.0, 0.0), "unreliable": (0.0, 0.0, 0.0, u, u),
            "adversarial": (0.0, 0.0, 0.0, u, a)}


def _samples(config: ReliabilityStudyConfig, work: Path) -> tuple[list[PromptResponses], list[PromptResponses]]:
    """``(training items, held-out items)``: SFT samples, drawn once and kept in ``work``."""
    from rlhf_gym.collect import CollectConfig, collect
    from rlhf_gym.feedback_studies.common import feedback_prompts
    from text_env.defaults import default_eval_prompts_path

    train, heldout = work / "collection_train.jsonl", work / "collection_heldout.jsonl"
    if not train.is_file():
        prompts = work / "train_prompts.jsonl"
        write_jsonl_atomic(prompts, [{"prompt": p} for p in feedback_prompts(config.rm_prompts, 0)])
        collect(CollectConfig(out=str(train), prompts=str(prompts), num_generations=config.num_generations,
                              progress=config.progress))
    if not heldout.is_file():
        collect(CollectConfig(out=str(heldout), prompts=str(default_eval_prompts_path()),
                              n_prompts=config.n_heldout_prompts, num_generations=config.heldout_generations, seed=1,
                              progress=config.progress))

    def distinct(path: Path) -> list[PromptResponses]:
        items = [PromptResponses(it.prompt, tuple(dict.fromkeys(it.responses))) for it in load_collection(path)]
        return [it for it in items if len(it.responses) >= 2]

    return distinct(train), distinct(heldout)


def label_panel(items: list[PromptResponses], flips: tuple[float, ...], config: ReliabilityStudyConfig,
                seed: int) -> list[dict[str, Any]]:
    """Export-style rows ``{"prompt", "responses", "labeler"}``: each item ranked by ``labels_per_item`` labelers.

    The assignment and each labeler's random stream depend on ``seed`` only, so panels differ in flips alone.
    """
    rng = np.random.default_rng([seed, 1])
    chosen = [sorted(rng.choice(len(LABELERS), config.labels_per_item, replace=False)) for _ in items]
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, (name, flip) in enumerate(zip(LABELERS, flips, strict=True)):
        mine = [i for i, who in enumerate(chosen) if n in who]
        labeler = SimulatedLabeler(temperature=config.labeler_temperature, flip_prob=flip, seed=1000 * seed + n)
        for i, ranking in zip(mine, labeler.label([items[i] for i in mine]), strict=True):
            rows.append((i, {"prompt": ranking.prompt, "responses": list(ranking.responses), "labeler": name}))
    return [row for _, row in sorted(rows, key=lambda r: r[0])]


def true_flip_rates(rows: list[dict[str, Any]], items: list[PromptResponses]) -> dict[str, float]:
    """Each labeler's share of pair judgements against the gold order (ties in gold left out)."""
    flat = [(it.prompt, r) for it in items for r in it.responses]
    score = dict(zip(flat, UpbeatGoldScorer().score([p for p, _ in flat], [r for _, r in flat]), strict=True))
    wrong: dict[str, list[bool]] = {name: [] for name in LABELERS}
    for row in rows:
        ranked = [score[row["prompt"], r] for r in row["responses"]]
        wrong[row["labeler"]] += [hi < lo for i, hi in enumerate(ranked) for lo in ranked[i + 1:] if hi != lo]
    return {name: float(np.mean(w)) for name, w in wrong.items()}




def train_and_measure(rows: list[dict[str, Any]], gold_order: list[Any], work: Path, name: str,
                      config: ReliabilityStudyConfig, seed: int) -> dict[str, Any]:
    """Train a reward model on ``rows`` (one epoch, no normalization) and its held-out accuracy against gold."""
    from reward_models.train import RewardTrainConfig, train_reward_model
    from text_env.defaults import default_policy_path

    start = time.monotonic()
    data, out = work / f"{name}.jsonl", work / name
    write_jsonl_atomic(data, rows)
    shutil.rmtree(out, ignore_errors=True)  # a run killed mid-way starts afresh
    with quiet_transformers():
        result = train_reward_model(RewardTrainConfig(
            model=str(default_policy_path()), data=str(data), out=str(out), val_fraction=0.0, normalize=False,
            learning_rate=config.rm_learning_rate, batch_size=config.rm_batch_size, seed=seed, eval_steps=0,
            save_steps=0, progress=config.progress,
        ))
        accuracy = evaluate_preferences(HFRewardModel(out), gold_order).accuracy
    shutil.rmtree(out)
    data.unlink()
    return {"gold_accuracy": accuracy, "rows": len(rows), "steps": result.steps,
            "seconds": round(time.monotonic() - start, 1)}


def _seed_runs(config: ReliabilityStudyConfig, items: list[PromptResponses], gold_order: list[Any], work: Path,
               seed: int, results: dict[str, Any], save: Any) -> None:
    """Every panel's labels, estimates and reward models for one seed, skipping runs already in ``results``."""
    for panel, flips in _panels(config).items():
        rows = label_panel(items, flips, config, seed)
        key = f"seed{seed}/{panel}"
        report = None if panel == "clean" else estimate_reliability(row_judgements(rows), config.bootstrap, seed)
        if report is not None and f"{key}/estimate" not in results:
            results[f"{key}/estimate"] = {"true": true_flip_rates(rows, items), "true_flip_prob": dict(
                zip(LABELERS, flips, strict=True)), **report.to_dict()}
            save()
        variants = {"unweighted": rows}
        if report is not None:
            variants |= {"weighted": weighted_rows(rows, report), "label_weighted": weighted_rows(rows, report, True)}
        for variant, labels in variants.items():
            if f"{key}/{variant}" not in results:
                results[f"{key}/{variant}"] = train_and_measure(labels, gold_order, work, f"rm_{panel}_{variant}",
                                                                config, seed)
                save()


def run_study(config: ReliabilityStudyConfig) -> dict[str, Any]:
    """Run (or resume) the study; returns the results (also in ``out/results.json`` and ``out/results.md``)."""
    set_torch_threads(config.num_threads)
    work = claim_run_folder(config.out, config, free=("num_threads", "progress"))
    results_path = work / "results.json"
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
    free = ("progress", "num_threads", "num_seeds")  # free to change on resuming: they change no result
    if saved and {k: v for k, v in saved["config"].items() if k not in free} != {
            k: v for k, v in asdict(config).items() if k not in free}:
        raise ValueError(f"--out {work}: holds a study with other settings ({results_path}); pass another --out.")
    results: dict[str, Any] = saved.get("runs", {})

    def save() -> None:
        write_json_atomic(results_path, {"config": asdict(config), "runs": results})

    items, heldout = _samples(config, work)
    gold_order = SimulatedLabeler(temperature=0.0).label(heldout)
    for seed in range(config.num_seeds):
        _seed_runs(config, items, gold_order, work, seed, results, save)
    save()
    (work / "results.md").write_text(format_results(results, config), encoding="utf-8")
    return results


def _pm(values: list[float]) -> str:
    """``mean ± s.e.`` over seeds (the mean alone for one seed)."""
    mean, se = mean_se(values)
    return f"{mean:.3f} ± {se:.3f}" if len(values) > 1 else f"{mean:.3f}"


def format_results(results: dict[str, Any], config: ReliabilityStudyConfig) -> str:
    """The two Markdown tables: held-out accuracies (with the recovered share) and estimated vs true flip rates."""
    seeds = range(config.num_seeds)

    def acc(seed: int, run: str) -> float:
        return results[f"seed{seed}/{run}"]["gold_accuracy"]

    def points(values: list[float]) -> str:
        mean, se = mean_se(values)
        return f"{100 * mean:+.1f} ± {100 * se:.1f}" if len(values) > 1 else f"{100 * mean:+.1f}"

    lines = ["| labels | held-out accuracy vs gold | vs clean (points) | vs the same labels unweighted (points) | "
             "share of the cost recovered | seeds |", "|---|---|---|---|---|---|"]
    for run in ("clean/unweighted", "unreliable/unweighted", "unreliable/weighted", "unreliable/label_weighted",
                "adversarial/unweighted", "adversarial/weighted", "adversarial/label_weighted"):
        done = [s for s in seeds if f"seed{s}/{run}" in results]
        if not done:
            continue
        plain = run.split("/")[0] + "/unweighted"
        cost = [acc(s, "clean/unweighted") - acc(s, plain) for s in done]
        gain = [acc(s, run) - acc(s, plain) for s in done]
        # The share is a ratio of mean paired differences; flagged when the cost is within 2 s.e. of zero.
        clear = len(done) > 1 and mean_se(cost)[0] > 2 * mean_se(cost)[1]
        share = "" if run.endswith("unweighted") else (
            f"{np.mean(gain) / np.mean(cost):.2f}" + ("" if clear else " (cost within 2 s.e.)"))
        lines.append(f"| {run.replace('/', ' ')} | {_pm([acc(s, run) for s in done])} | "
                     f"{points([acc(s, run) - acc(s, 'clean/unweighted') for s in done])} | "
                     f"{'' if run.endswith('unweighted') else points(gain)} | {share} | {len(done)} |")
    lines += ["", "| panel | labeler | flip prob | true pair flip rate | estimated ± s.e. | weight |",
              "|---|---|---|---|---|---|"]
    for panel in ("unreliable", "adversarial"):
        estimates = [results[f"seed{s}/{panel}/estimate"] for s in seeds if f"seed{s}/{panel}/estimate" in results]
        for name in LABELERS if estimates else ():
            found = [next(r for r in e["labelers"] if r["labeler"] == name) for e in estimates]
            lines.append(f"| {panel} | {name} | {estimates[0]['true_flip_prob'][name]} | "
                         f"{_pm([e['true'][name] for e in estimates])} | "
                         f"{_pm([r['flip_rate'] for r in found])} (s.e. {np.mean([r['se'] for r in found]):.3f})"
                         f" | {_pm([r['weight'] for r in found])} |")
        if estimates:
            lines.append(f"| {panel} | ranked correctly | | | {_ranked_correctly(estimates)} | |")
    return "\n".join(lines) + "\n"


def _ranked_correctly(estimates: list[dict[str, Any]]) -> str:
    """How many seeds' estimates order the labelers as their true flip probabilities do (ties: any order)."""
    ok = 0
    for e in estimates:
        est = {r["labeler"]: r["flip_rate"] for r in e["labelers"]}
        true = e["true_flip_prob"]
        ok += all(est[a] < est[b] for a in LABELERS for b in LABELERS if true[a] < true[b])
    return f"{ok} of {len(estimates)} seeds"


def cli(argv: list[str] | None = None) -> int:
    """``rlhf-gym reliability-study``: see the module docstring."""

    def run(config: ReliabilityStudyConfig) -> None:
        run_study(config)
        print((Path(config.out) / "results.md").read_text(encoding="utf-8"))

    return config_command(argv, "rlhf-gym reliability-study", "Unreliable simulated labelers: Dawid-Skene "
                          "reliability estimates and reliability-weighted reward models.", ReliabilityStudyConfig, run)
