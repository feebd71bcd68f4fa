"""The gold scorer and the simulated labelers: formula, choice model, noise, bias, agreement."""

from __future__ import annotations

import doctest
import json
import math
from itertools import combinations

import numpy as np
import pytest

import reward_models.gold
import reward_models.simulated
from reward_models import (
    FunctionRewardModel,
    PromptResponses,
    Ranking,
    SimulatedLabeler,
    UpbeatGoldScorer,
    agreement,
    label_jsonl,
    load_preferences,
)
from reward_models.simulated import cli
from rlhf_common.io import DataError


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def assert_rate(hits: int, n: int, p: float) -> None:
    """``hits / n`` within 4.5 standard errors of ``p``."""
    assert abs(hits / n - p) < 4.5 * math.sqrt(p * (1 - p) / n), (hits / n, p)


@pytest.fixture(scope="module")
def gold() -> UpbeatGoldScorer:
    return UpbeatGoldScorer()


def test_docstring_examples():
    for module in (reward_models.gold, reward_models.simulated):
        assert doctest.testmod(module).failed == 0


def test_gold_penalises_repetition_below_a_normal_upbeat_sentence(gold):
    normal = "I had a great day with my friends."
    hacks = [
        "great great great great great great great great",
        "great great great great great great great great.",
        "Great! Great! Great! Great! Great! Great!",
        "Love! " + "!" * 30,
        normal[:-1] + " and " + normal,  # one sentence said twice
    ]
    s = gold.score([""] * 6, [normal, *hacks])
    assert s[0] > 0.5
    assert (s[1:] < s[0]).all(), dict(zip(hacks, s[1:], strict=True))
    # VADER alone would rank the spam first: the penalty is what makes the hack visible.
    assert gold.components(hacks[0])["sentiment"] > gold.components(normal)["sentiment"]


def test_gold_terms(gold):
    assert gold.score([""], [""])[0] == gold.floor == -4.0
    assert gold.score([""], ["   \n"])[0] == gold.floor
    finished, unfinished = gold.components("I love this sunny day."), gold.components("I love this sunny day")
    assert (finished["unfinished"], unfinished["unfinished"]) == (0.0, 1.0)
    assert finished["score"] - unfinished["score"] == pytest.approx(gold.unfinished_weight)
    short = gold.components("Great.")
    assert short["short"] == pytest.approx(2 / 3)
    assert short["score"] == pytest.approx(short["sentiment"] - gold.short_weight * 2 / 3)
    upbeat, gloomy = gold.score(["", ""], ["We won, what a wonderful surprise!", "We lost, it is awful."])
    assert upbeat > gloomy
    for text in ["Hello there.", "no no no no no", "Fine"]:
        c = gold.components(text)
        total = c["sentiment"] - 2.0 * c["repetition"] - 0.5 * c["unfinished"] - 0.5 * c["short"]
        assert c["score"] == pytest.approx(total)


def pair_labeler(d: float, **kwargs) -> SimulatedLabeler:
    """Gold 'hi' = d, 'lo' = 0."""
    return SimulatedLabeler(gold=FunctionRewardModel(lambda p, r: d if r == "hi" else 0.0), **kwargs)


N = 4000


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_gives_bradley_terry_choice_rates(temperature):
    labeler = pair_labeler(1.0, temperature=temperature, seed=3)
    out = labeler.label([PromptResponses("", ("lo", "hi"))] * N)
    hits = sum(r.responses[0] == "hi" for r in out)
    assert_rate(hits, N, sigmoid(1.0 / temperature))


def test_temperature_zero_follows_gold_exactly():
    out = pair_labeler(0.01, temperature=0.0).label([PromptResponses("", ("lo", "hi"))] * 200)
    assert all(r.responses == ("hi", "lo") for r in out)


def test_flip_probability_reverses_whole_answers():
    labeler = SimulatedLabeler(gold=FunctionRewardModel(lambda p, r: float(len(r))), temperature=0.0,
                               flip_prob=0.25, seed=4)
    out = labeler.label([PromptResponses("", ("a", "ccc", "bb"))] * N)
    orders = [r.responses for r in out]
    assert set(orders) == {("ccc", "bb", "a"), ("a", "bb", "ccc")}
    assert_rate(sum(o[0] == "ccc" for o in orders), N, 0.75)


