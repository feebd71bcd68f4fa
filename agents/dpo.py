"""Offline DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023) from a preference file, against the SFT reference.

No reward model and no sampling: each iteration takes ``batch_size`` pairs of a preference
JSONL (any shape :func:`reward_models.preferences.load_preferences` reads; a K-way ranking
gives its C(K, 2) pairs), shuffled epoch after epoch, and takes one step on the mean DPO or
IPO loss (:mod:`agents.dpo_loss`, equal to TRL's ``DPOTrainer``). The pairs become the token
sequences the env would show the policy: the prompt as the env encodes it
(``Task.encode_prompt``: its tokens, left-truncated to ``max_prompt_tokens`` or refused, as
``long_prompt`` says), the response's tokens then EOS (an env response that ended by EOS),
cut to ``max_new_tokens`` (where the env's length cap would have ended it); the counts of cut
prompts and responses are logged. The frozen reference scores every pair once, when the agent
is built (again after a resume): its numbers are the same every epoch.

Timesteps count response tokens trained on (chosen + rejected); ``num_episodes`` counts pairs:
an offline agent takes no env steps.

    from agents import DPO, DPOConfig
    agent = DPO("RLHFText-v0", config=DPOConfig(preferences="preferences_train.jsonl")).learn(200_000)
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.command import agent_cli
from agents.distributed import all_reduce, reduce_metrics
from agents.dpo_loss import DPOLossConfig, PairBatch, PreferenceAgent
from agents.models import PolicyArg
from agents.scoring import SequenceBatch, response_logprobs
from reward_models.preferences import load_preferences, to_pairs
from text_env import Task

__all__ = ["DPO", "DPOConfig", "PreferencePairs", "encode_pairs"]


@dataclass
class DPOConfig(DPOLossConfig):
    """Offline DPO/IPO settings (TRL 1.16 ``DPOConfig`` names and defaults where they apply)."""

    log_dir: str = "runs/dpo"
    """TensorBoard events, ``progress.csv`` and ``checkpoint/`` go here."""
    batch_size: int = 64
    """Preference pairs per optimiser step (TRL: ``per_device_train_batch_size`` 8 on a large model)."""
    learning_rate: float = 1e-5
    """Adam step size at the start (TRL: 1e-6 for 7B models; the embedded 4.24 M-parameter policy takes more)."""
    preferences: str | None = None
    """Preference JSONL to learn from (the reward-model training format); required. The pipeline passes
    its step-2 training labels."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preferences is None:
            raise ValueError("preferences is not set: pass preferences=PATH (--preferences PATH), a preference "
                             'JSONL with rows {"prompt", "chosen", "rejected"} or {"prompt", "responses": [best, '
                             "..., worst]}, e.g. a pipeline run's feedback/preferences_train.jsonl.")


@dataclass
class PreferencePairs:
    """Preference pairs as token tensors: chosen and rejected responses to one prompt each, on one device."""

    prompt_ids: torch.Tensor
    """(N, P) prompt tokens, left-padded."""
    prompt_mask: torch.Tensor
    """(N, P) 1 on prompt tokens."""
    chosen_ids: torch.Tensor
    """(N, T) chosen response tokens, right-padded; T = max_new_tokens."""
    chosen_mask: torch.Tensor
    """(N, T) 1 on chosen response tokens."""
    rejected_ids: torch.Tensor
    """(N, T) rejected response tokens."""
    rejected_mask: torch.Tensor
    """(N, T) 1 on rejected response tokens."""
    counts: dict[str, int]
    """Pairs read and adjusted: ``pairs``, ``truncated_prompts``, ``truncated_responses``, ``identical_pairs``."""

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def batch(self, index: torch.Tensor) -> tuple[SequenceBatch, torch.Tensor, torch.Tensor]:
        """The ``index`` pairs as 2n sequences (chosen rows first), with the rows of chosen and rejected."""
        n = len(index)
        sequences = SequenceBatch(
            prompt_ids=self.prompt_ids[index].repeat(2, 1), prompt_mask=self.prompt_mask[index].repeat(2, 1),
            response_ids=torch.cat([self.chosen_ids[index], self.rejected_ids[index]]),
            response_mask=torch.cat([self.chosen_mask[index], self.rejected_mask[index]]),
        )
        rows = torch.arange(2 * n, device=index.device)
        return sequences, rows[:n], rows[n:]


