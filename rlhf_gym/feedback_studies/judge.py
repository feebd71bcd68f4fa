"""``rlhf-gym judge-study``: SmolLM2-135M-Instruct as an AI labeler, measured against the gold scorer and people.

1. Feedback items: the SFT policy's ``num_generations`` samples for openings of training fortunes,
   ranked by a simulated labeler (the "simulated human", temperature 0.2) as the pipeline does
   (:func:`rlhf_gym.pipeline.feedback.simulated_labels`, 10% of the prompts held out).
2. Prompt trial: each wording of :data:`PROMPTS` judges the first ``trial_items`` training items;
   the one agreeing most with the gold scorer judges everything (those items are left out of step 3).
3. The judge (:class:`reward_models.ai_labeler.LMJudge`, both orders) labels every item: its
   pairwise agreement with the gold order, with the simulated labeler, and its position bias.
4. Reward models on the judge's, the simulated labeler's and the gold order's labels of the same
   training items (same settings and seed); held-out accuracy against the gold order on SFT
   samples of the evaluation prompts (pairs whose gold scores differ).
5. PPOKL (default settings, same budget and seed) against the judge's and the simulated labeler's
   reward model, evaluated as the pipeline does: gold gain over the SFT policy.

Each stage's output is kept in ``out`` and reused, so a killed study resumes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from reward_models import (
    Comparison,
    HFRewardModel,
    PromptResponses,
    Ranking,
    RewardModel,
    UpbeatGoldScorer,
    agreement,
    evaluate_preferences,
    load_preferences,
)
from reward_models.ai_labeler import JUDGE_PROMPT, JudgeResult, LMJudge, PairVerdict, ScorerLabeler
from rlhf_common.config_cli import config_command
from rlhf_common.io import atomic_path, read_jsonl, write_json_atomic, write_jsonl_atomic
from rlhf_common.training import claim_run_folder, quiet_transformers, set_torch_threads
from rlhf_gym.ai_label import load_labeler
from rlhf_gym.feedback_studies.common import (
    RLStudyConfig,
    feedback_prompts,
    gold_samples,
    read_json,
    train_and_evaluate,
)
from rlhf_gym.pipeline.feedback import FeedbackConfig, simulated_labels

__all__ = ["PROMPTS", "JudgeStudyConfig", "gold_agreement", "run_judge_study"]

PROMPTS = {
    "guideline": JUDGE_PROMPT,
    "generic": "Which response is better?\n\nPrompt: {prompt}\n\nResponse A: {a}\n\nResponse B: {b}\n\n"
               "Answer A or B.",
    "positive": "Here are two texts.\n\nA: {prompt}{a}\n\nB: {prompt}{b}\n\nWhich text is more positive? "
                "Reply A or B.",
}
"""The judge prompts tried: the task's labeling guideline (the default), a generic one, and sentiment alone."""

LABELERS = ("judge", "simulated", "gold")
"""Whose labels of the training items a reward model learns from."""


@dataclass
class JudgeStudyConfig(RLStudyConfig):
    """What ``rlhf-gym judge-study`` runs; each field is also a ``--flag``."""

    out: str = "runs/feedback_judge"
    """Study folder: items, labels, reward models, PPOKL runs, results.json and results.md. Re-running resumes."""
    judge: str = "smollm2"
    """The LM judge: smollm2 or a causal-LM folder with a chat template (``rlhf-gym ai-label --judge``)."""
    rm_prompts: int = 500
    """Feedback prompts (openings of training fortunes), each sampled num_generations times (10% held out)."""
    num_generations: int = 2
    """Responses per prompt; the judge reads every pair twice, so its cost grows as K(K-1)."""
    trial_items: int = 48
    """Training items each prompt wording judges in the trial (left out of the agreement measures)."""
    batch_size: int = 16
    """Judge prompts per forward pass."""
    audit_samples: int = 4
    """SFT samples per evaluation prompt (all 300) whose gold order tests the reward models."""
    timesteps: int = 98_304
    """PPOKL's token budget against each reward model: half the pipeline's (its KL levels off after about 80k
    tokens), so the study ends in about an hour on 2 shared cores."""


