"""Preference data as public datasets ship it: HH-RLHF, TRL conversational, UltraFeedback-binarized.

Each shape is loaded from a small JSONL built here and checked text for text; bad rows of
each shape name ``file:line``; a mixed file loads; a reward model trains on each shape; the
one chat rendering (reward_models/chat.py) is also what SFT and the env use.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

import pytest
from reward_fixtures import save_tiny_lm

from reward_models import Comparison, HFRewardModel, Ranking, evaluate_preferences, load_preferences
from reward_models.chat import render_messages, split_conversation
from reward_models.hf import load_tokenizer
from reward_models.train import RewardTrainConfig, cli, train_reward_model
from rlhf_common.io import DataError
from text_env.char_tokenizer import char_tokenizer

ALPHABET = string.ascii_letters + " :<|>\n,.?!"
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PLAIN = char_tokenizer(ALPHABET)


def templated() -> Any:
    tok = char_tokenizer(ALPHABET)
    tok.chat_template = TEMPLATE
    return tok


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def row(shape: str, prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
    """One preference (prompt, chosen, rejected) in a dataset's shape."""
    if shape == "standard":
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if shape == "hh":
        turn = f"\n\nHuman: {prompt}\n\nAssistant: "
        return {"chosen": turn + chosen, "rejected": turn + rejected}
    if shape == "explicit":
        return {"prompt": [user(prompt)], "chosen": [bot(chosen)], "rejected": [bot(rejected)]}
    if shape == "implicit":
        return {"chosen": [user(prompt), bot(chosen)], "rejected": [user(prompt), bot(rejected)]}
    assert shape == "ultrafeedback"
    return {"prompt": prompt, "chosen": [user(prompt), bot(chosen)], "rejected": [user(prompt), bot(rejected)],
            "score_chosen": 8.5, "score_rejected": 3}


def write_rows(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- the rendering -------------------------------------------------------------------------
def test_plain_rendering_is_the_hh_transcript_and_templates_are_used_when_present():
    conversation = [{"role": "system", "content": "Be kind."}, user("Hi"), bot("Hello.")]
    assert render_messages(PLAIN, conversation, False) == "\n\nSystem: Be kind.\n\nHuman: Hi\n\nAssistant: Hello."
    assert render_messages(PLAIN, conversation[:2], True) == "\n\nSystem: Be kind.\n\nHuman: Hi\n\nAssistant:"
    assert render_messages(templated(), [user("Hi")], True) == "<|user|>Hi\n<|assistant|>"
    assert split_conversation(PLAIN, [user("Hi")], [bot("Yo")], "x:1") == ("\n\nHuman: Hi\n\nAssistant:", " Yo")
    assert split_conversation(templated(), [user("Hi")], [bot("Yo")], "x:1") == ("<|user|>Hi\n<|assistant|>", "Yo\n")


def test_a_template_that_does_not_extend_the_prompt_is_refused():
    tok = char_tokenizer(ALPHABET)
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}>{% endif %}"
    )
    with pytest.raises(DataError, match=r"x:1: .*does not start with the rendered prompt"):
        split_conversation(tok, [user("Hi")], [bot("Yo")], "x:1")


# ---- each shape, text for text ----------------------------------------------------------------
@pytest.mark.parametrize("shape", ["hh", "explicit", "implicit", "ultrafeedback"])
def test_each_shape_loads_as_the_plain_transcript(tmp_path, shape):
    path = write_rows(tmp_path / f"{shape}.jsonl", [row(shape, "Hi there", "Sure, gladly.", "Sure, no.")])
    expected = Comparison("\n\nHuman: Hi there\n\nAssistant:", " Sure, gladly.", " Sure, no.")
    assert load_preferences(path, PLAIN) == [expected]


@pytest.mark.parametrize("shape", ["explicit", "implicit", "ultrafeedback"])
def test_conversations_use_the_chat_template(tmp_path, shape):
    path = write_rows(tmp_path / f"{shape}.jsonl", [row(shape, "Hi", "Yes.", "No.")])
    assert load_preferences(path, templated()) == [Comparison("<|user|>Hi\n<|assistant|>", "Yes.\n", "No.\n")]


