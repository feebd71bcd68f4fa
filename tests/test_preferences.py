"""Preference data: loading with file:line errors, rankings to pairs, writing, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reward_models import (
    Comparison,
    FunctionRewardModel,
    PromptResponses,
    Ranking,
    evaluate_preferences,
    load_collection,
    load_preferences,
    pairwise_metrics,
    save_preferences,
    to_pairs,
)
from rlhf_common.io import DataError


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_loads_both_shapes_and_ignores_extra_keys(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "id": 3}),
        "",
        json.dumps({"prompt": "Q", "responses": ["best", "mid", "worst"], "labeler": "ann"}),
    ])
    items = load_preferences(path)
    assert items == [Comparison("Hi", "Hello!", "Go away."), Ranking("Q", ("best", "mid", "worst"))]
    assert items[0].responses == ("Hello!", "Go away.")


GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize(
    "row, message",
    [
        ('{"prompt": "p", "chosen": "a"', "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"chosen": "a", "rejected": "b"}), r"share no '\n\nAssistant:' turn"),  # not HH-RLHF either
        (json.dumps({"responses": ["a", "b"]}), "missing key 'prompt'"),
        (json.dumps({"prompt": "p", "chosen": "a"}), "missing key 'rejected'"),
        (json.dumps({"prompt": "p", "rejected": "a"}), "missing key 'chosen'"),
        (json.dumps({"prompt": 1, "chosen": "a", "rejected": "b"}), "'prompt' must be a string"),
        (json.dumps({"prompt": "p", "chosen": ["a"], "rejected": "b"}), "'chosen' must be a string"),
        (json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"}), "the same text"),
        (json.dumps({"prompt": "p", "responses": "a b"}), "'responses' must be a list"),
        (json.dumps({"prompt": "p", "responses": ["a", 2]}), "responses[1] must be a string"),
        (json.dumps({"prompt": "p", "responses": ["only"]}), "at least 2 responses, got 1"),
        (json.dumps({"prompt": "p", "responses": ["a", "b", "a"]}), "responses[0] and responses[2] are the same"),
        (json.dumps({"prompt": "p", "responses": ["a", "b"], "chosen": "a"}), "use one shape per row"),
        (json.dumps({"prompt": "p", "answer": "a"}), "needs 'chosen' and 'rejected'"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path, row, message):
    path = write_lines(tmp_path / "prefs.jsonl", [json.dumps(GOOD), json.dumps(GOOD), row])
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert f"{path}:3:" in str(e.value)
    assert message in str(e.value)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="empty"):
        load_preferences(write_lines(tmp_path / "e.jsonl", ["", "  "]))
    with pytest.raises(DataError, match="no such file"):
        load_preferences(tmp_path / "nope.jsonl")


def test_ranking_gives_all_pairs_in_order():
    r = Ranking("p", ("a", "b", "c", "d"))
    pairs = r.pairs()
    assert len(pairs) == 6
    assert [(c.chosen, c.rejected) for c in pairs] == [
        ("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d"),
    ]
    both = to_pairs([r, Comparison("q", "x", "y")])
    assert len(both) == 7 and both[-1] == Comparison("q", "x", "y")


def test_ranking_rejects_duplicates_and_singletons():
    with pytest.raises(ValueError, match="same text"):
        Ranking("p", ("a", "a"))
    with pytest.raises(ValueError, match="at least 2"):
        Ranking("p", ("a",))


def test_save_round_trip_and_atomic_replace(tmp_path):
    items = [Comparison("p", "yes", "no"), Ranking("q", ("1", "2", "3")), Ranking("ü", ("é\n", ""))]
    path = tmp_path / "out.jsonl"
    save_preferences(path, items[:1])
    save_preferences(path, items)
    assert load_preferences(path) == items
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temporary left behind


def test_load_collection(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [
        json.dumps({"prompt": "p", "responses": ["a", "a", "b"]}),
        json.dumps({"prompt": "q", "response": "only"}),
    ])
    assert load_collection(path) == [PromptResponses("p", ("a", "a", "b")), PromptResponses("q", ("only",))]
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps({"prompt": "p", "responses": []})])
    with pytest.raises(DataError, match=rf"{bad}:1: 'responses' is an empty list"):
        load_collection(bad)


def test_pairwise_metrics_by_hand():
    items = [Ranking("p", ("a", "b", "c")), Comparison("q", "x", "y")]
    # ranking scores 3, 1, 2: pairs (a,b)+2 right, (a,c)+1 right, (b,c)-1 wrong; pair x,y tie.
    m = pairwise_metrics([3.0, 1.0, 2.0, 5.0, 5.0], items)
    assert m.pairs == 4
    assert m.accuracy == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert m.margin == pytest.approx((2 + 1 - 1 + 0) / 4)
    with pytest.raises(ValueError, match="one score per response"):
        pairwise_metrics([1.0, 2.0], items)


def test_evaluate_with_any_reward_model():
    rm = FunctionRewardModel(lambda p, r: float(len(r)))
    items = [Ranking("", ("ccc", "bb", "a")), Comparison("", "a", "bb")]
    m = evaluate_preferences(rm, items)
    assert (m.accuracy, m.pairs) == (0.75, 4)
