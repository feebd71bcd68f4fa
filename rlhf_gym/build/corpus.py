"""The default assets' corpus and tokenizer (build steps 1-2): Debian fortunes, cleaned and split; byte-level BPE."""

from __future__ import annotations

import fnmatch
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlhf_gym.build.defaults import BuildConfig

FORTUNES_DIR = Path("/usr/share/games/fortunes")
"""Where Debian's ``fortunes`` package puts its entries: the default corpus."""
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


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
        for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "fortunes"]):
            if subprocess.run(command, env=env).returncode:
                raise RuntimeError(
                    f"`{' '.join(command)}` failed; install the corpus with `sudo apt-get install fortunes`, "
                    "or pass --corpus DIR with files of entries separated by lines holding only '%'."
                )
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

