"""Bradley-Terry reward-model training (step 2 of RLHF), readable top to bottom.

    loss = -log sigmoid(r(prompt, chosen) - r(prompt, rejected))

A K-way ranking is one batch element: its K responses are scored once and all C(K, 2)
pairs are formed from those K scores (InstructGPT, Ouyang et al. 2022, sec. 3.5:
shuffling the pairs as separate examples overfits). One epoch by default, for the same
reason. The model is any ``AutoModelForSequenceClassification`` with one label, started
from any Hugging Face folder: an existing reward model, an encoder, or a causal LM such as
the SFT policy (its backbone loads, the new score head is drawn from N(0, 1/sqrt(d+1)),
as in lm-human-preferences).

After training, scores are normalised to mean 0 and std 1 on reference samples (SFT
samples; Ziegler et al. 2019), folded into the weights so that every reader of the saved
folder (TRL, OpenRLHF, :class:`~reward_models.hf_model.HFRewardModel`) sees the
normalised score; the constants are also written to ``reward_normalisation.json``.

Run it as ``rlhf-gym train-rm --model M --data prefs.jsonl --out runs/rm``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from reward_models.hf import load_tokenizer, refuse_pickled_code, resolve_device
from reward_models.hf_model import (
    NORMALISATION_FILE,
    HFRewardModel,
    encode_for_reward,
    model_max_length,
    sequence_scores,
)
from reward_models.preferences import (
    PairwiseMetrics,
    Preference,
    load_collection,
    load_preferences,
    pairwise_metrics,
)
from rlhf_common.config_cli import add_config_args, config_from_args
from rlhf_common.io import DataError, atomic_path, save_dir_atomic, write_json_atomic

LOG_FILE = "train_log.csv"
CHECKPOINT_DIR = "checkpoint"
LOG_COLUMNS = ["step", "epoch", "loss", "accuracy", "margin", "lr", "val_accuracy", "val_margin", "seconds"]
# Settings that may differ when resuming: they do not change the training trajectory.
RESUMABLE_CHANGES = frozenset(
    {"max_steps", "eval_every", "save_every", "progress", "device", "tensorboard", "reference_data", "normalise"}
)


@dataclass
class RewardTrainConfig:
    """Everything ``rlhf-gym train-rm`` needs; each field is also a ``--flag``."""

    model: str
    """Hugging Face folder or hub name to start from: a reward model, an encoder, or a causal LM
    (e.g. the SFT policy), whose backbone is kept and whose new score head is drawn from N(0, 1/sqrt(d+1))."""
    data: str
    """Training preferences, JSONL: {"prompt", "chosen", "rejected"} or {"prompt", "responses": [best, ..., worst]}."""
    out: str
    """Output folder: the trained reward model (Hugging Face format), train_log.csv, and checkpoint/ while training."""
    val_data: str | None = None
    """Validation preferences (same format); without it, val_fraction of data is held out."""
    val_fraction: float = 0.1
    """Share of data held out for validation when val_data is not given (0: no validation)."""
    reference_data: str | None = None
    """Reference (SFT) samples, JSONL {"prompt", "response"} or {"prompt", "responses": [...]}: scores are
    normalised to mean 0, std 1 on them. Default: the training responses."""
    normalise: bool = True
    """Normalise scores on the reference samples after training."""
    tokenizer: str | None = None
    """Tokenizer folder or hub name; default: the one saved with model."""
    epochs: int = 1
    """Passes over the training data; more than one overfits (InstructGPT)."""
    batch_size: int = 8
    """Rankings (or comparisons) per optimiser step; each contributes all its pairs."""
    micro_batch_size: int | None = None
    """Rankings per forward pass, gradients accumulated up to batch_size (saves memory); default: batch_size."""
    lr: float = 5e-5
    """Peak AdamW learning rate (lm-human-preferences' reward model: 5e-5)."""
    lr_schedule: Literal["linear", "constant"] = "linear"
    """Linear decay to 0 over the planned steps, or constant."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0: none)."""
    max_length: int | None = None
    """Longest prompt+response in tokens (longer ones keep their end); default: the model's limit."""
    eval_every: int = 100
    """Validate every this many steps (0: only at the end)."""
    save_every: int = 100
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

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size}
        if self.micro_batch_size is not None:
            positive["micro_batch_size"] = self.micro_batch_size
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"RewardTrainConfig: {name}={value} must be >= 1.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"RewardTrainConfig: val_fraction={self.val_fraction} must be in [0, 1).")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"RewardTrainConfig: max_steps={self.max_steps} must be >= 1 (or None for no limit).")


