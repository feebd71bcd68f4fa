"""Offline DPO and IPO: TRL's loss on one batch, zero gradient on equal log-ratios, learning, resume, errors."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from rl_helpers import count_task, tiny_lm, write_pairs

from agents import DPO, DPOConfig
from agents.dpo import cli, encode_pairs
from agents.dpo_loss import dpo_loss
from agents.ppo_utils import kl_per_response
from agents.rollout import make_rollout_env, rollout
from agents.scoring import SequenceBatch, response_logprobs
from rlhf_common.io import DataError

torch.set_num_threads(1)


def make_agent(tmp_path: Path, **overrides) -> DPO:
    task = count_task()
    tmp_path.mkdir(parents=True, exist_ok=True)
    prefs = write_pairs(tmp_path / "prefs.jsonl")
    config = DPOConfig(**{"preferences": str(prefs), "batch_size": 16, "learning_rate": 3e-3, "save_steps": 0,
                          "log_dir": str(tmp_path / "run"), **overrides})
    return DPO(task, tiny_lm(task), config)


def score_and_kl(agent: DPO, seed: int = 123) -> tuple[float, float]:
    """Mean count of 'a' and KL to the reference of 64 samples of the agent's policy."""
    env = make_rollout_env(agent.task, 64)
    batch = rollout(agent.policy, env, seed=seed)
    with torch.no_grad():
        ref = response_logprobs(agent.reference, batch, 1.0, agent.task.vocab_size).logprobs
    return float(batch.scores.mean()), float(kl_per_response(batch.logprobs, ref, batch.response_mask.float(),
                                                             "k1").mean())


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_loss_and_gradient_equal_trls_dpo_trainer(tmp_path, loss_type):
    pytest.importorskip("trl", reason="TRL is not installed; `pip install trl` to compare with its DPOTrainer")
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    task = count_task()
    policy, reference = tiny_lm(task, seed=0), tiny_lm(task, seed=1)  # different: the log-ratios are not 0
    prefs = write_pairs(tmp_path / "prefs.jsonl", n=12)
    rows = [json.loads(line) for line in prefs.read_text().splitlines()]
    args = TRLDPOConfig(output_dir=str(tmp_path / "trl"), loss_type=[loss_type], beta=0.3, bf16=False, use_cpu=True,
                        report_to="none", per_device_train_batch_size=12, max_length=None, dataset_num_proc=None)
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=task.tokenizer)
    examples = list(trainer.train_dataset)
    inputs = trainer.data_collator(examples)
    trl_loss = trainer.compute_loss(trainer.model, inputs)
    trl_loss.backward()

    # Our encoding gives TRL's token ids (prompt with BOS, response + EOS) ...
    pairs = encode_pairs(prefs, task)
    for i, ex in enumerate(examples):
        p = pairs.prompt_mask[i].bool()
        assert pairs.prompt_ids[i][p].tolist() == ex["prompt_ids"]
        assert pairs.chosen_ids[i][pairs.chosen_mask[i].bool()].tolist() == ex["chosen_ids"]
        assert pairs.rejected_ids[i][pairs.rejected_mask[i].bool()].tolist() == ex["rejected_ids"]
    # ... and our packed scoring with the shared loss gives TRL's loss and gradient.
    sequences, chosen, rejected = pairs.batch(torch.arange(len(pairs)))
    logps = response_logprobs(policy, sequences, 1.0, task.vocab_size).logprobs.sum(1)
    with torch.no_grad():
        ref = response_logprobs(reference, sequences, 1.0, task.vocab_size).logprobs.sum(1)
    lengths = sequences.response_mask.sum(1)
    ours = dpo_loss(logps[chosen] - ref[chosen], logps[rejected] - ref[rejected], 0.3, loss_type,
                    lengths[chosen], lengths[rejected]).mean()
    ours.backward()
    grad_diff = max(float((a.grad - b.grad).abs().max())
                    for a, b in zip(policy.parameters(), trainer.model.parameters(), strict=True))
    ours, trl_loss = float(ours.detach()), float(trl_loss.detach())
    print(f"\n{loss_type}: ours {ours:.7f}, TRL {trl_loss:.7f}, max |grad diff| {grad_diff:.2e}")
    assert ours == pytest.approx(trl_loss, abs=1e-5) and ours > 0
    assert grad_diff < 1e-5