def test_length_bias_is_added_to_the_utility():
    labeler = SimulatedLabeler(gold=FunctionRewardModel(lambda p, r: 0.0), temperature=1.0,
                               bias_per_char=0.05, seed=5)
    short, long = "x" * 5, "x" * 25
    out = labeler.label([PromptResponses("", (short, long))] * N)
    assert_rate(sum(r.responses[0] == long for r in out), N, sigmoid(20 * 0.05 / 1.0))
    unbiased = SimulatedLabeler(gold=FunctionRewardModel(lambda p, r: 0.0), temperature=1.0, seed=5)
    assert_rate(sum(r.responses[0] == long for r in unbiased.label([PromptResponses("", (short, long))] * N)), N, 0.5)


def test_plackett_luce_rankings_have_bradley_terry_pair_marginals():
    utility = {"a": 0.0, "b": 0.5, "c": 1.0, "d": 1.5}
    labeler = SimulatedLabeler(gold=FunctionRewardModel(lambda p, r: utility[r]), temperature=1.0, seed=6)
    out = labeler.label([PromptResponses("", ("a", "b", "c", "d"))] * N)
    for x, y in combinations("abcd", 2):
        hits = sum(r.responses.index(y) < r.responses.index(x) for r in out)
        assert_rate(hits, N, sigmoid(utility[y] - utility[x]))


def test_seeded_and_batched_like_single_calls():
    items = [PromptResponses("", ("Nice day.", "Bad day.", "Okay day.", "Lovely!"))] * 30
    a, b, c = (SimulatedLabeler(seed=s).label(items) for s in (7, 7, 8))
    assert a == b and a != c
    one = SimulatedLabeler(seed=0)
    assert one.compare("", "What a lovely day!", "I hate this.").prompt == ""
    with pytest.raises(ValueError, match="at least 2 distinct"):
        one.rank("", ["same", "same"])


def test_labeler_arguments_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        SimulatedLabeler(temperature=-1)
    with pytest.raises(ValueError, match="flip_prob"):
        SimulatedLabeler(flip_prob=1.5)


SENTENCES = [
    "What a wonderful morning, I love it!", "The meeting is at noon.", "I hate this awful weather.",
    "We had a nice lunch together.", "It was fine, nothing special.", "This is the best news ever!",
    "I am a bit tired today.", "The food was okay.", "She smiled and thanked us warmly.", "Traffic was terrible.",
]


def test_two_independent_labelers_agree_often_but_not_always():
    rng = np.random.default_rng(0)
    items = [PromptResponses("", tuple(rng.choice(SENTENCES, size=4, replace=False))) for _ in range(300)]
    first = SimulatedLabeler(temperature=0.2, seed=1).label(items)
    second = SimulatedLabeler(temperature=0.2, seed=2).label(items)
    rate = agreement(first, second)
    assert 0.6 < rate < 0.97, rate
    assert agreement(first, first) == 1.0
    assert agreement(first, [Ranking(r.prompt, r.responses[::-1]) for r in first]) == 0.0
    with pytest.raises(ValueError, match="same items"):
        agreement(first[:2], [first[1], first[0]])


def test_label_jsonl_drops_repeats_and_writes_rankings_or_pairs(tmp_path):
    src = tmp_path / "samples.jsonl"
    rows = [
        {"prompt": "p1", "responses": ["Good.", "Bad.", "Good.", "Great day!"]},
        {"prompt": "p2", "responses": ["Same.", "Same."]},
        {"prompt": "p3", "response": "Alone."},
        {"prompt": "p4", "responses": ["Yes!", "No."]},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert label_jsonl(SimulatedLabeler(), src, tmp_path / "r.jsonl") == 2
    ranked = load_preferences(tmp_path / "r.jsonl")
    assert [(r.prompt, sorted(r.responses)) for r in ranked] == [
        ("p1", ["Bad.", "Good.", "Great day!"]), ("p4", ["No.", "Yes!"]),
    ]
    assert label_jsonl(SimulatedLabeler(), src, tmp_path / "pairs.jsonl", pairs=True) == 3 + 1
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(DataError, match="nothing to rank"):
        label_jsonl(SimulatedLabeler(), nothing, tmp_path / "x.jsonl")


def test_simulate_labels_cli(tmp_path, capsys):
    src = tmp_path / "samples.jsonl"
    src.write_text(json.dumps({"prompt": "", "responses": ["Lovely!", "Awful.", "Meh."]}) + "\n")
    out = tmp_path / "prefs.jsonl"
    assert cli(["--data", str(src), "--out", str(out), "--temperature", "0", "--pairs"]) == 0
    assert [(c.chosen, c.rejected) for c in load_preferences(out)][0] == ("Lovely!", "Meh.")
    src.write_text('{"prompt": 3}\n')
    assert cli(["--data", str(src), "--out", str(out)]) == 2
    assert f"{src}:1:" in capsys.readouterr().err
