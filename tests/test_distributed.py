"""torchrun data parallelism: 2 processes take the same PPOKL or RLOO step as 1 process over the same global batch."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from rl_helpers import count_task, tiny_lm, torchrun

from agents import BestOfN, BestOfNConfig
from agents.distributed import DistInfo, init_distributed, reduce_metrics
from agents.ppo_utils import masked_whiten

TESTS = Path(__file__).resolve().parent


# The statistics each agent logs that must be global, i.e. equal between 1 and 2 processes.
LOGGED = {
    "ppo_kl": ("score", "kl", "beta", "response_length", "policy_loss", "value_loss", "clipfrac", "approx_kl"),
    "rloo": ("score", "kl", "objective", "response_length", "policy_loss", "advantage_std", "grad_norm"),
    "grpo": ("score", "kl", "policy_loss", "advantage_std", "reward_std", "clip_ratio_low", "approx_kl",
             "grad_norm"),
    "grpo_dapo": ("score", "policy_loss", "truncated_fraction", "clip_ratio_high", "approx_kl", "grad_norm"),
    "reinforce_pp": ("score", "kl", "objective", "policy_loss", "approx_kl", "grad_norm"),
    "dpo": ("loss", "rewards_margins", "rewards_accuracies", "logps_chosen", "grad_norm", "epoch"),
    "online_dpo": ("score", "kl", "tied_pairs", "scores_margin", "loss", "rewards_margins", "grad_norm"),
    "vbon": ("score", "kl", "log_cdf", "reference_win_rate", "reference_tokens", "reference_prompts",
             "policy_loss", "value_loss"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two iterations of every agent, in 1 process and in 2 (one torchrun launch each)."""
    out = tmp_path_factory.mktemp("distributed")
    for nproc in (1, 2):
        torchrun(nproc, str(TESTS / "distributed_worker.py"), str(out / f"n{nproc}"), *LOGGED)
    return out


def log_rows(out: Path) -> list[dict[str, float]]:
    with open(out / "run" / "progress.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


@pytest.mark.parametrize("algorithm", list(LOGGED))
def test_two_ranks_match_one_process(runs, algorithm):
    one, two = runs / "n1" / algorithm, runs / "n2" / algorithm
    single = torch.load(one / "rank0.pt")
    ranks = [torch.load(two / f"rank{r}.pt") for r in (0, 1)]
    initial = dict(tiny_lm(count_task()).named_parameters())
    moved = max((single["params"][k] - initial[k]).abs().max().item() for k in initial)
    diff = max((single["params"][k] - ranks[0]["params"][k]).abs().max().item() for k in single["params"])
    print(f"{algorithm}: largest parameter move {moved:.2e}; largest 1-process vs 2-process difference {diff:.2e}")
    assert moved > 1e-3  # two real updates happened
    assert diff < 1e-5
    for k in single["params"]:  # the ranks hold one model
        assert torch.equal(ranks[0]["params"][k], ranks[1]["params"][k])
    assert single["timesteps"] == ranks[0]["timesteps"] == ranks[1]["timesteps"]  # global count on every rank
    assert ranks[0]["beta"] == ranks[1]["beta"] == pytest.approx(single["beta"], rel=1e-6)
    if algorithm == "ppo_kl":
        assert single["beta"] != 0.1  # the adaptive controller moved, on the global KL
    # Rank 0 alone logged (one row per iteration) the global statistics, and saved the checkpoint.
    rows_one, rows_two = log_rows(one), log_rows(two)
    assert len(rows_one) == len(rows_two) == 2
    for a, b in zip(rows_one, rows_two, strict=True):
        for key in LOGGED[algorithm]:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert (two / "saved" / "state.json").is_file()
    if algorithm == "vbon":  # rank 0 saved every rank's reference scores, as one process did
        cache = "reference_scores.json"
        assert (one / "saved" / cache).read_text() == (two / "saved" / cache).read_text()


def test_single_process_helpers_are_identity():
    info = init_distributed()
    assert info == DistInfo() and info.is_main
    x, mask = torch.randn(4, 5), (torch.rand(4, 5) > 0.3).float()
    assert torch.equal(masked_whiten(x, mask, dist=info), masked_whiten(x, mask))
    assert reduce_metrics({"a": 1.0}, info, torch.device("cpu")) == {"a": 1.0}


def test_unsupported_agent_and_bad_split_fail_clearly(monkeypatch):
    # A fake 2-process environment: the checks run before any process group is joined.
    monkeypatch.setattr("agents.base.init_distributed", lambda: DistInfo(rank=0, world_size=2))
    task = count_task()
    with pytest.raises(ValueError, match="BestOfN does not support torchrun"):
        BestOfN(task, policy=tiny_lm(task), config=BestOfNConfig(batch_size=8, num_generations=2, save_steps=0))
    from agents import GRPO, PPOKL, RLOO, GRPOConfig, OnlineDPO, OnlineDPOConfig, PPOKLConfig, RLOOConfig

    with pytest.raises(ValueError, match="batch_size=9 is the global batch"):
        PPOKL(task, policy=tiny_lm(task), config=PPOKLConfig(batch_size=9, num_mini_batches=1, save_steps=0))
    with pytest.raises(ValueError, match=r"4 samples per prompt \(num_generations\) must divide each rank's 2"):
        RLOO(task, policy=tiny_lm(task), config=RLOOConfig(batch_size=4, num_generations=4, save_steps=0))
    with pytest.raises(ValueError, match="2 samples per prompt .* each rank's 3 episodes"):  # a pair on one rank
        OnlineDPO(task, policy=tiny_lm(task), config=OnlineDPOConfig(batch_size=6, save_steps=0))
    with pytest.raises(ValueError, match="dynamic_sampling=True cannot run under torchrun"):
        GRPO(task, policy=tiny_lm(task), config=GRPOConfig(batch_size=8, num_generations=2, dynamic_sampling=True,
                                                           save_steps=0))