def test_identical_chosen_and_rejected_logratios_give_zero_gradient():
    task = count_task()
    policy, reference = tiny_lm(task, seed=0), tiny_lm(task, seed=1)
    prompt = torch.tensor([[1, 4, 5], [0, 1, 5]])  # the same sequence sits in rows 0 and 2 (and 1 and 3)
    response = torch.tensor([[4, 4, 2], [5, 2, 0]])
    sequences = SequenceBatch(prompt.repeat(2, 1), (prompt > 0).long().repeat(2, 1), response.repeat(2, 1),
                              torch.tensor([[1, 1, 1], [1, 1, 0]]).repeat(2, 1))
    logps = response_logprobs(policy, sequences, 1.0, task.vocab_size).logprobs.sum(1)
    with torch.no_grad():
        ref = response_logprobs(reference, sequences, 1.0, task.vocab_size).logprobs.sum(1)
    lengths = sequences.response_mask.sum(1)
    for loss_type in ("sigmoid", "ipo"):
        policy.zero_grad()
        loss = dpo_loss(logps[:2] - ref[:2], logps[2:] - ref[2:], 0.1, loss_type, lengths[:2], lengths[2:]).mean()
        loss.backward(retain_graph=True)
        assert max(float(p.grad.abs().max()) for p in policy.parameters()) < 1e-6, loss_type


def test_offline_dpo_learns_the_preferred_token_and_a_huge_beta_stays_at_the_reference(tmp_path):
    agent = make_agent(tmp_path / "dpo")
    before, kl0 = score_and_kl(agent)
    agent.learn(8000, progress_bar=False)
    after, kl = score_and_kl(agent)
    huge = make_agent(tmp_path / "huge", beta=1e4).learn(8000, progress_bar=False)
    _, kl_huge = score_and_kl(huge)
    print(f"\nDPO: mean count of 'a' {before:.2f} -> {after:.2f}, KL {kl0:.3f} -> {kl:.3f}; beta 1e4: KL {kl_huge:.4f}")
    assert agent.pairs.counts["pairs"] == 64 and after > before + 0.6 and kl > 1.0
    # Adam's first steps move the policy at any beta; a huge beta saturates the loss right after them.
    assert kl_huge < 0.1 * kl


def check_resume_equals_uninterrupted(agent_class: type, make: Callable[..., Any], tmp_path: Path, kill_at: int,
                                      total: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed in iteration ``kill_at + 1`` (checkpoints every iteration) and resumed ends as an unbroken one."""
    whole = make(tmp_path / "whole").learn(total, progress_bar=False)
    original = agent_class._iteration

    def killed(self):
        if self.iteration == kill_at:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(agent_class, "_iteration", killed)
    with pytest.raises(KeyboardInterrupt):
        make(tmp_path / "part").learn(total, progress_bar=False)
    monkeypatch.setattr(agent_class, "_iteration", original)
    resumed = make(tmp_path / "part").learn(total, resume=True, progress_bar=False)
    assert resumed.iteration == whole.iteration > kill_at + 1 and resumed.num_timesteps == whole.num_timesteps
    assert all(torch.equal(a, b) for a, b in zip(whole.policy.parameters(), resumed.policy.parameters(), strict=True))


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    # Mid-epoch: 64 pairs are 4 batches of 16, the kill comes in the 4th of ~8 iterations.
    check_resume_equals_uninterrupted(DPO, lambda d: make_agent(d, save_steps=1), tmp_path, 3, 1200, monkeypatch)


def test_ipo_learns_too(tmp_path):
    agent = make_agent(tmp_path, loss_type="ipo", beta=0.5)
    before, _ = score_and_kl(agent)
    agent.learn(2000, progress_bar=False)
    after, _ = score_and_kl(agent)
    print(f"\nIPO: mean count of 'a' {before:.2f} -> {after:.2f}")
    assert after > before + 0.5


def test_bad_input_errors(tmp_path, capsys):
    task = count_task()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "a", "rejected": "b"}\n{"prompt": "a", "chosen": "a"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: .*'rejected'"):
        DPO(task, tiny_lm(task), DPOConfig(preferences=str(bad), batch_size=4, log_dir=str(tmp_path / "r")))
    with pytest.raises(ValueError, match="preferences is not set: pass preferences=PATH"):
        DPOConfig()
    with pytest.raises(ValueError, match="loss_type='hinge' is unknown; use one of sigmoid, ipo"):
        DPOConfig(preferences="x.jsonl", loss_type="hinge")
    with pytest.raises(ValueError, match="beta=-0.1 must be > 0"):
        DPOConfig(preferences="x.jsonl", beta=-0.1)
    assert cli(["--batch-size", "4"]) == 2
    assert "preferences is not set" in capsys.readouterr().err
