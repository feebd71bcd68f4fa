"""A Task: everything that makes a text-generation environment one problem and not another.

One environment class serves every task; a user brings prompts, a tokenizer and a
reward model and never subclasses the env.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from reward_models import RewardModel, checked_scores
from reward_models.chat import Messages, check_messages, has_chat_template, is_messages, render_messages
from text_env.turns import NextObservation, TurnRule

Prompt = str | Messages
"""A prompt: text, or a conversation (``[{"role", "content"}, ...]``) rendered with the task's tokenizer."""
PromptSource = Sequence[Prompt] | Callable[[np.random.Generator], Prompt]
"""A list of prompts drawn uniformly, or a function drawing one prompt from the env's RNG."""

ActionMaskRule = Callable[[str, Sequence[int]], np.ndarray]
"""``rule(prompt, response_ids) -> bool array (vocab_size,)``: which tokens may come next."""

END_EOS = "eos"
END_STOP_STRING = "stop_string"
END_MAX_TOKENS = "max_new_tokens"


def missing_eos_penalties(end_reasons: Sequence[str | None], penalty: float) -> np.ndarray:
    """``penalty`` for each response the length cap ended, 0 for the others (docs/ppo_details.md #7).

    The one rule behind ``Task.missing_eos_penalty`` and the agents' extra ``missing_eos_penalty``.
    """
    return penalty * np.array([reason == END_MAX_TOKENS for reason in end_reasons], dtype=np.float64)


