"""REINFORCE through the plain Gymnasium API: the smallest agent that plugs into RLHFText-v0.

Only ``gym.make``, ``reset`` and ``step`` touch the environment. The policy is a Hugging
Face causal LM (the embedded default policy, or ``--model PATH``) reading the observation
as it is: token ids right-aligned in a fixed window with an attention mask, so the next
token comes from the logits at index -1.

Run (2 CPU cores shared with other jobs; one torch thread avoids oversubscription):
    OMP_NUM_THREADS=1 .venv/bin/python examples/reinforce_gymnasium.py                 # 512 episodes, about 2.5 minutes
    OMP_NUM_THREADS=1 .venv/bin/python examples/reinforce_gymnasium.py --episodes 16   # smoke run, about 15 seconds

Each update samples ``--batch`` episodes, then raises each response's log-likelihood in
proportion to its return minus the batch mean (the baseline). The final observation
already holds prompt and response, so one forward pass with gradients scores the batch.
There is no KL term here. For one, wrap the env in ``text_env.wrappers.KLRewardWrapper``
(returns gain ``beta * log pi_ref`` of the response) and subtract ``beta`` times the
response's log-likelihood under the policy from each return (detached).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import gymnasium as gym
import numpy as np
import torch

import text_env  # noqa: F401  (registers RLHFText-v0)


def lm_logits(policy: torch.nn.Module, obs: dict[str, np.ndarray], n_actions: int) -> torch.Tensor:
    """Next-token logits at every position of a batch of observations, ``(B, W, A)``."""
    ids = torch.as_tensor(obs["input_ids"]).reshape(-1, obs["input_ids"].shape[-1])  # (B, W)
    mask = torch.as_tensor(obs["attention_mask"]).reshape(ids.shape)  # (B, W)
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # (B, W) left padding does not shift positions
    logits = policy(input_ids=ids, attention_mask=mask, position_ids=positions).logits  # (B, W, V)
    return logits[..., :n_actions]  # (B, W, A) the model may know more tokens than the env offers


def response_logprob(policy: torch.nn.Module, final_obs: dict[str, np.ndarray], lengths: np.ndarray,
                     n_actions: int) -> torch.Tensor:
    """Log-likelihood of each response (the last ``lengths[i]`` tokens of row i), ``(B,)``."""
    logp = torch.log_softmax(lm_logits(policy, final_obs, n_actions)[:, :-1], dim=-1)  # (B, W-1, A)
    targets = torch.as_tensor(final_obs["input_ids"])[:, 1:]  # (B, W-1) the token each position predicts
    token_logp = logp.gather(-1, targets[..., None])[..., 0]  # (B, W-1)
    column = torch.arange(1, targets.shape[1] + 1)  # (W-1,) window column of each target
    in_response = column[None] >= targets.shape[1] + 1 - torch.as_tensor(lengths)[:, None]  # (B, W-1)
    return (token_logp * in_response).sum(1)  # (B,)


def run(env: gym.Env, policy: torch.nn.Module, episodes: int, batch: int = 16, learning_rate: float = 2e-5,
        seed: int = 0) -> list[float]:
    """Train ``policy`` on ``env`` for ``episodes`` episodes; returns the mean return of each update."""
    n_actions = int(env.action_space.n)
    optimizer = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    policy.eval()  # dropout off: sampling and scoring must see the same distribution
    env.reset(seed=seed)
    history = []
    for update in range(episodes // batch):
        finals, lengths, returns = [], [], []
        for _ in range(batch):
            obs, _ = env.reset()
            done, total, steps = False, 0.0, 0
            while not done:
                with torch.no_grad():
                    probs = torch.softmax(lm_logits(policy, obs, n_actions)[0, -1], dim=-1)  # (A,)
                action = int(torch.multinomial(probs, 1, generator=generator))
                obs, reward, terminated, truncated, _ = env.step(action)
                done, total, steps = terminated or truncated, total + float(reward), steps + 1
            finals.append(obs)
            lengths.append(steps)
            returns.append(total)
        final_obs = {key: np.stack([o[key] for o in finals]) for key in finals[0]}  # each (B, W)
        advantage = torch.tensor(returns) - float(np.mean(returns))  # (B,) batch-mean baseline
        loss = -(advantage * response_logprob(policy, final_obs, np.array(lengths), n_actions)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(np.mean(returns)))
        print(f"update {update + 1:3d}  episodes {(update + 1) * batch:5d}  mean return {history[-1]:+.3f}")
    return history


def main(argv: Sequence[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=512, help="training episodes (default 512)")
    parser.add_argument("--batch", type=int, default=16, help="episodes per update (default 16)")
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="Adam learning rate (default 2e-5)")
    parser.add_argument("--model", default=None,
                        help="a Hugging Face causal LM folder; the env then uses its tokenizer (default: embedded)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.episodes < args.batch:
        parser.error(f"--episodes {args.episodes} is less than one --batch of {args.batch}.")

    from transformers import AutoModelForCausalLM

    from text_env.defaults import default_policy_path

    torch.manual_seed(args.seed)
    env = gym.make("RLHFText-v0") if args.model is None else gym.make("RLHFText-v0", model=args.model)
    policy = AutoModelForCausalLM.from_pretrained(args.model or default_policy_path(), dtype=torch.float32)
    history = run(env, policy, args.episodes, batch=args.batch, learning_rate=args.learning_rate, seed=args.seed)
    print(f"mean return: first update {history[0]:+.3f}, last update {history[-1]:+.3f}")
    return history


if __name__ == "__main__":
    main()
