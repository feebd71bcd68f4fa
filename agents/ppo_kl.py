"""PPO with a KL penalty against the SFT reference: RLHF step 3, read top to bottom.

Each iteration: (1) generate a batch of responses through the env, (2) log-probs,
values and reference log-probs, (3) per-token KL, (4) the reward-model score on the
last token, (5) GAE, (6) whitening, (7) PPO epochs, (8) KL controller and logging.
Sources: lm-human-preferences (Ziegler et al. 2019, "OAI"), "The N Implementation
Details of RLHF with PPO" (Huang et al. 2023), TRL's old ppo_trainer, CleanRL ppo.py.

Run ``python -m agents.ppo_kl`` for a default training on RLHFText-v0::

    from agents import PPOKL, PPOKLConfig
    agent = PPOKL("RLHFText-v0", config=PPOKLConfig(batch_size=32)).learn(50_000)
    agent.save("ppo_kl_model")

The same script runs data-parallel under ``torchrun --nproc_per_node N`` (each rank
generates ``batch_size / N`` episodes; the update equals the 1-process one), with LoRA
(``PPOKLConfig(lora=LoraSettings())``) or with Ray rollout workers (``rollout_workers=2``).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from agents.agent_config import TrainConfig
from agents.base import Agent
from agents.command import agent_cli
from agents.distributed import all_gather_rows, all_reduce, broadcast_parameters, reduce_metrics
from agents.lora import trainable_parameters
from agents.models import PolicyArg
from agents.ppo_utils import (
    AdaptiveKLController,
    FixedKLController,
    KLEstimator,
    compute_gae,
    explained_variance,
    kl_estimate,
    kl_per_response,
    masked_mean,
    masked_whiten,
)
from agents.rollout import RolloutBatch, autocast
from agents.scoring import pack_sequences, response_logprobs
from rlhf_common.training import quiet_transformers

UPDATE_STATS = ("policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl")
"""Per-minibatch statistics: each rank's sum over its rows divided by the global token count, summed over ranks."""


@dataclass
class PPOKLConfig(TrainConfig):
    """PPO-KL settings: OAI's recipe (docs/ppo_details.md), with the step size, batch and beta measured on RLHFText-v0.

    On the default task these defaults buy 0.8x or more of best-of-n's gold gain at the same KL
    (README, Step 3); OAI's adaptive beta (``beta=0.15, kl_target=6.0``) is one setting away.
    """

    log_dir: str = "runs/ppo_kl"
    """TensorBoard events, ``progress.csv`` and ``checkpoint/`` go here."""
    batch_size: int = 128
    """Episodes per iteration, generated together."""
    num_mini_batches: int = 2
    """Minibatches per batch, each one optimiser step: 64 episodes, so a step averages over many prompts."""
    learning_rate: float = 5e-5
    """Adam step size at the start, annealed to 0. Small steps spend KL on the reward, not on noise:
    approx-KL per update stays near 1e-3 on the default policy (OAI's healthy runs: 5e-4); with 3e-4
    it was 0.03-0.15 and PPOKL bought half the gold per nat. Lower it for larger models (OAI: 1.41e-5)."""
    num_ppo_epochs: int = 4
    """Passes over each batch, reshuffled every epoch (OAI: 4)."""
    beta: float = 0.3
    """Beta, the weight of the per-token KL penalty (OAI: 0.15 adaptive; TRL old: 0.2). The KL where
    PPO levels off grows as beta falls; a run that reaches it then trades along it for reward, which
    is where PPO is most KL-efficient (0.3: about 1.5 nats on the default task, reached after ~80k tokens)."""
    kl_target: float | None = None
    """Per-response KL (nats) an adaptive controller steers beta to (OAI: 6.0); None keeps beta fixed."""
    kl_horizon: int = 10_000
    """Episodes over which the adaptive controller moves beta by at most 20% (OAI: 10000)."""
    kl_estimator: KLEstimator = "k1"
    """KL estimator in the per-token reward: "k1" = logp - logp_ref (OAI, TRL), "k2", or "k3" (>= 0)."""
    cliprange: float = 0.2
    """Policy ratio clip epsilon."""
    cliprange_value: float = 0.2
    """Value prediction clip around the old values."""
    vf_coef: float = 0.1
    """Weight of the value loss (OAI: 0.1)."""
    gamma: float = 1.0
    """Discount across response tokens; 1: the score counts fully at every token."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_rewards: bool = False
    """Whiten per-token rewards (without shifting the mean) before GAE (OAI on; N+, TRL off)."""
    value_head: Literal["shared", "critic"] = "shared"
    """"shared": zero-initialised linear head on the policy's last hidden state (OAI);
    "critic": a separate model initialised from the reward model at ``critic_path`` (N+, InstructGPT)."""
    critic_path: str | None = None
    """Reward-model folder (AutoModelForSequenceClassification, one label) for ``value_head="critic"``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.value_head not in ("shared", "critic"):
            raise ValueError(f"value_head={self.value_head!r}; use 'shared' or 'critic'.")
        if self.value_head == "critic" and self.critic_path is None:
            raise ValueError("value_head='critic' needs critic_path=<reward-model folder> to initialise it from.")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_estimator={self.kl_estimator!r}; use 'k1', 'k2' or 'k3'.")