def encode_pairs(path: str | Path, task: Task, device: torch.device | str = "cpu") -> PreferencePairs:
    """The pairs of preference file ``path`` as the token sequences ``task``'s env would show a policy.

    Malformed files raise :class:`rlhf_common.io.DataError` naming ``file:line`` (the reward-model
    loader). Pairs whose two responses have the same tokens after cutting are dropped (they carry
    no preference); the counts go to stderr and to :attr:`PreferencePairs.counts`. A task's action
    mask is not applied: policy and reference score the pairs over every token alike.
    """
    pairs = to_pairs(load_preferences(path, task.tokenizer))
    tokenizer, cap = task.tokenizer, task.max_new_tokens
    eos = [tokenizer.eos_token_id] if task.stop_on_eos else []
    counts = {"pairs": 0, "truncated_prompts": 0, "truncated_responses": 0, "identical_pairs": 0}
    prompts, chosen, rejected = [], [], []
    encoded: dict[str, list[int]] = {}
    for pair in pairs:
        if pair.prompt not in encoded:
            with warnings.catch_warnings(record=True) as caught:  # the env's rule, counted once below
                warnings.simplefilter("always")
                encoded[pair.prompt] = task.encode_prompt(pair.prompt)
            counts["truncated_prompts"] += len(caught)
        responses = []
        for text in (pair.chosen, pair.rejected):
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + eos
            counts["truncated_responses"] += len(ids) > cap
            responses.append(ids[:cap])
        if responses[0] == responses[1]:
            counts["identical_pairs"] += 1
            continue
        prompts.append(encoded[pair.prompt])
        chosen.append(responses[0])
        rejected.append(responses[1])
    if not prompts:
        raise ValueError(f"{path}: every pair's chosen and rejected responses have the same tokens after cutting to "
                         f"max_new_tokens={cap}; nothing to learn from.")
    counts["pairs"] = len(prompts)
    if any(counts[k] for k in ("truncated_prompts", "truncated_responses", "identical_pairs")):
        print(f"dpo: {path}: {counts['truncated_prompts']} prompts left-truncated to max_prompt_tokens="
              f"{task.max_prompt_tokens}, {counts['truncated_responses']} responses cut to max_new_tokens={cap}, "
              f"{counts['identical_pairs']} pairs dropped as identical after cutting.", file=sys.stderr)
    prompt_ids, prompt_mask = _padded(prompts, task.pad_token_id, left=True)
    chosen_ids, chosen_mask = _padded(chosen, task.pad_token_id, left=False, width=cap)
    rejected_ids, rejected_mask = _padded(rejected, task.pad_token_id, left=False, width=cap)
    tensors = [t.to(device) for t in (prompt_ids, prompt_mask, chosen_ids, chosen_mask, rejected_ids, rejected_mask)]
    return PreferencePairs(*tensors, counts=counts)


