"""Build the embedded default assets of ``RLHFText-v0`` from scratch, seeded (RLHF steps 0-1).

1. corpus: the Debian ``fortunes`` package, one entry per ``%``-separated block, whitespace
   collapsed to single spaces; ASCII art, offensive (``off/``) and mostly-non-letter or very
   long entries are skipped. A seeded shuffle splits it into training, validation, prompt
   and evaluation-prompt entries.
2. tokenizer: byte-level BPE trained on the training entries, BOS added to every encoding.
3. policy: a tiny GPT-2 pretrained on the training entries (``agents.sft`` with an empty
   prompt), then fine-tuned on demonstrations made from the same entries (prompt = the
   opening words, response = the rest, ending with EOS); saved in float16.
4. prompts: the opening words of held-out entries.
5. reward model (RLHF step 2 on simulated feedback, ``rlhf_gym.pipeline.feedback``): K samples of the
   SFT policy per prompt (openings of training entries), ranked by a simulated labeler,
   a Bradley-Terry model trained from the policy's backbone; saved in float16. The SFT
   baseline (proxy and gold score on evaluation prompts) is measured with it, and a
   model card records everything.

Run it as ``rlhf-gym build-defaults`` or ``python -m rlhf_gym.build.defaults``. The
intermediate runs live in ``--work-dir``; re-running after an interruption resumes them.
Steps 1-2 are in :mod:`rlhf_gym.build.corpus`, the model card in :mod:`rlhf_gym.build.model_card`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.lm import load_policy
from agents.sft import SFTConfig, SFTResult, train_sft
from reward_models import HFRewardModel, UpbeatGoldScorer
from reward_models.hf_model import NORMALIZATION_FILE
from rlhf_common.config_cli import add_config_args, config_from_args, run_command
from rlhf_common.io import portable_config, save_dir_atomic, write_json_atomic, write_jsonl_atomic
from rlhf_common.training import claim_run_folder, quiet_transformers
from rlhf_gym.build.corpus import BOS, EOS, PAD, opening, split_corpus, train_tokenizer
from rlhf_gym.build.model_card import asset_bytes, model_card_markdown, run_summary, versions
from rlhf_gym.pipeline.feedback import FeedbackConfig, simulated_feedback
from text_env.defaults import ASSETS_DIR
from text_env.prompts import load_prompts


@dataclass
class BuildConfig:
    """How the default assets are built; ``rlhf-gym build-defaults --help`` maps flags onto it."""

    out: str = str(ASSETS_DIR)
    """Asset folder to write (tokenizer/, policy/, prompts.jsonl, eval_prompts.jsonl, model card)."""
    work_dir: str = "build/default-assets"
    """Folder for the intermediate pretraining and SFT runs (resumable, not shipped)."""
    corpus: str | None = None
    """A fortunes-style folder (files of entries separated by ``%`` lines); default: the
    Debian ``fortunes`` package, installed with apt-get when missing and allowed."""
    seed: int = 0
    """Seeds the split, the prompt openings, the model initialisation and training."""
    skip_files: tuple[str, ...] = ("*ascii*",)
    """Corpus file names (glob patterns) to leave out, e.g. pictures drawn with characters;
    the offensive ``off/`` folder is always left out."""
    min_letter_fraction: float = 0.6
    """Skip an entry whose non-space characters are less than this share letters."""
    min_chars: int = 20
    """Skip shorter entries (after collapsing whitespace)."""
    max_chars: int = 400
    """Skip longer entries, so most fit the model's context."""
    n_val: int = 500
    """Held-in entries kept for validation of pretraining and SFT."""
    n_prompts: int = 300
    """Held-out entries whose openings become ``prompts.jsonl`` (the task's prompts)."""
    n_eval_prompts: int = 300
    """Further held-out entries whose openings become ``eval_prompts.jsonl``."""
    min_prompt_words: int = 2
    """Fewest words of an entry's opening used as a prompt."""
    max_prompt_words: int = 6
    """Most words of an entry's opening used as a prompt (at most half the entry)."""
    vocab_size: int = 4096
    """BPE vocabulary size, special tokens included."""
    n_layer: int = 4
    """Transformer blocks of the policy."""
    n_embd: int = 256
    """Width of the policy."""
    n_head: int = 4
    """Attention heads of the policy."""
    context: int = 128
    """Context length (positions) of the policy."""
    dropout: float = 0.1
    """Dropout of the policy during pretraining and SFT (RL turns it off)."""
    batch_size: int = 32
    """Sequences per optimizer step, pretraining and SFT."""
    pretrain_steps: int = 1600
    """Optimizer steps of pretraining."""
    pretrain_learning_rate: float = 1.5e-3
    """Peak learning rate of pretraining (cosine decay after warm-up)."""
    sft_steps: int = 200
    """Optimizer steps of SFT."""
    sft_learning_rate: float = 3e-4
    """Peak learning rate of SFT."""
    eval_steps: int = 200
    """Steps between validation evaluations (and checkpoints)."""
    n_baseline_prompts: int = 200
    """Evaluation prompts sampled to record the SFT policy's baseline score."""
    stage: str = "all"
    """"all" builds everything; "reward-model" rebuilds only step 5 from the shipped policy."""
    rm_prompts: int = 6000
    """Training entries whose openings are the prompts of the reward model's feedback."""
    rm_num_generations: int = 8
    """SFT samples per feedback prompt, ranked together: a ranking of 8 gives 28 pairs for 8
    samples. Accuracy grows with data (held-out accuracy after one epoch: 2000 x 4 samples 0.65,
    3000 x 8 0.68, 6000 x 8 0.71, against a ceiling of 0.75-0.76)."""
    rm_labeler_temperature: float = 0.2
    """Noise of the simulated labeler (Bradley-Terry temperature on the gold score)."""
    rm_learning_rate: float = 3e-4
    """Peak learning rate of the reward model."""
    rm_num_train_epochs: int = 1
    """Passes over the rankings."""
    num_threads: int = 2
    """CPU threads for torch."""
    progress: bool = True
    """Show progress bars."""


