"""Multi-turn rollout speed: the KV-cached rollout against per-turn ``model.generate``, same episodes.

Run: .venv/bin/python bench/multi_turn.py   (about 2.5 minutes on a loaded machine, 1 thread)

Issue 18 asks that "the KV-cached rollout keeps its speed: env tokens are prefilled in one
pass, not one step per token". A batch of 64 episodes of 4 turns: a 17-token prompt, then
4 responses of exactly 16 tokens (EOS does not end them), and after each of the first 3 the
env's fixed 14-token reply (15 with BOS as a "state"); a constant reward. Two sides,
measured in the same run, rounds interleaved, medians, for each ``next_observation``:
  * ours:     agents.rollout.rollout through the native vector env (one KV cache for the whole
              episode; each reply prefilled in the same forward pass as the rows' next tokens)
  * generate: per turn, transformers' model.generate on the context so far, re-prefilled every
              turn (prompt + earlier responses + replies; or the state alone), then the game's
              reply to the decoded response: the way per-turn generation loops do it
Both sample 64 x 4 x 16 agent tokens at temperature 1, top_k=0, top_p=1, and every turn of
both sees contexts of the same length (checked before timing). Ours with the env tokens fed
one step per token would need a second rollout loop in agents/, so it is not measured.
The model is the one bench/rollout.py uses: the default policy, else a 4x256 GPT-2 from config.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.rollout import RolloutBatch, make_rollout_env, rollout  # noqa: E402
from bench.rollout import TEXT, model_and_task, seconds  # noqa: E402
from text_env import Reply, Task  # noqa: E402

BATCH, NEW_TOKENS, TURNS, REPLY_TOKENS = 64, 16, 4, 14
CONTEXT = 112  # max_prompt_tokens: the whole conversation fits (17 + 3 x (16 + 14) = 107), never truncated
REPEATS = 5


class FixedReply:
    """The env's turn: the same text after every response; the episode ends at the task's ``max_turns``."""

    def __init__(self, text: str) -> None:
        self.text = text

    def reply(self, response: str) -> Reply:
        """The fixed reply, whatever the agent wrote."""
        return Reply(self.text)


def multi_turn_task(base: Task, next_observation: str) -> Task:
    """``base`` (bench/rollout.py's task) as a 4-turn game with fixed-length responses and replies."""
    tok = base.tokenizer
    with warnings.catch_warnings(action="ignore"):  # the base prompts' last 16 tokens, as bench/rollout.py's
        prompts = [tok.decode(base.encode_prompt(p), skip_special_tokens=True) for p in base.prompts[:BATCH]]
    reply = tok.decode(tok(" " + TEXT, add_special_tokens=False)["input_ids"][:REPLY_TOKENS])
    game = FixedReply(reply)
    return dataclasses.replace(base, prompts=prompts, max_new_tokens=NEW_TOKENS, max_prompt_tokens=CONTEXT,
                               stop_on_eos=False, long_prompt="error", turn_rule=lambda prompt, rng: game,
                               max_turns=TURNS, next_observation=next_observation)


def turn_contexts(batch: RolloutBatch) -> torch.Tensor:
    """(B, TURNS) the context length each turn of ``batch`` starts from: its first agent token's position."""
    agent, env = batch.response_mask.bool(), batch.env_mask.bool()
    after_env = torch.cat([torch.ones_like(env[:, :1]), env[:, :-1]], 1)  # column 0 starts the first turn
    starts = agent & after_env
    assert (starts.sum(1) == TURNS).all(), "every episode must run all its turns"
    return batch.positions[starts].view(len(starts), TURNS)


@torch.no_grad()
def generate_per_turn(model: torch.nn.Module, task: Task, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Play the episodes turn by turn with ``model.generate``; returns (B, TURNS) the context length of each turn."""
    game = task.turn_rule("", None)
    tok, contexts = task.tokenizer, []
    for turn in range(TURNS):
        contexts.append(mask.sum(1))
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=task.pad_token_id)
        assert out.shape == (BATCH, ids.shape[1] + NEW_TOKENS)
        replies = [game.reply(text).text for text in tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)]
        if turn == TURNS - 1:
            break
        reply = torch.tensor([task.encode_reply(text) for text in replies])  # (B, R)
        if task.next_observation == "conversation":
            mask = torch.cat([mask, mask.new_ones(BATCH, NEW_TOKENS + reply.shape[1])], 1)
            ids = torch.cat([out, reply], 1)
        else:  # a fresh rendering of the state replaces the context
            ids, mask = reply, torch.ones_like(reply)
    return torch.stack(contexts, 1)


def bench(model: torch.nn.Module, base: Task, next_observation: str) -> None:
    """Print the agent tokens per second of ours and of per-turn generate, for one ``next_observation``."""
    task = multi_turn_task(base, next_observation)
    env = make_rollout_env(task, BATCH)
    batch = rollout(model, env, seed=0)
    ids, mask = batch.prompt_ids, batch.prompt_mask  # (B, P): the same prompts for both sides
    tokens = BATCH * TURNS * NEW_TOKENS
    assert int(batch.response_mask.sum()) == tokens, "every episode must run 4 turns of 16 tokens"
    ours, theirs = turn_contexts(batch), generate_per_turn(model, task, ids, mask)
    assert torch.equal(ours, theirs), f"contexts differ:\n{ours[:2]}\n{theirs[:2]}"
    env_tokens = int(batch.env_mask.sum()) // BATCH
    print(f"\n{next_observation}: prompt {int(mask.sum(1).max())} tokens, {env_tokens} env tokens per episode, "
          f"turn contexts {ours[0].tolist()} on both sides")
    times: dict[str, list[float]] = {"ours": [], "generate": []}
    for _ in range(REPEATS):  # rounds interleave the sides, so a change in the machine's load hits both alike
        times["ours"].append(seconds(lambda: rollout(model, env, seed=0)))
        times["generate"].append(seconds(lambda: generate_per_turn(model, task, ids, mask)))
    rates = {label: tokens / statistics.median(ts) for label, ts in times.items()}
    for label, rate in rates.items():
        print(f"{label:>9}: {rate:7.0f} agent tokens/s (median of {REPEATS})")
    print(f"ours/generate-per-turn = {rates['ours'] / rates['generate']:.2f}")


def main() -> None:
    load = os.getloadavg()[0]
    threads = 1 if load > 1 else torch.get_num_threads()
    torch.set_num_threads(threads)
    print(f"load average {load:.2f}: torch threads = {threads} for both sides")
    model, base, name = model_and_task()
    warnings.filterwarnings("error", message=".*left-truncated.*")  # a truncated conversation would be a bug here
    print(f"model: {name}; batch {BATCH}, {TURNS} turns of {NEW_TOKENS} tokens, {REPLY_TOKENS}-token replies")
    torch.manual_seed(0)
    for mode in ("conversation", "state"):
        bench(model, base, mode)


if __name__ == "__main__":
    main()
