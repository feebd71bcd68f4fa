"""`rlhf-gym leaderboard`: the pipeline over seeds, pooled into mean ± standard error per policy."""

from __future__ import annotations

import csv
import statistics

import pytest

from rlhf_gym.pipeline import leaderboard
from rlhf_gym.pipeline.leaderboard import LeaderboardConfig, format_leaderboard, run_leaderboard
from tests.test_pipeline import default_assets_or_skip


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_leaderboard_pools_each_seeds_pipeline_and_resumes(tmp_path, monkeypatch):
    default_assets_or_skip()
    config = LeaderboardConfig(out=str(tmp_path), agents="rloo", num_seeds=2, seed=3, n_eval_prompts=4,
                               eval_samples=2, max_n=4, batch_size=8, timesteps=192, save_steps=1, num_threads=1,
                               progress=False)
    rows = run_leaderboard(config)
    assert [r["policy"] for r in rows] == ["SFT reference", "best-of-2", "best-of-4", "RLOO"]
    assert (tmp_path / "seed3" / "summary.csv").is_file() and (tmp_path / "seed4" / "summary.csv").is_file()

    # The pooled row is the mean and standard error of the two seeds' own rows.
    per_seed = [r for r in read_csv(tmp_path / "leaderboard_seeds.csv") if r["policy"] == "RLOO"]
    assert [int(r["seed"]) for r in per_seed] == [3, 4]
    gains = [float(r["gold_gain"]) for r in per_seed]
    rloo = rows[-1]
    assert rloo["gold_gain"] == pytest.approx(statistics.fmean(gains))
    assert rloo["gold_gain_se"] == pytest.approx(statistics.stdev(gains) / 2 ** 0.5)
    assert rows[0]["gold_gain"] == 0.0 and rows[0]["kl"] == 0.0
    assert [r["policy"] for r in read_csv(tmp_path / "leaderboard.csv")] == [r["policy"] for r in rows]
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| RLOO |" in md and " ± " in md and "Seeds 3, 4" in md
    assert (tmp_path / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"

    # Re-running resumes: every seed's stages are done, nothing trains again.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    from rlhf_gym.pipeline import run

    real = run.train_agent
    monkeypatch.setattr(run, "train_agent", refuse)
    assert run_leaderboard(config) == rows

    # One more agent joins a finished leaderboard: only it trains, in every seed.
    trained = []
    monkeypatch.setattr(run, "train_agent", lambda ctx, name, task: trained.append(name) or real(ctx, name, task))
    grown = run_leaderboard(LeaderboardConfig(**{**vars(config), "agents": "rloo,ppo_kl"}))
    assert trained == ["ppo_kl", "ppo_kl"]
    by_policy = {r["policy"]: r for r in grown}
    assert by_policy["RLOO"] == rloo and by_policy["SFT reference"] == rows[0] and "PPOKL" in by_policy
    with pytest.raises(ValueError, match="another --out"):  # other settings: refused, not mixed in
        run_leaderboard(LeaderboardConfig(**{**vars(config), "num_seeds": 3}))


def test_a_single_seed_has_no_error_bars_and_missing_ratios_are_counted():
    rows = [{"policy": "X", "seeds": 2, "gold_gain": 0.1, "gold_gain_se": 0.01, "gold_gain_seeds": 2,
             "proxy_gain": 1.0, "proxy_gain_se": 0.0, "proxy_gain_seeds": 1, "kl": 2.0, "kl_se": 0.1, "kl_seeds": 2,
             "gain_ratio": None, "gain_ratio_se": None, "gain_ratio_seeds": 0, "response_length": 20.0,
             "response_length_se": 1.0, "response_length_seeds": 2, "train_seconds": 5.0, "train_seconds_se": 1.0,
             "train_seconds_seeds": 2}]
    table = format_leaderboard(rows)
    assert "| X | +0.100 ± 0.010 | +1.00 (1 of 2 seeds) | 2.00 ± 0.10 | n/a |" in table


def test_leaderboard_refuses_no_seeds(capsys):
    assert leaderboard.cli(["--num-seeds", "0"]) == 2
    assert "--num-seeds 0 must be >= 1" in capsys.readouterr().err
