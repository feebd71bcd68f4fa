"""Labeler reliability from overlapping labels: a Dawid-Skene EM over pairwise judgements.

Dawid & Skene (1979), "Maximum likelihood estimation of observer error-rates using the EM
algorithm" (Applied Statistics 28(1)), estimate each observer's error rates and the latent
true class of each item from items several observers rated. Here the items are response
pairs and the class is which of the two is better: every label (a ranking, a best pick, a
chosen/rejected row) states an order for some pairs, and labeler ``l`` states the reverse of
the true order with probability ``f_l``, its **flip rate** ("one-coin" model, independent
across pairs given the truth). Both orders of a pair are a priori equally likely (which
response is listed first is arbitrary), so

- E-step: ``P(a above b | labels) = sigmoid(sum over the pair's judgements of +-log((1 - f_l) / f_l))``,
- M-step: ``f_l`` = the labeler's expected share of judgements against that posterior.

EM starts from ``f = 0.2`` for everyone, i.e. from trusting the majority, which picks the
labelling of the two mirror-image solutions (``f`` and ``1 - f`` with every pair reversed) in
which most labelers are better than chance. ``f < 0.5`` is informative, ``0.5`` is a coin
and ``f > 0.5`` is **adversarial** (reliably reversed). Only pairs judged by two or more
labelers count: a pair seen once says nothing about who is right. A simulated labeler's
flip rate includes its Bradley-Terry noise: at temperature 0.2 about 0.2 of its pairs
disagree with the gold order even with ``flip_prob`` 0.

The uncertainty is a bootstrap over items (all pairs of one prompt are resampled together),
because a labeler's judgements on one item are not independent: a reversed ranking flips all
its pairs. The B resamples run as one vectorised EM (multiplicity weights per prompt), so it
stays fast.

**Training weight.** ``w = max(0, 1 - 2 f) / (1 - 2 f_best)``: 1 for the most reliable
labeler, 0 for coin-flippers and adversaries. ``1 - 2 f`` is the factor by which noise
shrinks a label's expected Bradley-Terry gradient at a zero margin (a flipped label pushes
the other way), and with gradient noise of roughly equal size per label the
inverse-variance weighting of such estimates is proportional to it; the log-odds
``log((1 - f) / f)`` is the optimal vote weight for deciding one pair, but grows without
bound as ``f -> 0`` and would let one near-perfect labeler set the learning rate.
Adversarial labelers are dropped by default: reversing them (``reverse_adversarial``,
weight ``(2 f - 1) / (1 - 2 f_best)``) helps only if they reverse consistently, which a
careless person does not.

**Per-label weight** (``per_label``): ``2 P - 1``, with ``P`` the EM posterior that the label's
order of a pair is the true one, averaged over its pairs: the same signal factor, but for this
label, combining its labeler's reliability with the other labels of the same pairs. An
unreliable labeler's labels that agree with the others keep most of their weight, and the
reversed ones lose it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from reward_models.preferences import preference_rows
from rlhf_common.io import DataError

Judgement = tuple[Any, Any, str, Any, Any]
"""``(cluster, item, labeler, winner, loser)``: ``labeler`` put response ``winner`` of ``item`` above ``loser``.

``cluster`` groups judgements resampled together by the bootstrap (an item id, or a prompt)."""
START_FLIP = 0.2
"""Every labeler's flip rate when EM starts: the majority is trusted first."""
BOOTSTRAP_TOL = 1e-5
"""Convergence tolerance of the bootstrap fits: far below the standard errors they measure (~0.01)."""


@dataclass(frozen=True)
class LabelerReliability:
    """One labeler's estimated flip rate and the training weight derived from it."""

    labeler: str
    flip_rate: float | None
    """Estimated probability that a pair judgement is reversed; None without overlapping judgements."""
    se: float | None
    """Bootstrap standard error of ``flip_rate`` (items resampled)."""
    judgements: int
    """Pair judgements on pairs another labeler judged too."""
    weight: float
    """Training weight (see the module docstring); 1 for a labeler without overlap (nothing to go on)."""

    @property
    def adversarial(self) -> bool:
        """Whether the labeler reverses more pairs than not."""
        return self.flip_rate is not None and self.flip_rate > 0.5

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"labeler": self.labeler, "flip_rate": self.flip_rate, "se": self.se, "judgements": self.judgements,
                "weight": self.weight, "adversarial": self.adversarial}


