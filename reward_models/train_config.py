"""The settings and the result of one reward-model training run (:func:`reward_models.train.train_reward_model`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reward_models.normalize import Normalization
from reward_models.preferences import PairwiseMetrics


@dataclass
class RewardTrainConfig:
    """Everything ``rlhf-gym train-rm`` needs; each field is also a ``--flag``."""

    model: str
    """Hugging Face folder or hub name to start from: a reward model, an encoder, or a causal LM
    (e.g. the SFT policy), whose backbone is kept and whose new score head is drawn from N(0, 1/sqrt(d+1))."""
    data: str
    """Training preferences, JSONL: {"prompt", "chosen", "rejected"} or {"prompt", "responses": [best, ..., worst]};
    an optional "weight" per row scales its loss (e.g. from `rlhf-gym label reliability --out`)."""
    out: str
    """Output folder: the trained reward model (Hugging Face format), train_log.csv, and checkpoint/ while training."""
    val_data: str | None = None
    """Validation preferences (same format); without it, val_fraction of data is held out."""
    val_fraction: float = 0.1
    """Share of data held out for validation when val_data is not given (0: no validation)."""
    reference_data: str | None = None
    """Reference (SFT) samples, JSONL {"prompt", "response"} or {"prompt", "responses": [...]}: scores are
    normalized to mean 0, std 1 on them. Default: the training responses."""
    normalize: bool = True
    """Normalize scores on the reference samples after training."""
    tokenizer: str | None = None
    """Tokenizer folder or hub name; default: the one saved with model."""
    num_train_epochs: int = 1
    """Passes over the training data; more than one overfits (InstructGPT)."""
    batch_size: int = 8
    """Rankings (or comparisons) per optimiser step; each contributes all its pairs."""
    micro_batch_size: int | None = None
    """Rankings per forward pass, gradients accumulated up to batch_size (saves memory); default: batch_size."""
    learning_rate: float = 5e-5
    """Peak AdamW learning rate (lm-human-preferences' reward model: 5e-5)."""
    lr_scheduler_type: Literal["linear", "constant"] = "linear"
    """Linear decay to 0 over the planned steps, or constant."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0: none)."""
    max_length: int | None = None
    """Longest prompt+response in tokens (longer ones keep their end); default: the model's limit."""
    eval_steps: int = 100
    """Validate every this many steps (0: only at the end)."""
    save_steps: int = 100
    """Write a checkpoint every this many steps (0: only when stopping at max_steps)."""
    max_steps: int | None = None
    """Stop (with a checkpoint) once this many steps are done in total; rerun to resume."""
    seed: int = 0
    """Seeds the head initialisation, the validation split and the data order."""
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu, cuda:0..."""
    resume: bool = True
    """Continue from out/checkpoint when one is there (the other settings must match)."""
    tensorboard: bool = False
    """Also log to TensorBoard in out/tb (needs the tensorboard package)."""
    progress: bool = True
    """Show a progress bar."""
    trust_remote_code: bool = False
    """Allow custom model code from the model folder."""
    debias: Literal["length"] | None = None
    """Remove a named bias while training: "length" fits r(x) + c * standardized length jointly in the loss, with
    r kept uncorrelated with length, and saves only r (reward_models/debias.py; Chen et al. 2024, ODIN); c goes to
    debias.json. None: off."""

    def __post_init__(self) -> None:
        positive = {"num_train_epochs": self.num_train_epochs, "batch_size": self.batch_size}
        if self.micro_batch_size is not None:
            positive["micro_batch_size"] = self.micro_batch_size
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"RewardTrainConfig: {name}={value} must be >= 1.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"RewardTrainConfig: val_fraction={self.val_fraction} must be in [0, 1).")
        if self.debias not in (None, "length"):
            raise ValueError(f"RewardTrainConfig: debias={self.debias!r}; the bias that can be removed is 'length'.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"RewardTrainConfig: max_steps={self.max_steps} must be >= 1 (or None for no limit).")


@dataclass(frozen=True)
class RewardTrainResult:
    """What a training run produced."""

    out: Path
    """The output folder."""
    finished: bool
    """False when the run stopped at max_steps: out/checkpoint waits to be resumed."""
    steps: int
    """Optimiser steps done in total."""
    val: PairwiseMetrics | None
    """Validation accuracy and margin (raw scores) at the end, if there is validation data."""
    normalization: Normalization | None
    """The normalization applied to the saved model, if finished."""
    seconds: float
    """Wall time of the whole training, resumed parts included."""
