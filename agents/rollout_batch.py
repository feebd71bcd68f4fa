"""RolloutBatch: what a rollout hands to an agent, for one-turn and multi-turn episodes alike.

A row is one episode: its prompt, then everything after it as one token stream. In a
one-turn episode the stream is the response. In a multi-turn episode (a task with a turn
rule, text_env/turns.py) the stream interleaves the agent's tokens with the tokens the env
inserted (its replies, or a fresh rendering of the state). Those are not actions:
``response_mask`` marks the agent's tokens only, so every loss, KL term and value target an
agent takes over ``response_mask`` leaves them out (DESIGN: "tokens the environment inserts
are not actions"), while re-scoring (:mod:`agents.scoring`) reads the whole stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from text_env.task import END_EOS, missing_eos_penalties

__all__ = ["RolloutBatch", "pad_cat"]


@dataclass
class RolloutBatch:
    """One synchronous batch of finished episodes, on the model's device."""

    prompt_ids: torch.Tensor
    """(B, P) prompt tokens, left-padded to the batch's longest prompt."""
    prompt_mask: torch.Tensor
    """(B, P) 1 on prompt tokens, 0 on padding."""
    response_ids: torch.Tensor
    """(B, T) the stream after the prompt (the sampled tokens, and in multi-turn episodes the env's),
    right-padded with the task's pad id."""
    response_mask: torch.Tensor
    """(B, T) 1 on the agent's tokens (its actions), 0 on env tokens and padding."""
    logprobs: torch.Tensor
    """(B, T) log-probs of the sampled tokens under the temperature-scaled (masked) policy; 0 elsewhere.
    They are the policy's old log-probs: :func:`agents.scoring.response_logprobs` of the same sequences gives them
    again up to float rounding (tests/test_rollout.py), so agents need not recompute them."""
    entropy: torch.Tensor
    """(B, T) entropy of the temperature-scaled (masked) distribution each token was sampled from; 0 elsewhere."""
    rewards: np.ndarray
    """(B,) each episode's return: the sum of its env rewards (one-turn: the final reward, score minus penalties)."""
    infos: list[dict[str, Any]]
    """The env's final ``info`` per episode: prompt, response, score, end_reason, gold_score, ..."""
    action_masks: torch.Tensor | None
    """(B, T, V) bool allowed tokens at each agent step (all True elsewhere), when the task has an action-mask rule."""
    hidden: torch.Tensor | None
    """(B, T, H) the policy's last hidden state at the position that predicted each agent token
    (the state s_t a shared value head reads), with ``rollout(..., output_hidden=True)``; 0 elsewhere."""
    step_rewards: torch.Tensor
    """(B, T) float64 the env's reward at each agent token: nonzero where a turn (or the episode) ended."""
    env_mask: torch.Tensor | None = None
    """(B, T) 1 on the tokens the env inserted between turns; None for one-turn episodes."""
    positions: torch.Tensor | None = None
    """(B, T) position ids of the stream's tokens, when a context restarted (a fresh rendering of the state
    starts again at 0, which also keeps it from attending to earlier turns when packed); None: they continue
    from the prompt's."""

    @property
    def scores(self) -> np.ndarray:
        """(B,) raw reward-model scores (summed over turns)."""
        return np.array([info["score"] for info in self.infos])

    @property
    def gold_scores(self) -> np.ndarray | None:
        """(B,) gold scores, when the task has a gold scorer."""
        if "gold_score" not in self.infos[0]:
            return None
        return np.array([info["gold_score"] for info in self.infos])

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) the agent's tokens per episode."""
        return self.response_mask.sum(1)

    @property
    def stream_mask(self) -> torch.Tensor:
        """(B, T) 1 on every token of the stream: the agent's and the env's."""
        return self.response_mask if self.env_mask is None else self.response_mask | self.env_mask

    @property
    def last_token(self) -> torch.Tensor:
        """(B,) column of each episode's last agent token."""
        if self.env_mask is None:
            return self.lengths - 1
        columns = torch.arange(self.response_mask.shape[1], device=self.response_mask.device)
        return (columns * self.response_mask).argmax(1)

    @property
    def ended_by_eos(self) -> np.ndarray:
        """(B,) bool: the (last) response ended on the tokenizer's EOS (not a stop string or the length cap)."""
        return np.array([info["end_reason"] == END_EOS for info in self.infos])

    def metrics(self) -> dict[str, float]:
        """Episode statistics every agent logs: proxy and gold score, length, share ended by EOS (and turns)."""
        out = {
            "score": float(self.scores.mean()),
            "reward": float(self.rewards.mean()),
            "response_length": float(self.lengths.float().mean()),
            "eos_fraction": float(np.mean(self.ended_by_eos)),
        }
        gold = self.gold_scores
        if gold is not None:
            out["gold_score"] = float(gold.mean())
        if "turns" in self.infos[0]:
            out["turns"] = float(np.mean([info["turns"] for info in self.infos]))
        return out

    def _penalties(self, missing_eos_penalty: float) -> np.ndarray:
        return missing_eos_penalties([info["end_reason"] for info in self.infos], missing_eos_penalty)

    def penalized_rewards(self, missing_eos_penalty: float) -> torch.Tensor:
        """(B,) float32 each episode's return minus ``missing_eos_penalty`` if its last response hit the length cap.

        The agents' extra penalty on top of the task's own (docs/ppo_details.md #7).
        """
        return torch.as_tensor(self.rewards - self._penalties(missing_eos_penalty), dtype=torch.float32,
                               device=self.response_mask.device)

    def token_rewards(self, missing_eos_penalty: float) -> torch.Tensor:
        """(B, T) float32 the env's rewards where they came (each turn's end), less the penalty on the last token.

        One-turn: :meth:`penalized_rewards` on the last response token, 0 elsewhere.
        """
        penalties = torch.as_tensor(self._penalties(missing_eos_penalty), device=self.step_rewards.device)
        return (self.step_rewards - self.on_last_token(penalties)).float()

    def on_last_token(self, values: torch.Tensor) -> torch.Tensor:
        """(B, T) ``values`` (B,) on each episode's last agent token, 0 elsewhere."""
        out = values.new_zeros(self.response_mask.shape)
        return out.index_put_((torch.arange(len(values), device=values.device), self.last_token), values)

    @classmethod
    def concat(cls, batches: Sequence[RolloutBatch], pad_token_id: int) -> RolloutBatch:
        """One batch of every episode of ``batches``: prompts stay left-padded, streams right-padded."""

        def cat(name: str, value: float | bool, left: bool = False) -> torch.Tensor | None:
            parts = [getattr(b, name) for b in batches]
            return None if parts[0] is None else pad_cat(parts, value, left)

        if len({b.env_mask is None for b in batches}) > 1:
            raise ValueError("concat: batches mix one-turn and multi-turn episodes; concatenate batches of one task.")
        return cls(
            prompt_ids=cat("prompt_ids", pad_token_id, left=True),
            prompt_mask=cat("prompt_mask", 0, left=True),
            response_ids=cat("response_ids", pad_token_id),
            response_mask=cat("response_mask", 0),
            logprobs=cat("logprobs", 0.0),
            entropy=cat("entropy", 0.0),
            rewards=np.concatenate([b.rewards for b in batches]),
            infos=[info for b in batches for info in b.infos],
            action_masks=cat("action_masks", True),  # finished episodes allow every token, as the env does
            hidden=cat("hidden", 0.0),
            step_rewards=cat("step_rewards", 0.0),
            env_mask=cat("env_mask", 0),
            positions=cat("positions", 0),
        )


