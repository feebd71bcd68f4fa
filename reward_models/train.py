"""Bradley-Terry reward-model training (step 2 of RLHF), readable top to bottom.

    loss = -log sigmoid(r(prompt, chosen) - r(prompt, rejected))

A K-way ranking is one batch element: its K responses are scored once and all C(K, 2)
pairs are formed from those K scores (InstructGPT, Ouyang et al. 2022, sec. 3.5:
shuffling the pairs as separate examples overfits). One epoch by default, for the same
reason. The model is any ``AutoModelForSequenceClassification`` with one label, started
from any Hugging Face folder (:func:`~reward_models.hf_model.load_reward_backbone`): an
existing reward model, an encoder, or a causal LM such as the SFT policy.

After training, scores are normalized to mean 0 and std 1 on reference samples and the
constants folded into the weights (:mod:`reward_models.normalize`); they are also written
to ``reward_normalization.json``. Runs resume, log and stop on NaN with
:mod:`rlhf_common.training`.

Run it as ``rlhf-gym train-rm --model M --data prefs.jsonl --out runs/rm``.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reward_models.debias import COEF_LEARNING_RATE, make_covariate
from reward_models.hf import load_tokenizer, refuse_pickled_code, resolve_device
from reward_models.hf_model import (
    NORMALIZATION_FILE,
    HFRewardModel,
    encode_for_reward,
    load_reward_backbone,
    model_max_length,
    sequence_scores,
)
from reward_models.normalize import Normalization, normalize_scores
from reward_models.preferences import (
    PairwiseMetrics,
    Preference,
    load_collection,
    load_preferences,
    pairwise_metrics,
)
from reward_models.train_config import RewardTrainConfig, RewardTrainResult
from rlhf_common.config_cli import config_command
from rlhf_common.io import DataError, save_dir_atomic, write_json_atomic
from rlhf_common.training import (
    TENSORS_FILE,
    RunLogger,
    check_finite,
    check_same_config,
    config_dict,
    has_checkpoint,
    load_checkpoint,
    progress_bar,
    save_checkpoint,
)

LOG_FILE = "train_log.csv"
"""The run's log in ``out``: one row per step, validation columns filled at evaluations."""
CHECKPOINT_DIR = "checkpoint"
"""The resumable state in ``out`` while training (removed when the finished model is saved)."""
RESUME_FREE = ("max_steps", "eval_steps", "save_steps", "progress", "device", "tensorboard", "reference_data",
               "normalize")
"""Settings that may differ when resuming: they do not change the training trajectory."""
NAN_FIX = ("lower --learning-rate (with --no-resume, or a new --out: a checkpoint only resumes with the same "
           "settings) or check the data and model.")


