"""Conversation prompts in the env: rendered once, as SFT and preference data render them."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest

from agents.demonstrations import encode_demonstration
from reward_models import FunctionRewardModel
from rlhf_common.io import DataError
from text_env import Task, TextGenerationEnv
from text_env.char_tokenizer import char_tokenizer
from text_env.prompts import load_prompts

ALPHABET = string.ascii_letters + " :<|>\n,.?!"
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CONVERSATION = [{"role": "user", "content": "Hi"}]


def tokenizer(template: bool):
    tok = char_tokenizer(ALPHABET)
    tok.chat_template = TEMPLATE if template else None
    return tok


def task(prompts, template: bool = True) -> Task:
    return Task(prompts=prompts, tokenizer=tokenizer(template), reward_model=FunctionRewardModel(lambda p, r: 0.0),
                max_new_tokens=4, max_prompt_tokens=32)


@pytest.mark.parametrize(
    "template, text", [(True, "<|user|>Hi\n<|assistant|>"), (False, "\n\nHuman: Hi\n\nAssistant:")]
)
def test_conversation_prompts_are_rendered_with_the_tasks_tokenizer(tmp_path, template, text):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": CONVERSATION}) + "\n" + json.dumps({"prompt": "plain"}) + "\n")
    assert load_prompts(path) == [CONVERSATION, "plain"]
    t = task(load_prompts(path), template)
    assert t.prompts == [text, "plain"]
    env = TextGenerationEnv(task([CONVERSATION], template))
    obs, info = env.reset(seed=0)
    assert info["prompt"] == text
    ids = obs["input_ids"][obs["attention_mask"] == 1].tolist()
    # A template writes its own special tokens, so none are added (as SFT does); plain text gets BOS.
    expected = env.task.tokenizer(text, add_special_tokens=not template)["input_ids"]
    assert ids == expected
    messages = [*CONVERSATION, {"role": "assistant", "content": "yo"}]
    demo = encode_demonstration(env.task.tokenizer, {"messages": messages}, "x:1", max_length=64)
    assert demo.input_ids[: demo.prompt_len] == ids  # SFT trained on exactly what the env shows


def test_a_prompt_function_may_return_a_conversation():
    t = task(lambda rng: CONVERSATION)
    assert t.sample_prompt(np.random.default_rng(0)) == "<|user|>Hi\n<|assistant|>"
    with pytest.raises(TypeError, match="the prompt function's result is int"):
        task(lambda rng: 3).sample_prompt(np.random.default_rng(0))


def test_bad_conversation_prompts(tmp_path):
    with pytest.raises(DataError, match=r"prompts\[1\]\[0\]: missing key 'content'"):
        task(["ok", [{"role": "user"}]])
    with pytest.raises(TypeError, match=r"prompts\[0\] is int"):
        task([3])
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": [{"role": "user", "content": 1}]}\n')
    with pytest.raises(DataError, match=rf"^{path}:2: prompt\[0\]: 'content' must be a string"):
        load_prompts(path)
    path.write_text('{"prompt": {"role": "user"}}\n')
    with pytest.raises(DataError, match=rf"^{path}:1: 'prompt' must be a string or a list"):
        load_prompts(path)


def test_reset_options_take_a_conversation():
    from gymnasium.vector import AutoresetMode

    from text_env import TextGenerationVectorEnv

    env = TextGenerationEnv(task(["plain"]))
    _, info = env.reset(seed=0, options={"prompt": CONVERSATION})
    assert info["prompt"] == "<|user|>Hi\n<|assistant|>"
    vec = TextGenerationVectorEnv(task(["plain"]), 2, autoreset_mode=AutoresetMode.DISABLED)
    _, infos = vec.reset(seed=0, options={"prompt": CONVERSATION})
    assert list(infos["prompt"]) == ["<|user|>Hi\n<|assistant|>"] * 2
