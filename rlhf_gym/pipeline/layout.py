"""Where a pipeline run keeps each stage's output: the one list of the run folder's files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunLayout"]


@dataclass(frozen=True)
class RunLayout:
    """Where each stage of a pipeline run keeps its output, under ``root``."""

    root: Path

    @property
    def config(self) -> Path:
        """The run's :class:`~rlhf_gym.pipeline.PipelineConfig`, to refuse resuming with other settings."""
        return self.root / "config.json"

    @property
    def setup(self) -> Path:
        """Step 0: which policy, tokenizer, prompts and reward model the run uses."""
        return self.root / "step0_setup.json"

    @property
    def assets(self) -> Path:
        """Step 0 with ``--from-scratch``: the rebuilt default assets."""
        return self.root / "step0_assets"

    @property
    def sft(self) -> Path:
        """Step 1: the SFT policy's metrics."""
        return self.root / "step1_sft.json"

    @property
    def reference_samples(self) -> Path:
        """Step 1: K samples of the SFT policy per evaluation prompt (collection JSONL, with gold scores)."""
        return self.root / "step1_reference_samples.jsonl"

    @property
    def reward_model(self) -> Path:
        """Step 2: the reward model's source and held-out accuracy against its ceiling."""
        return self.root / "step2_reward_model.json"

    @property
    def feedback(self) -> Path:
        """Step 2 with ``--train-reward-model``: samples, labels and the trained reward model."""
        return self.root / "step2_feedback"

    @property
    def preferences(self) -> Path:
        """Step 2: the simulated training rankings (reward-model training, DPO and IPO learn from them)."""
        return self.feedback / "preferences_train.jsonl"

    @property
    def preference_labels(self) -> Path:
        """Step 2 for agents that learn from labels: where the rankings are and how many."""
        return self.root / "step2_preference_labels.json"

    @property
    def best_of_n(self) -> Path:
        """Step 3: best-of-n from the SFT policy on the evaluation prompts, n = 1..max_n."""
        return self.root / "step3_best_of_n.json"

    def agent_dir(self, name: str) -> Path:
        """Step 3: an agent's log dir (``progress.csv``, TensorBoard events, checkpoint)."""
        return self.root / "step3_agents" / name

    def agent_eval(self, name: str) -> Path:
        """Step 3: an agent's held-out evaluation, written once it has finished training."""
        return self.agent_dir(name) / "eval.json"

    @property
    def summary_csv(self) -> Path:
        """One row per policy: gold, proxy, KL, length, training cost."""
        return self.root / "summary.csv"

    @property
    def curves_csv(self) -> Path:
        """Every agent's training curve in one table."""
        return self.root / "training_curves.csv"

    @property
    def best_of_n_csv(self) -> Path:
        """The best-of-n curve."""
        return self.root / "best_of_n.csv"

    @property
    def report(self) -> Path:
        """The Markdown report."""
        return self.root / "report.md"

    def png(self, name: str) -> Path:
        """A plot of the report."""
        return self.root / f"{name}.png"
