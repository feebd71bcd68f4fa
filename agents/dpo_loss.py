"""The DPO and IPO losses and the pairwise update shared by the offline (:mod:`agents.dpo`) and online DPO agent.

DPO (Rafailov et al. 2023, eq. 7) and IPO (Azar et al. 2023, eq. 17) both score a pair by the
log-ratios ``log pi(y|x) - log pi_ref(y|x)`` of its chosen and rejected response, summed
over the response tokens; the losses are those of TRL 1.16's ``DPOTrainer._compute_loss``
(``loss_type`` "sigmoid" and "ipo", trl/trainer/dpo_trainer.py), checked equal in tests/test_dpo.py.
Under ``torchrun`` each rank holds some of the pairs and the mean is over every rank's pairs, so
N ranks take the 1-process step (tests/test_distributed.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from agents.agent_config import TrainConfig
from agents.base import Agent
from agents.distributed import all_reduce
from agents.lora import trainable_parameters
from agents.scoring import Sequences, response_logprobs

__all__ = ["LOSS_TYPES", "DPOLossConfig", "LossType", "PairBatch", "PreferenceAgent", "dpo_loss"]

LossType = Literal["sigmoid", "ipo"]
LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo")


@dataclass
class DPOLossConfig(TrainConfig):
    """Settings of the DPO/IPO loss (TRL 1.16 ``DPOConfig`` names and defaults where they apply)."""

    loss_type: LossType = "sigmoid"
    """"sigmoid": DPO, ``-log sigmoid(beta * margin)``; "ipo": IPO, ``(margin / length - 1 / (2 beta))^2`` with
    the log-ratios averaged over each response's tokens, as TRL's DPOTrainer (its names)."""
    beta: float = 0.1
    """DPO's beta, the strength of the implicit KL anchor to the reference (IPO's tau); TRL's default 0.1."""
    num_mini_batches: int = 1
    """Gradient-accumulation parts of a batch: one optimiser step per batch either way (TRL:
    ``gradient_accumulation_steps`` 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} is unknown; use one of {', '.join(LOSS_TYPES)} "
                             "(TRL's names: 'sigmoid' is DPO).")
        if not self.beta > 0:
            raise ValueError(f"beta={self.beta} must be > 0 (TRL's default 0.1; larger keeps the policy nearer "
                             "the reference).")


def dpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    loss_type: LossType,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n,) per-pair loss from the summed log-ratios ``log pi - log pi_ref`` (n,) of chosen and rejected responses.

    IPO divides each log-ratio by its response length (``*_lengths``, tokens), as TRL does (its comment:
    confirmed with the IPO authors); DPO ignores the lengths.
    """
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    if loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("the IPO loss averages each log-ratio over its response: pass chosen_lengths and "
                             "rejected_lengths.")
        delta = chosen_logratios / chosen_lengths.clamp(min=1) - rejected_logratios / rejected_lengths.clamp(min=1)
        return (delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"loss_type={loss_type!r} is unknown; use one of {', '.join(LOSS_TYPES)}.")


@dataclass
class PairBatch:
    """Preference pairs as rows of a batch of sequences, with the reference's summed log-probs of each."""

    sequences: Sequences
    """The token sequences: a rollout (online DPO) or preference data (offline)."""
    chosen: torch.Tensor
    """(n,) row of each pair's chosen response in ``sequences``."""
    rejected: torch.Tensor
    """(n,) row of each pair's rejected response."""
    ref_chosen: torch.Tensor
    """(n,) the reference's log-prob of each chosen response, summed over its tokens."""
    ref_rejected: torch.Tensor
    """(n,) the same for the rejected responses."""


class PreferenceAgent(Agent):
    """Base of the agents trained by the DPO/IPO loss: the optimiser and one pairwise update step."""

    config: DPOLossConfig

    def _build(self, checkpoint: Any) -> None:
        self._make_optimizer(trainable_parameters(self.policy))  # with LoRA: the adapters only

    def _dpo_update(self, pairs: PairBatch) -> dict[str, float]:
        """One optimiser step on the mean DPO/IPO loss over ``pairs``; TRL's metric names (``/`` as ``_``).

        Each minibatch is one packed forward pass over its pairs' chosen and rejected sequences.
        Under torchrun ``pairs`` are this rank's (maybe none) and every value is over all ranks' pairs.
        """
        cfg = self.config
        n = int(all_reduce(torch.tensor(len(pairs.chosen), device=self.device), self.dist))  # pairs on every rank
        sums = {key: torch.zeros((), device=self.device) for key in ("loss", "chosen", "rejected", "correct",
                                                                        "logps_chosen", "logps_rejected")}
        local = torch.arange(len(pairs.chosen), device=self.device)
        for mb in local.chunk(cfg.num_mini_batches) if len(local) else ():  # a rank may hold no untied pair
            rows = torch.cat([pairs.chosen[mb], pairs.rejected[mb]])
            logps = response_logprobs(self.policy, pairs.sequences, cfg.temperature, self.task.vocab_size,
                                      index=rows).logprobs.sum(1)  # (2m,)
            chosen, rejected = logps.chunk(2)
            lengths_chosen, lengths_rejected = pairs.sequences.response_mask[rows].sum(1).chunk(2)
            ratio_chosen, ratio_rejected = chosen - pairs.ref_chosen[mb], rejected - pairs.ref_rejected[mb]
            losses = dpo_loss(ratio_chosen, ratio_rejected, cfg.beta, cfg.loss_type, lengths_chosen, lengths_rejected)
            self._backward(losses.sum() / n, f"{cfg.loss_type} loss")
            reward_chosen, reward_rejected = cfg.beta * ratio_chosen.detach(), cfg.beta * ratio_rejected.detach()
            for key, value in (("loss", losses), ("chosen", reward_chosen), ("rejected", reward_rejected),
                               ("correct", (reward_chosen > reward_rejected).float()),
                               ("logps_chosen", chosen), ("logps_rejected", rejected)):
                sums[key] += value.detach().sum()
        grad_norm = self._optimizer_step()
        totals = all_reduce(torch.stack(list(sums.values())), self.dist).tolist()
        mean = {key: value / n for key, value in zip(sums, totals, strict=True)}
        return {"loss": mean["loss"], "rewards_chosen": mean["chosen"], "rewards_rejected": mean["rejected"],
                "rewards_accuracies": mean["correct"], "rewards_margins": mean["chosen"] - mean["rejected"],
                "logps_chosen": mean["logps_chosen"], "logps_rejected": mean["logps_rejected"],
                "beta": cfg.beta, "grad_norm": grad_norm}
