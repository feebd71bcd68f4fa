"""The settings of ``rlhf-gym pipeline``: one dataclass, each field also a ``--flag``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.ppo_kl import PPOKLConfig
from agents.registry import AGENTS, build_config, get_agent, parse_agent_settings
from rlhf_gym.pipeline.layout import RunLayout

__all__ = ["RESUMABLE_CHANGES", "PipelineConfig"]

RESUMABLE_CHANGES = frozenset({"progress", "num_threads", "out", "agents"})
"""Settings that may differ when resuming a run: they do not change any result. Each agent trains and is
evaluated on its own, so ``agents`` may grow: a finished run resumed with one more agent trains only that one."""


@dataclass
class PipelineConfig:
    """Everything ``rlhf-gym pipeline`` does; each field is also a ``--flag``.

    The defaults are ``make demo-full`` (about 9.5 minutes on 2 idle CPU cores; ``make demo`` is
    ``--agents ppo_kl``, about 5 minutes). Every agent of
    ``agents`` is built from its registry entry (``agents.registry``): the common settings
    here (batch_size, beta, seed, save_steps, num_generations, when its config has them),
    then the entry's pipeline settings, then ``agent_settings``.
    """

    out: str = "runs/pipeline"
    """Run folder: stage outputs, agent logs and checkpoints, report.md, PNGs, CSVs. Re-running resumes it."""
    model: str | None = None
    """Your Hugging Face causal-LM folder as the SFT policy (its own tokenizer is used); default: the embedded one."""
    from_scratch: bool = False
    """Rebuild the default tokenizer, policy, prompts and reward model into the run folder first (~15 min)."""
    prompts: str | None = None
    """Training prompts, JSONL {"prompt": str} per line; default: the embedded prompts."""
    eval_prompts: str | None = None
    """Held-out evaluation prompts (same format); default: the embedded evaluation prompts."""
    reward_model: str | None = None
    """A reward-model folder (AutoModelForSequenceClassification, one label); default: the default task's."""
    train_reward_model: bool = False
    """Step 2 trains a reward model on simulated rankings of the policy's samples instead of loading one."""
    rm_prompts: int = 1000
    """With --train-reward-model: training prompts sampled num_generations times and ranked (10% held out)."""
    num_generations: int = 4
    """Responses per prompt that a labeler ranks; also the samples per prompt of agents that take it (RLOO)."""
    labeler_temperature: float = 0.2
    """Noise of the simulated labelers (Bradley-Terry temperature in gold-score units)."""
    n_eval_prompts: int = 128
    """Held-out prompts every policy is evaluated on."""
    eval_samples: int = 16
    """Responses per evaluation prompt for each trained policy: 2,048 with 128 prompts, so the gold score's
    standard error (~0.014) is small next to the gains compared."""
    max_n: int = 64
    """Best-of-n is measured for n = 1, 2, 4, ... up to this power of two."""
    agents: str = "ppo_kl,rloo,sb3_ppo"
    """Comma-separated agents to train in step 3, names of ``agents.registry.AGENTS`` (``rlhf-gym leaderboard``
    takes every registered one)."""
    agent_settings: str = ""
    """Per-agent config fields over the registry's, as AGENT.FIELD=VALUE pairs separated by commas, e.g.
    "rloo.learning_rate=1e-4,sb3_ppo.timesteps=6144" (timesteps: that agent's token budget)."""
    timesteps: int = 196_608
    """Token budget of the agents (env steps, as SB3's total_timesteps), times each one's registry share
    (SB3 PPO: 1/16, 12,288 tokens, each costing about 19x more). PPOKL's KL levels off after about 80k
    tokens; the rest buys reward at that KL (README, Step 3)."""
    batch_size: int = 128
    """Episodes per iteration of the agents that take it (PPOKL, RLOO)."""
    beta: float = PPOKLConfig.beta
    """KL coefficient, fixed, for every agent: PPOKL's per-token KL penalty, RLOO's KL in the reward, the KL
    penalty in SB3's rewards (PPOKLConfig's default)."""
    save_steps: int = 4
    """Agents save a resumable checkpoint every this many iterations (and at the end)."""
    max_new_tokens: int = 32
    """Response length cap."""
    seed: int = 0
    """Seeds sampling, labelers, agents and evaluation."""
    num_threads: int | None = None
    """Torch CPU threads; default: torch's choice (all cores) on an idle machine, 1 when the load average says
    other processes are computing (tiny models lose more to contended threads than they gain)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        names = self.agent_names
        if not names or any(n not in AGENTS for n in names):
            raise ValueError(f"--agents {self.agents!r}: choose a comma-separated subset of {', '.join(AGENTS)}.")
        if self.from_scratch and self.model is not None:
            raise ValueError("--from-scratch rebuilds the default policy; it cannot be combined with --model.")
        if self.max_n < 1 or self.max_n & (self.max_n - 1):
            raise ValueError(f"--max-n {self.max_n} must be a power of two (1, 2, 4, ..., 64).")
        if self.num_generations < 2 or self.batch_size % self.num_generations:
            raise ValueError(f"--num-generations {self.num_generations} must be >= 2 and divide "
                             f"--batch-size {self.batch_size}.")
        small = {"n_eval_prompts": self.n_eval_prompts, "eval_samples": self.eval_samples,
                 "timesteps": self.timesteps, "rm_prompts": self.rm_prompts,
                 "save_steps": self.save_steps}  # >= 1: every stage must be resumable
        for name, value in small.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value} must be >= 1.")
        self.settings_by_agent  # noqa: B018  (an unknown agent or field, or a bad value, fails here: before any work)
        for name in names:  # and so do settings an agent's config refuses
            try:
                self.agent_config(name, self.out)
            except ValueError as e:
                raise ValueError(f"agent {name!r} with --agent-settings {self.agent_settings!r}: {e}") from None

    @property
    def agent_names(self) -> list[str]:
        """The agents of ``agents``, in order."""
        return [n.strip() for n in self.agents.split(",") if n.strip()]

    @property
    def settings_by_agent(self) -> dict[str, dict[str, Any]]:
        """``agent_settings`` parsed and type-checked: ``{agent: {field: value}}``."""
        return parse_agent_settings(self.agent_settings)

    def budget(self, name: str) -> int:
        """Agent ``name``'s token budget: its ``timesteps`` setting, else its registry share of ``timesteps``."""
        override = self.settings_by_agent.get(name, {}).get("timesteps")
        return override or max(1, round(get_agent(name).budget_share * self.timesteps))

    @property
    def label_agents(self) -> list[str]:
        """The agents that learn from the step-2 rankings themselves (a ``preferences`` field not set by hand)."""
        return [n for n in self.agent_names
                if "preferences" in {f.name for f in dataclasses.fields(get_agent(n).config_class)}
                and "preferences" not in self.settings_by_agent.get(n, {})]

    def agent_config(self, name: str, log_dir: str) -> Any:
        """Agent ``name``'s config: the common settings it takes, its registry settings, then ``agent_settings``.

        Agents with a ``preferences`` field get the run's step-2 training rankings.
        """
        common = {"batch_size": self.batch_size, "beta": self.beta, "seed": self.seed, "log_dir": log_dir,
                  "save_steps": self.save_steps, "num_generations": self.num_generations,
                  "preferences": str(RunLayout(Path(self.out)).preferences)}
        overrides = {k: v for k, v in self.settings_by_agent.get(name, {}).items() if k != "timesteps"}
        return build_config(get_agent(name), common, overrides)
