"""``rlhf-gym active-study``: how many labels active selection saves against random selection.

1. Feedback: ``num_generations`` SFT samples for each of ``rm_prompts`` openings of training fortunes, the
   prompts split into an unlabeled pool and held-out items; one simulated labeler ranks every pool item
   once (a label is revealed when an arm asks for it, so both arms see the same label for the same item),
   a second one ranks the held-out items (:func:`rlhf_gym.pipeline.feedback.simulated_labels`).
2. The reward model is the SFT policy's backbone, frozen, with a linear Bradley-Terry head on the
   input of its score head (the last token's final hidden state): the default reward model's
   architecture with only the head trained, so a round retrains in a second on one thread. The head
   is fit to convergence (L-BFGS, L2 penalty ``l2``) with the trainer's loss,
   :func:`reward_models.train.ranking_loss`.
3. Each arm starts from the same ``initial_labels`` random items per seed, then rounds: fit, measure
   held-out accuracy, pick ``labels_per_round`` more: at random, or the most informative by
   ``criterion`` (:mod:`reward_models.active`) under an ensemble of ``ensemble_size`` heads fit to
   bootstraps of the labels so far (Dwaracherla et al. 2024, arXiv:2402.00396: an ensemble of heads
   on one backbone).
4. Labels to reach ``threshold`` held-out accuracy per arm and seed, and the learning curves
   (``plot``).

Each stage's output is kept in ``out`` and reused, so a killed study resumes.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reward_models import PairwiseMetrics, Ranking, SimulatedLabeler, load_preferences, pairwise_metrics
from reward_models.active import CRITERIA, Criterion, select_batch
from rlhf_common.config_cli import config_command
from rlhf_common.io import atomic_path, write_json_atomic
from rlhf_common.training import claim_run_folder, quiet_transformers, set_torch_threads
from rlhf_gym.feedback_studies.common import feedback_prompts
from rlhf_gym.pipeline.feedback import FeedbackConfig, simulated_labels
from rlhf_gym.pipeline.report import save_figure

ARMS = ("random", "active")
"""The two selection rules compared."""


@dataclass
class ActiveStudyConfig:
    """What ``rlhf-gym active-study`` runs; each field is also a ``--flag``."""

    out: str = "runs/feedback_active"
    """Study folder: feedback, features, curves.csv, results.json and results.md. Re-running resumes."""
    plot: str = "docs/active_learning.png"
    """Where the learning-curve figure goes."""
    rm_prompts: int = 4000
    """Feedback prompts (openings of training fortunes), each sampled num_generations times."""
    val_fraction: float = 0.25
    """Share of the prompts held out to measure accuracy; the rest is the unlabeled pool."""
    num_generations: int = 4
    """Responses per prompt a label ranks."""
    labeler_temperature: float = 0.2
    """The simulated labelers' Bradley-Terry noise in gold units (the default reward model's)."""
    threshold: float = 0.64
    """Held-out accuracy (against a simulated labeler's rankings) whose label cost is compared."""
    initial_labels: int = 50
    """Random items labeled before the first round (the same per seed in both arms)."""
    labels_per_round: int = 50
    """Items labeled per round."""
    max_labels: int = 1200
    """Stop an arm once this many items are labeled."""
    criterion: Criterion = "bald"
    """Informativeness of an item for the active arm (reward_models.active): bald, entropy or variance."""
    ensemble_size: int = 5
    """Heads fit to bootstraps of the labels, whose disagreement the criterion reads (1: the head alone)."""
    l2: float = 0.01
    """L2 penalty on the head's weights (features standardized)."""
    num_seeds: int = 3
    """Seeds 0..num_seeds-1: each draws the initial items, the bootstraps and the random arm's picks."""
    seed: int = 0
    """Seeds sampling and the simulated labelers (the same for every study seed)."""
    num_threads: int | None = 1
    """Torch CPU threads; None: torch's choice on an idle machine, 1 on a busy one."""
    progress: bool = True
    """Show progress bars while sampling."""

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"--criterion {self.criterion!r}: choose one of {', '.join(CRITERIA)}.")
        for name in ("initial_labels", "labels_per_round", "ensemble_size", "num_seeds", "rm_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1.")
        if self.max_labels < self.initial_labels:
            raise ValueError(f"--max-labels {self.max_labels} must be >= --initial-labels {self.initial_labels}.")


