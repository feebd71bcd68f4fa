"""Supervised fine-tuning (RLHF step 1) of any Hugging Face causal LM on demonstrations.

Demonstrations are JSONL rows, either ``{"prompt": str, "response": str}`` or chat
``{"messages": [{"role": str, "content": str}, ...]}`` whose last message is the
assistant's response. The loss covers response tokens only: prompt tokens and padding
get label -100. Validation loss is measured every ``eval_interval`` steps; training
stops early when it has not improved for ``patience`` evaluations, and the best model
is kept as a Hugging Face folder (``OUT/model``). A checkpoint (model, optimizer,
scheduler, step, RNG state) is saved atomically at every evaluation, so re-running
the same command after an interruption resumes where it left off.

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

import argparse
import csv
import json
import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_model, save_file, save_model
from tqdm.auto import tqdm

from agents.distributed import (
    DistInfo,
    all_reduce,
    broadcast_parameters,
    init_distributed,
    reduce_gradients,
    resolve_rank_device,
)
from agents.lm import load_causal_lm, load_tokenizer
from agents.lora import LoraSettings, add_lora, check_mergeable, is_lora, merged_state_dict, trainable_parameters
from reward_models import RewardModel, checked_scores
from rlhf_common.config_cli import add_config_args, config_from_args
from rlhf_common.io import (
    DataError,
    atomic_path,
    describe_keys,
    read_jsonl,
    require_str,
    save_dir_atomic,
    write_json_atomic,
)

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (prompt and padding); PyTorch's cross-entropy default."""

LOG_COLUMNS = ["step", "epoch", "split", "loss", "perplexity", "lr"]


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
    grad_accum_steps: int = 1
    """Forward passes per optimizer step; the effective batch is ``batch_size * grad_accum_steps``."""
    epochs: float = 3.0
    """Passes over the training data (fractions allowed); ignored when ``max_steps`` is set."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides ``epochs``."""
    learning_rate: float = 5e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to matrices only (not to biases and norms)."""
    lora: LoraSettings | None = None
    """Train LoRA adapters instead of every weight (needs ``peft``): ``--lora r=16,alpha=32`` or
    ``--lora default``. The saved model has the adapters merged in. None: full fine-tuning."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``learning_rate`` over this many steps."""
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Decay after warm-up: cosine or linear to 0, or constant."""
    max_grad_norm: float = 1.0
    """Gradient norm clip; 0 disables it."""
    eval_interval: int = 100
    """Steps between validation evaluations; a checkpoint is saved after each."""
    patience: int = 5
    """Stop after this many evaluations without a lower validation loss; 0 never stops early."""
    log_interval: int = 10
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
            (self.batch_size >= 1 and self.grad_accum_steps >= 1, "batch_size and grad_accum_steps must be >= 1"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (self.eval_interval >= 1 and self.log_interval >= 1, "eval_interval and log_interval must be >= 1"),
            (self.patience >= 0 and self.warmup_steps >= 0, "patience and warmup_steps must be >= 0"),
            (self.lr_schedule in ("cosine", "linear", "constant"), "lr_schedule must be cosine, linear or constant"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SFTConfig: {message} (got {self}).")


@dataclass
class Demonstration:
    """One tokenised demonstration: ``input_ids[:prompt_len]`` is the prompt, the rest the response."""

    input_ids: list[int]
    prompt_len: int


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


# ---- data -------------------------------------------------------------------------------
def encode_demonstration(
    tokenizer: Any, row: dict[str, Any], where: str, max_length: int, append_eos: bool = True
) -> Demonstration | None:
    """Tokenise one JSONL row; None when even the prompt does not fit in ``max_length``.

    ``where`` (``file:line``) is named in every :class:`DataError`.
    """
    if "messages" in row:
        prompt, response, templated = _chat_parts(tokenizer, row["messages"], where)
        close_with_eos = append_eos and not templated  # a chat template closes the turn itself
        prompt_ids = tokenizer(prompt, add_special_tokens=not templated)["input_ids"]
    elif "prompt" in row or "response" in row:
        prompt, response = require_str(row, "prompt", where), require_str(row, "response", where)
        close_with_eos = append_eos
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    else:
        raise DataError(
            f"{where}: a demonstration needs 'prompt' and 'response' strings, or 'messages' "
            f"(a list of {{'role','content'}} ending with the assistant's); keys present: {describe_keys(row)}."
        )
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    if close_with_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token; set one or pass append_eos=False.")
        response_ids.append(tokenizer.eos_token_id)
    if not response_ids:
        raise DataError(f"{where}: the response is empty; give a non-empty response.")
    prompt_ids = list(prompt_ids)
    if len(prompt_ids) >= max_length:
        return None
    return Demonstration((prompt_ids + response_ids)[:max_length], len(prompt_ids))


def _chat_parts(tokenizer: Any, messages: Any, where: str) -> tuple[str, str, bool]:
    """Prompt text, response text and whether the tokenizer's chat template rendered them."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role','content'}} objects.")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"{where}: messages[{i}] must be an object with 'role' and 'content'.")
        require_str(m, "role", f"{where}: messages[{i}]")
        require_str(m, "content", f"{where}: messages[{i}]")
    if messages[-1]["role"] != "assistant":
        raise DataError(
            f"{where}: the last message has role {messages[-1]['role']!r}; it must be the "
            "assistant's response, which is what the model learns."
        )
    if tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise DataError(
                f"{where}: the tokenizer's chat template does not render the conversation without "
                "its last message as a prefix of the whole, so the response cannot be cut out; "
                "use prompt/response rows instead."
            )
        return prompt, full[len(prompt) :], True
    # No template: a plain "role: content" transcript, the response after "assistant:".
    prompt = "".join(f"{m['role']}: {m['content']}\n" for m in messages[:-1]) + "assistant:"
    return prompt, " " + messages[-1]["content"], False


