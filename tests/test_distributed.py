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


def run_worker(nproc: int, out: Path, algorithm: str) -> None:
    torchrun(nproc, str(TESTS / "distributed_worker.py"), str(out), algorithm)


def log_rows(out: Path) -> list[dict[str, float]]:
    with open(out / "run" / "progress.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


@pytest.mark.parametrize(("algorithm", "logged"), [
    ("ppo_kl", ("score", "kl", "beta", "response_length", "policy_loss", "value_loss", "clipfrac", "approx_kl")),
    ("rloo", ("score", "kl", "objective", "response_length", "policy_loss", "advantage_std", "grad_norm")),
])
def test_two_ranks_match_one_process(tmp_path, algorithm, logged):
    one, two = tmp_path / "one", tmp_path / "two"
    run_worker(1, one, algorithm)
    run_worker(2, two, algorithm)
    single = torch.load(one / "rank0.pt")
    ranks = [torch.load(two / f"rank{r}.pt") for r in (0, 1)]
    initial = dict(tiny_lm(count_task()).named_parameters())
    moved = max((single["params"][k] - initial[k]).abs().max().item() for k in initial)
    diff = max((single["params"][k] - ranks[0]["params"][k]).abs().max().item() for k in single["params"])
    print(f"largest parameter move {moved:.2e}; largest 1-process vs 2-process difference {diff:.2e}")
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
        for key in logged:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert (two / "saved" / "state.json").is_file()


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
    from agents import PPOKL, RLOO, PPOKLConfig, RLOOConfig

    with pytest.raises(ValueError, match="batch_size=9 is the global batch"):
        PPOKL(task, policy=tiny_lm(task), config=PPOKLConfig(batch_size=9, num_mini_batches=1, save_steps=0))
    with pytest.raises(ValueError, match="num_generations=4 must divide each rank's 2 episodes"):  # one rank per group
        RLOO(task, policy=tiny_lm(task), config=RLOOConfig(batch_size=4, num_generations=4, save_steps=0))
