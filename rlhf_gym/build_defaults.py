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
5. reward model (RLHF step 2 on simulated feedback, ``rlhf_gym.feedback``): K samples of the
   SFT policy per prompt (openings of training entries), ranked by a simulated labeler,
   a Bradley-Terry model trained from the policy's backbone; saved in float16. The SFT
   baseline (proxy and gold score on evaluation prompts) is measured with it, and a
   model card records everything.

Run it as ``rlhf-gym build-defaults`` or ``python -m rlhf_gym.build_defaults``. The
intermediate runs live in ``--work-dir``; re-running after an interruption resumes them.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
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
from rlhf_common.config_cli import add_config_args, config_from_args
from rlhf_common.io import portable_config, save_dir_atomic, write_json_atomic, write_jsonl_atomic
from rlhf_gym.feedback import FeedbackConfig, simulated_feedback
from text_env.defaults import ASSETS_DIR
from text_env.prompts import load_prompts

FORTUNES_DIR = Path("/usr/share/games/fortunes")
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


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
    pretrain_lr: float = 1.5e-3
    """Peak learning rate of pretraining (cosine decay after warm-up)."""
    sft_steps: int = 200
    """Optimizer steps of SFT."""
    sft_lr: float = 3e-4
    """Peak learning rate of SFT."""
    eval_interval: int = 200
    """Steps between validation evaluations (and checkpoints)."""
    n_baseline_prompts: int = 200
    """Evaluation prompts sampled to record the SFT policy's baseline score."""
    stage: str = "all"
    """"all" builds everything; "reward-model" rebuilds only step 5 from the shipped policy."""
    rm_prompts: int = 6000
    """Training entries whose openings are the prompts of the reward model's feedback."""
    rm_k: int = 8
    """SFT samples per feedback prompt, ranked together: a ranking of 8 gives 28 pairs for 8
    samples. Accuracy grows with data (held-out accuracy after one epoch: 2000 x 4 samples 0.65,
    3000 x 8 0.68, 6000 x 8 0.71, against a ceiling of 0.75-0.76)."""
    rm_labeler_temperature: float = 0.2
    """Noise of the simulated labeler (Bradley-Terry temperature on the gold score)."""
    rm_lr: float = 3e-4
    """Peak learning rate of the reward model."""
    rm_epochs: int = 1
    """Passes over the rankings."""
    num_threads: int = 2
    """CPU threads for torch."""
    progress: bool = True
    """Show progress bars."""