def load_demonstrations(
    path: str | Path, tokenizer: Any, max_length: int, append_eos: bool = True
) -> list[Demonstration]:
    """All demonstrations of a JSONL file; malformed rows raise :class:`DataError` naming file:line."""
    demos, too_long = [], 0
    for line_no, row in read_jsonl(path):
        demo = encode_demonstration(tokenizer, row, f"{path}:{line_no}", max_length, append_eos)
        if demo is None:
            too_long += 1
        else:
            demos.append(demo)
    if too_long:
        print(f"sft: skipped {too_long} rows of {path} whose prompt fills max_length={max_length}.", file=sys.stderr)
    if not demos:
        raise DataError(f"{path}: no usable demonstrations; add rows or raise max_length.")
    return demos


def collate(demos: Sequence[Demonstration], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
    width = max(len(d.input_ids) for d in demos)
    input_ids = torch.full((len(demos), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(demos), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(demos), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for i, d in enumerate(demos):
        n = len(d.input_ids)
        input_ids[i, :n] = torch.tensor(d.input_ids)
        attention_mask[i, :n] = 1
        labels[i, d.prompt_len : n] = input_ids[i, d.prompt_len : n]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def token_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled tokens, and how many there are."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    labels = batch["labels"][:, 1:]  # (B, T-1): token t is predicted at position t-1
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate_loss(
    model: Any, demos: Sequence[Demonstration], batch_size: int, pad_token_id: int, info: DistInfo | None = None
) -> float:
    """Mean per-token response loss (nats) of ``model`` on ``demos``, in eval mode.

    Under torchrun (``info``) each rank scores every N-th demonstration and the sums are
    added over ranks, so every rank gets the same number (and takes the same early-stopping decision).
    """
    info = info or DistInfo()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    mine = demos[info.rank :: info.world_size]
    total, count = 0.0, 0
    for i in range(0, len(mine), batch_size):
        batch = {k: v.to(device) for k, v in collate(mine[i : i + batch_size], pad_token_id).items()}
        loss, n = token_loss_sum(model, batch)
        total, count = total + float(loss), count + n
    model.train(was_training)
    total, count = all_reduce(torch.tensor([total, count], dtype=torch.float64, device=device), info).tolist()
    return total / max(count, 1)


@torch.no_grad()
def sample_responses(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 32,
) -> list[str]:
    """Sample one response per prompt (temperature 1, no top-k/top-p), without EOS or padding.

    Pure sampling is what RL rollouts use, so the baseline score is comparable with theirs.
    The global torch RNG is left as it was.
    """
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    context = getattr(model.config, "max_position_embeddings", None) or 1_000_000
    keep = max(context - max_new_tokens, 1)  # a prompt's last tokens, so prompt + response fit
    responses: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(prompts), batch_size):
            encoded = [tokenizer(p)["input_ids"][-keep:] for p in prompts[i : i + batch_size]]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)  # (B, P) left-padded
            attention_mask = torch.zeros_like(input_ids)
            for j, ids in enumerate(encoded):
                input_ids[j, width - len(ids) :] = torch.tensor(ids)
                attention_mask[j, width - len(ids) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=min(max_new_tokens, context - width),
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )  # (B, P + new)
            for row in out[:, width:].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id)]
                responses.append(
                    tokenizer.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                )
    return responses


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
    out = Path(config.out)
    state_file = out / "trainer_state.json"
    if state_file.is_file():
        _check_same_config(json.loads(state_file.read_text())["config"], config, state_file)
        print(f"sft: {out} holds a finished run; reporting it (use a new --out to train again).", file=sys.stderr)
        return SFTResult(**json.loads((out / "baseline.json").read_text())["result"])
    info = init_distributed()
    if config.batch_size % info.world_size:
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by WORLD_SIZE={info.world_size}: each torchrun "
            "rank takes an equal share of every micro-batch."
        )
    device = resolve_rank_device(config.device, info)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    model = load_causal_lm(config.model, device=device, trust_remote_code=config.trust_remote_code)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    context = getattr(model.config, "max_position_embeddings", None) or config.max_length
    max_length = min(config.max_length, context)
    torch.manual_seed(config.seed)  # adapter init and dropout (a resumed run restores the RNG state instead)
    if config.lora is not None:
        model = add_lora(model, config.lora).to(device)
        check_mergeable(model)
    broadcast_parameters([model], info)  # every rank starts from rank 0's weights
    parameters = trainable_parameters(model)  # with LoRA the adapters only: AdamW holds no moments for the rest

    # Data: a seeded split of the training file unless a validation file is given.
    demos = load_demonstrations(config.data, tokenizer, max_length, config.append_eos)
    if config.val_data:
        train_set, val_set = demos, load_demonstrations(config.val_data, tokenizer, max_length, config.append_eos)
    else:
        order = torch.randperm(len(demos), generator=torch.Generator().manual_seed(config.seed)).tolist()
        n_val = round(config.val_fraction * len(demos))
        if n_val < 1 or n_val >= len(demos):
            raise ValueError(
                f"val_fraction={config.val_fraction} of {len(demos)} demonstrations in {config.data} leaves "
                f"{n_val} for validation; raise --val-fraction, add rows, or pass --val-data."
            )
        val_set = [demos[i] for i in order[:n_val]]
        train_set = [demos[i] for i in order[n_val:]]
    batches = _Batches(train_set, config.batch_size, config.seed, config.group_by_length)
    total_steps = config.max_steps or math.ceil(config.epochs * batches.per_epoch / config.grad_accum_steps)

    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps))

    # Resume from the last checkpoint, or start fresh.
    checkpoint = out / "checkpoint"
    state = {"step": 0, "best_val": math.inf, "best_step": 0, "bad_evals": 0}
    if (checkpoint / "state.json").is_file():
        state = _load_checkpoint(checkpoint, config, model, optimizer, scheduler)
        if info.is_main:
            print(f"sft: resuming {out} from step {state['step']}.", file=sys.stderr)
    # Only rank 0 writes the log, the checkpoints and the model, and shows progress.
    log = _CsvLog(out / "log.csv", after_step=state["step"]) if info.is_main else None
    model.train()  # dropout as the model's config says

    step = state["step"]
    early_stopped = 0 < config.patience <= state["bad_evals"]
    bar = tqdm(total=total_steps, initial=step, disable=not (config.progress and info.is_main), desc="sft",
               unit="step")
    running, running_n = 0.0, 0
    while step < total_steps and not early_stopped:
        # One optimizer step over grad_accum_steps micro-batches, the loss averaged over all their
        # response tokens. Each rank takes every N-th row of a micro-batch; its loss is divided by the
        # global token count, so the gradients summed over ranks are the 1-process gradient.
        micro = [batches[step * config.grad_accum_steps + k] for k in range(config.grad_accum_steps)]
        n_tokens = sum(sum(len(d.input_ids) - max(d.prompt_len, 1) for d in m) for m in micro)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for m in micro:
            share = m[info.rank :: info.world_size]
            if not share:  # an epoch's short last micro-batch can leave a rank without rows
                continue
            batch = {k: v.to(device) for k, v in collate(share, pad_id).items()}
            loss_sum, _ = token_loss_sum(model, batch)
            (loss_sum / max(n_tokens, 1)).backward()
            step_loss += loss_sum.item() / max(n_tokens, 1)
        reduce_gradients(parameters, info)
        step_loss = all_reduce(torch.tensor(step_loss, dtype=torch.float64, device=device), info).item()
        # A NaN/inf loss or gradient must never reach the weights (or the next checkpoint); every
        # rank sees the same summed values, so all of them stop together.
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm or math.inf)
        if not (math.isfinite(step_loss) and torch.isfinite(grad_norm)):
            raise FloatingPointError(
                f"step {step + 1}: loss {step_loss} / gradient norm {grad_norm.item()} is not finite; training "
                f"stopped before applying it; the last good checkpoint is {checkpoint}."
            )
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        running, running_n = running + step_loss, running_n + 1
        epoch = step * config.grad_accum_steps / batches.per_epoch
        if step % config.log_interval == 0:
            if log is not None:
                log.write(step, epoch, "train", running / running_n, optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{running / running_n:.3f}", best_val=f"{state['best_val']:.3f}")
            running, running_n = 0.0, 0

        if step % config.eval_interval == 0 or step == total_steps:
            val = evaluate_loss(model, val_set, config.batch_size, pad_id, info)
            if not math.isfinite(val):
                raise FloatingPointError(
                    f"step {step}: validation loss is {val}; stopped without saving; the last good "
                    f"checkpoint is {checkpoint}."
                )
            improved = val < state["best_val"]
            if improved:
                state.update(best_val=val, best_step=step, bad_evals=0)
            else:
                state["bad_evals"] += 1
                early_stopped = 0 < config.patience <= state["bad_evals"]
            state["step"] = step
            if log is not None:
                log.write(step, epoch, "val", val, optimizer.param_groups[0]["lr"])
            if info.is_main:
                if improved:
                    _save_hf(out / "model", model, tokenizer)
                _save_checkpoint(checkpoint, config, model, optimizer, scheduler, state)
    bar.close()

    # Baseline metrics of the best model: what later RL must beat.
    result = SFTResult(
        model_dir=str(out / "model"),
        steps=step,
        best_step=state["best_step"],
        val_loss=state["best_val"],
        val_perplexity=math.exp(state["best_val"]),
        early_stopped=early_stopped,
    )
    if not info.is_main:
        return result  # rank 0 scores the baseline and writes the run's last files
    if scorer is not None and prompts:
        best = load_causal_lm(out / "model", device=device)
        responses = sample_responses(best, tokenizer, prompts, config.sample_max_new_tokens, config.seed)
        scores = checked_scores(scorer, list(prompts), responses)
        result.mean_score = float(scores.mean())
        result.samples = [
            {"prompt": p, "response": r, "score": float(s)}
            for p, r, s in list(zip(prompts, responses, scores, strict=True))[:5]
        ]
    write_json_atomic(
        out / "baseline.json",
        {"result": asdict(result), "scorer": repr(scorer) if scorer else None, "config": asdict(config)},
    )
    write_json_atomic(state_file, {**state, "config": asdict(config)})
    shutil.rmtree(checkpoint, ignore_errors=True)
    return result


def _lr_lambda(config: SFTConfig, total_steps: int) -> Any:
    """Learning-rate multiplier per step: linear warm-up, then the configured decay."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(total_steps - config.warmup_steps, 1)
        if config.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if config.lr_schedule == "linear":
            return max(1.0 - progress, 0.0)
        return 1.0

    return factor


class _Batches:
    """The endless seeded stream of shuffled epochs, cut into micro-batches.

    Micro-batch ``i`` depends only on (seed, i), so a resumed run sees the same batches.
    With ``group_by_length``, each window of 64 batches is sorted by length before it is cut
    (then the batches are shuffled), so a batch pads to a similar length: on short, varied
    texts this does the same epoch in a fraction of the time.
    """

    def __init__(self, demos: Sequence[Demonstration], batch_size: int, seed: int, group_by_length: bool) -> None:
        self.demos, self.batch_size, self.seed, self.group = demos, batch_size, seed, group_by_length
        self.per_epoch = math.ceil(len(demos) / batch_size)
        self._epoch, self._batches = -1, []

    def __getitem__(self, i: int) -> list[Demonstration]:
        epoch, b = divmod(i, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        return [self.demos[j] for j in self._batches[b]]

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.demos), generator=gen).tolist()
        if self.group:
            window = 64 * self.batch_size
            order = [
                j
                for w in range(0, len(order), window)
                for j in sorted(order[w : w + window], key=lambda j: len(self.demos[j].input_ids))
            ]
        batches = [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        if self.group:
            batches = [batches[k] for k in torch.randperm(len(batches), generator=gen).tolist()]
        return batches


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


# The fields a resumed run may change without changing what it computes.
_RESUME_FREE = {"device", "num_threads", "progress"}


def _save_checkpoint(
    path: Path, config: SFTConfig, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]
) -> None:
    """Trained weights (safetensors), optimizer/scheduler/RNG (torch.save) and state, atomically.

    With LoRA only the adapters are kept; the RNG is rank 0's, which every rank restores on resume.
    """
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()

    def write(tmp: Path) -> None:
        if is_lora(model):  # the adapters: the frozen base reloads from config.model
            adapters = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
            save_file(adapters, str(tmp / "model.safetensors"))
        else:
            save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "config": asdict(config)}, indent=2))

    save_dir_atomic(path, write)


def _check_same_config(saved: dict[str, Any], config: SFTConfig, path: Path) -> None:
    """Refuse to resume (or report) a run that was made with other settings."""
    current = json.loads(json.dumps(asdict(config)))  # as saved: LoraSettings a dict, tuples lists
    changed = [
        f"--{f.name.replace('_', '-')} {saved.get(f.name)!r} -> {current[f.name]!r}"
        for f in fields(config)
        if f.name not in _RESUME_FREE and saved.get(f.name) != current[f.name]
    ]
    if changed:
        raise ValueError(
            f"{path} was saved by a run with other settings ({'; '.join(changed)}); re-run with the "
            "same settings to resume, or pass a new --out to start over."
        )


def _load_checkpoint(path: Path, config: SFTConfig, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore a checkpoint into the given objects; refuse one made with different settings."""
    state = json.loads((path / "state.json").read_text())
    _check_same_config(state.pop("config"), config, path)
    device = next(model.parameters()).device
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False, device=str(device))
    if unexpected or {n for n, p in model.named_parameters() if p.requires_grad} & set(missing):
        raise ValueError(
            f"{path / 'model.safetensors'} does not hold this model's trained weights (was {config.model} "
            "replaced?); pass a new --out to start over."
        )
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


