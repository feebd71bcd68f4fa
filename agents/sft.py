"""Supervised fine-tuning (RLHF step 1) of any Hugging Face causal LM on demonstrations.

Demonstrations (:mod:`agents.demonstrations`) are ``{"prompt","response"}`` or chat
``{"messages": [...]}`` JSONL rows; the loss covers response tokens only. Validation loss
is measured every ``eval_steps`` steps; training stops early when it has not improved for
``patience`` evaluations, and the best model is kept as a Hugging Face folder
(``OUT/model``). A checkpoint (:func:`rlhf_common.training.save_checkpoint`: model,
optimizer, scheduler, step, RNG state) is saved atomically at every evaluation, so
re-running the same command after an interruption resumes where it left off.

Pretraining on raw text is the same loop with an empty prompt: ``{"prompt": "",
"response": text}`` (a tokenizer that adds BOS still gives the model a token to start from).

For larger models, ``lora=LoraSettings(...)`` (``--lora r=16,alpha=32``) trains LoRA adapters
only; ``OUT/model`` then holds the merged model, a plain causal LM like any other. Under
``torchrun --nproc_per_node N -m agents.sft ...`` each rank takes ``batch_size / N`` rows of
every micro-batch and the gradients are summed, so a step equals the 1-process step over the
same batch; validation is split over the ranks too, and rank 0 alone writes ``OUT``.

The output folder ends up holding::

    OUT/model/          best model (safetensors) and its tokenizer: agents.lm.load_policy(OUT/model)
    OUT/log.csv         step, epoch, split (train/val), loss, perplexity, lr
    OUT/baseline.json   final validation loss and perplexity (and mean score): what RL must beat
    OUT/checkpoint/     the latest resumable state (removed when the run finishes)
    OUT/trainer_state.json  written when the run finishes; a re-run then just reports it

Run it as ``python -m agents.sft --model PATH --data demos.jsonl --out DIR``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_file, save_model

from agents.demonstrations import (
    Demonstration,
    LengthGroupedBatches,
    collate,
    evaluate_loss,
    load_demonstrations,
    token_loss_sum,
)
from agents.distributed import (
    DistInfo,
    all_reduce,
    broadcast_parameters,
    init_distributed,
    reduce_gradients,
    resolve_rank_device,
)
from agents.lm import load_causal_lm, load_tokenizer
from agents.lora import add_lora, check_mergeable, is_lora, merged_state_dict, trainable_parameters
from agents.sft_baseline import score_baseline
from agents.sft_config import SFTConfig, SFTResult
from reward_models import RewardModel
from reward_models.hf import refuse_pickled_code
from rlhf_common.config_cli import config_command
from rlhf_common.io import save_dir_atomic, write_json_atomic
from rlhf_common.training import (
    TENSORS_FILE,
    RunLogger,
    check_finite,
    check_same_config,
    config_dict,
    has_checkpoint,
    load_checkpoint,
    progress_bar,
    quiet_transformers,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

LOG_FILE = "log.csv"
"""The run's log in ``OUT``: one row per ``logging_steps`` (split ``train``) and per evaluation (``val``)."""
FINISHED_FILE = "trainer_state.json"
"""Written into ``OUT`` when a run finishes; a re-run then reports it instead of training again."""
RESUME_FREE = ("device", "num_threads", "progress")
"""The fields a resumed run may change without changing what it computes."""
RESUME_FIX = "re-run with the same settings to resume, or pass a new --out to start over."


# ---- training -----------------------------------------------------------------------------
def train_sft(
    config: SFTConfig,
    scorer: RewardModel | None = None,
    prompts: Sequence[str] | None = None,
) -> SFTResult:
    """Fine-tune ``config.model`` on ``config.data``; resume from ``config.out`` if interrupted.

    With a ``scorer`` and ``prompts``, the trained policy's samples are scored and the
    mean is recorded in ``baseline.json`` as the score later RL must beat.
    """
    if (scorer is None) != (not prompts):
        raise ValueError("pass both scorer and prompts to record a baseline score, or neither.")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    finished = _finished_run(config)
    if finished is not None:
        return finished
    run = _SFTRun(config, init_distributed())
    run.train()
    return run.finish(scorer, prompts)