@dataclass
class Task:
    """A prompt source, a tokenizer, a reward model, a stop rule and an optional action mask."""

    prompts: PromptSource
    """Prompts to start episodes from: a non-empty sequence (drawn uniformly) or ``f(rng) -> prompt``. A prompt
    is a string or a conversation (a list of ``{"role", "content"}`` messages), which :meth:`render_prompt` turns
    into text with the tokenizer's chat template (else the plain transcript of :mod:`reward_models.chat`)."""
    tokenizer: Any
    """A Hugging Face tokenizer (``PreTrainedTokenizerBase``); its length is the action space size."""
    reward_model: RewardModel
    """Scores finished responses, called once per batch of finished episodes."""
    max_new_tokens: int = 32
    """Length cap of a response; reaching it ends the episode (``terminated``)."""
    max_prompt_tokens: int = 64
    """Prompt part of the observation window; the window is ``max_prompt_tokens + max_new_tokens``."""
    stop_on_eos: bool = True
    """End the episode when the agent emits the tokenizer's EOS token."""
    stop_strings: tuple[str, ...] = ()
    """End the episode when the response text contains one of these; the text is cut before it."""
    long_prompt: Literal["truncate", "error"] = "truncate"
    """A prompt longer than ``max_prompt_tokens``: keep its last tokens with a warning, or raise."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the final reward when the response hit the length cap without ending."""
    action_mask: ActionMaskRule | None = None
    """Optional rule restricting the next token (e.g. legal chess moves)."""
    enforce_action_mask: bool = True
    """Raise ValueError on a token the mask rule disallows. False takes it like any other (the mask is
    then advice, as in Gymnasium's Taxi, and ``check_env``'s unmasked random actions are valid): for
    tasks whose reward model prices every response, e.g. chess, where such a move is illegal and penalised."""
    gold_scorer: RewardModel | None = None
    """Optional true objective, reported as ``info["gold_score"]`` but never used as reward."""
    info_fn: Callable[[str, str], dict[str, Any]] | None = None
    """Optional ``f(prompt, response_text) -> dict`` merged into the final ``info`` (e.g. chess move legality)."""
    turn_rule: TurnRule | None = None
    """Optional environment-turn rule (text_env/turns.py): ``rule(prompt, rng) -> Game``. When a response ends,
    the game replies and the episode goes on until it says the end or ``max_turns``; every turn is scored.
    None: one response per episode."""
    max_turns: int = 8
    """Turn limit of an episode with a turn rule: it ends after this many responses."""
    next_observation: NextObservation = "conversation"
    """With a turn rule, what the agent sees after a reply: "conversation" (the reply appended to everything
    so far, left-truncated to ``max_prompt_tokens`` with a warning the first time) or "state" (the reply alone,
    encoded as a new prompt: a fresh rendering of the state)."""
    default_policy: str | None = None
    """Folder of the policy agents load for this task when given none (a registered env's shipped policy);
    None: the embedded default policy of RLHFText-v0."""
    name: str = "text"
    """Shown in errors and reports."""
    _prompt_cache: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)
    _templated: set[str] = field(default_factory=set, init=False, repr=False)
    _stop_tail: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not callable(self.prompts):
            prompts = list(self.prompts)
            if not prompts:
                raise ValueError(f"Task {self.name!r}: the prompt source is empty; give at least one prompt.")
            self.prompts = [self.render_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        if self.max_new_tokens < 1 or self.max_prompt_tokens < 1:
            raise ValueError(
                f"Task {self.name!r}: max_new_tokens={self.max_new_tokens} and "
                f"max_prompt_tokens={self.max_prompt_tokens} must both be >= 1."
            )
        if self.long_prompt not in ("truncate", "error"):
            raise ValueError(f"Task {self.name!r}: long_prompt={self.long_prompt!r}; use 'truncate' or 'error'.")
        if self.stop_on_eos and self.tokenizer.eos_token_id is None:
            raise ValueError(
                f"Task {self.name!r}: stop_on_eos=True but the tokenizer has no eos_token; "
                "set tokenizer.eos_token or pass stop_on_eos=False."
            )
        if not isinstance(self.reward_model, RewardModel):
            raise TypeError(
                f"Task {self.name!r}: reward_model {self.reward_model!r} has no score(prompts, responses) "
                "method; wrap a function with reward_models.FunctionRewardModel."
            )
        if self.max_turns < 1:
            raise ValueError(f"Task {self.name!r}: max_turns={self.max_turns} must be >= 1 (1: one response).")
        if self.next_observation not in ("conversation", "state"):
            raise ValueError(
                f"Task {self.name!r}: next_observation={self.next_observation!r}; use 'conversation' or 'state'."
            )
        if self.turn_rule is not None and not callable(self.turn_rule):
            raise TypeError(f"Task {self.name!r}: turn_rule must be callable as rule(prompt, rng) -> Game.")
        self.stop_strings = tuple(self.stop_strings)
        self._stop_tail = 4 * max(map(len, self.stop_strings), default=0) + 4

    # ---- sizes and special tokens -------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of actions: every token of the tokenizer, special tokens included."""
        return len(self.tokenizer)

    @property
    def window(self) -> int:
        """Observation length: prompt part plus the longest response."""
        return self.max_prompt_tokens + self.max_new_tokens

    @property
    def pad_token_id(self) -> int:
        """Filler id for empty observation slots; the attention mask marks them, so any id works."""
        for tid in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if tid is not None:
                return int(tid)
        return 0

    # ---- prompts --------------------------------------------------------------------
    def sample_prompt(self, rng: np.random.Generator) -> str:
        """Draw one prompt (as text) with the env's RNG, so a seed fixes the prompt sequence."""
        if callable(self.prompts):
            return self.render_prompt(self.prompts(rng), "the prompt function's result")
        return self.prompts[int(rng.integers(len(self.prompts)))]

    def render_prompt(self, prompt: Prompt, what: str = "prompt") -> str:
        """``prompt`` as text: a string as it is, a conversation rendered for the assistant to answer.

        The rendering is :func:`reward_models.chat.render_messages` with ``add_generation_prompt=True``,
        the one SFT's chat rows and conversational preference data use.
        """
        if isinstance(prompt, str):
            return prompt
        if not is_messages(prompt):
            raise TypeError(
                f"Task {self.name!r}: {what} is {type(prompt).__name__}; a prompt is a str or a list of "
                "{'role','content'} messages."
            )
        text = render_messages(self.tokenizer, check_messages(prompt, f"Task {self.name!r}", what), True)
        if has_chat_template(self.tokenizer):
            self._templated.add(text)
        return text

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``, fitted to ``max_prompt_tokens`` as ``long_prompt`` says.

        A prompt rendered by the chat template carries the special tokens the template writes,
        so none are added (as for SFT's chat rows, agents/demonstrations.py).
        """
        if not isinstance(prompt, str):
            raise TypeError(
                f"Task {self.name!r}: a prompt must be str, got {type(prompt).__name__}; render a conversation "
                "with task.render_prompt(messages) first."
            )
        ids = self._prompt_cache.get(prompt)
        if ids is None:
            ids = list(self.tokenizer(prompt, add_special_tokens=prompt not in self._templated)["input_ids"])
            if not ids:
                raise ValueError(
                    f"Task {self.name!r}: prompt {prompt!r} is empty after tokenisation and the tokenizer "
                    "adds no BOS token, so a model has nothing to condition on; give a non-empty prompt."
                )
            if len(self._prompt_cache) < 100_000:
                self._prompt_cache[prompt] = ids
        if len(ids) > self.max_prompt_tokens:
            if self.long_prompt == "error":
                raise ValueError(
                    f"Task {self.name!r}: prompt of {len(ids)} tokens exceeds max_prompt_tokens="
                    f"{self.max_prompt_tokens}; raise max_prompt_tokens or pass long_prompt='truncate'."
                )
            warnings.warn(
                f"Task {self.name!r}: prompt of {len(ids)} tokens left-truncated to "
                f"max_prompt_tokens={self.max_prompt_tokens}: {prompt[:40]!r}...",
                stacklevel=3,
            )
            ids = ids[-self.max_prompt_tokens :]
        return ids

    def encode_reply(self, text: str) -> list[int]:
        """Token ids of a turn rule's reply: appended as they are ("conversation"), or as a new prompt ("state")."""
        if self.next_observation == "state":
            ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        else:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) > self.max_prompt_tokens:
            raise ValueError(
                f"Task {self.name!r}: the env's reply of {len(ids)} tokens does not fit max_prompt_tokens="
                f"{self.max_prompt_tokens}: {text[:40]!r}...; raise max_prompt_tokens or shorten the turn rule's "
                "replies."
            )
        if not ids:
            raise ValueError(f"Task {self.name!r}: the env's reply {text!r} is empty after tokenisation; give text.")
        return ids

    # ---- stop rule ------------------------------------------------------------------
    def end_reason(self, response_ids: Sequence[int]) -> str | None:
        """Why the response just ended (``"eos"``, ``"stop_string"``, ``"max_new_tokens"``), or None."""
        if self.stop_on_eos and response_ids and response_ids[-1] == self.tokenizer.eos_token_id:
            return END_EOS
        if self.stop_strings:
            # A stop string that just appeared ends in the newest token, so decoding a
            # tail long enough to hold it (4 byte-level tokens per character at worst)
            # keeps this check O(1) per step instead of O(length).
            tail = response_ids[-self._stop_tail :]
            text = self.tokenizer.decode(tail, skip_special_tokens=True)
            if any(s in text for s in self.stop_strings):
                return END_STOP_STRING
        if len(response_ids) >= self.max_new_tokens:
            return END_MAX_TOKENS
        return None

    def response_text(self, response_ids: Sequence[int]) -> str:
        """The response as text: special tokens dropped, cut before the first stop string."""
        text = self.tokenizer.decode(
            response_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        for s in self.stop_strings:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        return text

    # ---- scoring --------------------------------------------------------------------
    def finish(
        self, prompts: Sequence[str], responses: Sequence[Sequence[int]], reasons: Sequence[str]
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Score a batch of finished episodes in one reward-model call.

        Returns the final-step rewards and one ``info`` dict per episode.
        """
        texts = [self.response_text(r) for r in responses]
        scores = checked_scores(self.reward_model, prompts, texts)
        gold = checked_scores(self.gold_scorer, prompts, texts) if self.gold_scorer else None
        rewards = scores - missing_eos_penalties(reasons, self.missing_eos_penalty).astype(scores.dtype)
        infos = []
        for i, reason in enumerate(reasons):
            info = {
                "prompt": prompts[i],
                "response": texts[i],
                "score": float(scores[i]),
                "end_reason": reason,
                "response_length": len(responses[i]),
            }
            if gold is not None:
                info["gold_score"] = float(gold[i])
            if self.info_fn is not None:
                info.update(self.info_fn(prompts[i], texts[i]))
            infos.append(info)
        return rewards, infos

    def close(self) -> None:
        """Release what the reward model, gold scorer and turn rule hold (e.g. a chess engine process)."""
        for model in (self.reward_model, self.gold_scorer, self.turn_rule):
            if isinstance(model, type):  # a Game class as turn rule: nothing of its own to release
                continue
            close = getattr(model, "close", None)
            if callable(close):
                close()

    def mask(self, prompt: str, response_ids: Sequence[int]) -> np.ndarray:
        """The action mask for the next token as int8 (Gymnasium's ``Discrete.sample(mask)`` dtype)."""
        assert self.action_mask is not None
        m = np.asarray(self.action_mask(prompt, response_ids))
        if m.shape != (self.vocab_size,):
            raise ValueError(
                f"Task {self.name!r}: the action-mask rule returned shape {m.shape}; it must be "
                f"({self.vocab_size},), one entry per token."
            )
        if not m.any():
            raise ValueError(
                f"Task {self.name!r}: the action-mask rule allows no token after {response_ids!r} "
                f"for prompt {prompt!r}; it must leave at least one (e.g. EOS)."
            )
        return m.astype(np.int8)

    def check_action(self, action: Any) -> int:
        """The action as an int token id, or a clear error when it is not one."""
        try:
            a = int(action)
        except (TypeError, ValueError):
            raise TypeError(f"action {action!r} is not an integer token id") from None
        if a != action or not 0 <= a < self.vocab_size:
            raise ValueError(
                f"action {action!r} is outside the vocabulary: valid token ids are "
                f"0..{self.vocab_size - 1} (Discrete({self.vocab_size}))."
            )
        return a
