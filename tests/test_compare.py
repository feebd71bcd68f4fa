"""``rlhf-gym compare``: tiny runs on registered env ids, the tables it writes, resuming, and bad input."""

from __future__ import annotations

import csv
import json

import pytest

from rlhf_gym.compare import cli
from tests.test_pipeline import default_assets_or_skip

BUDGET = 512
TINY = ["--agents", "ppo_kl,rloo", "--timesteps", str(BUDGET), "--batch-size", "16", "--eval-episodes", "32",
        "--no-progress"]


def progress_rows(folder) -> int:
    with open(folder / "progress.csv", newline="") as f:
        return len(list(csv.DictReader(f)))


@pytest.mark.parametrize("env_id", ["RLHFText-v0", pytest.param("ChessMoveCritic-v0", marks=pytest.mark.slow)])
def test_compare_trains_grades_and_resumes_without_retraining(env_id, tmp_path, capsys):
    default_assets_or_skip()
    out = tmp_path / "compare"
    argv = ["--out", str(out), "--env", env_id, *TINY]
    assert cli(argv) == 0
    for name in ("results.md", "results.csv", "results.json"):
        assert (out / name).exists(), name
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["agent"] for r in results] == ["starting policy", "PPOKL", "RLOO"]
    start, *trained = results
    assert start["timesteps"] == 0 and start["kl"] == pytest.approx(0.0, abs=1e-3)  # graded against itself
    assert all(r["timesteps"] >= BUDGET for r in trained)
    with open(out / "results.csv", newline="") as f:
        assert [row["agent"] for row in csv.DictReader(f)] == ["starting policy", "PPOKL", "RLOO"]
    assert f"`{env_id}`" in (out / "results.md").read_text() and "| PPOKL |" in capsys.readouterr().out

    iterations = {name: progress_rows(out / name) for name in ("ppo_kl", "rloo")}
    assert cli(argv) == 0  # every agent's checkpoint is at its budget: nothing to train, only grading again
    again = json.loads((out / "results.json").read_text())["results"]
    for before, after in zip(results, again, strict=True):
        assert (after["timesteps"], after["train_seconds"]) == (before["timesteps"], before["train_seconds"])
    assert {name: progress_rows(out / name) for name in iterations} == iterations


@pytest.mark.parametrize("flags, message", [
    (["--env-kwargs", "{bad"], "--env-kwargs '{bad' is not JSON"),
    (["--eval-env-kwargs", "[1]"], "--eval-env-kwargs must be a JSON object"),
    (["--agents", "ppo_kl,nope"], "unknown agent 'nope'"),
    (["--timesteps", "0"], "--timesteps=0 must be >= 1"),
    (["--env", "CartPole-v1"], "is not a text env"),
])
def test_bad_input_is_a_usage_error_with_the_fix(flags, message, tmp_path, capsys):
    assert cli(["--out", str(tmp_path / "compare"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf-gym compare: ") and message in err


@pytest.mark.parametrize("flags", [["--env", "NoSuch-v0"], ["--env-kwargs", '{"no_such_option": 1}']])
def test_unknown_env_id_or_option_is_a_usage_error(flags, tmp_path):
    assert cli(["--out", str(tmp_path / "compare"), *flags, *TINY]) == 2