def _finished_run(config: SFTConfig) -> SFTResult | None:
    """The result of a run that already finished in ``config.out`` (with the same settings), else None."""
    out = Path(config.out)
    state_file = out / FINISHED_FILE
    if not state_file.is_file():
        return None
    check_same_config(json.loads(state_file.read_text())["config"], config, RESUME_FREE, state_file, RESUME_FIX)
    print(f"sft: {out} holds a finished run; reporting it (use a new --out to train again).", file=sys.stderr)
    return SFTResult(**json.loads((out / "baseline.json").read_text())["result"])


class _SFTRun:
    """One SFT run: model, data, optimizer and counters, set up (or resumed) by the constructor."""

    def __init__(self, config: SFTConfig, info: DistInfo) -> None:
        if config.batch_size % info.world_size:
            raise ValueError(
                f"batch_size={config.batch_size} must be divisible by WORLD_SIZE={info.world_size}: each torchrun "
                "rank takes an equal share of every micro-batch."
            )
        self.config, self.info = config, info
        self.out = Path(config.out)
        self.checkpoint = self.out / "checkpoint"
        self.device = resolve_rank_device(config.device, info)
        self.tokenizer, self.model, max_length = _load_model(config, info, self.device)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.parameters = trainable_parameters(self.model)  # with LoRA the adapters only: AdamW holds no moments
        self.train_set, self.val_set = _split_data(config, self.tokenizer, max_length)
        self.batches = LengthGroupedBatches(self.train_set, config.batch_size, config.seed, config.group_by_length)
        self.total_steps = config.max_steps or math.ceil(
            config.num_train_epochs * self.batches.per_epoch / config.gradient_accumulation_steps
        )
        self.optimizer, self.scheduler = _optimizer(config, self.parameters, self.total_steps)
        self.state = {"step": 0, "best_val": math.inf, "best_step": 0, "bad_evals": 0}
        resumed = has_checkpoint(self.checkpoint)
        if resumed:
            self.state = _load_checkpoint(self.checkpoint, config, self.model, self.optimizer, self.scheduler)
            if info.is_main:
                print(f"sft: resuming {self.out} from step {self.state['step']}.", file=sys.stderr)
        # Only rank 0 writes the log, the checkpoints and the model, and shows progress.
        resume_step = self.state["step"] if resumed else None
        self.log = RunLogger(self.out, resume_step, LOG_FILE, tensorboard=False) if info.is_main else None
        self.model.train()  # dropout as the model's config says
        self.step = self.state["step"]
        self.early_stopped = 0 < config.patience <= self.state["bad_evals"]

    def train(self) -> None:
        """Optimizer steps until the step budget or patience runs out, evaluating every ``eval_steps``."""
        config = self.config
        bar = progress_bar(self.total_steps, "sft", "step", initial=self.step,
                           enabled=config.progress and self.info.is_main)
        running, running_n = 0.0, 0
        while self.step < self.total_steps and not self.early_stopped:
            running, running_n = running + self._optimizer_step(), running_n + 1
            self.step += 1
            bar.update(1)
            epoch = self.step * config.gradient_accumulation_steps / self.batches.per_epoch
            if self.step % config.logging_steps == 0:
                self._log(epoch, "train", running / running_n)
                bar.set_postfix(loss=f"{running / running_n:.3f}", best_val=f"{self.state['best_val']:.3f}")
                running, running_n = 0.0, 0
            if self.step % config.eval_steps == 0 or self.step == self.total_steps:
                self._evaluate_and_checkpoint(epoch)
        bar.close()

    def _optimizer_step(self) -> float:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches; returns its loss.

        The loss is averaged over all the micro-batches' response tokens. Each rank takes every
        N-th row of a micro-batch; its loss is divided by the global token count, so the
        gradients summed over ranks are the 1-process gradient.
        """
        accumulation, info = self.config.gradient_accumulation_steps, self.info
        micro = [self.batches[self.step * accumulation + k] for k in range(accumulation)]
        n_tokens = sum(sum(len(d.input_ids) - max(d.prompt_len, 1) for d in m) for m in micro)
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for m in micro:
            share = m[info.rank :: info.world_size]
            if not share:  # an epoch's short last micro-batch can leave a rank without rows
                continue
            batch = {k: v.to(self.device) for k, v in collate(share, self.pad_id).items()}
            loss_sum, _ = token_loss_sum(self.model, batch)
            (loss_sum / max(n_tokens, 1)).backward()
            step_loss += loss_sum.item() / max(n_tokens, 1)
        reduce_gradients(self.parameters, info)
        step_loss = all_reduce(torch.tensor(step_loss, dtype=torch.float64, device=self.device), info).item()
        # A NaN/inf loss or gradient must never reach the weights (or the next checkpoint); every
        # rank sees the same summed values, so all of them stop together.
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm or math.inf)
        check_finite(step_loss, "the training loss", f"step {self.step + 1}", self._last_good())
        check_finite(grad_norm, "the gradient norm", f"step {self.step + 1}", self._last_good())
        self.optimizer.step()
        self.scheduler.step()
        return step_loss

    def _evaluate_and_checkpoint(self, epoch: float) -> None:
        """Validation loss; keep the model when it is the best so far, save a checkpoint, count patience."""
        val = evaluate_loss(self.model, self.val_set, self.config.batch_size, self.pad_id, self.info)
        check_finite(val, "the validation loss", f"step {self.step}", self._last_good())
        state = self.state
        improved = val < state["best_val"]
        if improved:
            state.update(best_val=val, best_step=self.step, bad_evals=0)
        else:
            state["bad_evals"] += 1
            self.early_stopped = 0 < self.config.patience <= state["bad_evals"]
        state["step"] = self.step
        self._log(epoch, "val", val)
        if self.info.is_main:
            if improved:
                _save_hf(self.out / "model", self.model, self.tokenizer)
            _save_checkpoint(self.checkpoint, self.config, self.model, self.optimizer, self.scheduler, state)

    def finish(self, scorer: RewardModel | None, prompts: Sequence[str] | None) -> SFTResult:
        """The run's result; rank 0 scores the baseline, writes ``baseline.json`` and drops the checkpoint."""
        best_val = self.state["best_val"]
        result = SFTResult(
            model_dir=str(self.out / "model"), steps=self.step, best_step=self.state["best_step"],
            val_loss=best_val, val_perplexity=math.exp(best_val), early_stopped=self.early_stopped,
        )
        if not self.info.is_main:
            return result
        self.log.close()
        if scorer is not None and prompts:
            result.mean_score, result.samples = score_baseline(
                result.model_dir, self.tokenizer, scorer, prompts, self.config.sample_max_new_tokens,
                self.config.seed, self.device,
            )
        config = asdict(self.config)
        write_json_atomic(
            self.out / "baseline.json",
            {"result": asdict(result), "scorer": repr(scorer) if scorer else None, "config": config},
        )
        write_json_atomic(self.out / FINISHED_FILE, {**self.state, "config": config})
        shutil.rmtree(self.checkpoint, ignore_errors=True)
        return result

    def _log(self, epoch: float, split: str, loss: float) -> None:
        if self.log is not None:
            perplexity, lr = math.exp(min(loss, 50.0)), self.optimizer.param_groups[0]["lr"]
            self.log.log(self.step, {"epoch": epoch, "split": split, "loss": loss, "perplexity": perplexity, "lr": lr})

    def _last_good(self) -> Path | None:
        """The checkpoint a stopped run resumes from, if one was saved."""
        return self.checkpoint if has_checkpoint(self.checkpoint) else None