@dataclass(frozen=True)
class ReliabilityReport:
    """Per-labeler reliabilities (sorted by name) and the posterior order of every overlapping pair."""

    labelers: list[LabelerReliability]
    pairs: list[tuple[Any, Any, Any]]
    """``(item, a, b)`` of every pair judged by two or more labelers (``a`` is the smaller of the two)."""
    posterior: np.ndarray
    """``P(a above b)`` for each of ``pairs``."""
    iterations: int
    """EM iterations until the flip rates moved less than the tolerance."""
    reverse_adversarial: bool = False
    """Whether adversarial labelers' labels are to be reversed (with a positive weight) rather than dropped."""

    def by_labeler(self) -> dict[str, LabelerReliability]:
        """The reliabilities keyed by labeler name."""
        return {r.labeler: r for r in self.labelers}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the per-pair posteriors)."""
        return {"labelers": [r.to_dict() for r in self.labelers], "overlapping_pairs": len(self.pairs),
                "iterations": self.iterations, "reverse_adversarial": self.reverse_adversarial}


def _em(up: np.ndarray, down: np.ndarray, f: np.ndarray, pair_weight: np.ndarray, tol: float,
        max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One-coin Dawid-Skene EM, B fits at once; returns ``(f (B, L), posterior (B, P), iterations)``.

    ``up[p, l]`` / ``down[p, l]`` count labeler l's judgements putting pair p's first response
    above / below the second; ``f`` (B, L) are the starting flip rates and ``pair_weight`` (B, P)
    each pair's bootstrap multiplicity (a resampled item's pairs are copies with the same posterior).
    """
    count = pair_weight @ (up + down)  # (B, L)
    iterations, done = 0, False
    while not done and iterations < max_iter:
        iterations += 1
        llr = np.log1p(-f) - np.log(f)  # (B, L) log-odds of a judgement being right
        post = 0.5 * (1.0 + np.tanh(0.5 * (llr @ (up - down).T)))  # (B, P) sigmoid, overflow-free
        wrong = (pair_weight * (1.0 - post)) @ up + (pair_weight * post) @ down  # (B, L)
        # Laplace smoothing keeps f inside (0, 1): a labeler who never disagrees gets 1/(n+2), not 0.
        new = (wrong + 1.0) / (count + 2.0)
        done = bool(np.max(np.abs(new - f)) < tol)
        f = new
    return f, post, iterations


