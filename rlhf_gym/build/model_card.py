"""The default assets' model card: what ``rlhf-gym build-defaults`` records, as JSON and as Markdown."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from agents.sft import SFTResult


def run_summary(result: SFTResult) -> dict[str, Any]:
    """What the card keeps of a pretraining or SFT run."""
    return {
        "steps": result.steps, "best_step": result.best_step, "early_stopped": result.early_stopped,
        "val_loss": round(result.val_loss, 4), "val_perplexity": round(result.val_perplexity, 2),
    }


def versions() -> dict[str, str]:
    """The Python, torch and transformers versions of the build."""
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def asset_bytes(out: Path) -> dict[str, int]:
    """Bytes of every shipped file or folder in ``out`` (hidden ones left out)."""
    return {p.name: _size(p) for p in sorted(out.iterdir()) if not p.name.startswith(".")}


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
  entries) x {r['config']['num_generations']} SFT samples, ranked by a simulated labeler (upbeat-text gold scorer,
  Bradley-Terry temperature {r['config']['labeler_temperature']}); GPT2ForSequenceClassification from the
  policy's backbone, {r['train_steps']} steps, 1 epoch over {r['train_rankings']} rankings; stored in float16.
  Held-out pairwise accuracy **{r['val_accuracy']:.3f}** against the ceiling **{r['ceiling_labeler_agreement']:.3f}**
  (agreement of two independent simulated labelers on the same {r['val_rankings']} rankings; the noise-free gold
  scorer agrees with the labels on {r['gold_vs_labels_agreement']:.3f}). Spearman correlation with the gold score on
  {r['heldout_samples']} held-out SFT samples: **{r['spearman_vs_gold']:.3f}**. Scores are normalized to mean 0,
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