def gold_agreement(rankings: Sequence[Ranking], gold: RewardModel) -> dict[str, float | int]:
    """Share of the rankings' pairs ordered as ``gold`` orders them; pairs with equal gold scores are left out."""
    prompts = [r.prompt for r in rankings for _ in r.responses]
    scores = gold.score(prompts, [x for r in rankings for x in r.responses])
    same = n = start = 0
    for r in rankings:
        for i, j in combinations(range(len(r.responses)), 2):  # i is ranked above j
            if scores[start + i] != scores[start + j]:
                same += int(scores[start + i] > scores[start + j])
                n += 1
        start += len(r.responses)
    return {"agreement": same / n if n else float("nan"), "pairs": n}


def prefers_shorter(rankings: Sequence[Ranking]) -> float:
    """Share of the rankings' pairs of unequal length (in characters) that put the shorter response above."""
    shorter = [len(a) < len(b) for r in rankings for a, b in combinations(r.responses, 2) if len(a) != len(b)]
    return sum(shorter) / len(shorter) if shorter else float("nan")


def _verdict_rows(result: JudgeResult) -> list[dict[str, Any]]:
    """Each pair's two readings, with ``item``: the index of the ranking it belongs to."""
    items = [i for i, r in enumerate(result.rankings) for _ in combinations(r.responses, 2)]
    return [{"item": i, "prompt": v.prompt, "a": v.a, "b": v.b, "a_first": v.a_first, "b_first": v.b_first}
            for i, v in zip(items, result.verdicts, strict=True)]


def _label_rows(rankings: Sequence[Ranking], name: str) -> list[dict[str, Any]]:
    return [{**r.to_json(), "labeler": name} for r in rankings]


def prompt_trial(judge: LMJudge, items: list[PromptResponses], work: Path) -> dict[str, Any]:
    """Step 2: every wording of :data:`PROMPTS` on ``items``; gold agreement, position bias, time (kept once run)."""
    if (trial := read_json(work / "prompt_trial.json")) is not None:
        return trial
    trial, gold = {}, UpbeatGoldScorer()
    for name, prompt in PROMPTS.items():
        judge.prompt = prompt
        start = time.monotonic()
        result = judge.judge(items)
        trial[name] = {**result.summary(), **gold_agreement(result.rankings, gold),
                       "seconds": round(time.monotonic() - start, 1)}
    write_json_atomic(work / "prompt_trial.json", trial)
    return trial


def judge_labels(judge: LMJudge, items: list[PromptResponses], work: Path) -> tuple[list[Ranking], list[Any], float]:
    """Step 3: the judge's rankings of ``items`` and its pair verdicts, and the seconds it took (kept once run)."""
    labels, verdicts = work / "judge_labels.jsonl", work / "judge_verdicts.jsonl"
    if not labels.is_file():
        start = time.monotonic()
        result = judge.judge(items)
        write_jsonl_atomic(verdicts, _verdict_rows(result))
        write_json_atomic(work / "judge_time.json", {"seconds": round(time.monotonic() - start, 1)})
        write_jsonl_atomic(labels, _label_rows(result.rankings, judge.name))
    rows = [row for _, row in read_jsonl(verdicts)]
    return list(load_preferences(labels)), rows, read_json(work / "judge_time.json")["seconds"]


def label_measures(judged: list[Ranking], verdicts: list[dict[str, Any]], simulated: list[Any],
                   skip: int) -> dict[str, Any]:
    """Step 3's table, past the first ``skip`` (trial) items: agreement with gold and people, position bias."""
    gold = UpbeatGoldScorer()
    kept = [PairVerdict(**{k: v for k, v in row.items() if k != "item"}) for row in verdicts if row["item"] >= skip]
    bias = JudgeResult(judged[skip:], kept).summary()
    one_order = [Ranking(v.prompt, (v.a, v.b) if v.a_first > 0 else (v.b, v.a)) for v in kept]
    return {
        **bias, "items": len(judged) - skip,
        "judge_vs_gold": gold_agreement(judged[skip:], gold),
        "judge_one_order_vs_gold": gold_agreement(one_order, gold),
        "simulated_vs_gold": gold_agreement(simulated[skip:], gold),
        "judge_vs_simulated": agreement(judged[skip:], simulated[skip:]),
        "prefers_shorter": {"judge": prefers_shorter(judged[skip:]), "simulated": prefers_shorter(simulated[skip:]),
                            "gold": prefers_shorter(ScorerLabeler(gold).label(judged[skip:]))},
    }


