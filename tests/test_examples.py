"""Smoke runs of the story examples with tiny budgets: quickstart, compare_agents, human_feedback, ppo_kl_chess."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


@pytest.fixture
def default_assets():
    from text_env.defaults import default_policy_path, default_task

    try:
        default_policy_path()
        default_task()
    except FileNotFoundError as e:
        pytest.skip(f"no embedded default assets: {e}")


@pytest.mark.parametrize("flags", [[], ["--random"]])
def test_quickstart_plays_whole_episodes(flags, capsys, default_assets):
    import quickstart

    finals = quickstart.main(["--episodes", "2", *flags])
    out = capsys.readouterr().out
    assert len(finals) == 2 and out.count("return ") == 2
    for info in finals:
        assert info["end_reason"] in ("eos", "stop_string", "max_new_tokens")
        assert math.isfinite(info["return"]) and math.isfinite(info["gold_score"])
        assert info["return"] == info["score"]  # one response per episode: the return is its score
        assert repr(info["response"]) in out


def test_compare_agents_gives_every_agent_the_same_budget(capsys, default_assets):
    import compare_agents

    results = compare_agents.main(["--timesteps", "64", "--batch-size", "8"])
    assert list(results) == ["random tokens", "SFT policy", "best-of-4", "RLOO", "PPOKL"]
    for name, r in results.items():
        assert math.isfinite(r["score"]) and math.isfinite(r["gold_score"]), name
    assert results["best-of-4"]["kl"] == pytest.approx(math.log(4) - 0.75)
    assert math.isfinite(results["PPOKL"]["kl"]) and math.isfinite(results["RLOO"]["kl"])
    assert "| PPOKL |" in capsys.readouterr().out


def test_human_feedback_with_the_simulated_labeler(tmp_path, default_assets):
    import human_feedback

    result = human_feedback.main(["--out", str(tmp_path), "--simulate", "--n-prompts", "10", "--timesteps", "64",
                                  "--port", "0"])
    assert 0.0 <= result["rm_accuracy"] <= 1.0
    assert math.isfinite(result["score"]) and math.isfinite(result["kl"])
    for name in ("collection.jsonl", "preferences.jsonl", "reward_model/config.json", "ppo_kl/progress.csv",
                 "ppo_kl/model/state.json"):
        assert (tmp_path / name).exists(), name


def test_human_feedback_waits_for_every_label_then_exports_the_rankings(tmp_path):
    import json
    import threading
    import time

    import human_feedback

    from reward_models import load_preferences
    from reward_models.labeling.store import LabelStore

    collection = tmp_path / "collection.jsonl"
    rows = [{"prompt": "a", "responses": ["x", "y", "z"]}, {"prompt": "b", "responses": ["u", "v", "w"]}]
    collection.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db, out = tmp_path / "labels.sqlite", tmp_path / "preferences.jsonl"
    done: list[int] = []
    server = threading.Thread(target=lambda: done.append(human_feedback.label_in_browser(collection, db, out, 0)))
    server.start()
    deadline = time.monotonic() + 30
    while not db.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with LabelStore(db) as store:  # a second connection, as the web page's requests would make
        while store.count_items() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = store.next_item("me")[0]
        store.add_label(first.id, "me", [2, 0, 1], "rank")
        time.sleep(2.5)  # one poll later the script still waits: one item is unlabeled
        assert server.is_alive() and not out.exists()
        store.add_label(store.next_item("me")[0].id, "me", [0, 1, 2], "rank")
    server.join(timeout=30)
    assert not server.is_alive() and done == [2]
    assert [p.responses for p in load_preferences(out)] == [("z", "x", "y"), ("u", "v", "w")]


def test_ppo_kl_chess_grades_every_policy_on_held_out_positions(capsys):
    from text_env.chess import find_stockfish

    try:
        find_stockfish()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    import ppo_kl_chess

    results = ppo_kl_chess.main(["--timesteps", "64", "--positions", "4", "--depth", "2", "--batch-size", "8"])
    assert list(results) == ["SFT policy, masks off", "random (masked characters)", "SFT policy",
                             "best-of-4, learned critic", "best-of-4, stockfish critic",
                             "PPOKL, learned critic", "PPOKL, stockfish critic"]
    for label, by_set in results.items():
        assert list(by_set) == ["quiet", "tactical"], label
        for grades in by_set.values():
            assert grades.moves == 4 and 0.0 <= grades.illegal_rate <= 1.0 and 0.0 <= grades.mean_cp_loss <= 2000
            assert grades.illegal_rate == 0.0 or label.endswith("masks off"), label  # masks on: legal moves only
    out = capsys.readouterr().out
    assert "| PPOKL, stockfish critic | on |" in out and "tactical: mean cp loss" in out
    assert "pairwise agreement" in out and "critic.json" in out
