"""REINFORCE through the plain Gymnasium API: the smallest agent that plugs into a text env.

Only ``gym.make``, ``reset`` and ``step`` touch the environment (``--env``, any registered
text env id; default RLHFText-v0). The policy is a Hugging Face causal LM (the env's default
policy, or ``--model PATH``) reading the observation as it is: token ids right-aligned in a
fixed window with an attention mask, so the next token comes from the logits at index -1.

Run (2 CPU cores shared with other jobs; one torch thread avoids oversubscription):
    OMP_NUM_THREADS=1 .venv/bin/python examples/reinforce_gymnasium.py                 # 512 episodes, about 2.5 minutes
    OMP_NUM_THREADS=1 .venv/bin/python examples/reinforce_gymnasium.py --episodes 16   # smoke run, about 15 seconds
    OMP_NUM_THREADS=1 .venv/bin/python examples/reinforce_gymnasium.py --env Arithmetic-v0

Each update samples ``--batch`` episodes, then raises each response's log-likelihood in
proportion to its return minus the batch mean (the baseline). The final observation
already holds prompt and response, so one forward pass with gradients scores the batch.
In a multi-turn env (GuessNumber-v0) each turn is such a row, the window as it stood when
the turn's response ended (before the env's reply), weighted by its reward-to-go.
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

import text_env  # noqa: F401  (registers the env ids)


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


def with_token(obs: dict[str, np.ndarray], action: int) -> dict[str, np.ndarray]:
    """``obs`` with ``action`` written last (the window shifted one slot left), as the env writes it."""
    return {"input_ids": np.append(obs["input_ids"][1:], action),
            "attention_mask": np.append(obs["attention_mask"][1:], 1)}


def play_episode(env: gym.Env, policy: torch.nn.Module, n_actions: int,
                 generator: torch.Generator) -> list[tuple[dict[str, np.ndarray], int, float]]:
    """One episode sampled from ``policy``; per turn: the window ending in the turn's last token, its length, and
    its reward-to-go (this turn's rewards and every later turn's). One response per episode: one turn."""
    obs, _ = env.reset()
    turns, done, steps, turn_reward = [], False, 0, 0.0
    while not done:
        with torch.no_grad():
            probs = torch.softmax(lm_logits(policy, obs, n_actions)[0, -1], dim=-1)  # (A,)
        action = int(torch.multinomial(probs, 1, generator=generator))
        next_obs, reward, terminated, truncated, info = env.step(action)
        done, steps, turn_reward = terminated or truncated, steps + 1, turn_reward + float(reward)
        if done or "env_tokens" in info:  # a turn ended (a multi-turn env's next obs holds its reply: not ours)
            turns.append((with_token(obs, action), steps, turn_reward))
            steps, turn_reward = 0, 0.0
        obs = next_obs
    to_go = np.cumsum([reward for *_, reward in turns][::-1])[::-1]
    return [(window, length, float(g)) for (window, length, _), g in zip(turns, to_go, strict=True)]


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
        finals, lengths, returns, episode_returns = [], [], [], []
        for _ in range(batch):
            turns = play_episode(env, policy, n_actions, generator)
            episode_returns.append(turns[0][2])  # the first turn's reward-to-go: the episode's return
            for window, length, to_go in turns:
                finals.append(window)
                lengths.append(length)
                returns.append(to_go)
        final_obs = {key: np.stack([o[key] for o in finals]) for key in finals[0]}  # each (B, W), a row per turn
        advantage = torch.tensor(returns) - float(np.mean(returns))  # (B,) batch-mean baseline
        loss = -(advantage * response_logprob(policy, final_obs, np.array(lengths), n_actions)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(np.mean(episode_returns)))
        print(f"update {update + 1:3d}  episodes {(update + 1) * batch:5d}  mean return {history[-1]:+.3f}")
    return history


def main(argv: Sequence[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="RLHFText-v0", help="registered text env id (default RLHFText-v0)")
    parser.add_argument("--episodes", type=int, default=512, help="training episodes (default 512)")
    parser.add_argument("--batch", type=int, default=16, help="episodes per update (default 16)")
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="Adam learning rate (default 2e-5)")
    parser.add_argument("--model", default=None, help="a Hugging Face causal LM folder to start from (default: the "
                        "env's default policy); on RLHFText-v0 the env then uses its tokenizer, other envs keep theirs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.episodes < args.batch:
        parser.error(f"--episodes {args.episodes} is less than one --batch of {args.batch}.")

    from agents.models import load_model

    torch.manual_seed(args.seed)
    env = gym.make(args.env, **({"model": args.model} if args.model and args.env == "RLHFText-v0" else {}))
    policy = load_model(args.model, torch.device("cpu"), env.unwrapped.task)  # None: the task's default policy
    history = run(env, policy, args.episodes, batch=args.batch, learning_rate=args.learning_rate, seed=args.seed)
    print(f"mean return: first update {history[0]:+.3f}, last update {history[-1]:+.3f}")
    return history


if __name__ == "__main__":
    main()