def heldout_gold_pairs(path: Path) -> list[Comparison]:
    """Every pair of the gold-scored SFT samples at ``path`` whose gold scores differ, the higher one chosen."""
    pairs = []
    for _, row in read_jsonl(path):
        scored = dict(zip(row["responses"], row["gold"], strict=True))  # a repeated response counts once
        for (a, ga), (b, gb) in combinations(scored.items(), 2):
            if ga != gb:
                pairs.append(Comparison(row["prompt"], a, b) if ga > gb else Comparison(row["prompt"], b, a))
    return pairs


def train_reward_models(config: JudgeStudyConfig, work: Path, policy: Path,
                        heldout: list[Comparison]) -> dict[str, dict[str, Any]]:
    """Step 4: a reward model on each labeler's labels of the training items; held-out accuracy against gold."""
    from reward_models.train import RewardTrainConfig, train_reward_model

    records = {}
    for name in LABELERS:
        if (record := read_json(work / f"rm_{name}.json")) is None:
            result = train_reward_model(RewardTrainConfig(
                model=str(policy), data=str(work / f"train_{name}.jsonl"), val_data=str(work / f"val_{name}.jsonl"),
                out=str(work / f"rm_{name}"), reference_data=str(work / "feedback" / "collection.jsonl"),
                learning_rate=config.rm_learning_rate, seed=config.seed, progress=config.progress))
            with quiet_transformers():
                gold_acc = evaluate_preferences(HFRewardModel(result.out), heldout)
            record = {"path": str(result.out), "val_accuracy_own_labels": result.val.accuracy,
                      "heldout_gold_accuracy": gold_acc.accuracy, "heldout_gold_pairs": gold_acc.pairs,
                      "steps": result.steps, "seconds": round(result.seconds, 1)}
            write_json_atomic(work / f"rm_{name}.json", record)
        records[name] = record
    return records


def _items(config: JudgeStudyConfig, work: Path, policy: Path) -> tuple[list[PromptResponses], int]:
    """Step 1: the training items then the held-out ones, each with two or more distinct responses; how many train."""
    items, val = simulated_labels(policy, feedback_prompts(config.rm_prompts, config.seed), work / "feedback",
                                  FeedbackConfig(num_generations=config.num_generations, seed=config.seed,
                                                 labeler_temperature=config.labeler_temperature,
                                                 progress=config.progress))
    held = {id(it) for it in val}
    distinct = [PromptResponses(it.prompt, tuple(dict.fromkeys(it.responses))) for it in items]
    train = [d for it, d in zip(items, distinct, strict=True) if id(it) not in held and len(d.responses) >= 2]
    test = [d for it, d in zip(items, distinct, strict=True) if id(it) in held and len(d.responses) >= 2]
    return train + test, len(train)


def write_label_sets(work: Path, judged: list[Ranking], items: list[PromptResponses], n_train: int) -> list[Any]:
    """Each labeler's train/val label files (the same items, split as the pipeline split them); the simulated ones."""
    feedback = work / "feedback"
    simulated = [*load_preferences(feedback / "preferences_train.jsonl"),
                 *load_preferences(feedback / "preferences_val.jsonl")]
    gold = ScorerLabeler(UpbeatGoldScorer(), name="gold").label(items)
    for name, rankings in (("judge", judged), ("simulated", simulated), ("gold", gold)):
        write_jsonl_atomic(work / f"train_{name}.jsonl", _label_rows(rankings[:n_train], name))
        write_jsonl_atomic(work / f"val_{name}.jsonl", _label_rows(rankings[n_train:], name))
    return simulated


