"""The settings and the result of one SFT run (:func:`agents.sft.train_sft`); flags are the field names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agents.lora import LoraSettings


@dataclass
class SFTConfig:
    """Everything one SFT run needs; ``python -m agents.sft --help`` maps flags onto it."""

    model: str
    """Base causal LM: a local Hugging Face folder (or a hub name on a machine that is online)."""
    data: str
    """Training demonstrations (JSONL): ``{"prompt","response"}`` or ``{"messages": [...]}`` rows."""
    out: str
    """Output folder; re-running with the same folder resumes an interrupted run."""
    val_data: str | None = None
    """Separate validation demonstrations; when None, ``val_fraction`` of ``data`` is held out."""
    val_fraction: float = 0.05
    """Share of ``data`` held out for validation when ``val_data`` is None (seeded split)."""
    seed: int = 0
    """Seeds the validation split, the data order, dropout and the baseline samples."""
    max_length: int = 512
    """Longest training sequence in tokens (prompt + response), capped by the model's context."""
    append_eos: bool = True
    """End every ``prompt``/``response`` demonstration with EOS so the model learns to stop
    (chat rows are not touched: the chat template already closes the turn)."""
    batch_size: int = 16
    """Demonstrations per micro-batch; under torchrun each of the N ranks takes ``batch_size / N`` of them."""
    group_by_length: bool = True
    """Batch demonstrations of similar length together (less padding, same data per epoch)."""
    gradient_accumulation_steps: int = 1
    """Forward passes per optimizer step; the effective batch is ``batch_size * gradient_accumulation_steps``."""
    num_train_epochs: float = 3.0
    """Passes over the training data (fractions allowed); ignored when ``max_steps`` is set."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides ``num_train_epochs``."""
    learning_rate: float = 5e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to matrices only (not to biases and norms)."""
    lora: LoraSettings | None = None
    """Train LoRA adapters instead of every weight (needs ``peft``): ``--lora r=16,alpha=32`` or
    ``--lora default``. The saved model has the adapters merged in. None: full fine-tuning."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``learning_rate`` over this many steps."""
    lr_scheduler_type: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up: cosine or linear to 0, or constant."""
    max_grad_norm: float = 1.0
    """Gradient norm clip; 0 disables it."""
    eval_steps: int = 100
    """Steps between validation evaluations; a checkpoint is saved after each."""
    patience: int = 5
    """Stop after this many evaluations without a lower validation loss; 0 never stops early."""
    logging_steps: int = 10
    """Steps between training-loss rows in ``log.csv``."""
    sample_max_new_tokens: int = 32
    """Response length cap when sampling the trained policy for the baseline score."""
    device: str = "auto"
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda:0"``, ..."""
    num_threads: int | None = None
    """CPU threads for torch (``torch.set_num_threads``); None keeps torch's default."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folder to run."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (self.max_length >= 2, "max_length must be >= 2"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.num_train_epochs > 0, "num_train_epochs must be > 0"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.eval_steps >= 1 and self.logging_steps >= 1, "eval_steps and logging_steps must be >= 1"),
            (self.patience >= 0 and self.warmup_steps >= 0, "patience and warmup_steps must be >= 0"),
            (self.lr_scheduler_type in ("cosine", "linear", "constant"),
             "lr_scheduler_type must be cosine, linear or constant"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SFTConfig: {message} (got {self}).")


@dataclass
class SFTResult:
    """What a finished run reports; the same numbers are in ``OUT/baseline.json``."""

    model_dir: str
    """The best model's Hugging Face folder."""
    steps: int
    """Optimizer steps taken."""
    best_step: int
    """Step of the lowest validation loss (the saved model)."""
    val_loss: float
    """Validation loss (mean per response token, nats) of the saved model."""
    val_perplexity: float
    """``exp(val_loss)``."""
    early_stopped: bool
    """Whether patience ran out before the step budget."""
    mean_score: float | None = None
    """Mean scorer score of sampled responses, when a scorer and prompts were given."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    """A few sampled ``{"prompt","response","score"}`` rows, when a scorer was given."""
