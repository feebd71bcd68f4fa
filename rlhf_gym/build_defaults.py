"""Build the embedded default assets of ``RLHFText-v0`` from scratch, seeded (RLHF steps 0-1).

1. corpus: the Debian ``fortunes`` package, one entry per ``%``-separated block, whitespace
   collapsed to single spaces; ASCII art, offensive (``off/``) and mostly-non-letter or very
   long entries are skipped. A seeded shuffle splits it into training, validation, prompt
   and evaluation-prompt entries.
2. tokenizer: byte-level BPE trained on the training entries, BOS added to every encoding.
3. policy: a tiny GPT-2 pretrained on the training entries (``agents.sft`` with an empty
   prompt), then fine-tuned on demonstrations made from the same entries (prompt = the
   opening words, response = the rest, ending with EOS); saved in float16.
4. prompts: the opening words of held-out entries; a model card records everything.

Run it as ``rlhf-gym build-defaults`` or ``python -m rlhf_gym.build_defaults``. The
intermediate runs live in ``--work-dir``; re-running after an interruption resumes them.
"""

from __future__ import annotations

import argparse
import fnmatch
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

import torch

from agents.lm import load_policy
from agents.sft import SFTConfig, SFTResult, train_sft
from reward_models.config_cli import add_config_args, config_from_args
from reward_models.io import save_dir_atomic, write_json_atomic, write_jsonl_atomic
from text_env.defaults import ASSETS_DIR, interim_reward_model

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
    """Build every default asset into ``config.out``; returns the model card (also saved there)."""
    start = time.time()
    torch.set_num_threads(config.num_threads)
    out, work = Path(config.out), Path(config.work_dir)
    _claim_work_dir(work, config)

    # 1. Corpus and seeded split: held-out prompt entries never reach training.
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
    prompt_entries = entries[: config.n_prompts]
    eval_entries = entries[config.n_prompts : config.n_prompts + config.n_eval_prompts]
    val_entries = entries[config.n_prompts + config.n_eval_prompts : n_held]
    train_entries = entries[n_held:]
    corpus_stats.update(
        corpus=str(root), train=len(train_entries), val=len(val_entries),
        prompts=len(prompt_entries), eval_prompts=len(eval_entries),
    )

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
    prompts = [{"prompt": opening(e, rng, config)[0]} for e in prompt_entries]
    eval_prompts = [{"prompt": opening(e, rng, config)[0]} for e in eval_entries]

    init_dir = work / "init"
    if not (init_dir / "config.json").is_file():
        model = init_policy(tokenizer, config)

        def write_init(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        save_dir_atomic(init_dir, write_init)
    pretrain = _train(config, "pretrain", init_dir, config.pretrain_steps, config.pretrain_lr)
    baseline_prompts = [p["prompt"] for p in eval_prompts[: config.n_baseline_prompts]]
    sft = _train(
        config, "sft", Path(pretrain.model_dir), config.sft_steps, config.sft_lr,
        scorer=interim_reward_model(), prompts=baseline_prompts,
    )

    # 4. Ship: float16 policy with its tokenizer, the prompt sets and the model card.
    policy, policy_tokenizer = load_policy(sft.model_dir, device="cpu")

    def write_policy(tmp: Path) -> None:
        policy.to(torch.float16).save_pretrained(tmp)
        policy_tokenizer.save_pretrained(tmp)

    save_dir_atomic(out / "policy", write_policy)
    write_jsonl_atomic(out / "prompts.jsonl", prompts)
    write_jsonl_atomic(out / "eval_prompts.jsonl", eval_prompts)

    card = {
        "built_with": f"rlhf-gym build-defaults (seed {config.seed})",
        "build_seconds": round(time.time() - start, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": _version()},
        "config": asdict(config),
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
        "baseline": {
            "reward": "VADER compound sentiment of the response (interim reward, text_env.defaults)",
            "prompts": len(baseline_prompts),
            "mean_score": sft.mean_score,
        },
        "samples": sft.samples,
        "asset_bytes": {p.name: _size(p) for p in sorted(out.iterdir()) if not p.name.startswith(".")},
    }
    write_json_atomic(out / "model_card.json", card)
    (out / "MODEL_CARD.md").write_text(model_card_markdown(card), encoding="utf-8")
    return card


def _claim_work_dir(work: Path, config: BuildConfig) -> None:
    """Use ``work`` for this build; refuse one holding runs of a build with other settings.

    Everything a resumed build reuses (initial model, finished runs) must come from the
    same settings; only where the assets go, threads and progress bars may change.
    """
    settings = {k: v for k, v in asdict(config).items() if k not in ("out", "num_threads", "progress")}
    settings["skip_files"] = list(settings["skip_files"])
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
    pre, sft = card["pretrain"], card["sft"]
    rows = "\n".join(
        f"| {s['prompt']!r} | {s['response']!r} | {s['score']:+.3f} |" for s in card["samples"]
    )
    size_mb = sum(card["asset_bytes"].values()) / 1e6
    return f"""## The default policy (`text_env/assets/default/`)

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
- **Baseline** ({card['baseline']['prompts']} evaluation prompts, pure sampling, 32 new tokens):
  mean score {card['baseline']['mean_score']:+.3f} under the {card['baseline']['reward']}.
  RL must beat this.
- **Size**: {size_mb:.1f} MB of assets. Seed {card['config']['seed']}.

Five samples of the SFT policy (evaluation prompts, temperature 1):

| prompt | response | score |
|---|---|---|
{rows}
"""


# ---- command line -----------------------------------------------------------------------------
def cli(argv: list[str] | None = None) -> int:
    """``rlhf-gym build-defaults [--corpus DIR] [--out DIR] [...]``; flags mirror BuildConfig."""
    parser = argparse.ArgumentParser(
        prog="rlhf-gym build-defaults",
        description="Rebuild the embedded default assets (tokenizer, policy, prompts, model card) from "
        "the fortunes corpus, seeded. About 20 minutes on 2 CPU cores; re-run to resume.",
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
    print(json.dumps({k: card[k] for k in ("build_seconds", "pretrain", "sft", "baseline", "asset_bytes")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