def estimate_reliability(judgements: Iterable[Judgement], bootstrap: int = 100, seed: int = 0,
                         reverse_adversarial: bool = False, tol: float = 1e-7,
                         max_iter: int = 2000) -> ReliabilityReport:
    """Each labeler's flip rate (Dawid-Skene EM), its bootstrap standard error, and pair posteriors.

    ``judgements`` are ``(cluster, item, labeler, winner, loser)`` tuples (:data:`Judgement`).
    ``bootstrap`` resamples of the clusters give the standard errors (0: none).
    """
    if bootstrap < 0:
        raise ValueError(f"bootstrap={bootstrap} must be >= 0.")
    rows = [(c, (item, min(w, lo), max(w, lo)), who, w <= lo) for c, item, who, w, lo in judgements]
    everyone = sorted({who for _, _, who, _ in rows})
    judges: dict[tuple[Any, Any, Any], set[str]] = {}
    for _, key, who, _ in rows:
        judges.setdefault(key, set()).add(who)
    pair_index = {key: i for i, key in enumerate(k for k, who in judges.items() if len(who) >= 2)}
    rows = [r for r in rows if r[1] in pair_index]
    names = sorted({who for _, _, who, _ in rows})
    if not rows:
        return ReliabilityReport([LabelerReliability(who, None, None, 0, 1.0) for who in everyone], [],
                                 np.zeros(0), 0, reverse_adversarial)
    lab_index = {who: i for i, who in enumerate(names)}
    up, down = np.zeros((len(pair_index), len(names))), np.zeros((len(pair_index), len(names)))
    pair_cluster = {}
    for cluster, key, who, first_wins in rows:
        (up if first_wins else down)[pair_index[key], lab_index[who]] += 1
        pair_cluster.setdefault(pair_index[key], cluster)
    cluster_ids = {c: i for i, c in enumerate(dict.fromkeys(pair_cluster.values()))}
    cluster = np.array([cluster_ids[pair_cluster[p]] for p in range(len(pair_index))])
    f, post, iterations = _em(up, down, np.full((1, len(names)), START_FLIP), np.ones((1, len(pair_index))), tol,
                              max_iter)
    se = np.full(len(names), np.nan)
    if bootstrap:
        rng = np.random.default_rng(seed)
        n = len(cluster_ids)
        draws = rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64)
        # Started at the full fit, each resample converges in a few steps to its own maximum.
        f_boot = _em(up, down, np.repeat(f, bootstrap, axis=0), draws[:, cluster], BOOTSTRAP_TOL, max_iter)[0]
        se = f_boot.std(axis=0, ddof=1) if bootstrap > 1 else np.zeros(len(names))
    counts = (up + down).sum(axis=0)
    weights = reliability_weights(f[0], reverse_adversarial)
    found = {who: LabelerReliability(who, float(f[0, i]), None if np.isnan(se[i]) else float(se[i]), int(counts[i]),
                                     float(weights[i])) for who, i in lab_index.items()}
    labelers = [found.get(who, LabelerReliability(who, None, None, 0, 1.0)) for who in everyone]
    return ReliabilityReport(labelers, list(pair_index), post[0], iterations, reverse_adversarial)


def reliability_weights(flip_rates: np.ndarray | Sequence[float], reverse_adversarial: bool = False) -> np.ndarray:
    """Training weights ``max(0, 1 - 2 f) / (1 - 2 f_best)`` (``|1 - 2 f|`` with reversal); see the module docstring.

    All 0 when no labeler beats a coin.
    """
    signal = 1.0 - 2.0 * np.asarray(flip_rates, dtype=np.float64)
    if reverse_adversarial:
        signal = np.abs(signal)
    best = signal.max() if signal.size else 0.0
    return np.clip(signal, 0.0, None) / best if best > 0 else np.zeros_like(signal)


def row_judgements(rows: Iterable[dict[str, Any]]) -> list[Judgement]:
    """Judgements of export rows ``{"prompt", "responses": [best, ...] | "chosen"/"rejected", "labeler"}``.

    A pair is ``(prompt, response, response)`` by text; the bootstrap resamples prompts.
    """
    return [(row["prompt"], row["prompt"], row["labeler"], w, lo) for row in rows for w, lo in _row_pairs(row)]


def _row_pairs(row: dict[str, Any]) -> list[tuple[str, str]]:
    """``(winner, loser)`` texts an export row states."""
    return list(combinations(row["responses"], 2)) if "responses" in row else [(row["chosen"], row["rejected"])]


def file_judgements(path: str | os.PathLike[str], tokenizer: Any = None) -> tuple[list[dict], list[dict]]:
    """``(text rows, raw rows)`` of a preference JSONL whose rows carry ``"labeler"`` (ties dropped).

    Text rows are ``{"prompt", "responses": [best, ...], "labeler"}`` with conversations rendered
    (:func:`reward_models.preferences.preference_rows`), for :func:`row_judgements`; raw rows are the lines as read.
    """
    text_rows: list[dict] = []
    rows: list[dict] = []
    for where, row, item in preference_rows(path, tokenizer):
        if item is None:
            continue
        who = row.get("labeler")
        if not isinstance(who, str) or not who:
            raise DataError(
                f"{where}: no 'labeler' (a non-empty string); reliability compares labelers, so every row must say "
                "who labeled it, as `rlhf-gym label export` writes."
            )
        text_rows.append({"prompt": item.prompt, "responses": list(item.responses), "labeler": who})
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no preference rows (only ties); nothing to estimate from.")
    return text_rows, rows