def test_hh_prompt_ends_at_the_last_shared_assistant_turn(tmp_path):
    hh = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    path = write_rows(tmp_path / "hh.jsonl", [
        {"chosen": hh + " d", "rejected": hh + " e"},  # multi-turn
        {"chosen": "\n\nHuman: q\n\nAssistant: x\n\nHuman: y\n\nAssistant: z",  # differ before the last turn
         "rejected": "\n\nHuman: q\n\nAssistant: w"},
        {"chosen": "\n\nHuman: q\n\nAssistant:", "rejected": "\n\nHuman: q\n\nAssistant: w"},  # an empty response
    ])
    assert load_preferences(path) == [  # plain strings need no tokenizer
        Comparison(hh, " d", " e"),
        Comparison("\n\nHuman: q\n\nAssistant:", " x\n\nHuman: y\n\nAssistant: z", " w"),
        Comparison("\n\nHuman: q\n\nAssistant:", "", " w"),
    ]


def test_implicit_prompt_is_every_shared_leading_message(tmp_path):
    shared = [{"role": "system", "content": "Be brief."}, user("a"), bot("b"), user("c")]
    path = write_rows(tmp_path / "c.jsonl", [{"chosen": [*shared, bot("d")], "rejected": [*shared, bot("e")]}])
    prompt = "\n\nSystem: Be brief.\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:"
    assert load_preferences(path, PLAIN) == [Comparison(prompt, " d", " e")]


def test_ultrafeedback_ties_are_skipped_and_counted(tmp_path, capsys):
    tie = {**row("ultrafeedback", "Hi", "a", "b"), "score_chosen": 5, "score_rejected": 5.0}
    path = write_rows(tmp_path / "uf.jsonl", [tie, row("ultrafeedback", "Hi", "a", "b"), tie])
    assert len(load_preferences(path, PLAIN)) == 1
    assert f"skipped 2 rows of {path} whose score_chosen equals score_rejected" in capsys.readouterr().err
    with pytest.raises(DataError, match=rf"{tmp_path / 'ties.jsonl'}: no preference rows; .* but for 1 ties"):
        load_preferences(write_rows(tmp_path / "ties.jsonl", [tie]), PLAIN)


def test_mixed_shapes_in_one_file(tmp_path):
    shapes = ["standard", "hh", "explicit", "implicit", "ultrafeedback"]
    rows = [row(s, "Hi", "Yes.", "No.") for s in shapes] + [{"prompt": "P", "responses": ["a", "b", "c"]}]
    items = load_preferences(write_rows(tmp_path / "mixed.jsonl", rows), PLAIN)
    assert items[0] == Comparison("Hi", "Yes.", "No.")
    assert items[1:5] == [Comparison("\n\nHuman: Hi\n\nAssistant:", " Yes.", " No.")] * 4
    assert items[5] == Ranking("P", ("a", "b", "c"))