def run_judge_study(config: JudgeStudyConfig) -> dict[str, Any]:
    """All five steps of the module docstring; writes results.json and results.md."""
    from agents.lm import load_causal_lm
    from text_env.defaults import default_policy_path

    started = time.monotonic()
    set_torch_threads(config.num_threads)
    work = claim_run_folder(config.out, config, free=("num_threads", "progress"))
    policy = default_policy_path()
    items, n_train = _items(config, work, policy)
    judge = load_labeler(config.judge, batch_size=config.batch_size)
    if not isinstance(judge, LMJudge):
        raise ValueError(f"--judge {config.judge}: the study measures an LM judge; pass smollm2 or a causal-LM folder.")
    trial = prompt_trial(judge, items[: config.trial_items], work)
    best = max(trial, key=lambda name: trial[name]["agreement"])
    judge.prompt = PROMPTS[best]
    judged, verdicts, judge_seconds = judge_labels(judge, items, work)
    simulated = write_label_sets(work, judged, items, n_train)
    measures = label_measures(judged, verdicts, simulated, skip=config.trial_items)
    with quiet_transformers():
        reference = load_causal_lm(policy).requires_grad_(False)
    heldout = heldout_gold_pairs(gold_samples(config, work / "heldout_samples.jsonl", reference))
    rms = train_reward_models(config, work, policy, heldout)
    rl = {name: train_and_evaluate(config, work, name, Path(rms[name]["path"]), reference)
          for name in ("judge", "simulated")}
    results = {"config": asdict(config), "items": len(items), "train_items": n_train, "prompt": best,
               "prompt_trial": trial, "labels": measures, "judge_seconds": judge_seconds, "reward_models": rms,
               "rl": {n: {"sft_gold": r["sft"]["gold"], "gold": r["ppo"]["gold"], "gold_sem": r["ppo"]["gold_sem"],
                          "gold_gain": r["ppo"]["gold"] - r["sft"]["gold"], "proxy": r["ppo"]["proxy"],
                          "kl": r["ppo"]["kl"], "train_seconds": r["train_seconds"]} for n, r in rl.items()},
               "seconds_this_call": round(time.monotonic() - started, 1)}
    write_json_atomic(work / "results.json", results)
    with atomic_path(work / "results.md") as tmp:
        Path(tmp).write_text(results_markdown(results), encoding="utf-8")
    return results


def results_markdown(results: dict[str, Any]) -> str:
    """The prompt trial, the label-quality table and the reward-model and RL table, as in the README."""
    lines = ["| judge prompt | agreement with gold | both orders agree | 'A' picked | seconds |",
             "|---|---|---|---|---|"]
    for name, t in results["prompt_trial"].items():
        mark = " (kept)" if name == results["prompt"] else ""
        lines.append(f"| {name}{mark} | {t['agreement']:.3f} ({t['pairs']} pairs) | {t['consistency']:.3f} "
                     f"| {t['a_share']:.3f} | {t['seconds']:.0f} |")
    m = results["labels"]
    lines += ["", "| labels | agreement with gold | agreement with the simulated labeler |", "|---|---|---|",
              f"| LM judge, both orders | {m['judge_vs_gold']['agreement']:.3f} | {m['judge_vs_simulated']:.3f} |",
              f"| LM judge, one order (A = the first sample) | {m['judge_one_order_vs_gold']['agreement']:.3f} | |",
              f"| simulated labeler (T = {results['config']['labeler_temperature']}) "
              f"| {m['simulated_vs_gold']['agreement']:.3f} | 1 |",
              "", f"Position bias on {m['pairs']} pairs: both orders pick the same response in {m['consistency']:.3f}, "
              f"'A' is picked in {m['a_share']:.3f} of readings. Judging {results['items']} items took "
              f"{results['judge_seconds'] / 60:.1f} min. The shorter response is ranked first in "
              + ", ".join(f"{v:.3f} ({k})" for k, v in m["prefers_shorter"].items()) + " of pairs of unequal length.",
              "", "| reward model trained on | held-out accuracy vs gold | PPOKL gold gain ± s.e. | PPOKL KL | train |",
              "|---|---|---|---|---|"]
    for name, rm in results["reward_models"].items():
        r = results["rl"].get(name)
        rl = (f"{r['gold_gain']:+.3f} ± {r['gold_sem']:.3f} | {r['kl']:.2f} | {r['train_seconds'] / 60:.1f} min"
              if r else "| |")
        lines.append(f"| {name} labels | {rm['heldout_gold_accuracy']:.3f} ({rm['heldout_gold_pairs']} pairs) | {rl} |")
    return "\n".join(lines) + "\n"


def cli(argv: list[str] | None = None) -> int:
    """``rlhf-gym judge-study``: SmolLM2 as a labeler against the gold scorer and a simulated labeler."""

    def run(config: JudgeStudyConfig) -> None:
        results = run_judge_study(config)
        print(results_markdown(results), end="")
        print(f"wrote {config.out}/results.json and results.md")

    return config_command(argv, "rlhf-gym judge-study", "An LM judge (SmolLM2) as a labeler: agreement with gold "
                          "and a simulated labeler, position bias, reward models and PPOKL on its labels.",
                          JudgeStudyConfig, run)