@dataclass(frozen=True)
class Normalisation:
    """How raw scores were mapped to mean 0, std 1 on the reference samples: ``(raw - shift) / scale``."""

    shift: float
    """Mean raw score on the reference samples."""
    scale: float
    """Standard deviation of the raw scores on the reference samples."""
    folded_into: str
    """Parameter that absorbed the shift (e.g. ``score.bias``); empty when none could."""
    output_offset: float
    """What readers must still subtract from the saved model's output (0 when the shift is folded)."""
    reference_samples: int
    """Number of reference samples."""


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
    normalisation: Normalisation | None
    """The normalisation applied to the saved model, if finished."""
    seconds: float
    """Wall time of the whole training, resumed parts included."""


# ---- the loss ------------------------------------------------------------------------
def ranking_loss(scores: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Bradley-Terry loss of a batch of rankings, each scored once.

    ``scores`` is ``(sum(sizes),)``: the responses of every ranking, best first. A ranking
    contributes the mean of ``-log sigmoid(s_i - s_j)`` over its C(K, 2) pairs (i above j);
    the batch loss is the mean over rankings, so a K-way ranking weighs as much as a pair.
    """
    hi, lo, weight, start = [], [], [], 0
    for k in sizes:
        for i, j in combinations(range(start, start + k), 2):
            hi.append(i)
            lo.append(j)
            weight.append(1.0 / math.comb(k, 2))
        start += k
    diff = scores[hi] - scores[lo]  # (P,) one entry per pair
    w = torch.tensor(weight, dtype=scores.dtype, device=scores.device)  # (P,)
    return -(F.logsigmoid(diff) * w).sum() / len(sizes)


# ---- model loading -------------------------------------------------------------------
def score_head(model: torch.nn.Module) -> tuple[str, torch.nn.Linear]:
    """The final ``nn.Linear`` producing the single score (``score`` in GPT-2, ``classifier`` in BERT)."""
    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no linear layer with one output to act as the score head.")
    return heads[-1]


def load_reward_backbone(name_or_path: str, seed: int = 0, trust_remote_code: bool = False) -> Any:
    """``AutoModelForSequenceClassification(num_labels=1)`` from any Hugging Face folder or name.

    A head absent from the checkpoint (a causal LM or an encoder) or of another shape
    (a classifier with more labels) is initialised N(0, 1/sqrt(d + 1)), bias 0, with ``seed``.
    """
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    try:
        with refuse_pickled_code(name_or_path):
            model, info = AutoModelForSequenceClassification.from_pretrained(
                name_or_path,
                num_labels=1,
                dtype=torch.float32,
                weights_only=True,
                trust_remote_code=trust_remote_code,
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
    except OSError as e:
        raise OSError(
            f"--model {name_or_path!r}: could not load it: {e}\n"
            "Pass a local Hugging Face folder (config.json + weights), or a hub name on a machine that is online."
        ) from e
    name, head = score_head(model)
    mismatched = {m[0] if isinstance(m, tuple) else m for m in info["mismatched_keys"]}  # (key, shapes) or key
    if any(k.startswith(name + ".") for k in info["missing_keys"] | mismatched):
        with torch.no_grad():
            head.weight.normal_(0.0, 1.0 / math.sqrt(head.in_features + 1))
            if head.bias is not None:
                head.bias.zero_()
    return model


# ---- normalisation -------------------------------------------------------------------
def normalise_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    batch_size: int = 32,
    max_length: int | None = None,
) -> Normalisation:
    """Make the model score the reference samples with mean 0 and std 1, in its own weights.

    The scale always folds into the score head's weight. The shift folds into the head's
    bias, or, for heads without one (GPT-2), into the bias of the final LayerNorm that
    feeds the head (it adds a constant vector to every hidden state). When neither works
    (e.g. Llama's RMSNorm has no bias), ``output_offset`` carries the shift and
    :class:`HFRewardModel` subtracts it. The result is checked sample by sample.
    """
    if len(prompts) < 2:
        raise ValueError(f"normalisation needs at least 2 reference samples, got {len(prompts)}.")

    def rescore(offset: float = 0.0) -> np.ndarray:
        rm = HFRewardModel.from_model(model, tokenizer, batch_size, max_length, offset)
        return rm.score(prompts, responses)

    raw = rescore()
    shift, scale = float(raw.mean()), float(raw.std())
    if scale < 1e-6:
        raise ValueError(
            f"the reward model gives all {len(raw)} reference samples the same score ({shift:.4g}), "
            "so it cannot be normalised: it learned nothing that separates them. Check the data and learning rate."
        )
    expected = (raw - shift) / scale
    name, head = score_head(model)
    with torch.no_grad():
        head.weight.div_(scale)
        if head.bias is not None:
            head.bias.sub_(shift).div_(scale)
            folded = f"{name}.bias"
        else:
            folded = _fold_into_final_layer_norm(model, head, shift / scale, lambda: _close(rescore(), expected))
    offset = 0.0 if folded else shift / scale
    now = rescore(offset)
    if not _close(now, expected):
        raise RuntimeError(
            f"normalisation folded into {folded or 'the head weight'} did not reproduce (raw - shift) / scale "
            f"(largest error {np.abs(now - expected).max():.3g}); please report this model type."
        )
    return Normalisation(shift, scale, folded, offset, len(prompts))


def _fold_into_final_layer_norm(
    model: Any, head: torch.nn.Linear, offset: float, exact: Callable[[], bool]
) -> str:
    """Subtract ``offset`` from every score through the last LayerNorm's bias, if ``exact()`` then holds.

    Adding ``delta = -offset * w / (w . w)`` to the bias of the LayerNorm whose output the
    head reads shifts every score by ``w . delta = -offset``. Which LayerNorm that is, is
    checked, not assumed: the change is undone unless the reference scores come out right.
    Returns the bias's name, or '' when nothing was folded.
    """
    w = head.weight[0]  # (d,) already divided by scale
    norms = [
        (n, m) for n, m in model.named_modules()
        if isinstance(m, torch.nn.LayerNorm) and m.bias is not None and m.bias.shape == w.shape
    ]
    if not norms:
        return ""
    name, norm = norms[-1]
    delta = -offset * w / torch.dot(w, w)  # (d,)
    norm.bias.add_(delta)
    if exact():
        return f"{name}.bias"
    norm.bias.sub_(delta)
    return ""


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(a, b, atol=1e-3, rtol=1e-3))


# ---- data --------------------------------------------------------------------------
def _split(config: RewardTrainConfig) -> tuple[list[Preference], list[Preference]]:
    """Training and validation preferences: val_data, or a seeded val_fraction of data."""
    train = load_preferences(config.data)
    if config.val_data:
        return train, load_preferences(config.val_data)
    n_val = int(len(train) * config.val_fraction)
    if n_val == 0:
        return train, []
    order = np.random.default_rng(config.seed).permutation(len(train))
    return [train[i] for i in order[n_val:]], [train[i] for i in order[:n_val]]


def _reference(config: RewardTrainConfig, train: Sequence[Preference]) -> tuple[list[str], list[str]]:
    """Reference (prompt, response) samples for normalisation: reference_data, else the training responses."""
    if config.reference_data:
        pairs = [(it.prompt, r) for it in load_collection(config.reference_data) for r in it.responses]
    else:
        pairs = list(dict.fromkeys((it.prompt, r) for it in train for r in it.responses))
    if len(pairs) < 2:
        raise DataError(
            f"{config.reference_data or config.data}: {len(pairs)} reference sample(s); normalising "
            "scores to mean 0, std 1 needs at least 2. Give more samples or pass --no-normalise."
        )
    return [p for p, _ in pairs], [r for _, r in pairs]


# ---- checkpoints and logs ------------------------------------------------------------
def _check_out_folder(out: Path) -> None:
    """Refuse to write into a folder that holds something other than a run of ours: it would be replaced."""
    ours = (CHECKPOINT_DIR, LOG_FILE, NORMALISATION_FILE)
    if out.exists() and any(out.iterdir()) and not any((out / name).exists() for name in ours):
        raise ValueError(
            f"--out {out}: the folder holds other files and would be replaced by the trained model; "
            "pass a new or empty folder."
        )


def _save_checkpoint(out: Path, model: Any, optimizer: Any, scheduler: Any, step: int,
                     seconds: float, config: RewardTrainConfig) -> None:
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp / "model")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        state = {"step": step, "seconds": seconds, "config": asdict(config)}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))

    save_dir_atomic(out / CHECKPOINT_DIR, write)


def _load_checkpoint(out: Path, config: RewardTrainConfig) -> dict[str, Any] | None:
    """The saved state of an interrupted run of the same training, or None to start afresh."""
    ckpt = out / CHECKPOINT_DIR
    if not (config.resume and (ckpt / "state.json").is_file()):
        return None
    state = json.loads((ckpt / "state.json").read_text())
    now = asdict(config)
    changed = sorted(k for k, v in state["config"].items() if k not in RESUMABLE_CHANGES and now.get(k) != v)
    if changed:
        detail = ", ".join(f"{k}: {state['config'][k]!r} -> {now.get(k)!r}" for k in changed)
        raise ValueError(
            f"--out {out} holds a checkpoint of a different training ({detail}); rerun with the same "
            "settings to resume, pass --no-resume to start afresh, or choose another --out."
        )
    return state


class _Log:
    """Training metrics to out/train_log.csv (and TensorBoard), restartable at a checkpoint."""

    def __init__(self, out: Path, start_step: int, tensorboard: bool) -> None:
        self.path = out / LOG_FILE
        kept: list[dict[str, str]] = []
        if start_step and self.path.is_file():
            with self.path.open(newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= start_step]
        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        self.file = self.path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, LOG_COLUMNS)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(out / "tb"))

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch") and v != "":
                    self.tb.add_scalar(f"reward_model/{k}", v, int(row["step"]))

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


# ---- training ------------------------------------------------------------------------
def train_reward_model(config: RewardTrainConfig) -> RewardTrainResult:
    """Train a Bradley-Terry reward model as ``config`` says; see the module docstring."""
    started = time.monotonic()
    out = Path(config.out)
    _check_out_folder(out)
    train_items, val_items = _split(config)
    reference = _reference(config, train_items) if config.normalise else None  # bad data fails now, not after training
    tokenizer = load_tokenizer(config.tokenizer or config.model, trust_remote_code=config.trust_remote_code)
    state = _load_checkpoint(out, config)
    if state is None:
        model = load_reward_backbone(config.model, seed=config.seed, trust_remote_code=config.trust_remote_code)
    else:
        from transformers import AutoModelForSequenceClassification

        with refuse_pickled_code(out / CHECKPOINT_DIR / "model"):
            model = AutoModelForSequenceClassification.from_pretrained(
                str(out / CHECKPOINT_DIR / "model"), dtype=torch.float32, weights_only=True
            )
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    model.to(resolve_device(config.device))
    # Dropout off (eval mode) while training: scores must not depend on a random mask,
    # and a reward model's ranking loss has no use for it (TRL's disable_dropout, OAI).
    model.eval()
    max_length = config.max_length or model_max_length(model, tokenizer)

    # Tokenise once: item i's responses (best first) as id lists.
    flat = encode_for_reward(
        tokenizer,
        [it.prompt for it in train_items for _ in it.responses],
        [r for it in train_items for r in it.responses],
        max_length,
    )
    item_ids, start = [], 0
    for it in train_items:
        item_ids.append(flat[start : start + len(it.responses)])
        start += len(it.responses)

    steps_per_epoch = math.ceil(len(train_items) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    decay = (lambda s: 1.0 - s / total_steps) if config.lr_schedule == "linear" else (lambda s: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    step, seconds_before = 0, 0.0
    if state is not None:
        with refuse_pickled_code(out / CHECKPOINT_DIR / "optimizer.pt"):
            saved = torch.load(out / CHECKPOINT_DIR / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step, seconds_before = state["step"], state["seconds"]

    def evaluate() -> PairwiseMetrics | None:
        if not val_items:
            return None
        rm = HFRewardModel.from_model(model, tokenizer, batch_size=4 * config.batch_size, max_length=max_length)
        prompts = [it.prompt for it in val_items for _ in it.responses]
        return pairwise_metrics(rm.score(prompts, [r for it in val_items for r in it.responses]), val_items)

    log = _Log(out, step, config.tensorboard)
    stop_at = min(total_steps, config.max_steps or total_steps)
    bar = tqdm(total=total_steps, initial=step, desc="reward model", disable=not config.progress)
    micro = config.micro_batch_size or config.batch_size
    val = None
    try:
        while step < stop_at:
            # The data order is a function of (seed, epoch), so a resumed run sees the same batches.
            epoch, b = divmod(step, steps_per_epoch)
            order = np.random.default_rng([config.seed, epoch]).permutation(len(train_items))
            batch = order[b * config.batch_size : (b + 1) * config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_sum, scores = 0.0, []
            for m in range(0, len(batch), micro):
                part = batch[m : m + micro]
                seqs = [ids for i in part for ids in item_ids[i]]
                s = sequence_scores(model, seqs)  # (sum K,) best first per ranking
                loss = ranking_loss(s, [len(item_ids[i]) for i in part]) * (len(part) / len(batch))
                # A NaN or inf would poison every weight at the optimiser step and then the next
                # checkpoint: stop before either happens (the last good checkpoint stays on disk).
                bad = int((~torch.isfinite(s.detach())).sum())
                if bad or not torch.isfinite(loss):
                    raise _non_finite(step, f"the loss is {loss.item()}" + (
                        f" ({bad} of {len(s)} scores are not finite)" if bad else ""), out)
                loss.backward()
                loss_sum += loss.item()
                scores.extend(s.detach().cpu().tolist())
            max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf  # inf: measure, don't clip
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            if not torch.isfinite(grad_norm):
                raise _non_finite(step, f"the gradient norm is {grad_norm.item()}", out)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            step += 1
            train_metrics = pairwise_metrics(scores, [train_items[i] for i in batch])
            row: dict[str, Any] = {
                "step": step, "epoch": epoch, "loss": loss_sum, "accuracy": train_metrics.accuracy,
                "margin": train_metrics.margin, "lr": lr, "val_accuracy": "", "val_margin": "",
                "seconds": round(seconds_before + time.monotonic() - started, 3),
            }
            if step == total_steps or (config.eval_every and step % config.eval_every == 0):
                val = evaluate()
                if val is not None:
                    row.update(val_accuracy=val.accuracy, val_margin=val.margin)
            log.write(row)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}", acc=f"{train_metrics.accuracy:.2f}")
            # Also at the very end: if normalising or saving fails, a rerun resumes here.
            if step == stop_at or (config.save_every and step % config.save_every == 0):
                _save_checkpoint(out, model, optimizer, scheduler, step, row["seconds"], config)
    finally:
        bar.close()
        log.close()
    if val is None and step == total_steps:  # resumed after the last step
        val = evaluate()
    seconds = seconds_before + time.monotonic() - started
    if step < total_steps:
        return RewardTrainResult(out, False, step, val, None, seconds)

    # ---- normalise on reference samples, then swap the finished model into `out` -----------
    if reference is not None:
        norm = normalise_scores(model, tokenizer, *reference, 4 * config.batch_size, max_length)
    else:
        norm = Normalisation(0.0, 1.0, "", 0.0, 0)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / NORMALISATION_FILE, asdict(norm))
        write_json_atomic(tmp / "train_config.json", asdict(config))
        shutil.copy2(out / LOG_FILE, tmp / LOG_FILE)
        if (out / "tb").is_dir():
            shutil.copytree(out / "tb", tmp / "tb")

    save_dir_atomic(out, write)  # also drops out/checkpoint: the run is complete
    return RewardTrainResult(out, True, step, val, norm, seconds)


def _non_finite(step: int, what: str, out: Path) -> FloatingPointError:
    """The error that stops training at a NaN or inf, saying which checkpoint is the last good one."""
    checkpoint = out / CHECKPOINT_DIR
    kept = (
        f"the last good checkpoint is {checkpoint}"
        if (checkpoint / "state.json").is_file()
        else "no checkpoint was saved yet"
    )
    return FloatingPointError(
        f"step {step + 1}: {what}; training stopped before applying it and {kept}. Lower --lr (with "
        "--no-resume, or a new --out: a checkpoint only resumes with the same settings) or check the data and model."
    )


def cli(argv: list[str] | None = None) -> int:
    """``rlhf-gym train-rm``: train a Bradley-Terry reward model on preference JSONL."""
    parser = argparse.ArgumentParser(
        prog="rlhf-gym train-rm",
        description="Train a Bradley-Terry reward model (AutoModelForSequenceClassification, one label).",
    )
    add_config_args(parser, RewardTrainConfig)
    args = parser.parse_args(argv)
    try:
        result = train_reward_model(config_from_args(RewardTrainConfig, args))
    except (DataError, ValueError, OSError, FloatingPointError) as e:
        print(f"rlhf-gym train-rm: {e}", file=sys.stderr)
        return 2
    val = f"; validation accuracy {result.val.accuracy:.3f}, margin {result.val.margin:.3f}" if result.val else ""
    if not result.finished:
        print(f"stopped at step {result.steps}{val}; rerun the same command to resume from {result.out}/checkpoint.")
        return 0
    print(f"reward model saved to {result.out} after {result.steps} steps{val}.")
    return 0