def _load_model(config: SFTConfig, info: DistInfo, device: torch.device) -> tuple[Any, Any, int]:
    """Tokenizer, model (with LoRA adapters when asked, rank 0's weights on every rank) and the usable length."""
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    model = load_causal_lm(config.model, device=device, trust_remote_code=config.trust_remote_code)
    context = getattr(model.config, "max_position_embeddings", None) or config.max_length
    torch.manual_seed(config.seed)  # adapter init and dropout (a resumed run restores the RNG state instead)
    if config.lora is not None:
        model = add_lora(model, config.lora).to(device)
        check_mergeable(model)
    broadcast_parameters([model], info)  # every rank starts from rank 0's weights
    return tokenizer, model, min(config.max_length, context)


def _split_data(config: SFTConfig, tokenizer: Any, max_length: int) -> tuple[list[Demonstration], list[Demonstration]]:
    """Training and validation demonstrations: a seeded split of ``data`` unless ``val_data`` is given."""
    demos = load_demonstrations(config.data, tokenizer, max_length, config.append_eos)
    if config.val_data:
        return demos, load_demonstrations(config.val_data, tokenizer, max_length, config.append_eos)
    order = torch.randperm(len(demos), generator=torch.Generator().manual_seed(config.seed)).tolist()
    n_val = round(config.val_fraction * len(demos))
    if n_val < 1 or n_val >= len(demos):
        raise ValueError(
            f"val_fraction={config.val_fraction} of {len(demos)} demonstrations in {config.data} leaves "
            f"{n_val} for validation; raise --val-fraction, add rows, or pass --val-data."
        )
    return [demos[i] for i in order[n_val:]], [demos[i] for i in order[:n_val]]