@dataclass
class Pool:
    """Head inputs of every (prompt, response) and the rankings that index them."""

    features: torch.Tensor
    """(U, D) standardized head inputs, one row per distinct (prompt, response)."""
    pool: list[np.ndarray]
    """Each pool item's row indices, best first by the pool labeler."""
    val: list[np.ndarray]
    """Each held-out item's row indices, best first by the held-out labeler."""
    val_gold: list[np.ndarray]
    """Each held-out item's row indices, best first by the gold scorer (no noise)."""


def head_inputs(model_dir: Path, prompts: list[str], responses: list[str], batch_size: int = 64) -> np.ndarray:
    """``(n, D)``: what the score head of ``model_dir``'s reward model sees for each (prompt, response).

    Read with a forward hook on the head, so padding and last-token choice are the reward model's own
    (:func:`reward_models.hf_model.sequence_scores`).
    """
    from reward_models.hf import load_tokenizer
    from reward_models.hf_model import (
        encode_for_reward,
        load_reward_backbone,
        model_max_length,
        score_head,
        sequence_scores,
    )

    with quiet_transformers():
        model = load_reward_backbone(str(model_dir)).eval()
    tokenizer = load_tokenizer(model_dir)
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    ids = encode_for_reward(tokenizer, prompts, responses, model_max_length(model, tokenizer))
    caught: list[torch.Tensor] = []
    hook = score_head(model)[1].register_forward_hook(lambda module, args, output: caught.append(args[0]))
    out = np.zeros((len(ids), score_head(model)[1].in_features), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                caught.clear()
                sequence_scores(model, [ids[i] for i in chunk])
                hidden = caught[0]  # (B, T, D), right-padded
                last = torch.tensor([len(ids[i]) - 1 for i in chunk])
                out[chunk] = hidden[torch.arange(len(chunk)), last].numpy()
    finally:
        hook.remove()
    return out


def build_pool(config: ActiveStudyConfig, work: Path) -> Pool:
    """Step 1: feedback (kept in ``work/feedback``) and head inputs (kept in ``work/features.npz``)."""
    from text_env.defaults import default_policy_path

    policy = default_policy_path()
    feedback = work / "feedback"
    items, val_items = simulated_labels(policy, feedback_prompts(config.rm_prompts, config.seed), feedback,
                                        FeedbackConfig(num_generations=config.num_generations,
                                                       labeler_temperature=config.labeler_temperature,
                                                       val_fraction=config.val_fraction, seed=config.seed,
                                                       progress=config.progress))
    pool = load_preferences(feedback / "preferences_train.jsonl")
    val = load_preferences(feedback / "preferences_val.jsonl")
    gold = SimulatedLabeler(temperature=0.0).label(val_items)
    pairs = list(dict.fromkeys((it.prompt, r) for it in pool + val for r in it.responses))
    cache = work / "features.npz"
    if not cache.is_file():
        x = head_inputs(policy, [p for p, _ in pairs], [r for _, r in pairs])
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, features=x)
    x = np.load(cache)["features"]
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    row = {pair: i for i, pair in enumerate(pairs)}

    def rows(rankings: list[Any]) -> list[np.ndarray]:
        return [np.array([row[(it.prompt, r)] for r in it.responses]) for it in rankings]

    return Pool(torch.tensor(x, dtype=torch.float32), rows(pool), rows(val), rows(gold))


