"""Build the default ``GuessNumber-v0`` policy: a tiny GPT-2 trained (SFT) on a sloppy bisector's games.

RL needs a starting policy that plays the game yet leaves room to improve, so the
demonstrator bisects sloppily: it guesses uniformly in the middle ``spread`` of the interval
still consistent with the replies (default the middle half), writing every guess with as many
digits as ``high`` has (``007``: aligned digits are easier for a tiny model to compare). The
policy learns it imperfectly; its solve rate and mean turns are measured against the
demonstrator's and perfect bisection's.

1. Demonstrations: the demonstrator plays games through the env itself; every turn gives one
   ``{"prompt": the observation window as text, "response": guess + newline}`` row, so SFT
   trains on exactly the token sequences the env shows (BOS is the tokenizer's; the window
   holds only plain characters, so the text round-trips to the same ids: tests/test_guess_number.py).
2. Model: a GPT-2-shaped causal LM over the game's character tokenizer, initialised in code (seeded).
3. SFT: :func:`agents.sft.train_sft` trains it (no EOS appended: a guess ends with its newline).
4. The output folder holds the model, its tokenizer, ``policy.json`` (settings, SFT result, and
   the solve rate and mean turns over held-out games of the policy sampled at temperature 1, of
   the demonstrator and of bisection) and ``MODEL_CARD.md``.

Run it as ``rlhf-gym guess-number-policy`` (default ``--out text_env/assets/guess_number/policy``).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.lm import load_causal_lm
from agents.rollout import sample_next_token
from agents.sft import SFTConfig, train_sft
from rlhf_common.config_cli import config_command
from rlhf_common.io import portable_config, save_dir_atomic, write_json_atomic, write_jsonl_atomic
from rlhf_common.training import quiet_transformers, set_torch_threads
from rlhf_gym.build.model_card import asset_bytes, run_summary, versions
from rlhf_gym.build.tiny_lm import init_tiny_lm
from text_env.env import TextGenerationEnv
from text_env.guess_number import (
    END_OF_GUESS,
    GUESS_NUMBER_POLICY,
    HIGHER,
    LOWER,
    POLICY_META_FILE,
    guess_number_tokenizer,
    make_guess_number_env,
)

EVAL_SEED = 1_000_000_000
"""Env seeds of the held-out games start here (training games use ``seed * 1e6 + k``), whatever the build seed."""
Pick = Callable[[int, int, np.random.Generator], int]
"""``pick(lo, hi, rng) -> guess``: a scripted strategy, given the interval still consistent with the replies."""


@dataclass
class GuessNumberPolicyConfig:
    """How ``rlhf-gym guess-number-policy`` (:func:`build_guess_number_policy`) builds the default policy."""

    out: str = str(GUESS_NUMBER_POLICY)
    """Output folder: the policy (Hugging Face format), policy.json and MODEL_CARD.md."""
    work: str = "runs/guess_number_policy"
    """Scratch folder: demonstrations, the initial model, the SFT run."""
    seed: int = 0
    """Seeds the training games, the demonstrator, the model initialisation, SFT and the policy's samples."""
    low: int = 1
    """The game's range (``GuessNumber-v0``'s ``low``) the policy is built for."""
    high: int = 100
    """The game's range (``high``)."""
    max_turns: int = 10
    """Guesses per game (``max_turns``)."""
    spread: float = 0.5
    """The demonstrator guesses uniformly in this middle fraction of the consistent interval (0: bisection)."""
    games: int = 12000
    """Demonstrator games for training (one SFT row each)."""
    val_games: int = 200
    """Demonstrator games for the validation loss."""
    eval_games: int = 1000
    """Held-out games on which the policy, the demonstrator and bisection are measured."""
    n_layer: int = 3
    """Transformer layers."""
    n_embd: int = 128
    """Model width."""
    n_head: int = 4
    """Attention heads."""
    dropout: float = 0.0
    """GPT-2's dropout rates (embeddings, attention, residual) in SFT; 0: fresh games leave little to overfit."""
    num_train_epochs: float = 2.0
    """SFT passes over the demonstrations."""
    learning_rate: float = 2e-3
    """Peak SFT learning rate; a model trained from scratch needs more than fine-tuning's 5e-5."""
    batch_size: int = 32
    """Games per SFT step (32 learns more per CPU second than 64 here)."""
    num_threads: int | None = None
    """CPU threads for torch; None: all cores on an idle machine, 1 on a busy one (rlhf_common.training)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if min(self.games, self.val_games, self.eval_games) < 1 or self.games + self.val_games >= 1_000_000:
            raise ValueError(
                f"GuessNumberPolicyConfig: games={self.games}, val_games={self.val_games} and "
                f"eval_games={self.eval_games} must be >= 1, games + val_games < 1,000,000."
            )
        if not 0 <= self.seed < 1000:
            raise ValueError(f"GuessNumberPolicyConfig: seed={self.seed} must be in [0, 1000): the held-out games' "
                             "seeds start at 1e9.")
        if not 0.0 <= self.spread <= 1.0:
            raise ValueError(f"GuessNumberPolicyConfig: spread={self.spread} must be in [0, 1].")
        self.env_options()  # the env's own checks (range, turns) as usage errors

    def env_options(self) -> dict[str, int]:
        """The ``GuessNumber-v0`` options the policy plays."""
        make_guess_number_env(self.low, self.high, self.max_turns)  # raises on a bad range or turn limit
        return {"low": self.low, "high": self.high, "max_turns": self.max_turns}


# ---- strategies -------------------------------------------------------------------------------
def sloppy_pick(spread: float) -> Pick:
    """The demonstrator: a number drawn uniformly from the middle ``spread`` of the consistent interval.

    ``spread=1`` guesses anywhere consistent (about 6.8 guesses on 1 to 100, 13% of games unsolved in
    10 turns), 0.5 (the default) 6.2 guesses; bisection needs 5.8.
    """

    def pick(lo: int, hi: int, rng: np.random.Generator) -> int:
        margin = int((hi - lo) * (1.0 - spread) / 2)
        return int(rng.integers(lo + margin, hi - margin + 1))

    return pick


def bisection_pick(lo: int, hi: int, rng: np.random.Generator) -> int:
    """Perfect play: the middle of the consistent interval (at most ceil(log2(hi - lo + 2)) guesses)."""
    return (lo + hi) // 2


# ---- playing games through the env ------------------------------------------------------------
Act = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]
"""``act(obs (N, W), running (N,) bool) -> tokens (N,)``: one token for every game still running."""


def new_envs(n: int, options: dict[str, Any]) -> list[TextGenerationEnv]:
    """``n`` ``GuessNumber-v0`` envs with ``options`` (``low``, ``high``, ``max_turns``, ...)."""
    return [make_guess_number_env(**options) for _ in range(n)]


def play(
    envs: Sequence[TextGenerationEnv], seeds: Sequence[int], act: Act,
    turn_ended: Callable[[int, dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Play one game in each env, reset with its seed, a token per step for all of them.

    Single envs stepped side by side: batched observations, each env's own info. ``turn_ended(i, info)``
    is called after each guess of game ``i`` that the env answered, and after its last one.
    Returns the final infos and the final observations ``(N, W)``: each game's whole conversation.
    """
    first = [env.reset(seed=int(s))[0] for env, s in zip(envs, seeds, strict=True)]
    obs = {k: np.stack([o[k] for o in first]) for k in first[0]}  # (N, W) each
    running = np.ones(len(envs), dtype=bool)
    finals: list[dict[str, Any]] = [{} for _ in envs]
    while running.any():
        tokens = act(obs, running)
        for i in np.flatnonzero(running):
            o, _, terminated, _, info = envs[i].step(int(tokens[i]))
            obs["input_ids"][i], obs["attention_mask"][i] = o["input_ids"], o["attention_mask"]
            if "feedback" in info and turn_ended is not None:
                turn_ended(i, info)
            if terminated:
                running[i], finals[i] = False, info
    return finals, obs