def pad_cat(parts: Sequence[torch.Tensor], value: float | bool, left: bool = False) -> torch.Tensor:
    """Concatenate along dim 0 tensors of different widths (dim 1), padding each on the right (or left)."""
    width = max(p.shape[1] for p in parts)
    padded = []
    for p in parts:
        pad = p.new_full((p.shape[0], width - p.shape[1], *p.shape[2:]), value)
        padded.append(torch.cat([pad, p] if left else [p, pad], 1))
    return torch.cat(padded)


def interleave_env_tokens(
    steps: dict[str, torch.Tensor | None],
    inserted: Sequence[dict[int, tuple[list[int], bool]]],
    last_prompt_position: torch.Tensor,
    pad_token_id: int,
) -> dict[str, torch.Tensor | None]:
    """Per-step tensors ``(B, S, ...)`` of a multi-turn rollout -> the stream layout ``(B, T, ...)``.

    ``inserted[i][s]`` holds the env's tokens that followed row ``i``'s agent step ``s`` and
    whether they restarted the context. Agent tokens keep their values; env tokens get the
    pad value of each field (log-prob 0, every token allowed, ...), ``env_mask`` 1 and their
    own positions; the result also carries ``env_mask`` and ``positions``.
    """
    running = steps["response_mask"].bool().cpu()  # (B, S)
    n, s = running.shape
    columns = torch.full((n, s), -1, dtype=torch.long)  # stream column of each agent step, -1: none
    env_tokens: list[list[tuple[int, int, int]]] = []  # per row: (column, token, position) of env tokens
    agent_positions = torch.zeros(n, s, dtype=torch.long)
    width = 1
    for i in range(n):
        column, position, row_env = 0, int(last_prompt_position[i]), []
        for step in torch.nonzero(running[i]).flatten().tolist():
            position += 1
            columns[i, step], agent_positions[i, step] = column, position
            column += 1
            env_ids, restart = inserted[i].get(step, ((), False))
            position = -1 if restart else position
            for token in env_ids:
                position += 1
                row_env.append((column, token, position))
                column += 1
        env_tokens.append(row_env)
        width = max(width, column)
    device = steps["response_mask"].device
    fill = {"response_ids": pad_token_id, "action_masks": True}
    out: dict[str, torch.Tensor | None] = {}
    rows, cols = torch.nonzero(columns >= 0, as_tuple=True)
    target = columns[rows, cols].to(device)
    rows, cols = rows.to(device), cols.to(device)
    for name, x in steps.items():
        if x is None:
            out[name] = None
            continue
        stream = x.new_full((n, width, *x.shape[2:]), fill.get(name, 0))
        stream[rows, target] = x[rows, cols]
        out[name] = stream
    env_mask = torch.zeros(n, width, dtype=torch.long)
    positions = torch.zeros(n, width, dtype=torch.long)
    positions[rows.cpu(), target.cpu()] = agent_positions[rows.cpu(), cols.cpu()]
    for i, row_env in enumerate(env_tokens):
        for column, token, position in row_env:
            out["response_ids"][i, column] = token
            env_mask[i, column], positions[i, column] = 1, position
    out["env_mask"], out["positions"] = env_mask.to(device), positions.to(device)
    return out