# ---- bad rows of each shape ---------------------------------------------------------------------
HH_GOOD = row("hh", "q", "a", "b")
UF_GOOD = row("ultrafeedback", "q", "a", "b")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"chosen": "no turns here", "rejected": "none"}, r"share no '\\n\\nAssistant:' turn"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: a"}, "the same text"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": [bot("b")]},
         "must both be strings or both be message lists"),
        ({"chosen": 3, "rejected": "b"}, "'chosen' must be a string or a list of"),
        ({"chosen": HH_GOOD["chosen"]}, "missing key 'rejected'"),
        ({"prompt": [user("q")], "chosen": [bot("a")], "rejected": [bot("b")]}, "pass tokenizer="),
    ],
)
def test_bad_rows_without_a_tokenizer(tmp_path, bad, message):
    path = write_rows(tmp_path / "bad.jsonl", [HH_GOOD, "", bad])
    with pytest.raises(DataError, match=rf"^{path}:3: .*{message}"):
        load_preferences(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"chosen": [user("q"), bot("a")], "rejected": [user("r"), bot("b")]}, "share no leading message"),
        ({"chosen": [user("q"), bot("a")], "rejected": [user("q")]}, r"'rejected': the response must start with an "
                                                                      "assistant message, but after the prompt comes "
                                                                      "nothing"),
        ({"chosen": [user("q"), bot("a")], "rejected": [user("q"), bot("a")]}, "the same text"),
        ({"chosen": [user("q"), {"role": "assistant"}], "rejected": [user("q"), bot("b")]},
         r"chosen\[1\]: missing key 'content'"),
        ({"chosen": [user("q"), bot("a")], "rejected": [user("q"), "b"]}, r"rejected\[1\] must be an object"),
        ({"prompt": [user("q")], "chosen": [user("q"), bot("a")], "rejected": [bot("b")]},
         "must start with an assistant message, but after the prompt comes 'user'"),
        ({"prompt": 7, "chosen": [bot("a")], "rejected": [bot("b")]}, "'prompt' must be a string or a list"),
        ({"prompt": [], "chosen": [bot("a")], "rejected": [bot("b")]}, "'prompt' must be a string or a list"),
        ({**UF_GOOD, "prompt": "other"}, "'prompt' is not the content of the last message"),
        ({**UF_GOOD, "score_chosen": 1}, "score_chosen=1 is below score_rejected=3"),
        ({**UF_GOOD, "score_chosen": "high"}, "'score_chosen' must be a finite number"),
        ({k: v for k, v in UF_GOOD.items() if k != "score_rejected"}, "'score_rejected' must be a finite number"),
    ],
)
def test_bad_conversational_rows(tmp_path, bad, message):
    path = write_rows(tmp_path / "bad.jsonl", [UF_GOOD, row("implicit", "q", "a", "b"), bad])
    with pytest.raises(DataError, match=rf"^{path}:3: .*{message}"):
        load_preferences(path, PLAIN)


# ---- reward-model training on each shape ----------------------------------------------------------
def preference_rows(shape: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` rows of ``shape`` where the response with more letters 'a' is chosen."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        a, b = ("".join(rng.choice("ab") for _ in range(rng.randint(3, 7))) for _ in range(2))
        if a.count("a") != b.count("a"):
            chosen, rejected = (a, b) if a.count("a") > b.count("a") else (b, a)
            rows.append(row(shape, rng.choice(["hi", "go", "ok"]), chosen, rejected))
    return rows


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {"template": save_tiny_lm(root / "template", alphabet=ALPHABET, chat_template=TEMPLATE),
            "plain": save_tiny_lm(root / "plain", alphabet=ALPHABET)}


@pytest.mark.parametrize(
    "shape, base", [("hh", "plain"), ("explicit", "template"), ("explicit", "plain"), ("implicit", "template"),
                    ("ultrafeedback", "template")],
)
def test_reward_model_trains_on_each_shape(tmp_path, bases, shape, base):
    train = write_rows(tmp_path / "train.jsonl", preference_rows(shape, 96, seed=1))
    val = write_rows(tmp_path / "val.jsonl", preference_rows(shape, 40, seed=2))
    result = train_reward_model(RewardTrainConfig(
        model=str(bases[base]), data=str(train), val_data=str(val), out=str(tmp_path / "rm"), learning_rate=3e-3,
        batch_size=16, num_train_epochs=3, eval_steps=0, progress=False,
    ))
    assert result.finished and result.steps == 18
    rm = HFRewardModel(tmp_path / "rm")
    items = load_preferences(val, load_tokenizer(tmp_path / "rm"))  # the saved tokenizer renders the same text
    assert items[0].prompt.startswith("<|user|>" if base == "template" and shape != "hh" else "\n\nHuman: ")
    accuracy = evaluate_preferences(rm, items).accuracy
    assert accuracy == pytest.approx(result.val.accuracy)  # scoring sees the text training saw
    assert accuracy > 0.7


def test_train_rm_cli_on_an_hh_file(tmp_path, bases, capsys):
    data = write_rows(tmp_path / "hh.jsonl", preference_rows("hh", 40, seed=3))
    code = cli(["--model", str(bases["plain"]), "--data", str(data), "--out", str(tmp_path / "rm"),
                "--val-fraction", "0.25", "--batch-size", "10", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "validation accuracy" in capsys.readouterr().out
    bad = write_rows(tmp_path / "bad.jsonl", [{"chosen": "x", "rejected": "y"}])
    assert cli(["--model", str(bases["plain"]), "--data", str(bad), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert f"{bad}:1: no 'prompt' key" in capsys.readouterr().err