class ScriptedPlayer:
    """A strategy played a character at a time, tracking each game's consistent interval."""

    def __init__(self, pick: Pick, n: int, low: int, high: int, rng: np.random.Generator) -> None:
        self.pick, self.rng, self.width = pick, rng, len(str(high))
        self.tokenizer = guess_number_tokenizer()
        self.lo = np.full(n, low)
        self.hi = np.full(n, high)
        self.pending: list[list[int]] = [[] for _ in range(n)]  # the rest of each game's guess, as token ids

    def act(self, obs: dict[str, np.ndarray], running: np.ndarray) -> np.ndarray:
        """The next character of each running game's guess, choosing a new guess when one is written."""
        tokens = np.zeros(len(running), dtype=np.int64)
        for i in np.flatnonzero(running):
            if not self.pending[i]:
                guess = self.pick(int(self.lo[i]), int(self.hi[i]), self.rng)
                text = f"{guess:0{self.width}d}{END_OF_GUESS}"  # zero-padded: aligned digits
                self.pending[i] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            tokens[i] = self.pending[i].pop(0)
        return tokens

    def turn_ended(self, i: int, info: dict[str, Any]) -> None:
        """Narrow game ``i``'s interval by the env's answer."""
        if info["feedback"] == HIGHER:
            self.lo[i] = max(self.lo[i], info["guess"] + 1)
        elif info["feedback"] == LOWER:
            self.hi[i] = min(self.hi[i], info["guess"] - 1)