def label_signal(report: ReliabilityReport, row: dict[str, Any], index: dict[tuple[Any, Any, Any], int]) -> float:
    """``2 P(the label's order is true) - 1`` averaged over the pairs of an export row, in [-1, 1].

    Pairs several labelers judged use the EM posterior, which weighs the labeler's reliability against
    the other labels of the same pair; the others ``1 - 2 f`` of the labeler (1 without an estimate).
    ``index`` maps ``report.pairs`` to their positions.
    """
    r = report.by_labeler().get(row["labeler"])
    base = 1.0 if r is None or r.flip_rate is None else 1.0 - 2.0 * r.flip_rate
    signals = []
    for w, lo in _row_pairs(row):
        i = index.get((row["prompt"], min(w, lo), max(w, lo)))
        p_first = None if i is None else float(report.posterior[i])
        signals.append(base if p_first is None else 2.0 * (p_first if w <= lo else 1.0 - p_first) - 1.0)
    return float(np.mean(signals))


def weighted_rows(rows: Sequence[dict[str, Any]], report: ReliabilityReport, per_label: bool = False,
                  text_rows: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Preference rows with ``"weight"`` multiplied by their labeler's weight (or each label's own).

    With ``per_label`` the factor is :func:`label_signal` clipped at 0. With
    ``report.reverse_adversarial``, rows of a negative signal (or an adversarial labeler) are
    reversed and weighted by the signal's size instead. Rows are export rows ``{"prompt",
    "responses" | "chosen"/"rejected", "labeler", ...}``; ``text_rows`` (default: ``rows``) are the
    same rows with rendered text (:func:`file_judgements`).
    """
    by_name = report.by_labeler()
    if by_name and all(r.weight == 0 for r in report.labelers):
        raise DataError(
            "every labeler's estimated flip rate is 0.5 or more, so there is no reliable labeler to weight by; "
            "check the labels (or pass --reverse-adversarial if all of them reverse the scale)."
        )
    index = {key: i for i, key in enumerate(report.pairs)}
    out = []
    for row, text in zip(rows, text_rows or rows, strict=True):
        r = by_name.get(row["labeler"])
        if per_label:
            signal = label_signal(report, text, index)
            weight = abs(signal) if report.reverse_adversarial else max(0.0, signal)
            reverse = signal < 0 and report.reverse_adversarial
        else:
            weight = 1.0 if r is None else r.weight
            reverse = r is not None and r.adversarial and report.reverse_adversarial
        row = _reversed(row) if reverse else dict(row)
        row["weight"] = row.get("weight", 1.0) * weight
        out.append(row)
    return out


def _reversed(row: dict[str, Any]) -> dict[str, Any]:
    """An export row with its order reversed (scores swapped along with chosen and rejected)."""
    row = dict(row)
    if "responses" in row:
        row["responses"] = row["responses"][::-1]
    else:
        row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        if "score_chosen" in row:
            row["score_chosen"], row["score_rejected"] = row["score_rejected"], row["score_chosen"]
    return row


def format_reliability(report: ReliabilityReport) -> str:
    """A plain-text table of :class:`ReliabilityReport`."""
    if not report.pairs:
        return "reliability: no response pair was judged by two or more labelers yet."
    width = max(8, *(len(r.labeler) for r in report.labelers))
    lines = [f"{'labeler':<{width}}  flip rate ± se   judgements  weight"]
    for r in report.labelers:
        flip = "-" if r.flip_rate is None else f"{r.flip_rate:.3f}"
        se = "" if r.se is None else f" ± {r.se:.3f}"
        note = "  adversarial: reversed" if r.adversarial and report.reverse_adversarial else (
            "  adversarial: dropped" if r.adversarial else "")
        lines.append(f"{r.labeler:<{width}}  {flip + se:<15}  {r.judgements:>10}  {r.weight:>6.3f}{note}")
    lines.append(f"flip rate = estimated share of a labeler's pair judgements that reverse the true order "
                 f"(Dawid-Skene EM over {len(report.pairs)} pairs judged by 2+ labelers; 0.5 = coin, > 0.5 = "
                 "adversarial); ± = bootstrap s.e. over items; weight = max(0, 1 - 2 f) / (1 - 2 f_best).")
    return "\n".join(lines)
