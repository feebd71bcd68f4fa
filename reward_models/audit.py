"""Bias audit of a reward model: how much of its score cheap features explain beyond the gold score.

A reward model learned from biased labels scores what the labelers liked, not only what is good:
longer answers, more punctuation (Singhal et al. 2023, "A Long Way to Go: Investigating Length
Correlations in RLHF", arXiv:2310.03716). Given samples with a gold score (or a gold scorer to
compute it), the audit regresses the reward model's score on the gold score and the features,
all standardized::

    z(score) = b0 + b_gold z(gold) + b_length z(chars) + b_punct z(punctuation marks) + b_rep z(repeated bigrams)

and reports each coefficient with its standard error, the partial R^2 of each feature in the full
model and its incremental R^2 over gold alone: 0 for a reward model that is a function of gold, the
share of the score's variance the feature adds otherwise. Without gold scores, labeled pairs say
how often the reward model prefers the longer response against how often the labels do.

Run it as ``rlhf-gym audit-rm --reward-model PATH --samples samples.jsonl --gold upbeat --out DIR``.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reward_models.base import RewardModel, checked_scores
from reward_models.gold import UpbeatGoldScorer, repeated_bigram_share, tokenize
from reward_models.preferences import Preference, load_preferences
from rlhf_common.config_cli import config_command
from rlhf_common.io import DataError, atomic_path, read_jsonl, require_str, write_json_atomic
from rlhf_common.training import quiet_transformers

FEATURES = ("length", "punctuation", "repetition")
"""The cheap features audited: characters, punctuation marks, and the share of repeated token bigrams."""
_PUNCTUATION = frozenset(string.punctuation)


@dataclass
class AuditConfig:
    """What ``rlhf-gym audit-rm`` audits; each field is also a ``--flag``."""

    reward_model: str
    """Reward-model folder (AutoModelForSequenceClassification, one label) to audit."""
    out: str
    """Output folder: audit.json, audit.md and residual_vs_length.png."""
    samples: str | None = None
    """Samples JSONL, {"prompt", "response", "gold"} or {"prompt", "responses": [...], "gold": [...]} per line
    (the pipeline's step1_reference_samples.jsonl); the gold key may be left out with --gold."""
    gold: Literal["upbeat"] | None = None
    """Compute the gold scores with this scorer (upbeat: the default task's) instead of reading them."""
    preferences: str | None = None
    """Labeled pairs or rankings (preference JSONL): the audit without gold, longer-response preference rates."""
    batch_size: int = 32
    """Sequences per forward pass of the reward model."""

    def __post_init__(self) -> None:
        if self.samples is None and self.preferences is None:
            raise ValueError("audit-rm: pass --samples (gold-scored samples) and/or --preferences (labeled pairs).")


def cheap_features(responses: Sequence[str]) -> dict[str, np.ndarray]:
    """Each feature of :data:`FEATURES` for every response, as float arrays."""
    tokens = [tokenize(r) for r in responses]
    return {
        "length": np.array([len(r) for r in responses], dtype=np.float64),
        "punctuation": np.array([sum(c in _PUNCTUATION for c in r) for r in responses], dtype=np.float64),
        "repetition": np.array([repeated_bigram_share(t) for t in tokens], dtype=np.float64),
    }


def load_scored_samples(path: str | os.PathLike[str],
                        gold: RewardModel | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """``(prompts, responses, gold scores)`` of a samples file, one entry per response.

    Rows are ``{"prompt", "response", "gold": x}`` or ``{"prompt", "responses": [...], "gold": [...]}``;
    with ``gold`` (a scorer) the ``gold`` key is not needed and the scorer's scores are used.
    Errors name ``file:line``.
    """
    prompts, responses, golds = [], [], []
    for line_no, row in read_jsonl(path):
        where = f"{path}:{line_no}"
        prompt = require_str(row, "prompt", where)
        if "responses" in row:
            texts = row["responses"]
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                raise DataError(f"{where}: 'responses' must be a non-empty list of strings.")
        else:
            texts = [require_str(row, "response", where)]
        if gold is None:
            golds += _gold_values(row, len(texts), where)
        prompts += [prompt] * len(texts)
        responses += texts
    if not responses:
        raise DataError(f"{path}: no sample rows; the file is empty.")
    scores = checked_scores(gold, prompts, responses) if gold is not None else np.array(golds, dtype=np.float64)
    return prompts, responses, scores


def _gold_values(row: dict[str, Any], n: int, where: str) -> list[float]:
    """The row's gold score(s), one per response; DataError naming ``where`` if missing or not finite numbers."""
    if "gold" not in row:
        raise DataError(f"{where}: no 'gold' score; add one per response or pass --gold upbeat to compute them.")
    values = row["gold"] if isinstance(row["gold"], list) else [row["gold"]]
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if len(values) != n or not ok:
        raise DataError(f"{where}: 'gold' must be {n} finite number(s), one per response, got {row['gold']!r:.60}.")
    return [float(v) for v in values]


# ---- the regression ---------------------------------------------------------------------
def _standardize(x: np.ndarray, name: str) -> np.ndarray:
    std = x.std()
    if not std > 0:
        raise ValueError(f"audit: every sample has the same {name} ({x[0]:.4g}); the audit needs samples that vary.")
    return (x - x.mean()) / std


def _ols(y: np.ndarray, columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """Least squares of ``y`` on an intercept and ``columns``: (coefficients, standard errors, residual SS)."""
    x = np.column_stack([np.ones_like(y), *columns])  # (n, p)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    sse = float(resid @ resid)
    dof = len(y) - x.shape[1]
    if dof < 1:
        raise ValueError(f"audit: {len(y)} samples for {x.shape[1]} coefficients; give more samples.")
    se = np.sqrt(np.diag(np.linalg.pinv(x.T @ x)) * sse / dof)
    return coef, se, sse


def audit_scores(scores: np.ndarray, gold: np.ndarray, features: dict[str, np.ndarray]) -> dict[str, Any]:
    """Regress standardized ``scores`` on standardized gold and ``features``; see the module docstring.

    Returns R^2 of gold alone and of the full model, and per term its coefficient, standard
    error, t, two-sided p (normal), partial R^2 and (features) incremental R^2 over gold alone;
    ``residual`` is the score left after gold (standardized units), for plots. A feature that does
    not vary over the samples is left out and listed in ``constant_features``.
    """
    y = _standardize(np.asarray(scores, dtype=np.float64), "reward-model score")
    z = {"gold": _standardize(np.asarray(gold, dtype=np.float64), "gold score")}
    constant = [name for name, v in features.items() if not np.asarray(v).std() > 0]  # explain nothing: left out
    z.update({name: _standardize(np.asarray(v, dtype=np.float64), name) for name, v in features.items()
              if name not in constant})
    sst = float(((y - y.mean()) ** 2).sum())
    coef, se, sse_full = _ols(y, list(z.values()))
    gold_coef, _, sse_gold = _ols(y, [z["gold"]])
    terms = {}
    for i, name in enumerate(z, start=1):
        sse_without = _ols(y, [v for k, v in z.items() if k != name])[2]
        term = {"coef": float(coef[i]), "se": float(se[i]), "t": float(coef[i] / se[i]),
                "p": math.erfc(abs(coef[i] / se[i]) / math.sqrt(2)),
                "partial_r2": (sse_without - sse_full) / sse_without}
        if name != "gold":
            term["incremental_r2"] = (sse_gold - _ols(y, [z["gold"], z[name]])[2]) / sst
        terms[name] = term
    return {"n": len(y), "r2_gold": 1 - sse_gold / sst, "r2_full": 1 - sse_full / sst, "terms": terms,
            "constant_features": constant, "residual": y - gold_coef[0] - gold_coef[1] * z["gold"]}


def gold_pair_accuracy(scores: Sequence[float], gold: Sequence[float], prompts: Sequence[str]) -> dict[str, float]:
    """How often the scores order two responses to the same prompt as gold does (pairs of equal gold left out)."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    right = []
    for members in groups.values():
        for i, j in combinations(members, 2):
            if gold[i] != gold[j]:
                d = (scores[i] - scores[j]) * (1 if gold[i] > gold[j] else -1)
                right.append(1.0 if d > 0 else 0.5 if d == 0 else 0.0)
    if not right:
        raise ValueError("audit: no two responses to one prompt differ in gold score; pass several per prompt.")
    return {"gold_pairs": len(right), "gold_pair_accuracy": float(np.mean(right))}


def audit_pairs(scores: Sequence[float], items: Sequence[Preference]) -> dict[str, Any]:
    """Length preference of the scores against the labels, over labeled pairs of different lengths.

    ``scores`` holds one score per response of ``items`` (best first, flattened). Reported: how often
    the labels and the reward model prefer the longer response, the excess (reward model minus labels,
    with the standard error of the paired difference), and the reward model's accuracy on pairs whose
    chosen response is the longer and the shorter one (a length-biased model is right on the first,
    wrong on the second).
    """
    label_longer, rm_longer = [], []
    start = 0
    for item in items:
        s = scores[start : start + len(item.responses)]
        for i, j in combinations(range(len(item.responses)), 2):  # i is above j
            li, lj = len(item.responses[i]), len(item.responses[j])
            if li != lj:
                d = (s[i] - s[j]) if li > lj else (s[j] - s[i])  # longer minus shorter
                label_longer.append(1.0 if li > lj else 0.0)
                rm_longer.append(1.0 if d > 0 else 0.5 if d == 0 else 0.0)
        start += len(item.responses)
    if not label_longer:
        raise ValueError("audit: no labeled pair has responses of different lengths.")
    lab, rm = np.array(label_longer), np.array(rm_longer)
    diff = rm - lab
    agree = 1.0 - np.abs(diff)
    return {"pairs": len(lab), "labels_prefer_longer": float(lab.mean()), "rm_prefers_longer": float(rm.mean()),
            "excess_longer": float(diff.mean()), "excess_longer_se": float(diff.std() / math.sqrt(len(diff))),
            "accuracy_longer_chosen": float(agree[lab == 1].mean()) if (lab == 1).any() else None,
            "accuracy_shorter_chosen": float(agree[lab == 0].mean()) if (lab == 0).any() else None}


# ---- outputs ------------------------------------------------------------------------------
def binned_means(x: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``x`` and of ``y`` within quantile bins of ``x``: the trend line of a scatter."""
    order = np.argsort(x, kind="stable")
    parts = [p for p in np.array_split(order, bins) if len(p)]
    return np.array([x[p].mean() for p in parts]), np.array([y[p].mean() for p in parts])


def plot_residuals(path: str | os.PathLike[str], panels: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Score residual after gold against response length: one scatter with its binned means per reward model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for name, (length, residual) in panels.items():
        dots = ax.scatter(length, residual, s=4, alpha=0.15)
        ax.plot(*binned_means(length, residual), "o-", color=dots.get_facecolor()[0][:3], label=name)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("response length (characters)")
    ax.set_ylabel("reward-model score left after gold (std units)")
    ax.set_title("What the reward model pays for length beyond the gold score")
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def audit_markdown(name: str, result: dict[str, Any]) -> str:
    """The audit as a Markdown table: one row per term, then the R^2 summary."""
    lines = [f"Audit of {name} on {result['n']} samples: R^2 of gold alone {result['r2_gold']:.3f}, "
             f"with the features {result['r2_full']:.3f}.", "",
             "| term | coefficient (std units) | s.e. | t | partial R^2 | R^2 added to gold |",
             "|---|---|---|---|---|---|"]
    for term, t in result["terms"].items():
        added = f"{t['incremental_r2']:.3f}" if "incremental_r2" in t else ""
        lines.append(f"| {term} | {t['coef']:+.3f} | {t['se']:.3f} | {t['t']:+.1f} | {t['partial_r2']:.3f} | {added} |")
    return "\n".join(lines) + "\n"


def audit_reward_model(config: AuditConfig, reward_model: RewardModel | None = None) -> dict[str, Any]:
    """Run the audit ``config`` describes and write its files; returns what audit.json holds.

    ``reward_model``: an already loaded model to audit instead of loading ``config.reward_model``.
    """
    if reward_model is None:
        from reward_models.hf_model import HFRewardModel

        with quiet_transformers():
            reward_model = HFRewardModel(config.reward_model, batch_size=config.batch_size)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"reward_model": config.reward_model}
    text = ""
    if config.samples is not None:
        gold = UpbeatGoldScorer() if config.gold == "upbeat" else None
        prompts, responses, gold_scores = load_scored_samples(config.samples, gold)
        features = cheap_features(responses)
        scores = checked_scores(reward_model, prompts, responses)
        result = audit_scores(scores, gold_scores, features)
        result.update(gold_pair_accuracy(scores, gold_scores, prompts))
        plot_residuals(out / "residual_vs_length.png", {Path(config.reward_model).name: (features["length"],
                                                                                         result["residual"])})
        record["samples"] = {"file": config.samples, **{k: v for k, v in result.items() if k != "residual"}}
        text += audit_markdown(config.reward_model, result)
        text += (f"\nOf {result['gold_pairs']} pairs of responses to one prompt that gold tells apart, the reward "
                 f"model orders {result['gold_pair_accuracy']:.3f} as gold does.\n")
    if config.preferences is not None:
        items = load_preferences(config.preferences)
        flat = [(it.prompt, r) for it in items for r in it.responses]
        pairs = audit_pairs(checked_scores(reward_model, [p for p, _ in flat], [r for _, r in flat]), items)
        record["pairs"] = {"file": config.preferences, **pairs}
        text += (f"\nOn {pairs['pairs']} labeled pairs of different lengths the labels prefer the longer response "
                 f"{pairs['labels_prefer_longer']:.3f} of the time, the reward model {pairs['rm_prefers_longer']:.3f} "
                 f"(excess {pairs['excess_longer']:+.3f} ± {pairs['excess_longer_se']:.3f}).\n")
    write_json_atomic(out / "audit.json", record)
    with atomic_path(out / "audit.md") as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return record


def cli(argv: list[str] | None = None) -> int:
    """``rlhf-gym audit-rm``: how much of a reward model's score length and other cheap features explain."""

    def run(config: AuditConfig) -> None:
        audit_reward_model(config)
        print((Path(config.out) / "audit.md").read_text(encoding="utf-8"), end="")
        print(f"wrote audit.json, audit.md{' and residual_vs_length.png' if config.samples else ''} to {config.out}")

    return config_command(argv, "rlhf-gym audit-rm", "Audit a reward model for length, punctuation and repetition "
                          "bias beyond the gold score.", AuditConfig, run)