def play_scripted(
    pick: Pick, envs: Sequence[TextGenerationEnv], seeds: Sequence[int], rng_seed: int, act: Act | None = None
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """``pick`` played in one game per env and seed: :func:`play`'s final infos and observations.

    ``act`` wraps the player's ``act`` (tests record the windows it answers with it).
    """
    rule = envs[0].task.turn_rule
    player = ScriptedPlayer(pick, len(envs), rule.low, rule.high, np.random.default_rng(rng_seed))
    return play(envs, seeds, act(player.act) if act else player.act, player.turn_ended)


def demonstrations(
    seeds: Sequence[int], options: dict[str, Any], rng_seed: int, pick: Pick
) -> list[dict[str, str]]:
    """``pick``'s games as SFT rows: ``{"prompt", "response"}`` = the env's final window as text.

    The prompt is the env's prompt (SFT adds the BOS the env starts with); the response is every
    guess and reply after it, read from the window, so each turn's SFT context is exactly the env's
    window at that turn. The loss covers the replies too: agents.sft has no per-token mask for
    tokens inside a response, and one row per game costs a seventh of one row per turn.
    """
    finals, obs = play_scripted(pick, new_envs(len(seeds), options), seeds, rng_seed)
    tokenizer = guess_number_tokenizer()
    rows = []
    for info, ids, mask in zip(finals, obs["input_ids"], obs["attention_mask"], strict=True):
        prompt_len = len(tokenizer(info["prompt"])["input_ids"])
        response = tokenizer.decode(ids[mask == 1][prompt_len:], clean_up_tokenization_spaces=False)
        rows.append({"prompt": info["prompt"], "response": response})
    return rows


def policy_actor(model: Any, vocab_size: int, seed: int) -> Act:
    """Sample the model's next token at temperature 1 for the running games (the agents' stateless predict path)."""
    generator = torch.Generator().manual_seed(seed)

    def act(obs: dict[str, np.ndarray], running: np.ndarray) -> np.ndarray:
        tokens = np.zeros(len(running), dtype=np.int64)
        rows = np.flatnonzero(running)
        window = {k: v[rows] for k, v in obs.items()}
        tokens[rows] = sample_next_token(model, window, vocab_size=vocab_size, generator=generator)
        return tokens

    return act


def play_policy(model: Any, seeds: Sequence[int], options: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """The causal LM ``model`` sampled at temperature 1 in one game per seed: the final infos."""
    with torch.no_grad():
        return play(new_envs(len(seeds), options), seeds, policy_actor(model, len(guess_number_tokenizer()), seed))[0]


def game_summary(finals: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Solve rate, mean turns (an unsolved game counts ``max_turns``), mean turns of solved games, mean return."""
    solved = np.array([bool(f["solved"]) for f in finals])
    turns = np.array([f["turns"] for f in finals], dtype=float)
    return {
        "games": len(finals),
        "solve_rate": round(float(solved.mean()), 4),
        "mean_turns": round(float(turns.mean()), 3),
        "mean_turns_solved": round(float(turns[solved].mean()), 3) if solved.any() else None,
        "mean_return": round(float(np.mean([f["return"] for f in finals])), 4),
    }


# ---- the build --------------------------------------------------------------------------------
def build_guess_number_policy(config: GuessNumberPolicyConfig) -> dict[str, Any]:
    """Demonstrations, initial model, SFT (:func:`agents.sft.train_sft`), measured games; writes ``out``."""
    start = time.monotonic()
    set_torch_threads(config.num_threads)
    options, work = config.env_options(), Path(config.work)
    base = config.seed * 1_000_000
    train_seeds = range(base, base + config.games)
    val_seeds = range(base + config.games, base + config.games + config.val_games)
    eval_seeds = range(EVAL_SEED, EVAL_SEED + config.eval_games)
    data, val_data = work / "demos.jsonl", work / "val_demos.jsonl"
    demonstrator = sloppy_pick(config.spread)
    write_jsonl_atomic(data, demonstrations(train_seeds, options, config.seed, demonstrator))
    write_jsonl_atomic(val_data, demonstrations(val_seeds, options, config.seed + 1, demonstrator))
    shutil.rmtree(work / "init", ignore_errors=True)
    window = make_guess_number_env(**options).task.window  # 171 for the defaults
    init_tiny_lm(work / "init", guess_number_tokenizer(), n_positions=-(-window // 64) * 64, n_embd=config.n_embd,
                 n_layer=config.n_layer, n_head=config.n_head, seed=config.seed, dropout=config.dropout)
    result = train_sft(SFTConfig(
        model=str(work / "init"), data=str(data), val_data=str(val_data), out=str(work / "sft"),
        seed=config.seed, append_eos=False, num_train_epochs=config.num_train_epochs,
        learning_rate=config.learning_rate, batch_size=config.batch_size, progress=config.progress,
    ))
    envs = new_envs(len(eval_seeds), options)
    model = load_causal_lm(result.model_dir, device="cpu")
    games = {
        "policy_sampled": game_summary(play_policy(model, eval_seeds, options, config.seed)),
        "demonstrator": game_summary(play_scripted(demonstrator, envs, eval_seeds, config.seed + 2)[0]),
        "bisection": game_summary(play_scripted(bisection_pick, envs, eval_seeds, 0)[0]),
    }
    meta = {
        "games": games,
        "held_out_env_seeds": [eval_seeds.start, eval_seeds.stop],
        "sft": {**run_summary(result), "demonstrations": sum(1 for _ in data.open())},
        "model": {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
                  "vocab_size": len(guess_number_tokenizer())},
        "config": portable_config(config),
        "versions": versions(),
    }

    def write(tmp: Path) -> None:
        shutil.copytree(result.model_dir, tmp, dirs_exist_ok=True)
        meta["build_seconds"] = round(time.monotonic() - start, 1)
        meta["asset_bytes"] = asset_bytes(tmp)
        write_json_atomic(tmp / POLICY_META_FILE, meta)
        (tmp / "MODEL_CARD.md").write_text(model_card_markdown(meta))

    save_dir_atomic(config.out, write)
    return meta


def model_card_markdown(meta: dict[str, Any]) -> str:
    """The policy's model card: how it was built and how it plays, as Markdown."""
    c, g, s, m = meta["config"], meta["games"], meta["sft"], meta["model"]
    rows = "\n".join(
        f"| {name} | {r['solve_rate']:.1%} | {r['mean_turns']:.2f} | {r['mean_turns_solved']} "
        f"| {r['mean_return']:+.3f} |"
        for name, r in g.items()
    )
    return f"""# GuessNumber-v0 default policy

A {m['architecture']} of {c['n_layer']} layers x {c['n_embd']} wide ({c['n_head']} heads,
{m['parameters']:,} parameters, vocabulary {m['vocab_size']} characters), trained from scratch by SFT
(`agents.sft`) for the game on {c['low']} to {c['high']} with {c['max_turns']} turns.

- Data: {c['games']:,} games of a demonstrator that guesses uniformly in the middle {c['spread']:.0%} of
  the interval still consistent with the replies, zero-padded (`050`), played through the env.
  One row per game: the prompt, then every guess and reply exactly as the env's window holds them
  (the loss covers the replies too).
- SFT: {s['steps']} steps, best at step {s['best_step']}, validation loss {s['val_loss']} nats per
  response token.
- Build: `rlhf-gym guess-number-policy`, seed {c['seed']}, {meta['build_seconds'] / 60:.1f} minutes
  (torch {meta['versions']['torch']}, transformers {meta['versions']['transformers']}).

Measured on {g['policy_sampled']['games']:,} held-out games (env seeds from {meta['held_out_env_seeds'][0]:,};
the policy sampled at temperature 1; an unsolved game counts {c['max_turns']} turns):

| player | solve rate | mean turns | mean turns (solved) | mean return |
|---|---|---|---|---|
{rows}

Deliberately imperfect: RL has room between it and bisection.
"""


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym guess-number-policy [flags]``: rebuild the default GuessNumber-v0 policy."""

    def run(config: GuessNumberPolicyConfig) -> None:
        with quiet_transformers():  # the step bar is enough; no bars per saved file
            meta = build_guess_number_policy(config)
        print(f"wrote {config.out}: {meta['games']}")

    return config_command(argv, "rlhf-gym guess-number-policy", __doc__.splitlines()[0], GuessNumberPolicyConfig, run)


if __name__ == "__main__":
    sys.exit(cli())
