"""Build the default ``Arithmetic-v0`` policy: a tiny GPT-2 trained from scratch (SFT) on generated problems.

RL needs a starting policy that answers in the right form and is often, not always, right,
so the SFT budget is deliberately short (``max_steps``): the policy learns the format and
much of addition, little of multiplication, and leaves RL room on both.

1. Demonstrations: ``{"prompt": "37+45=", "response": "82"}`` for ``num_demos`` problems drawn
   (seeded) from the training problems; the held-out ones (:attr:`text_env.arithmetic.Problem.held_out`)
   are never drawn, so the evaluation set is unseen.
2. Model: a GPT-2-shaped causal LM over the arithmetic tokenizer, initialised in code (seeded).
3. SFT: :func:`agents.sft.train_sft` for ``max_steps`` steps.
4. Evaluation: held-out exact match on :func:`text_env.arithmetic.eval_problems`, greedy and sampled
   at temperature 1 (as RL rollouts sample), through ``Arithmetic-v0`` and :func:`agents.rollout.rollout`.
5. The output folder holds the model (safetensors), its tokenizer, ``policy.json`` (settings, SFT
   result, exact match) and ``MODEL_CARD.md``.

Run it as ``rlhf-gym arithmetic-policy`` (default ``--out text_env/assets/arithmetic/policy``).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.lm import load_causal_lm
from agents.rollout import make_rollout_env, rollout
from agents.sft import SFTConfig, train_sft
from rlhf_common.config_cli import config_command
from rlhf_common.io import portable_config, save_dir_atomic, write_json_atomic, write_jsonl_atomic
from rlhf_common.training import set_torch_threads
from rlhf_gym.build.model_card import asset_bytes, run_summary, versions
from rlhf_gym.build.tiny_lm import init_tiny_lm
from text_env.arithmetic import (
    ARITHMETIC_POLICY,
    HELD_OUT_BUCKETS,
    POLICY_META_FILE,
    ArithmeticConfig,
    arithmetic_task,
    arithmetic_tokenizer,
    eval_problems,
)

CARD_FILE = "MODEL_CARD.md"
"""The model card beside the weights."""


@dataclass
class ArithmeticPolicyConfig:
    """How ``rlhf-gym arithmetic-policy`` (:func:`build_arithmetic_policy`) builds the default arithmetic policy."""

    out: str = str(ARITHMETIC_POLICY)
    """Output folder: the policy (Hugging Face format), policy.json and MODEL_CARD.md."""
    work: str = "runs/arithmetic_policy"
    """Scratch folder: demonstrations, the initial model, the SFT run (re-running resumes it)."""
    seed: int = 0
    """Seeds the demonstrations, the model initialisation, SFT, the held-out set and the sampled evaluation."""
    digits: int = 2
    """Operands of up to this many digits (the task's ``digits``)."""
    operations: str = "+*"
    """Operations to train and evaluate on (the task's ``operations``)."""
    num_demos: int = 20_000
    """SFT demonstrations drawn from the training problems (with repeats)."""
    eval_size: int = 500
    """Held-out problems the exact match is measured on."""
    n_layer: int = 2
    """Transformer layers."""
    n_embd: int = 128
    """Model width."""
    n_head: int = 4
    """Attention heads."""
    dropout: float = 0.0
    """GPT-2's dropout rates; 0: the demonstrations cover most training problems, so there is little to
    overfit, and learning is faster without it."""
    max_steps: int = 4000
    """SFT steps: deliberately short, so the policy is imperfect and RL has room. Addition is learned
    abruptly (about 1,500 steps alone, later when mixed with multiplication): at 4,000 steps the default
    policy is right on about 60% of held-out sums and almost no products."""
    learning_rate: float = 2e-3
    """Peak SFT learning rate; a model trained from scratch needs more than fine-tuning's 5e-5."""
    warmup_steps: int = 50
    """Linear warm-up steps before the cosine decay."""
    batch_size: int = 64
    """Demonstrations per SFT step."""
    eval_steps: int = 500
    """SFT steps between validation evaluations (and checkpoints)."""
    num_threads: int | None = 1
    """CPU threads for torch; 1 suits a shared machine, None lets torch choose."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if min(self.num_demos, self.eval_size, self.max_steps) < 1:
            raise ValueError(
                f"ArithmeticPolicyConfig: num_demos={self.num_demos}, eval_size={self.eval_size} and "
                f"max_steps={self.max_steps} must be >= 1."
            )

    @property
    def task(self) -> ArithmeticConfig:
        """The task options the policy is built for (their checks run here)."""
        return ArithmeticConfig(digits=self.digits, operations=self.operations, seed=self.seed,
                                eval_size=self.eval_size)


def write_demonstrations(path: Path, config: ArithmeticPolicyConfig) -> None:
    """``num_demos`` training problems with their answers, drawn with ``seed``, as SFT JSONL."""
    task, rng = config.task, np.random.default_rng(config.seed)
    problems = (task.train_problem(rng) for _ in range(config.num_demos))
    write_jsonl_atomic(path, [{"prompt": p.text, "response": p.answer} for p in problems])


def held_out_exact_match(
    policy: Any, task: ArithmeticConfig, *, deterministic: bool, seed: int = 0, limit: int | None = None
) -> dict[str, Any]:
    """Exact match of ``policy`` (a causal LM or its folder) on the first ``limit`` held-out problems.

    One ``Arithmetic-v0`` episode per problem, all in one :func:`agents.rollout.rollout`: greedy
    with ``deterministic``, else sampled at temperature 1 (episode ``i`` seeded ``seed + i``).
    Returns the share right overall (``"all"``), per operation, and the first few samples.
    """
    model = load_causal_lm(policy, device="cpu") if isinstance(policy, (str, Path)) else policy
    problems = eval_problems(task)[:limit]
    env = make_rollout_env(arithmetic_task(task), len(problems))
    try:
        batch = rollout(model, env, deterministic=deterministic, seed=seed, prompts=[p.text for p in problems])
    finally:
        env.close()
    correct = np.array([info["correct"] for info in batch.infos])
    ops = np.array([p.op for p in problems])
    result: dict[str, Any] = {"all": float(correct.mean())}
    result.update({op: float(correct[ops == op].mean()) for op in task.operations if (ops == op).any()})
    result["samples"] = [f"{info['prompt']}{info['response']} ({'right' if info['correct'] else info['answer']})"
                         for info in batch.infos[:8]]
    return result


def build_arithmetic_policy(config: ArithmeticPolicyConfig) -> dict[str, Any]:
    """Demonstrations, initial model, SFT, held-out exact match; writes the policy to ``out``."""
    start = time.monotonic()
    set_torch_threads(config.num_threads)
    task, work = config.task, Path(config.work)
    demos, init = work / "demos.jsonl", work / "init"
    write_demonstrations(demos, config)
    shutil.rmtree(init, ignore_errors=True)
    window = task.prompt_tokens + task.answer_chars + 1  # BOS, the longest problem, answer and EOS
    init_tiny_lm(init, arithmetic_tokenizer(), n_positions=-(-window // 16) * 16, n_embd=config.n_embd,
                 n_layer=config.n_layer, n_head=config.n_head, seed=config.seed, dropout=config.dropout)
    result = train_sft(SFTConfig(
        model=str(init), data=str(demos), out=str(work / "sft"), seed=config.seed, max_length=window,
        batch_size=config.batch_size, max_steps=config.max_steps, learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps, eval_steps=config.eval_steps, patience=0,
        sample_max_new_tokens=task.answer_chars + 1, num_threads=config.num_threads, progress=config.progress,
    ))
    model = load_causal_lm(result.model_dir, device="cpu")
    meta = {
        "task": {"digits": task.digits, "operations": task.operations, "held_out": f"1 in {HELD_OUT_BUCKETS}",
                 "eval_size": len(eval_problems(task)), "eval_seed": task.seed},
        "held_out_exact_match": {
            "greedy": held_out_exact_match(model, task, deterministic=True),
            "sampled": held_out_exact_match(model, task, deterministic=False, seed=config.seed),
        },
        "sft": run_summary(result),
        "model": {"architecture": "GPT2LMHeadModel", "parameters": sum(p.numel() for p in model.parameters()),
                  "n_layer": config.n_layer, "n_embd": config.n_embd, "n_head": config.n_head,
                  "context": model.config.n_positions, "vocab_size": model.config.vocab_size},
        "versions": versions(),
        "config": portable_config(config),
    }

    def write(tmp: Path) -> None:
        shutil.copytree(result.model_dir, tmp, dirs_exist_ok=True)
        meta["build_seconds"] = round(time.monotonic() - start, 1)
        meta["asset_bytes"] = asset_bytes(tmp)
        write_json_atomic(tmp / POLICY_META_FILE, meta)
        (tmp / CARD_FILE).write_text(model_card(meta))

    save_dir_atomic(config.out, write)
    return meta


def model_card(meta: dict[str, Any]) -> str:
    """The policy's model card (Markdown) from its ``policy.json`` record."""
    task, m, sft, c = meta["task"], meta["model"], meta["sft"], meta["config"]
    greedy, sampled = meta["held_out_exact_match"]["greedy"], meta["held_out_exact_match"]["sampled"]
    per_op = "\n".join(
        f"| `{op}` | {greedy[op]:.3f} | {sampled[op]:.3f} |" for op in task["operations"] if op in greedy
    )
    samples = "\n".join(f"- `{s}`" for s in sampled["samples"])
    return f"""# The default `Arithmetic-v0` policy

Built by `rlhf-gym arithmetic-policy` in {meta['build_seconds'] / 60:.1f} minutes on CPU, seed {c['seed']}
(torch {meta['versions']['torch']}, transformers {meta['versions']['transformers']}).

- **Task**: operands of exactly {task['digits']} digits, operations `{task['operations']}`; the prompt is
  the problem (`37+45=`), the response the answer in decimal followed by EOS, one character per token
  (pad, bos, eos, unk, `0-9 + - * =`: {m['vocab_size']} tokens).
- **Data**: {c['num_demos']} demonstrations drawn (seeded, with repeats) from the training problems;
  {task['held_out']} problems (by CRC-32 of the problem) is held out and never drawn. SFT validates on
  5% of the demonstrations.
- **Model**: {m['architecture']} built from scratch, {m['n_layer']} layers x {m['n_embd']} wide,
  {m['n_head']} heads, context {m['context']}, {m['parameters'] / 1e6:.2f} M parameters, float32.
- **SFT** (`agents.sft`): {sft['steps']} steps of batch {c['batch_size']}, peak learning rate
  {c['learning_rate']}, cosine decay; validation loss {sft['val_loss']:.3f} nats/token at step {sft['best_step']}.
  The budget is deliberately short, so the policy is imperfect and RL has room.
- **Held-out exact match** on {task['eval_size']} problems (`text_env.arithmetic.eval_problems`, seed
  {task['eval_seed']}): **{greedy['all']:.3f} greedy, {sampled['all']:.3f} sampled at temperature 1**.

| operation | greedy | sampled |
|---|---|---|
{per_op}

Sampled answers (held-out problems; the right answer in brackets when wrong):

{samples}

Size: {sum(meta['asset_bytes'].values()) / 1e6:.2f} MB. Load it with
`agents.lm.load_policy(text_env.arithmetic.ARITHMETIC_POLICY)`.
"""


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym arithmetic-policy [flags]``: rebuild the default arithmetic policy."""

    def run(config: ArithmeticPolicyConfig) -> None:
        meta = build_arithmetic_policy(config)
        match = meta["held_out_exact_match"]
        print(f"wrote {config.out}: held-out exact match {match['greedy']['all']:.3f} greedy, "
              f"{match['sampled']['all']:.3f} sampled, in {meta['build_seconds'] / 60:.1f} minutes")

    return config_command(argv, "rlhf-gym arithmetic-policy", __doc__.splitlines()[0], ArithmeticPolicyConfig, run)


if __name__ == "__main__":
    sys.exit(cli())