# ---- 1. corpus ------------------------------------------------------------------------------
def ensure_corpus(corpus: str | None) -> Path:
    """The corpus folder; installs the Debian ``fortunes`` package when it is the default and missing."""
    if corpus is not None:
        path = Path(corpus)
        if not path.is_dir():
            raise FileNotFoundError(f"--corpus {corpus}: no such folder; pass a folder of fortunes-style files.")
        return path
    if FORTUNES_DIR.is_dir():
        return FORTUNES_DIR
    if Path("/etc/debian_version").is_file() and os.geteuid() == 0 and shutil.which("apt-get"):
        print("build-defaults: installing the Debian package 'fortunes' ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "fortunes"], check=True, env=env)
        if FORTUNES_DIR.is_dir():
            return FORTUNES_DIR
    raise FileNotFoundError(
        f"{FORTUNES_DIR} is missing: install the corpus with `sudo apt-get install fortunes` "
        "(Debian/Ubuntu), or pass --corpus DIR with files of entries separated by lines holding only '%'."
    )


def read_fortunes(root: Path, config: BuildConfig) -> tuple[list[str], dict[str, Any]]:
    """Cleaned, de-duplicated entries of every corpus file in sorted order, and counts of what was kept."""
    entries: dict[str, None] = {}
    stats = {"files": [], "entries_read": 0, "skipped_non_letters": 0, "skipped_length": 0, "duplicates": 0}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        skipped = any(fnmatch.fnmatch(path.name, pattern) for pattern in config.skip_files)
        if rel.parts[0] == "off" or path.suffix in (".dat", ".u8") or skipped:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        stats["files"].append(str(rel))
        for block in re.split(r"^%[ \t]*$", text, flags=re.MULTILINE):
            entry = " ".join(block.split())
            if not entry:
                continue
            stats["entries_read"] += 1
            visible = entry.replace(" ", "")
            if sum(c.isalpha() for c in visible) < config.min_letter_fraction * len(visible):
                stats["skipped_non_letters"] += 1
            elif not config.min_chars <= len(entry) <= config.max_chars:
                stats["skipped_length"] += 1
            elif entry in entries:
                stats["duplicates"] += 1
            else:
                entries[entry] = None
    if not entries:
        raise ValueError(f"{root}: no usable entries; check --corpus and the filters.")
    stats["entries_kept"] = len(entries)
    stats["chars_kept"] = sum(map(len, entries))
    return list(entries), stats


def opening(entry: str, rng: random.Random, config: BuildConfig) -> tuple[str, str]:
    """Split an entry into a prompt (its first few words) and a response (the rest, with its space)."""
    words = entry.split(" ")
    k = rng.randint(config.min_prompt_words, config.max_prompt_words)
    k = max(1, min(k, len(words) // 2))
    return " ".join(words[:k]), " " + " ".join(words[k:])


# ---- 2. tokenizer ---------------------------------------------------------------------------
def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with <pad>, <bos>, <eos>; BOS starts every encoding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS)


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


def _train(config: BuildConfig, name: str, model: Path, steps: int, lr: float, **extra: Any) -> SFTResult:
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
        learning_rate=lr,
        weight_decay=0.1,
        warmup_steps=min(100, steps // 10),
        eval_interval=config.eval_interval,
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
    card["asset_bytes"] = {p.name: _size(p) for p in sorted(out.iterdir()) if not p.name.startswith(".")}
    write_json_atomic(out / "model_card.json", card)
    (out / "MODEL_CARD.md").write_text(model_card_markdown(card), encoding="utf-8")
    return card


def split_corpus(config: BuildConfig) -> tuple[dict[str, list[str]], dict[str, Any], random.Random]:
    """Step 1: the corpus and its seeded split; held-out prompt entries never reach training.

    Returns the splits, corpus statistics and the seeded RNG, which the policy stage goes
    on drawing prompt openings from (so a rebuild reproduces the shipped prompts).
    """
    root = ensure_corpus(config.corpus)
    entries, corpus_stats = read_fortunes(root, config)
    rng = random.Random(config.seed)
    rng.shuffle(entries)
    n_held = config.n_prompts + config.n_eval_prompts + config.n_val
    if len(entries) < n_held + 10:
        raise ValueError(
            f"{root}: {len(entries)} usable entries, but --n-prompts, --n-eval-prompts and --n-val take "
            f"{n_held}; lower them or use a bigger corpus."
        )
    splits = {
        "prompts": entries[: config.n_prompts],
        "eval": entries[config.n_prompts : config.n_prompts + config.n_eval_prompts],
        "val": entries[config.n_prompts + config.n_eval_prompts : n_held],
        "train": entries[n_held:],
    }
    corpus_stats.update(
        corpus=str(root), train=len(splits["train"]), val=len(splits["val"]),
        prompts=len(splits["prompts"]), eval_prompts=len(splits["eval"]),
    )
    return splits, corpus_stats, rng


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
    pretrain = _train(config, "pretrain", init_dir, config.pretrain_steps, config.pretrain_lr)
    sft = _train(
        config, "sft", Path(pretrain.model_dir), config.sft_steps, config.sft_lr,
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
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": _version()},
        "config": portable_config(config),
        "corpus": corpus_stats,
        "tokenizer": {"type": "byte-level BPE", "vocab_size": len(tokenizer), "special_tokens": [PAD, BOS, EOS]},
        "model": {
            "architecture": "GPT2LMHeadModel",
            "n_layer": config.n_layer, "n_embd": config.n_embd, "n_head": config.n_head,
            "context": config.context, "parameters": sum(p.numel() for p in policy.parameters()),
            "stored_dtype": "float16",
        },
        "pretrain": _run_summary(pretrain),
        "sft": _run_summary(sft),
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
        k=config.rm_k, labeler_temperature=config.rm_labeler_temperature, lr=config.rm_lr,
        epochs=config.rm_epochs, seed=config.seed, progress=config.progress,
        max_new_tokens=window, max_prompt_tokens=window,
    ))
    trained = rm_work / "reward_model"
    model = AutoModelForSequenceClassification.from_pretrained(trained, dtype=torch.float32)

    def write_rm(tmp: Path) -> None:
        model.to(torch.float16).save_pretrained(tmp)
        load_policy(policy_dir, device="cpu")[1].save_pretrained(tmp)
        shutil.copy2(trained / "reward_normalisation.json", tmp / "reward_normalisation.json")

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
    marker = work / "build_config.json"
    if marker.is_file():
        saved = json.loads(marker.read_text())
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        if changed:
            raise ValueError(
                f"{work} holds a build with other settings ({', '.join(changed)} differ); delete it "
                "or pass a new --work-dir."
            )
    write_json_atomic(marker, settings)


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


def _run_summary(result: SFTResult) -> dict[str, Any]:
    return {
        "steps": result.steps, "best_step": result.best_step, "early_stopped": result.early_stopped,
        "val_loss": round(result.val_loss, 4), "val_perplexity": round(result.val_perplexity, 2),
    }


def _version() -> str:
    import transformers

    return transformers.__version__


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def model_card_markdown(card: dict[str, Any]) -> str:
    """The model card as a Markdown section (for ``MODEL_CARD.md`` and the README)."""
    c, m, t = card["corpus"], card["model"], card["tokenizer"]
    r, b = card["reward_model"], card["baseline"]
    pre, sft = card["pretrain"], card["sft"]
    rows = "\n".join(
        f"| {s['prompt']!r} | {s['response']!r} | {s['score']:+.3f} |" for s in card["samples"]
    )
    size_mb = sum(card["asset_bytes"].values()) / 1e6
    return f"""## The default assets (`text_env/assets/default/`)

Built by `{card['built_with']}` in {card['build_seconds'] / 60:.1f} minutes
(torch {card['versions']['torch']}, transformers {card['versions']['transformers']}).

- **Corpus**: `{c['corpus']}` ({len(c['files'])} files, {c['entries_read']} entries read;
  skipped {c['skipped_non_letters']} mostly non-letters, {c['skipped_length']} outside
  {card['config']['min_chars']}-{card['config']['max_chars']} characters, {c['duplicates']} duplicates;
  files matching {', '.join(card['config']['skip_files'])} and the offensive `off/` folder left out).
  Whitespace collapsed to single spaces. Seeded split:
  {c['train']} training entries ({c['chars_kept'] / 1e6:.2f} M characters kept in all, {c['train_tokens']} training
  tokens), {c['val']} validation, {c['prompts']} prompt and {c['eval_prompts']} evaluation-prompt entries (held out).
- **Tokenizer**: {t['type']}, {t['vocab_size']} tokens, special tokens {', '.join(t['special_tokens'])};
  BOS starts every encoding, so an empty prompt still has a token.
- **Model**: {m['architecture']}, {m['n_layer']} layers x {m['n_embd']} wide, {m['n_head']} heads,
  context {m['context']}, {m['parameters'] / 1e6:.2f} M parameters, stored in {m['stored_dtype']} (loads as float32).
- **Pretraining** (raw entries, empty prompt): {pre['steps']} steps, best at step {pre['best_step']};
  validation loss {pre['val_loss']:.3f} nats/token, perplexity {pre['val_perplexity']:.1f}.
- **SFT** (prompt = an entry's first 2-6 words, response = the rest + EOS): {sft['steps']} steps,
  best at step {sft['best_step']}; validation loss {sft['val_loss']:.3f}, perplexity {sft['val_perplexity']:.1f}.
- **Reward model** (RLHF step 2, simulated feedback): {r['prompts']} prompts (openings of training
  entries) x {r['config']['k']} SFT samples, ranked by a simulated labeler (upbeat-text gold scorer,
  Bradley-Terry temperature {r['config']['labeler_temperature']}); GPT2ForSequenceClassification from the
  policy's backbone, {r['train_steps']} steps, 1 epoch over {r['train_rankings']} rankings; stored in float16.
  Held-out pairwise accuracy **{r['val_accuracy']:.3f}** against the ceiling **{r['ceiling_labeler_agreement']:.3f}**
  (agreement of two independent simulated labelers on the same {r['val_rankings']} rankings; the noise-free gold
  scorer agrees with the labels on {r['gold_vs_labels_agreement']:.3f}). Spearman correlation with the gold score on
  {r['heldout_samples']} held-out SFT samples: **{r['spearman_vs_gold']:.3f}**. Scores are normalised to mean 0,
  std 1 on SFT samples.
- **Baseline** ({b['prompts']} evaluation prompts, pure sampling, at most {b['max_new_tokens']} new tokens):
  mean proxy (reward-model) score {b['mean_proxy_score']:+.3f}, mean gold score {b['mean_gold_score']:+.3f},
  {b['mean_response_tokens']:.1f} tokens a response. RL must beat this.
- **Size**: {size_mb:.1f} MB of assets. Seed {card['config']['seed']}.

Five samples of the SFT policy (evaluation prompts, temperature 1):

| prompt | response | gold score |
|---|---|---|
{rows}
"""


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
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per step is enough; no bars per saved file
    try:
        card = build_defaults(config_from_args(BuildConfig, args, skip_files=skip_files))
    except (ValueError, OSError, subprocess.CalledProcessError) as e:
        print(f"rlhf-gym build-defaults: {e}", file=sys.stderr)
        return 1
    summary = ("build_seconds", "pretrain", "sft", "reward_model", "baseline", "asset_bytes")
    print(json.dumps({k: card[k] for k in summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
