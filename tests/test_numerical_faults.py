"""NaN or inf from a reward model or in a loss stops training with a clear error and keeps the last good checkpoint.

Each trainer checkpoints every step (or iteration), runs cleanly for a while, then
meets a non-finite value. It must raise (naming what was non-finite) before any
weight is updated with it, and the checkpoint on disk must be the last good one,
loadable, with finite weights. The existing ``test_nan_loss_stops_and_keeps_last_good_checkpoint``
(tests/test_ppo_kl.py) covers PPOKL's loss; here are the reward model, RLOO, SFT and
reward-model training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from reward_fixtures import save_tiny_lm, write_synthetic_preferences
from rl_helpers import count_a, count_task, tiny_lm
from safetensors.torch import load_file

import agents.rloo as rloo_module
import agents.sft as sft_module
import reward_models.train as train_module
from agents import PPOKL, RLOO, PPOKLConfig, RLOOConfig
from agents.sft import SFTConfig, train_sft
from reward_models import FunctionRewardModel
from reward_models.train import CHECKPOINT_DIR, RewardTrainConfig, train_reward_model
from text_env.char_tokenizer import char_tokenizer

torch.set_num_threads(1)


class FailsAfter:
    """``count_a`` for ``good_calls`` batches, then ``bad`` for one response of every batch."""

    def __init__(self, good_calls: int, bad: float) -> None:
        self.calls, self.good_calls, self.bad = 0, good_calls, bad

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        self.calls += 1
        scores = [count_a(p, r) for p, r in zip(prompts, responses, strict=True)]
        if self.calls > self.good_calls:
            scores[len(scores) // 2] = self.bad
        return scores


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


# ---- a reward model that returns NaN or inf ---------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("agent_class", [PPOKL, RLOO])
def test_non_finite_reward_stops_rl_and_keeps_the_last_checkpoint(tmp_path, agent_class, bad):
    # A rollout of batch 8 with max_new_tokens 4 scores in a few calls; after 2 iterations the reward breaks.
    reward = FailsAfter(good_calls=10**9, bad=bad)
    task = count_task(max_new_tokens=4, reward_model=FunctionRewardModel(reward, batched=True))
    config_class = PPOKLConfig if agent_class is PPOKL else RLOOConfig
    extra = {"num_ppo_epochs": 1} if agent_class is PPOKL else {"num_generations": 2}
    config = config_class(batch_size=8, num_mini_batches=2, learning_rate=1e-3, save_steps=1,
                          log_dir=str(tmp_path / "run"), **extra)
    agent = agent_class(task, tiny_lm(task), config)
    agent.learn(2 * 8 * 4, progress_bar=False)  # two clean iterations, each checkpointed
    done = json.loads((agent.checkpoint_dir / "state.json").read_text())["iteration"]
    assert done >= 2
    weights = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    reward.good_calls = reward.calls  # from now on every batch holds one bad score
    with pytest.raises(ValueError, match=rf"returned {bad}.*non-finite.*returns finite floats"):
        agent.learn(10_000, reset_num_timesteps=False, progress_bar=False)
    assert all(torch.equal(weights[k], v) for k, v in agent.policy.state_dict().items())  # no update applied
    assert json.loads((agent.checkpoint_dir / "state.json").read_text())["iteration"] == done
    restored = agent_class.load(agent.checkpoint_dir, count_task(max_new_tokens=4))
    assert all_finite(restored.policy.state_dict())


def test_nan_loss_stops_rloo_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    task = count_task(max_new_tokens=4)
    config = RLOOConfig(batch_size=8, num_mini_batches=2, num_generations=2, learning_rate=1e-3, save_steps=1,
                        log_dir=str(tmp_path / "run"))
    agent = RLOO(task, tiny_lm(task), config)
    agent.learn(1, progress_bar=False)
    monkeypatch.setattr(rloo_module, "leave_one_out_advantages", lambda reward: reward * math.nan)
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        agent.learn(1000, reset_num_timesteps=False, progress_bar=False)
    assert json.loads((agent.checkpoint_dir / "state.json").read_text())["iteration"] == 1
    assert all_finite(RLOO.load(agent.checkpoint_dir, count_task(max_new_tokens=4)).policy.state_dict())


# ---- SFT ------------------------------------------------------------------------------------
def sft_config(tmp_path: Path, **overrides) -> SFTConfig:
    tok = char_tokenizer("ab ")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0))
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    data = tmp_path / "demos.jsonl"
    data.write_text("".join(json.dumps({"prompt": "a" * (i % 3), "response": " ab" * (1 + i % 2)}) + "\n"
                            for i in range(32)))
    options = dict(model=str(tmp_path / "base"), data=str(data), out=str(tmp_path / "out"), val_fraction=0.25,
                   batch_size=8, max_steps=12, eval_steps=2, logging_steps=1, patience=0, progress=False,
                   learning_rate=1e-3)
    options.update(overrides)
    return SFTConfig(**options)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_sft_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, bad):
    cfg = sft_config(tmp_path)
    real, calls = sft_module.token_loss_sum, [0]

    def breaks_at_step_5(model, batch):
        loss, n = real(model, batch)
        calls[0] += model.training  # training forward passes only (evaluation runs in eval mode)
        return (loss * bad if calls[0] >= 5 else loss), n

    monkeypatch.setattr(sft_module, "token_loss_sum", breaks_at_step_5)
    with pytest.raises(FloatingPointError, match="checkpoint"):
        train_sft(cfg)
    checkpoint = Path(cfg.out) / "checkpoint"
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 4
    assert all_finite(load_file(checkpoint / "model.safetensors"))


# ---- reward-model training --------------------------------------------------------------------
@pytest.fixture(scope="module")
def rm_work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rm")
    save_tiny_lm(root / "base")
    write_synthetic_preferences(root, n_train=64, n_val=16)
    return root


@pytest.mark.parametrize("where", ["chosen", "rejected"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_reward_model_scores_stop_training_and_keep_the_checkpoint(rm_work, tmp_path, monkeypatch,
                                                                               bad, where):
    real, calls = train_module.sequence_scores, [0]

    def breaks_at_step_4(model, sequences):
        scores = real(model, sequences)
        calls[0] += torch.is_grad_enabled()  # training passes, not validation
        if calls[0] >= 4:
            scores = scores.clone()
            scores[0 if where == "chosen" else 1] = scores[0] * 0 + bad  # keeps the graph
        return scores

    monkeypatch.setattr(train_module, "sequence_scores", breaks_at_step_4)
    config = RewardTrainConfig(model=str(rm_work / "base"), data=str(rm_work / "train.jsonl"),
                               val_data=str(rm_work / "val.jsonl"), out=str(tmp_path / "rm"), batch_size=8,
                               learning_rate=3e-3, save_steps=1, eval_steps=0, progress=False)
    with pytest.raises(FloatingPointError, match=r"step 4: .*checkpoint") as err:
        train_reward_model(config)
    assert str(tmp_path / "rm" / CHECKPOINT_DIR) in str(err.value)
    checkpoint = tmp_path / "rm" / CHECKPOINT_DIR
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 3
    assert all_finite(load_file(checkpoint / "model" / "model.safetensors"))
    monkeypatch.setattr(train_module, "sequence_scores", real)
    result = train_reward_model(config)  # the cause is gone: rerunning resumes from the good checkpoint
    assert result.finished and result.steps == 8


def test_reward_model_cli_reports_a_non_finite_loss_without_a_traceback(rm_work, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_module, "ranking_loss", lambda scores, sizes, weights=None: scores.sum() * math.nan)
    code = train_module.cli(["--model", str(rm_work / "base"), "--data", str(rm_work / "train.jsonl"),
                             "--out", str(tmp_path / "rm"), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "rlhf-gym train-rm: step 1: the loss is nan" in err and "last good checkpoint" not in err