# ---- the loss ------------------------------------------------------------------------
def ranking_loss(scores: torch.Tensor, sizes: Sequence[int], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Bradley-Terry loss of a batch of rankings, each scored once.

    ``scores`` is ``(sum(sizes),)``: the responses of every ranking, best first. A ranking
    contributes the mean of ``-log sigmoid(s_i - s_j)`` over its C(K, 2) pairs (i above j),
    times its weight (a row's ``"weight"``, default 1; e.g. its labeler's reliability,
    :mod:`reward_models.reliability`); the batch loss is the sum over rankings divided by
    their number, so a K-way ranking weighs as much as a pair and weight 0 adds nothing.
    """
    hi, lo, weight, start = [], [], [], 0
    for n, k in enumerate(sizes):
        for i, j in combinations(range(start, start + k), 2):
            hi.append(i)
            lo.append(j)
            weight.append((1.0 if weights is None else weights[n]) / math.comb(k, 2))
        start += k
    diff = scores[hi] - scores[lo]  # (P,) one entry per pair
    w = torch.tensor(weight, dtype=scores.dtype, device=scores.device)  # (P,)
    return -(F.logsigmoid(diff) * w).sum() / len(sizes)


# ---- data --------------------------------------------------------------------------
def _split(config: RewardTrainConfig, tokenizer: Any) -> tuple[list[Preference], list[Preference]]:
    """Training and validation preferences (conversations rendered with ``tokenizer``): val_data or val_fraction."""
    train = load_preferences(config.data, tokenizer)
    if config.val_data:
        return train, load_preferences(config.val_data, tokenizer)
    n_val = int(len(train) * config.val_fraction)
    if n_val == 0:
        return train, []
    order = np.random.default_rng(config.seed).permutation(len(train))
    return [train[i] for i in order[n_val:]], [train[i] for i in order[:n_val]]


def _reference(config: RewardTrainConfig, train: Sequence[Preference]) -> tuple[list[str], list[str]]:
    """Reference (prompt, response) samples for normalization: reference_data, else the training responses."""
    if config.reference_data:
        pairs = [(it.prompt, r) for it in load_collection(config.reference_data) for r in it.responses]
    else:
        pairs = list(dict.fromkeys((it.prompt, r) for it in train for r in it.responses))
    if len(pairs) < 2:
        raise DataError(
            f"{config.reference_data or config.data}: {len(pairs)} reference sample(s); normalizing "
            "scores to mean 0, std 1 needs at least 2. Give more samples or pass --no-normalize."
        )
    return [p for p, _ in pairs], [r for _, r in pairs]


def _check_out_folder(out: Path) -> None:
    """Refuse to write into a folder that holds something other than a run of ours: it would be replaced."""
    ours = (CHECKPOINT_DIR, LOG_FILE, NORMALIZATION_FILE)
    if out.exists() and any(out.iterdir()) and not any((out / name).exists() for name in ours):
        raise ValueError(
            f"--out {out}: the folder holds other files and would be replaced by the trained model; "
            "pass a new or empty folder."
        )


# ---- training ------------------------------------------------------------------------
def train_reward_model(config: RewardTrainConfig) -> RewardTrainResult:
    """Train a Bradley-Terry reward model as ``config`` says; see the module docstring."""
    started = time.monotonic()
    out = Path(config.out)
    _check_out_folder(out)
    tokenizer = load_tokenizer(config.tokenizer or config.model, trust_remote_code=config.trust_remote_code)
    train_items, val_items = _split(config, tokenizer)
    reference = _reference(config, train_items) if config.normalize else None  # bad data fails now, not after training
    run = _RewardRun(config, tokenizer, train_items, val_items)
    val = run.train(started)
    seconds = run.seconds_before + time.monotonic() - started
    if run.step < run.total_steps:
        return RewardTrainResult(out, False, run.step, val, None, seconds)
    if reference is not None:
        norm = normalize_scores(run.model, run.tokenizer, *reference, 4 * config.batch_size, run.max_length)
    else:
        norm = Normalization(0.0, 1.0, "", 0.0, 0)
    _save_finished(out, run.model, run.tokenizer, norm, config)
    if run.covariate is not None:  # the bias term that was fitted and dropped
        write_json_atomic(out / "debias.json", {"debias": config.debias, **run.covariate.summary()})
    return RewardTrainResult(out, True, run.step, val, norm, seconds)


class _RewardRun:
    """Model, tokenised data, optimizer and step counter of one run, set up (or resumed) by the constructor."""

    def __init__(self, config: RewardTrainConfig, tokenizer: Any, train_items: list[Preference],
                 val_items: list[Preference]) -> None:
        self.config, self.train_items, self.val_items = config, train_items, val_items
        self.out = Path(config.out)
        self.checkpoint = self.out / CHECKPOINT_DIR
        self.tokenizer = tokenizer
        saved = self._saved_state()
        self.model = self._load_model(saved is not None)
        self.model.config.get_text_config().pad_token_id = self.tokenizer.pad_token_id
        self.model.to(resolve_device(config.device))
        # Dropout off (eval mode) while training: scores must not depend on a random mask,
        # and a reward model's ranking loss has no use for it (TRL's disable_dropout, OAI).
        self.model.eval()
        self.max_length = config.max_length or model_max_length(self.model, self.tokenizer)
        self.item_ids = _encode_items(self.tokenizer, train_items, self.max_length)
        self.steps_per_epoch = math.ceil(len(train_items) / config.batch_size)
        self.total_steps = config.num_train_epochs * self.steps_per_epoch
        # --debias: a bias term fitted jointly in the loss and dropped from the saved model (reward_models/debias.py).
        self.covariate = make_covariate(config.debias, train_items)
        groups = [{"params": list(self.model.parameters())}]
        if self.covariate is not None:
            self.covariate.to(resolve_device(config.device))
            groups.append({"params": [self.covariate.coef], "lr": COEF_LEARNING_RATE, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
        total = self.total_steps
        decay = (lambda s: 1.0 - s / total) if config.lr_scheduler_type == "linear" else (lambda s: 1.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, decay)
        self.resumed = saved is not None
        self.step, self.seconds_before = 0, 0.0
        if saved is not None:
            state, tensors = saved
            self.optimizer.load_state_dict(tensors["optimizer"])
            self.scheduler.load_state_dict(tensors["scheduler"])
            self.step, self.seconds_before = state["step"], state["seconds"]
            if self.covariate is not None:
                self.covariate.load_state_dict(tensors["covariate"])

    def _saved_state(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The checkpoint of an interrupted run of the same training, or None to start afresh."""
        if not (self.config.resume and has_checkpoint(self.checkpoint)):
            return None
        with refuse_pickled_code(self.checkpoint / TENSORS_FILE):
            state, tensors = load_checkpoint(self.checkpoint)
        check_same_config(state["config"], self.config, RESUME_FREE, f"--out {self.out}",
                          "rerun with the same settings to resume, pass --no-resume to start afresh, or choose "
                          "another --out.")
        return state, tensors

    def _load_model(self, resumed: bool) -> Any:
        config = self.config
        if not resumed:
            return load_reward_backbone(config.model, seed=config.seed, trust_remote_code=config.trust_remote_code)
        from transformers import AutoModelForSequenceClassification

        with refuse_pickled_code(self.checkpoint / "model"):
            return AutoModelForSequenceClassification.from_pretrained(
                str(self.checkpoint / "model"), dtype=torch.float32, weights_only=True
            )

    def train(self, started: float) -> PairwiseMetrics | None:
        """Steps up to ``max_steps`` or the end, logging, validating and checkpointing; the last validation."""
        config, total = self.config, self.total_steps
        log = RunLogger(self.out, self.step if self.resumed else None, LOG_FILE, tensorboard=config.tensorboard,
                        tb_prefix="reward_model/", tb_dir=self.out / "tb")
        stop_at = min(total, config.max_steps or total)
        bar = progress_bar(total, "reward model", initial=self.step, enabled=config.progress)
        val = None
        try:
            while self.step < stop_at:
                epoch, loss_sum, metrics, lr = self._optimizer_step()
                row: dict[str, float | str] = {
                    "epoch": epoch, "loss": loss_sum, "accuracy": metrics.accuracy, "margin": metrics.margin,
                    "lr": lr, "val_accuracy": "", "val_margin": "",
                    "seconds": round(self.seconds_before + time.monotonic() - started, 3),
                }
                if self.covariate is not None:
                    row["length_coef"] = float(self.covariate.coef.detach())
                if self.step == total or (config.eval_steps and self.step % config.eval_steps == 0):
                    val = self.evaluate()
                    if val is not None:
                        row.update(val_accuracy=val.accuracy, val_margin=val.margin)
                log.log(self.step, row)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum:.3f}", acc=f"{metrics.accuracy:.2f}")
                # Also at the very end: if normalizing or saving fails, a rerun resumes here.
                if self.step == stop_at or (config.save_steps and self.step % config.save_steps == 0):
                    self._save_checkpoint(float(row["seconds"]))
        finally:
            bar.close()
            log.close()
        if val is None and self.step == total:  # resumed after the last step
            val = self.evaluate()
        return val

    def _optimizer_step(self) -> tuple[int, float, PairwiseMetrics, float]:
        """One optimiser step over a batch of rankings; returns its epoch, loss, train metrics and learning rate."""
        config = self.config
        # The data order is a function of (seed, epoch), so a resumed run sees the same batches.
        epoch, b = divmod(self.step, self.steps_per_epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(len(self.train_items))
        batch = order[b * config.batch_size : (b + 1) * config.batch_size]
        micro = config.micro_batch_size or config.batch_size
        # A NaN or inf would poison every weight at the optimiser step and then the next
        # checkpoint: stop before either happens (the last good checkpoint stays on disk).
        where, last_good = f"step {self.step + 1}", self.checkpoint if has_checkpoint(self.checkpoint) else None
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, scores = 0.0, []
        for m in range(0, len(batch), micro):
            part = batch[m : m + micro]
            s = sequence_scores(self.model, [ids for i in part for ids in self.item_ids[i]])  # (sum K,) best first
            weights = [self.train_items[i].weight for i in part]
            responses = [r for i in part for r in self.train_items[i].responses]
            fit = s if self.covariate is None else s + self.covariate(responses)  # --debias: in the loss only
            loss = ranking_loss(fit, [len(self.item_ids[i]) for i in part], weights) * (len(part) / len(batch))
            if self.covariate is not None:  # ... and the kept score uncorrelated with length (ODIN)
                loss = loss + self.covariate.penalty(s, responses) * (len(part) / len(batch))
            check_finite(s.detach().sum(), f"the sum of the {len(s)} scores", where, last_good, NAN_FIX)
            check_finite(loss.detach(), "the loss", where, last_good, NAN_FIX)
            loss.backward()
            loss_sum += loss.item()
            scores.extend(s.detach().cpu().tolist())
        max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf  # inf: measure, don't clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        check_finite(grad_norm, "the gradient norm", where, last_good, NAN_FIX)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return epoch, loss_sum, pairwise_metrics(scores, [self.train_items[i] for i in batch]), lr

    def evaluate(self) -> PairwiseMetrics | None:
        """Validation accuracy and margin of the raw scores (None without validation data)."""
        if not self.val_items:
            return None
        rm = HFRewardModel.from_model(self.model, self.tokenizer, 4 * self.config.batch_size, self.max_length)
        prompts = [it.prompt for it in self.val_items for _ in it.responses]
        return pairwise_metrics(rm.score(prompts, [r for it in self.val_items for r in it.responses]), self.val_items)

    def _save_checkpoint(self, seconds: float) -> None:
        state = {"step": self.step, "seconds": seconds, "config": config_dict(self.config)}
        tensors = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.covariate is not None:
            tensors["covariate"] = self.covariate.state_dict()
        save_checkpoint(self.checkpoint, state, tensors, lambda folder: self.model.save_pretrained(folder / "model"))


def _encode_items(tokenizer: Any, items: Sequence[Preference], max_length: int | None) -> list[list[list[int]]]:
    """Tokenise once: item i's responses (best first) as id lists."""
    flat = encode_for_reward(
        tokenizer, [it.prompt for it in items for _ in it.responses], [r for it in items for r in it.responses],
        max_length,
    )
    item_ids, start = [], 0
    for it in items:
        item_ids.append(flat[start : start + len(it.responses)])
        start += len(it.responses)
    return item_ids


def _save_finished(out: Path, model: Any, tokenizer: Any, norm: Normalization, config: RewardTrainConfig) -> None:
    """Swap the finished model (safetensors), its tokenizer, normalization, config and logs into ``out``."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / NORMALIZATION_FILE, asdict(norm))
        write_json_atomic(tmp / "train_config.json", asdict(config))
        shutil.copy2(out / LOG_FILE, tmp / LOG_FILE)
        if (out / "tb").is_dir():
            shutil.copytree(out / "tb", tmp / "tb")

    save_dir_atomic(out, write)  # also drops out/checkpoint: the run is complete


def cli(argv: list[str] | None = None) -> int:
    """``rlhf-gym train-rm``: train a Bradley-Terry reward model on preference JSONL."""

    def run(config: RewardTrainConfig) -> None:
        result = train_reward_model(config)
        val = f"; validation accuracy {result.val.accuracy:.3f}, margin {result.val.margin:.3f}" if result.val else ""
        if result.finished:
            print(f"reward model saved to {result.out} after {result.steps} steps{val}.")
        else:
            print(f"stopped at step {result.steps}{val}; rerun the same command to resume from "
                  f"{result.out}/{CHECKPOINT_DIR}.")

    return config_command(argv, "rlhf-gym train-rm", "Train a Bradley-Terry reward model "
                          "(AutoModelForSequenceClassification, one label).", RewardTrainConfig, run)
