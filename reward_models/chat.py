r"""Chat messages as text: the one rendering shared by preference data, SFT and the environment.

A conversation is a list of ``{"role": str, "content": str}`` messages (TRL's conversational
format). It becomes text in one of two ways:

- with the tokenizer's chat template when it has one (``apply_chat_template(tokenize=False)``);
- otherwise as the plain transcript of Anthropic's HH-RLHF data: every message as
  ``"\n\n{Name}: {content}"``, Name ``Human`` for role ``user``, ``Assistant`` for
  ``assistant`` and the capitalised role otherwise (``System``); the generation prompt is
  ``"\n\nAssistant:"``. So ``[user "Hi", assistant "Hello."]`` renders as
  ``"\n\nHuman: Hi\n\nAssistant: Hello."``, the same text an HH-RLHF row holds.

A (prompt, response) pair is cut out of a conversation as TRL does
(``trl/data_utils.py`` ``apply_chat_template``): the prompt rendered with the generation
prompt, the whole conversation rendered without it, the response the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhf_common.io import DataError, require_str

Messages = list[dict[str, Any]]
"""A conversation: ``{"role": str, "content": str}`` objects, oldest first."""

PLAIN_NAMES = {"user": "Human", "assistant": "Assistant"}
"""Speaker names of the plain rendering (HH-RLHF's); other roles are capitalised."""
PLAIN_GENERATION_PROMPT = "\n\nAssistant:"
"""What the plain rendering appends for the assistant to answer; also HH-RLHF's turn marker."""


def is_messages(value: Any) -> bool:
    """Whether ``value`` is meant as a conversation: a list whose first item is an object."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def check_messages(value: Any, where: str, name: str = "messages") -> Messages:
    """``value`` if it is a non-empty list of ``{"role": str, "content": str}``; else a DataError naming ``where``."""
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: {name!r} must be a non-empty list of {{'role','content'}} objects, "
            f"got {type(value).__name__ if value else 'an empty list'}."
        )
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(
                f"{where}: {name}[{i}] must be an object with 'role' and 'content', got {type(m).__name__}."
            )
        require_str(m, "role", f"{where}: {name}[{i}]")
        require_str(m, "content", f"{where}: {name}[{i}]")
    return value


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` renders conversations with its own chat template (else the plain transcript)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_messages(tokenizer: Any, messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> str:
    r"""The text of ``messages``: the tokenizer's chat template, else the plain HH-RLHF transcript.

    ``add_generation_prompt`` ends the text with the opening of an assistant turn, for a
    model to answer (``"\n\nAssistant:"`` in the plain rendering).
    """
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    text = "".join(f"\n\n{PLAIN_NAMES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages)
    return text + PLAIN_GENERATION_PROMPT if add_generation_prompt else text


def split_conversation(
    tokenizer: Any, prompt: Sequence[dict[str, Any]], completion: Sequence[dict[str, Any]], where: str
) -> tuple[str, str]:
    """(prompt text, response text) of a conversation ``prompt + completion``, cut as TRL cuts it.

    The prompt is rendered with the generation prompt, ``prompt + completion`` without it,
    and the response is what the second adds to the first. ``completion`` must open with
    the assistant's message; a template whose whole conversation does not start with the
    rendered prompt cannot be cut and raises :class:`DataError` naming ``where``.
    """
    if not completion or completion[0]["role"] != "assistant":
        first = repr(completion[0]["role"]) if completion else "nothing"
        raise DataError(
            f"{where}: the response must start with an assistant message, but after the prompt comes {first}; "
            "give the prompt as the shared leading turns and the responses as the assistant's turns."
        )
    refused: tuple[type[Exception], ...] = ()
    if has_chat_template(tokenizer):  # templates are jinja2, which raises TemplateError on a refused conversation
        from jinja2 import TemplateError

        refused = (TemplateError,)
    try:
        prompt_text = render_messages(tokenizer, prompt, add_generation_prompt=True)
        full = render_messages(tokenizer, [*prompt, *completion], add_generation_prompt=False)
    except refused as e:
        raise DataError(f"{where}: the tokenizer's chat template refused the conversation: {e}") from None
    if not full.startswith(prompt_text):
        raise DataError(
            f"{where}: the tokenizer's chat template renders prompt + response as text that does not start with "
            "the rendered prompt, so the response cannot be cut out (TRL refuses such templates too); use a "
            "tokenizer whose template extends the prompt, or give prompt and responses as strings."
        )
    return prompt_text, full[len(prompt_text) :]