# ---- 3. policy ------------------------------------------------------------------------------
def init_policy(tokenizer: Any, config: BuildConfig) -> Any:
    """A randomly initialised (seeded) ``GPT2LMHeadModel`` sized by ``config``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.context,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # GPT-2's tanh-approximated GELU (as "gelu_new"), as one fused torch kernel: faster on CPU.
        activation_function="gelu_pytorch_tanh",
    )
    torch.manual_seed(config.seed)
    return GPT2LMHeadModel(gpt2)


def _train(config: BuildConfig, name: str, model: Path, steps: int, learning_rate: float, **extra: Any) -> SFTResult:
    """One ``agents.sft`` run in ``work_dir/name`` on ``work_dir/name.jsonl`` (+ ``_val``)."""
    work = Path(config.work_dir)
    sft = SFTConfig(
        model=str(model),
        data=str(work / f"{name}.jsonl"),
        val_data=str(work / f"{name}_val.jsonl"),
        out=str(work / name),
        seed=config.seed,
        max_length=config.context,
        batch_size=config.batch_size,
        max_steps=steps,
        learning_rate=learning_rate,
        weight_decay=0.1,
        warmup_steps=min(100, steps // 10),
        eval_steps=config.eval_steps,
        patience=3,
        num_threads=config.num_threads,
        progress=config.progress,
    )
    return train_sft(sft, **extra)


# ---- everything -----------------------------------------------------------------------------
def build_defaults(config: BuildConfig) -> dict[str, Any]:
    """Build the default assets into ``config.out``; returns the model card (also saved there).

    ``stage="reward-model"`` keeps the shipped tokenizer, policy and prompts and rebuilds
    only the reward model and the baseline it measures.
    """
    start = time.time()
    torch.set_num_threads(config.num_threads)
    out, work = Path(config.out), Path(config.work_dir)
    if config.stage not in ("all", "reward-model"):
        raise ValueError(f"--stage {config.stage!r}: choose 'all' or 'reward-model'.")
    splits, corpus_stats, rng = split_corpus(config)
    if config.stage == "all":
        _claim_work_dir(work, _settings(config, reward_model=False))
        card = build_policy(config, splits, corpus_stats, rng)
        card["policy_build_seconds"] = round(time.time() - start, 1)
    else:
        card = json.loads(_asset_file(out, "model_card.json").read_text(encoding="utf-8"))
    rm_start = time.time()
    card["reward_model"], card["baseline"] = build_reward_model(config, splits)
    card["reward_model"]["build_seconds"] = round(time.time() - rm_start, 1)
    card["build_seconds"] = round(card["policy_build_seconds"] + card["reward_model"]["build_seconds"], 1)
    card["asset_bytes"] = asset_bytes(out)
    write_json_atomic(out / "model_card.json", card)
    (out / "MODEL_CARD.md").write_text(model_card_markdown(card), encoding="utf-8")
    return card


def build_policy(
    config: BuildConfig, splits: dict[str, list[str]], corpus_stats: dict[str, Any], rng: random.Random
) -> dict[str, Any]:
    """Steps 2-4: tokenizer, pretrained and fine-tuned policy, prompt sets; returns the card so far."""
    out, work = Path(config.out), Path(config.work_dir)
    train_entries, val_entries = splits["train"], splits["val"]

    # 2. Tokenizer.
    tokenizer = train_tokenizer(train_entries, config.vocab_size)
    corpus_stats["train_tokens"] = sum(len(ids) for ids in tokenizer(train_entries)["input_ids"])
    save_dir_atomic(out / "tokenizer", tokenizer.save_pretrained)

    # 3. Policy: pretraining (empty prompt), then SFT (prompt = opening words).
    write_jsonl_atomic(work / "pretrain.jsonl", [{"prompt": "", "response": e} for e in train_entries])
    write_jsonl_atomic(work / "pretrain_val.jsonl", [{"prompt": "", "response": e} for e in val_entries])
    for name, rows in (("sft", train_entries), ("sft_val", val_entries)):
        split = [opening(e, rng, config) for e in rows]
        write_jsonl_atomic(work / f"{name}.jsonl", [{"prompt": p, "response": r} for p, r in split])
    prompts = [{"prompt": opening(e, rng, config)[0]} for e in splits["prompts"]]
    eval_prompts = [{"prompt": opening(e, rng, config)[0]} for e in splits["eval"]]

    init_dir = work / "init"
    if not (init_dir / "config.json").is_file():
        model = init_policy(tokenizer, config)

        def write_init(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        save_dir_atomic(init_dir, write_init)
    pretrain = _train(config, "pretrain", init_dir, config.pretrain_steps, config.pretrain_learning_rate)
    sft = _train(
        config, "sft", Path(pretrain.model_dir), config.sft_steps, config.sft_learning_rate,
        scorer=UpbeatGoldScorer(), prompts=[p["prompt"] for p in eval_prompts[: config.n_baseline_prompts]],
    )

    # 4. Ship: float16 policy with its tokenizer, the prompt sets.
    policy, policy_tokenizer = load_policy(sft.model_dir, device="cpu")

    def write_policy(tmp: Path) -> None:
        policy.to(torch.float16).save_pretrained(tmp)
        policy_tokenizer.save_pretrained(tmp)

    save_dir_atomic(out / "policy", write_policy)
    write_jsonl_atomic(out / "prompts.jsonl", prompts)
    write_jsonl_atomic(out / "eval_prompts.jsonl", eval_prompts)
    return {
        "built_with": f"rlhf-gym build-defaults (seed {config.seed})",
        "versions": versions(),
        "config": portable_config(config),
        "corpus": corpus_stats,
        "tokenizer": {"type": "byte-level BPE", "vocab_size": len(tokenizer), "special_tokens": [PAD, BOS, EOS]},
        "model": {
            "architecture": "GPT2LMHeadModel",
            "n_layer": config.n_layer, "n_embd": config.n_embd, "n_head": config.n_head,
            "context": config.context, "parameters": sum(p.numel() for p in policy.parameters()),
            "stored_dtype": "float16",
        },
        "pretrain": run_summary(pretrain),
        "sft": run_summary(sft),
        "samples": sft.samples,
    }


def build_reward_model(config: BuildConfig, splits: dict[str, list[str]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step 5: the default reward model from simulated feedback, and the SFT baseline it measures.

    Feedback prompts are openings of training entries (a separate seeded draw), so the
    task's prompt sets stay unseen. Returns the reward model's record and the baseline.
    """
    from transformers import AutoModelForSequenceClassification

    from rlhf_gym.collect import sample_groups
    from text_env.defaults import default_task

    out = Path(config.out)
    policy_dir = _asset_file(out, "policy")
    rm_work = Path(config.work_dir) / "feedback"
    _claim_work_dir(rm_work, _settings(config, reward_model=True) | {"policy_sha256": _sha256(policy_dir)})
    opener = random.Random(config.seed + 1)
    prompts = [opening(e, opener, config)[0] for e in splits["train"][: config.rm_prompts]]
    window = min(32, config.context // 2)  # the default task's 32 + 32 tokens, or what the context holds
    record = simulated_feedback(policy_dir, prompts, rm_work, FeedbackConfig(
        num_generations=config.rm_num_generations, labeler_temperature=config.rm_labeler_temperature,
        learning_rate=config.rm_learning_rate, num_train_epochs=config.rm_num_train_epochs, seed=config.seed,
        progress=config.progress,
        max_new_tokens=window, max_prompt_tokens=window,
    ))
    trained = rm_work / "reward_model"
    model = AutoModelForSequenceClassification.from_pretrained(trained, dtype=torch.float32)

    def write_rm(tmp: Path) -> None:
        model.to(torch.float16).save_pretrained(tmp)
        load_policy(policy_dir, device="cpu")[1].save_pretrained(tmp)
        shutil.copy2(trained / NORMALIZATION_FILE, tmp / NORMALIZATION_FILE)

    save_dir_atomic(out / "reward_model", write_rm)
    record["parameters"] = sum(p.numel() for p in model.parameters())
    record["stored_dtype"] = "float16"

    # The baseline RL must beat: the SFT policy's proxy and gold scores on evaluation prompts.
    eval_prompts = load_prompts(out / "eval_prompts.jsonl")[: config.n_baseline_prompts]
    task = default_task(model=policy_dir, prompts=eval_prompts, reward_model=HFRewardModel(out / "reward_model"),
                        max_new_tokens=window, max_prompt_tokens=window)
    policy = load_policy(policy_dir)[0]
    infos = [info for batch in sample_groups(policy, task, eval_prompts, 1, seed=config.seed,
                                             progress=config.progress, desc="baseline")
             for info in batch.infos]
    baseline = {
        "prompts": len(infos),
        "mean_proxy_score": round(float(np.mean([i["score"] for i in infos])), 4),
        "mean_gold_score": round(float(np.mean([i["gold_score"] for i in infos])), 4),
        "mean_response_tokens": round(float(np.mean([i["response_length"] for i in infos])), 2),
        "max_new_tokens": window,
    }
    return record, baseline


def _settings(config: BuildConfig, reward_model: bool) -> dict[str, Any]:
    """The settings a resumed stage must share with the runs it reuses.

    The policy stage depends on everything but where assets go, threads, progress bars
    and the reward-model fields; the reward-model stage on the split and its own fields.
    """
    settings = {k: v for k, v in asdict(config).items() if k not in ("out", "num_threads", "progress", "stage")}
    settings["skip_files"] = list(settings["skip_files"])
    rm_fields = {k for k in settings if k.startswith("rm_")}
    if reward_model:
        keep = rm_fields | {"seed", "corpus", "skip_files", "min_letter_fraction", "min_chars", "max_chars",
                            "n_val", "n_prompts", "n_eval_prompts", "min_prompt_words", "max_prompt_words"}
        return {k: settings[k] for k in sorted(keep)}
    return {k: v for k, v in settings.items() if k not in rm_fields}


def _claim_work_dir(work: Path, settings: dict[str, Any]) -> None:
    """Use ``work`` for this stage; refuse one holding runs made with other settings.

    Everything a resumed build reuses (initial model, finished runs, sampled feedback)
    must come from the same settings.
    """
    claim_run_folder(work, settings, name="build_config.json", fix="delete it or pass a new --work-dir.")


def _asset_file(out: Path, name: str) -> Path:
    path = out / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; build everything first with `rlhf-gym build-defaults`.")
    return path


def _sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        digest.update(f.read_bytes())
    return digest.hexdigest()


# ---- command line -----------------------------------------------------------------------------
def cli(argv: list[str] | None = None) -> int:
    """``rlhf-gym build-defaults [--corpus DIR] [--out DIR] [...]``; flags mirror BuildConfig."""
    parser = argparse.ArgumentParser(
        prog="rlhf-gym build-defaults",
        description="Rebuild the embedded default assets (tokenizer, policy, prompts, model card) from "
        "the fortunes corpus, seeded. About 15 minutes on 2 CPU cores; re-run to resume.",
    )
    add_config_args(parser, BuildConfig, exclude=("skip_files",))
    parser.add_argument(
        "--skip-files", nargs="*", default=list(BuildConfig.skip_files),
        help="corpus file names (glob patterns) to leave out (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    skip_files = tuple(args.__dict__.pop("skip_files"))

    def run() -> None:
        with quiet_transformers():  # one bar per step is enough; no bars per saved file
            card = build_defaults(config_from_args(BuildConfig, args, skip_files=skip_files))
        summary = ("build_seconds", "pretrain", "sft", "reward_model", "baseline", "asset_bytes")
        print(json.dumps({k: card[k] for k in summary}, indent=2))

    return run_command("rlhf-gym build-defaults", run)


if __name__ == "__main__":
    sys.exit(cli())
