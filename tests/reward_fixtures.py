"""Tiny models and a synthetic preference task for the reward-model tests, built in code."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from reward_models import FunctionRewardModel, PromptResponses, SimulatedLabeler, save_preferences
from text_env.char_tokenizer import char_tokenizer

ALPHABET = "ab"

# One thread: on a CPU shared with other jobs, two threads made these tiny models
# 10x slower (thread contention), not faster.
torch.set_num_threads(1)


def share_of_a(prompt: str, response: str) -> float:
    """Gold of the synthetic task: the share of letters 'a' in the response."""
    return response.count("a") / max(1, len(response))


def save_tiny_lm(folder: Path, arch: str = "gpt2", seed: int = 0, pad_is_eos: bool = False,
                 alphabet: str = ALPHABET, chat_template: str | None = None) -> Path:
    """A randomly initialised tiny causal LM and a character tokenizer (and chat template), saved as a HF folder."""
    tok = char_tokenizer(alphabet)
    tok.chat_template = chat_template
    if pad_is_eos:
        tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    common = dict(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=tok.pad_token_id)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_positions=48, n_embd=32, n_layer=1, n_head=2, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=48, **common,
        ))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def random_samples(n: int, k: int, seed: int) -> list[PromptResponses]:
    """``n`` prompts (empty) with ``k`` random a/b strings of 4 to 10 letters each."""
    rng = random.Random(seed)
    return [
        PromptResponses("", tuple("".join(rng.choice(ALPHABET) for _ in range(rng.randint(4, 10))) for _ in range(k)))
        for _ in range(n)
    ]


def write_synthetic_preferences(folder: Path, n_train: int = 240, n_val: int = 100, k: int = 4) -> tuple[Path, Path]:
    """Rankings of the synthetic task by a simulated labeler; returns (train, val) JSONL paths."""
    labeler = SimulatedLabeler(gold=FunctionRewardModel(share_of_a), temperature=0.05, seed=0)
    train, val = folder / "train.jsonl", folder / "val.jsonl"
    save_preferences(train, labeler.label(random_samples(n_train, k, seed=1)))
    save_preferences(val, labeler.label(random_samples(n_val, k, seed=2)))
    return train, val