class _CsvLog:
    """Appends rows to ``log.csv``; on resume drops rows logged after the checkpoint."""

    def __init__(self, path: Path, after_step: int) -> None:
        self.path = path
        rows = []
        if path.is_file() and after_step > 0:
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= after_step]
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:  # a crash keeps the old log whole
            writer = csv.DictWriter(f, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, step: int, epoch: float, split: str, loss: float, lr: float) -> None:
        with self.path.open("a", newline="") as f:
            perplexity = math.exp(min(loss, 50.0))
            csv.writer(f).writerow([step, f"{epoch:.4f}", split, f"{loss:.6f}", f"{perplexity:.4f}", f"{lr:.3e}"])


# ---- command line -------------------------------------------------------------------------
def cli(argv: list[str] | None = None) -> int:
    """``python -m agents.sft --model PATH --data JSONL --out DIR [...]``; flags mirror SFTConfig."""
    parser = argparse.ArgumentParser(
        prog="rlhf-gym sft",
        description="Supervised fine-tuning of a causal LM on JSONL demonstrations "
        '({"prompt","response"} or {"messages":[...]} rows). Re-run with the same --out to resume.',
    )
    add_config_args(parser, SFTConfig)
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the step bar is enough; no bars per saved file
    try:
        result = train_sft(config_from_args(SFTConfig, args))
    except (DataError, ValueError, OSError, FloatingPointError) as e:
        print(f"rlhf-gym sft: {e}", file=sys.stderr)
        return 1
    if init_distributed().is_main:  # under torchrun, one report
        print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