def fit_head(pool: Pool, items: list[np.ndarray], l2: float, start: torch.Tensor | None = None) -> torch.Tensor:
    """A linear Bradley-Terry head ``(D,)`` fit by L-BFGS to the rankings ``items`` (row indices, best first)."""
    from reward_models.train import ranking_loss

    x = pool.features[torch.from_numpy(np.concatenate(items))]  # (sum K, D)
    sizes = [len(it) for it in items]
    w = (torch.zeros(x.shape[1]) if start is None else start.clone()).requires_grad_(True)
    optimizer = torch.optim.LBFGS([w], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = ranking_loss(x @ w, sizes) + l2 * (w**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def accuracy(pool: Pool, w: torch.Tensor, items: list[np.ndarray]) -> PairwiseMetrics:
    """Pairwise accuracy of head ``w`` on rankings ``items``."""
    scores = (pool.features[torch.from_numpy(np.concatenate(items))] @ w).numpy()
    return pairwise_metrics(scores, [_Positions(len(it)) for it in items])


class _Positions(Ranking):
    """A placeholder ranking of K responses for :func:`pairwise_metrics`, which only reads their order."""

    def __init__(self, k: int) -> None:
        super().__init__("", tuple(str(i) for i in range(k)))


def run_arm(config: ActiveStudyConfig, pool: Pool, arm: str, seed: int) -> list[dict[str, Any]]:
    """Step 3 for one arm and seed: the learning curve, one row per round."""
    rng = np.random.default_rng([seed, 0])  # the initial items: the same in both arms
    labeled = [int(i) for i in rng.choice(len(pool.pool), config.initial_labels, replace=False)]
    rng = np.random.default_rng([seed, ARMS.index(arm) + 1])
    curve, w, started = [], None, time.monotonic()
    while True:
        w = fit_head(pool, [pool.pool[i] for i in labeled], config.l2, w)  # warm start: same rule for both arms
        curve.append({"arm": arm, "seed": seed, "labels": len(labeled),
                      "accuracy": round(accuracy(pool, w, pool.val).accuracy, 4),
                      "gold_accuracy": round(accuracy(pool, w, pool.val_gold).accuracy, 4),
                      "seconds": round(time.monotonic() - started, 2)})
        n = min(config.labels_per_round, config.max_labels - len(labeled), len(pool.pool) - len(labeled))
        if n <= 0:
            return curve
        if arm == "random":
            rest = np.setdiff1d(np.arange(len(pool.pool)), labeled)
            labeled += [int(i) for i in rng.choice(rest, n, replace=False)]
            continue
        heads = [w] if config.ensemble_size == 1 else [
            fit_head(pool, [pool.pool[i] for i in rng.choice(labeled, len(labeled))], config.l2, w)
            for _ in range(config.ensemble_size)]
        scores = (pool.features @ torch.stack(heads, dim=1)).numpy().T  # (M, U)
        labeled += select_batch([scores[:, it] for it in pool.pool], n, config.criterion, exclude=labeled)


def labels_to_threshold(curve: list[dict[str, Any]], threshold: float) -> int | None:
    """The fewest labels at which the curve reaches ``threshold`` accuracy, or None if it never does."""
    return next((row["labels"] for row in curve if row["accuracy"] >= threshold), None)


def run_active_study(config: ActiveStudyConfig) -> dict[str, Any]:
    """Steps 1-4; writes ``curves.csv``, ``results.json``, ``results.md`` and the plot, returns the results."""
    started = time.monotonic()
    set_torch_threads(config.num_threads)
    work = claim_run_folder(config.out, config, free=("plot", "num_threads", "progress"))
    pool = build_pool(config, work)
    curves_file = work / "curves.csv"
    done = _read_curves(curves_file)
    for seed in range(config.num_seeds):
        for arm in ARMS:
            if not any(r["arm"] == arm and r["seed"] == seed for r in done):
                done += run_arm(config, pool, arm, seed)
                _write_curves(curves_file, done)
    per_seed, means, saving = _label_cost(done, config, config.threshold)
    results = {
        "config": asdict(config), "pool_items": len(pool.pool), "val_items": len(pool.val),
        "val_pairs": sum(len(it) * (len(it) - 1) // 2 for it in pool.val),
        "full_pool_accuracy": round(accuracy(pool, fit_head(pool, pool.pool, config.l2), pool.val).accuracy, 4),
        "labels_to_threshold": per_seed, "mean_labels_to_threshold": means,
        "saving": saving,
        "saving_at_other_thresholds": {f"{t:.3f}": _label_cost(done, config, t)[2] for t in
                                       np.round(config.threshold + np.array([-0.01, -0.005, 0.005]), 3)},
        "arm_seconds": {arm: round(sum(max(r["seconds"] for r in done if r["arm"] == arm and r["seed"] == s)
                                       for s in range(config.num_seeds)), 1) for arm in ARMS},
        "seconds": round(time.monotonic() - started, 1),
    }
    write_json_atomic(work / "results.json", results)
    with atomic_path(work / "results.md") as tmp:
        tmp.write_text(results_markdown(results), encoding="utf-8")
    plot_curves(Path(config.plot), done, config)
    return results


def _label_cost(rows: list[dict[str, Any]], config: ActiveStudyConfig,
                threshold: float) -> tuple[dict[str, list[int | None]], dict[str, float | None], float | None]:
    """Labels to ``threshold`` per arm and seed, their mean per arm (None if a seed never got there), the saving."""
    per_seed = {arm: [labels_to_threshold([r for r in rows if r["arm"] == arm and r["seed"] == s], threshold)
                      for s in range(config.num_seeds)] for arm in ARMS}
    means = {arm: (float(np.mean(v)) if None not in v else None) for arm, v in per_seed.items()}
    saving = round(1 - means["active"] / means["random"], 3) if None not in means.values() else None
    return per_seed, means, saving


def _read_curves(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: (v if k == "arm" else float(v) if "." in v else int(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def _write_curves(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def results_markdown(results: dict[str, Any]) -> str:
    """The labels-to-threshold table: one row per arm, a column per seed, the mean and the saving."""
    cfg, per_seed = results["config"], results["labels_to_threshold"]
    top = cfg["max_labels"]
    cell = lambda n: f"> {top:,}" if n is None else f"{n:,}"  # noqa: E731
    lines = [f"| selection | {' | '.join(f'seed {s}' for s in range(cfg['num_seeds']))} | mean |",
             "|---" * (cfg["num_seeds"] + 2) + "|"]
    for arm in ARMS:
        name = f"active ({cfg['criterion']}, {cfg['ensemble_size']} heads)" if arm == "active" else "random"
        mean = results["mean_labels_to_threshold"][arm]
        lines.append(f"| {name} | {' | '.join(cell(n) for n in per_seed[arm])} | "
                     f"{cell(None) if mean is None else f'{mean:,.0f}'} |")
    saving = results["saving"]
    lines += ["", f"Labels (rankings of {cfg['num_generations']}) to reach {cfg['threshold']} held-out accuracy; "
              f"saving: {'n/a' if saving is None else f'{saving:.0%}'}. Pool {results['pool_items']:,} items, "
              f"{results['val_pairs']:,} held-out pairs; the whole pool labeled gives {results['full_pool_accuracy']}.",
              "Saving at other thresholds: " + ", ".join(f"{t}: {'n/a' if v is None else f'{v:.0%}'}" for t, v in
                                                         results["saving_at_other_thresholds"].items()) + "."]
    return "\n".join(lines) + "\n"


def plot_curves(path: Path, rows: list[dict[str, Any]], config: ActiveStudyConfig) -> None:
    """Held-out accuracy against labels: each seed faint, the mean over seeds bold, per arm; the threshold dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for ax, key, title in ((axes[0], "accuracy", "vs a simulated labeler"), (axes[1], "gold_accuracy",
                                                                               "vs the noise-free gold order")):
        for arm, color in zip(ARMS, ("tab:gray", "tab:blue"), strict=True):
            by_seed = [[r for r in rows if r["arm"] == arm and r["seed"] == s] for s in range(config.num_seeds)]
            for curve in by_seed:
                ax.plot([r["labels"] for r in curve], [r[key] for r in curve], color=color, alpha=0.25, linewidth=1)
            n = min(len(c) for c in by_seed)
            label = f"active ({config.criterion})" if arm == "active" else "random"
            ax.plot([r["labels"] for r in by_seed[0][:n]], np.mean([[r[key] for r in c[:n]] for c in by_seed], axis=0),
                    color=color, linewidth=2, marker="o", markersize=3,
                    label=f"{label}: mean of {config.num_seeds} seeds")
        if key == "accuracy":
            ax.axhline(config.threshold, color="black", linestyle="--", linewidth=1,
                       label=f"threshold {config.threshold}")
        ax.set_title(f"Held-out pairwise accuracy {title}")
        ax.set_xlabel(f"labels (rankings of {config.num_generations} responses)")
        ax.set_ylabel("pairwise accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=9)
    fig.suptitle("Active selection (BALD over a head ensemble) against random selection: same pool, labels and "
                 "reward model")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)


def cli(argv: list[str] | None = None) -> int:
    """``rlhf-gym active-study``: labels to a held-out accuracy with active against random selection."""

    def run(config: ActiveStudyConfig) -> None:
        results = run_active_study(config)
        print(results_markdown(results), end="")
        print(f"wrote {config.out}/results.json, results.md, curves.csv and {config.plot}")

    return config_command(argv, "rlhf-gym active-study", "Labels needed to reach a held-out reward-model accuracy "
                          "with active selection (reward_models.active) against random selection.",
                          ActiveStudyConfig, run)