def _minibatch_mean(x: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The local rows' share of a masked mean over a global minibatch of ``tokens`` response tokens."""
    return (x * mask).sum() / tokens


class PPOKL(Agent):
    """PPO against a reward model with a per-token KL penalty to the frozen SFT reference.

    Args:
        env: a text env: ``"RLHFText-v0"``, a ``TextGenerationEnv``, a ``Task``, or a
            ``TextGenerationVectorEnv`` with autoreset DISABLED and ``num_envs == batch_size``.
        policy: a causal LM (trained in place), its folder, or None for the embedded default policy.
        config: :class:`PPOKLConfig`.
        reference: the KL anchor; default a frozen copy of the initial ``policy``.
    """

    config_class = PPOKLConfig
    config: PPOKLConfig
    supports_distributed = True

    def __init__(
        self, env: Any, policy: PolicyArg = None, config: PPOKLConfig | None = None, reference: PolicyArg = None
    ) -> None:
        super().__init__(env, policy, config, reference)

    def _build(self, checkpoint: Path | None) -> None:
        cfg = self.config
        if cfg.value_head == "shared":
            # OAI: value head on the policy's backbone, zero-initialised so early values don't add noise.
            hidden = self.policy.get_output_embeddings().in_features
            self.value_model = torch.nn.Linear(hidden, 1).to(self.device)
            torch.nn.init.zeros_(self.value_model.weight)
            torch.nn.init.zeros_(self.value_model.bias)
            if checkpoint is not None:
                self.value_model.load_state_dict(load_file(checkpoint / "value_head.safetensors"))
        else:
            self.value_model = self._load_critic(checkpoint / "critic" if checkpoint else Path(cfg.critic_path))
        if cfg.kl_target is None:
            self.kl_ctl: FixedKLController | AdaptiveKLController = FixedKLController(cfg.beta)
        else:
            self.kl_ctl = AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)
        broadcast_parameters([self.value_model], self.dist)
        # With LoRA only the adapters train: Adam keeps no moments for the frozen base weights.
        self._make_optimizer([*trainable_parameters(self.policy), *self.value_model.parameters()])

    def _load_critic(self, path: Path) -> Any:
        from transformers import AutoModelForSequenceClassification

        # N+ / InstructGPT: a separate critic initialised from the reward model; eval() = dropout off.
        with quiet_transformers():
            critic = AutoModelForSequenceClassification.from_pretrained(
                str(path), num_labels=1, trust_remote_code=False, weights_only=True  # untrusted folder
            )
        critic = critic.to(self.device).eval()
        if not isinstance(getattr(critic, "score", None), torch.nn.Linear):
            raise ValueError(
                f"critic {path} has no linear `score` head (GPT-2/Llama-style sequence classifier); "
                "use value_head='shared' or a reward model of such an architecture."
            )
        if critic.get_input_embeddings().num_embeddings < self.task.vocab_size:
            raise ValueError(f"critic {path} knows fewer tokens than the env's tokenizer; it must share the policy's.")
        return critic

    # ---- the algorithm ---------------------------------------------------------------
    def _values(self, batch: RolloutBatch, hidden: torch.Tensor | None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """Values V(s_t) (b, T) of (a minibatch of) the batch's responses, 0 on padding.

        The shared head reads ``hidden``, the policy's states (b, T, H); the critic runs its own pass.
        """
        with autocast(self.device):  # bf16 hidden states on CUDA meet the head in autocast too
            if self.config.value_head == "shared":
                values = self.value_model(hidden)  # (b, T, 1)
            else:
                packed = pack_sequences(batch, index)
                states = packed.select(self.value_model.base_model(**packed.inputs()).last_hidden_state)  # (N, H)
                values = packed.unpack(self.value_model.score(states))  # (b, T, 1)
        mask = batch.response_mask if index is None else batch.response_mask[index]
        return values.squeeze(-1).float() * mask

    def _token_rewards(self, batch: RolloutBatch) -> torch.Tensor:
        """(B, T) what step 4 adds to the KL penalty: the env's rewards where they came, less the missing-EOS penalty.

        One-turn episodes: the score on the last token. The one place a subclass reshapes the
        score (:class:`agents.vbon.VBoN`: its log-CDF under the reference).
        """
        return batch.token_rewards(self.config.missing_eos_penalty)

    def _iteration(self) -> tuple[dict[str, float], int]:
        cfg, vocab, dist = self.config, self.task.vocab_size, self.dist

        # 1. Generate: every episode of the batch together, KV-cached, through the env
        # (under torchrun: this rank's share, B = batch_size / world_size rows).
        shared = cfg.value_head == "shared"
        batch = self._generate(output_hidden=shared)
        mask = batch.response_mask.float()  # (B, T)
        n = mask.shape[0]

        # 2. Log-probs and values of the policy, log-probs of the reference. The policy's come from
        # the rollout itself: the log-probs it sampled with and the hidden states the shared value
        # head reads. They equal a recomputation up to float rounding (tests/test_rollout.py), so the
        # first minibatch starts at ratio 1 +- 1e-6 (float32) without a second pass of the policy.
        # The reference (and a separate critic) take one pass over the packed batch.
        old = batch.logprobs  # (B, T)
        with torch.no_grad():
            old_values = self._values(batch, batch.hidden)  # (B, T)
            ref = response_logprobs(self.reference, batch, cfg.temperature, vocab).logprobs  # (B, T)

        # 3. Per-token KL to the reference (docs/ppo_details.md #1, #4).
        kl = kl_estimate(old, ref, cfg.kl_estimator) * mask  # (B, T)
        beta = self.kl_ctl.value

        # 4. Reward: -beta * KL on every token, the score on the last response token only (in a
        # multi-turn episode, each turn's reward on that turn's last token).
        score = self._token_rewards(batch)  # (B, T)
        rewards = -beta * kl + score  # (B, T)
        if cfg.whiten_rewards:  # OAI: scale rewards, keep their sign (shift_mean=False)
            rewards = masked_whiten(rewards, mask, shift_mean=False, dist=dist)

        # 5. GAE (gamma 1, lambda 0.95; nothing bootstrapped past the last token).
        advantages, returns = compute_gae(rewards, old_values, mask, cfg.gamma, cfg.lam)  # (B, T)

        # 6. Whiten advantages, always (docs/ppo_details.md #9); mean and variance over every rank's rows.
        advantages = masked_whiten(advantages, mask, dist=dist)

        # 7. PPO epochs: minibatches reshuffled every epoch (OAI). The permutation is over the
        # global batch (same generator seed on every rank); each rank backpropagates its own rows
        # of a minibatch, divided by the minibatch's global token count, and the optimiser step
        # sums gradients over ranks: N ranks take exactly the 1-process step.
        tokens_per_row = all_gather_rows(batch.lengths, dist)  # (world * B,)
        first = dist.rank * n  # global index of this rank's first row
        stats: dict[str, list[float]] = defaultdict(list)
        for _ in range(cfg.num_ppo_epochs):
            order = torch.randperm(n * dist.world_size, generator=self.generator, device=self.device)
            for rows in order.chunk(cfg.num_mini_batches):
                tokens = tokens_per_row[rows].sum().clamp(min=1)
                idx = rows[(rows >= first) & (rows < first + n)] - first  # this rank's rows, local indices
                parts = torch.zeros(len(UPDATE_STATS), device=self.device)
                if len(idx):
                    new = response_logprobs(self.policy, batch, cfg.temperature, vocab, output_hidden=shared,
                                            index=idx)
                    values = self._values(batch, new.hidden, idx)  # (b, T)
                    m, adv, ret, old_v = mask[idx], advantages[idx], returns[idx], old_values[idx]  # (b, T)
                    log_ratio = (new.logprobs - old[idx]) * m  # (b, T)
                    ratio = log_ratio.exp()
                    pg_losses = -adv * ratio
                    pg_clipped = -adv * ratio.clamp(1 - cfg.cliprange, 1 + cfg.cliprange)
                    pg_loss = _minibatch_mean(torch.max(pg_losses, pg_clipped), m, tokens)
                    # Value clipping around the old values (OAI, docs/ppo_details.md #11).
                    v_clipped = old_v + (values - old_v).clamp(-cfg.cliprange_value, cfg.cliprange_value)
                    vf_loss = 0.5 * _minibatch_mean(torch.max((values - ret) ** 2, (v_clipped - ret) ** 2), m, tokens)
                    self._backward(pg_loss + cfg.vf_coef * vf_loss, "PPO loss")
                    with torch.no_grad():
                        # approx_kl: k3 of the policy change, how far one update moved (CleanRL).
                        # Values past the clip range, tested on the range itself: old_v + (values - old_v)
                        # may differ from values by rounding, which values != v_clipped would count.
                        value_clipped = ((values - old_v).abs() > cfg.cliprange_value).float()
                        parts = torch.stack([pg_loss, vf_loss,
                                             _minibatch_mean((pg_clipped > pg_losses).float(), m, tokens),
                                             _minibatch_mean(value_clipped, m, tokens),
                                             _minibatch_mean(ratio - 1 - log_ratio, m, tokens)])
                stats["grad_norm"].append(self._optimizer_step())
                for key, value in zip(UPDATE_STATS, all_reduce(parts, dist).tolist(), strict=True):
                    stats[key].append(value)

        # 8. KL controller on the per-response KL sum, batch-averaged over all ranks (docs/ppo_details.md #1, #3); log.
        mean_kl = float(all_reduce(kl.sum(1).mean(), dist)) / dist.world_size
        self.kl_ctl.update(mean_kl, n * dist.world_size)
        metrics = batch.metrics()
        metrics.update({key: float(np.mean(vals)) for key, vals in stats.items()})
        metrics.update(
            kl=mean_kl,
            kl_k1=float(kl_per_response(old, ref, mask, "k1").mean()),
            kl_k3=float(kl_per_response(old, ref, mask, "k3").mean()),
            beta=beta,
            objective=float(score.sum(1).mean()) - beta * mean_kl,
            entropy=float(masked_mean(batch.entropy, mask)),
            explained_variance=explained_variance(old_values, returns, mask),
            value_mean=float(masked_mean(old_values, mask)),
        )
        metrics = reduce_metrics(metrics, dist, self.device)
        return metrics, int(all_reduce(mask.sum(), dist))  # global timesteps: every rank stops together

    # ---- checkpoint extras -----------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {"kl_controller": self.kl_ctl.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.kl_ctl.load_state_dict(state["kl_controller"])

    def _save_extra(self, folder: Path) -> None:
        if self.config.value_head == "shared":
            save_file(self.value_model.state_dict(), folder / "value_head.safetensors")
        else:
            self.value_model.save_pretrained(folder / "critic", safe_serialization=True)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.ppo_kl [--flags]``: train on RLHFText-v0 (or ``--env``) and save the agent."""
    return agent_cli(PPOKL, argv, description=__doc__.splitlines()[0], default_timesteps=200_000)


if __name__ == "__main__":
    sys.exit(cli())