def _padded(rows: Sequence[list[int]], pad: int, left: bool, width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, W) ids and mask of ``rows``, padded with ``pad`` on the left or right to the longest (at least ``width``)."""
    width = max(width, max(map(len, rows)))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols] = torch.tensor(row, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


class DPO(PreferenceAgent):
    """Offline DPO or IPO (``loss_type``) on a preference file, against the frozen reference.

    The pairs are read and the reference log-probs computed at construction (a bad file fails
    before any training), and after :meth:`load` or a resume at the next iteration (so a saved
    agent loads, and predicts, without its preference file). Iteration ``i`` takes positions
    ``[i * batch_size, (i + 1) * batch_size)`` of the endless sequence of seeded epoch permutations,
    so a resumed run trains on exactly the pairs the killed one would have. Data-parallel under
    torchrun: each rank takes an equal slice of the iteration's pairs (every rank reads the file and
    scores the reference once), and N ranks take the 1-process step.

    Args: as :class:`agents.PPOKL`, with a :class:`DPOConfig`.
    """

    config_class = DPOConfig
    config: DPOConfig
    supports_distributed = True

    def __init__(
        self, env: Any, policy: PolicyArg = None, config: DPOConfig | None = None, reference: PolicyArg = None
    ) -> None:
        super().__init__(env, policy, config, reference)
        self.pairs = self._load_pairs()  # a bad file fails here, before any training

    def _build(self, checkpoint: Any) -> None:
        super()._build(checkpoint)
        self.pairs: PreferencePairs | None = None  # read at construction, or at the first iteration after a load
        self._permutations: dict[int, np.ndarray] = {}

    def _load_pairs(self) -> PreferencePairs:
        """Read the pairs and their reference log-probs, once (one packed no-grad pass per batch of pairs)."""
        pairs = encode_pairs(self.config.preferences, self.task, self.device)
        ref_chosen, ref_rejected = [], []
        with torch.no_grad():
            for index in torch.arange(len(pairs), device=self.device).split(self.config.batch_size):
                sequences, _, _ = pairs.batch(index)
                logps = response_logprobs(self.reference, sequences, self.config.temperature, self.task.vocab_size)
                chosen, rejected = logps.logprobs.sum(1).chunk(2)
                ref_chosen.append(chosen)
                ref_rejected.append(rejected)
        self.ref_chosen, self.ref_rejected = torch.cat(ref_chosen), torch.cat(ref_rejected)  # (N,)
        return pairs

    def _pair_index(self, n: int) -> torch.Tensor:
        """(batch_size,) the pairs of this iteration: the next positions in the seeded stream of epochs."""
        positions = np.arange(self.iteration * self.config.batch_size, (self.iteration + 1) * self.config.batch_size)
        epochs = positions // n
        for epoch in np.unique(epochs):
            if epoch not in self._permutations:
                self._permutations = {e: p for e, p in self._permutations.items() if e >= epochs[0]}
                self._permutations[epoch] = np.random.default_rng([self.config.seed, int(epoch)]).permutation(n)
        index = [self._permutations[e][p] for e, p in zip(epochs, positions % n, strict=True)]
        return torch.tensor(index, device=self.device)

    def _iteration(self) -> tuple[dict[str, float], int]:
        cfg = self.config
        # 1. The pairs and their reference log-probs: computed once (the reference is frozen), again after a load.
        if self.pairs is None:
            self.pairs = self._load_pairs()
        pairs = self.pairs

        # 2. This iteration's batch_size pairs, from the seeded stream of shuffled epochs (under torchrun:
        # this rank's equal slice of them).
        share = cfg.batch_size // self.dist.world_size
        index = self._pair_index(len(pairs))[self.dist.rank * share:(self.dist.rank + 1) * share]
        sequences, chosen, rejected = pairs.batch(index)

        # 3. One step on the mean DPO/IPO loss: policy log-probs in packed passes, the stored reference's.
        metrics = self._dpo_update(PairBatch(sequences, chosen, rejected, self.ref_chosen[index],
                                             self.ref_rejected[index]))

        # 4. Log: TRL's metrics, where in the data we are, and what encoding had to cut.
        tokens = int(sequences.response_mask.sum())
        metrics.update(epoch=(self.iteration + 1) * cfg.batch_size / len(pairs),
                       response_length=tokens / (2 * len(index)),
                       **{k: float(v) for k, v in pairs.counts.items()})
        metrics = reduce_metrics(metrics, self.dist, self.device)
        return metrics, int(all_reduce(torch.tensor(tokens, device=self.device), self.dist))  # global timesteps


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m agents.dpo --preferences FILE [--flags]``: train on the pairs in the env's task; save the agent."""
    return agent_cli(DPO, argv, description=__doc__.splitlines()[0], default_timesteps=200_000)


if __name__ == "__main__":
    sys.exit(cli())