def _optimizer(config: SFTConfig, parameters: list[torch.nn.Parameter], total_steps: int) -> tuple[Any, Any]:
    """AdamW (weight decay on matrices only) and the warm-up + decay schedule."""
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps))


def _lr_lambda(config: SFTConfig, total_steps: int) -> Any:
    """Learning-rate multiplier per step: linear warm-up, then the configured decay."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(total_steps - config.warmup_steps, 1)
        if config.lr_scheduler_type == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if config.lr_scheduler_type == "linear":
            return max(1.0 - progress, 0.0)
        return 1.0

    return factor


def _save_hf(path: Path, model: Any, tokenizer: Any) -> None:
    """Save model (safetensors) and tokenizer as one Hugging Face folder, atomically.

    A LoRA model is saved with its adapters merged in: a plain causal LM for the later steps.
    """

    def write(tmp: Path) -> None:
        if is_lora(model):
            model.get_base_model().save_pretrained(tmp, state_dict=merged_state_dict(model))
        else:
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    save_dir_atomic(path, write)


def _save_checkpoint(
    path: Path, config: SFTConfig, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]
) -> None:
    """Trained weights (safetensors), optimizer/scheduler/RNG and state, atomically.

    With LoRA only the adapters are kept; the RNG is rank 0's, which every rank restores on resume.
    """

    def write_models(folder: Path) -> None:
        if is_lora(model):  # the adapters: the frozen base reloads from config.model
            adapters = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
            save_file(adapters, str(folder / "model.safetensors"))
        else:
            save_model(model, str(folder / "model.safetensors"))

    tensors = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()}
    save_checkpoint(path, {**state, "config": config_dict(config)}, tensors, write_models)


def _load_checkpoint(path: Path, config: SFTConfig, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore a checkpoint into the given objects; refuse one made with different settings."""
    with refuse_pickled_code(path / TENSORS_FILE):
        state, tensors = load_checkpoint(path)
    check_same_config(state.pop("config"), config, RESUME_FREE, path, RESUME_FIX)
    device = next(model.parameters()).device
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False, device=str(device))
    if unexpected or {n for n, p in model.named_parameters() if p.requires_grad} & set(missing):
        raise ValueError(
            f"{path / 'model.safetensors'} does not hold this model's trained weights (was {config.model} "
            "replaced?); pass a new --out to start over."
        )
    optimizer.load_state_dict(tensors["optimizer"])  # moves the moments to the parameters' device
    scheduler.load_state_dict(tensors["scheduler"])
    set_rng_state(tensors["rng"])
    return state


# ---- command line -------------------------------------------------------------------------
def cli(argv: list[str] | None = None) -> int:
    """``python -m agents.sft --model PATH --data JSONL --out DIR [...]``; flags mirror SFTConfig."""

    def run(config: SFTConfig) -> None:
        with quiet_transformers():  # the step bar is enough; no bars per saved file
            result = train_sft(config)
        if init_distributed().is_main:  # under torchrun, one report
            print(json.dumps(asdict(result), indent=2))

    return config_command(argv, "rlhf-gym sft", "Supervised fine-tuning of a causal LM on JSONL demonstrations "
                          '({"prompt","response"} or {"messages":[...]} rows). Re-run with the same --out to resume.',
                          SFTConfig, run)


if __name__ == "__main__":
    sys.exit(cli())
