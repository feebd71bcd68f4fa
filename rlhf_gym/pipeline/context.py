"""What every step of a pipeline run reads: its settings, its folder, step 0's set-up, the frozen SFT policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.lm import load_causal_lm
from reward_models import RewardModel
from rlhf_common.training import quiet_transformers
from rlhf_gym.pipeline.config import PipelineConfig
from rlhf_gym.pipeline.layout import RunLayout
from text_env import Task
from text_env.prompts import load_prompts
from text_env.task import Prompt

__all__ = ["RunContext"]


class RunContext:
    """One run of the pipeline as the steps see it; ``setup`` is filled in once step 0 has run."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.layout = RunLayout(Path(config.out))
        self.setup: dict[str, Any] = {}
        """Step 0's output: the policy, prompts and reward model of the run."""
        self._reference: Any = None

    def say(self, text: str) -> None:
        """Print a progress line (unless ``--no-progress``)."""
        if self.config.progress:
            print(f"[rlhf-gym pipeline] {text}", flush=True)

    def task(self, reward_model: RewardModel) -> Task:
        """The RL task: the policy's tokenizer, the training prompts, ``reward_model``, the default gold scorer."""
        from text_env.defaults import default_task

        setup = self.setup
        return default_task(model=None if setup["policy_source"] == "embedded default" else setup["policy"],
                            prompts=setup["prompts"], reward_model=reward_model,
                            max_new_tokens=self.config.max_new_tokens)

    @property
    def reference(self) -> Any:
        """The SFT policy, frozen: the KL anchor and the best-of-n sampler."""
        if self._reference is None:
            with quiet_transformers():
                self._reference = load_causal_lm(self.setup["policy"]).requires_grad_(False)
        return self._reference

    @property
    def eval_prompts(self) -> list[Prompt]:
        """The held-out prompts every policy is evaluated on (texts or conversations the task renders)."""
        return load_prompts(self.setup["eval_prompts"])[: self.config.n_eval_prompts]
