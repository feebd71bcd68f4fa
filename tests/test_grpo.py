"""GRPO: loss, gradient and group advantages equal TRL's GRPOTrainer; learning, KL anchor, resume, bad input."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from rl_helpers import count_task, tiny_lm
from test_ppo_kl import progress

from agents import GRPO, GRPOConfig
from agents.grpo import cli
from agents.policy_gradient import LOSS_TYPES, KLPenalty, group_advantages, select_rows
from agents.registry import build_config, get_agent
from agents.rollout import RolloutBatch
from agents.scoring import response_logprobs
from text_env.defaults import default_policy_path, default_task
from text_env.task import END_EOS, END_MAX_TOKENS

torch.set_num_threads(1)
BASE = dict(batch_size=32, num_generations=4, num_mini_batches=2, learning_rate=3e-3, save_steps=0)
T = 6  # max_new_tokens of the task the TRL comparison runs on


def make_agent(tmp_path: Path, name: str = "run", **overrides) -> GRPO:
    task = count_task()
    return GRPO(task, tiny_lm(task), GRPOConfig(**{**BASE, "log_dir": str(tmp_path / name), **overrides}))


# ---- against TRL's GRPOTrainer -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    """TRL's GRPOTrainer on the embedded default policy, its rewards set by each test through ``trainer.rewards``."""
    pytest.importorskip("trl", reason="TRL is not installed; `pip install trl` to compare GRPO with it")
    from datasets import Dataset
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    task = default_task(max_new_tokens=T)
    args = TRLGRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")), per_device_train_batch_size=8, num_generations=4,
        max_completion_length=T, beta=0.04, bf16=False, use_cpu=True, report_to="none", save_strategy="no",
        disable_tqdm=True, disable_dropout=True, dataloader_num_workers=0, seed=0, logging_strategy="no",
        activation_checkpointing=False,
    )

    def reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
        return trainer.rewards.tolist()

    trainer = GRPOTrainer(model=str(default_policy_path()), reward_funcs=reward, args=args,
                          processing_class=task.tokenizer, train_dataset=Dataset.from_dict({"prompt": ["p"] * 8}))
    return trainer


def constructed_batch(task, policy) -> tuple[RolloutBatch, torch.Tensor, torch.Tensor]:
    """8 episodes (2 prompts x 4) of equal-length prompts and 1..T-token responses, with old and reference
    log-probs 0.3 and 0.5 nats (std) off the policy's, so that ratios clip both ways. Returns (batch, ref, rewards)."""
    g = torch.Generator().manual_seed(0)
    n, p = 8, 5
    prompt_ids = torch.randint(4, task.vocab_size, (2, p), generator=g).repeat_interleave(4, 0)
    lengths = torch.tensor([1, 3, 6, 6, 2, 4, 5, 6])
    response_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    response_ids = torch.randint(4, task.vocab_size, (n, T), generator=g) * response_mask
    rewards = torch.tensor([0.5, -1.0, 2.0, 0.3, 1.0, 1.0, -0.2, 0.7])
    ends = [END_MAX_TOKENS if n_ == T else END_EOS for n_ in lengths.tolist()]
    batch = RolloutBatch(prompt_ids=prompt_ids, prompt_mask=torch.ones_like(prompt_ids), response_ids=response_ids,
                         response_mask=response_mask, logprobs=torch.zeros(n, T), entropy=torch.zeros(n, T),
                         rewards=rewards.double().numpy(), infos=[{"end_reason": e, "score": 0.0} for e in ends],
                         action_masks=None, hidden=None,
                         step_rewards=torch.zeros(n, T, dtype=torch.float64).index_put_(
                             (torch.arange(n), lengths - 1), rewards.double()))
    with torch.no_grad():
        logp = response_logprobs(policy, batch, 1.0, task.vocab_size).logprobs
    batch.logprobs = (logp + 0.3 * torch.randn(n, T, generator=g)) * response_mask
    ref = (logp + 0.5 * torch.randn(n, T, generator=g)) * response_mask
    return batch, ref, rewards


def trl_loss_and_grads(trainer, batch: RolloutBatch, ref: torch.Tensor, advantages: torch.Tensor,
                       micro_batches: int) -> tuple[float, dict[str, torch.Tensor]]:
    """TRL's ``_compute_loss`` over ``micro_batches`` consecutive slices: one optimiser step's loss and gradient."""
    model = trainer.model.train()
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = micro_batches
    trainer.args.steps_per_generation = micro_batches
    total = 0.0
    for rows in torch.arange(8).chunk(micro_batches):
        inputs = {"prompt_ids": batch.prompt_ids[rows], "prompt_mask": batch.prompt_mask[rows],
                  "completion_ids": batch.response_ids[rows], "completion_mask": batch.response_mask[rows],
                  "advantages": advantages[rows], "old_per_token_logps": batch.logprobs[rows],
                  "ref_per_token_logps": ref[rows], "num_items_in_batch": batch.response_mask.sum()}
        loss = trainer._compute_loss(model, inputs)
        loss.backward()
        total += float(loss.detach())
    return total, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def agent_for_trl(tmp_path_factory):
    """Our GRPO on the same default policy; each test sets its config."""
    config = GRPOConfig(batch_size=8, num_generations=4, log_dir=str(tmp_path_factory.mktemp("ours")), save_steps=0)
    return GRPO(default_task(max_new_tokens=T), config=config)


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("epsilon_high", [None, 0.28])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_and_gradient_equal_trl(trl_trainer, agent_for_trl, loss_type, epsilon_high, micro_batches,
                                     bias_correction):
    agent = agent_for_trl
    agent.config = dataclasses.replace(agent.config, num_mini_batches=micro_batches, beta=0.04, loss_type=loss_type,
                                       epsilon_high=epsilon_high, use_bias_correction_kl=bias_correction)
    trl_trainer.loss_type, trl_trainer.beta = loss_type, 0.04
    trl_trainer.args.use_bias_correction_kl = bias_correction
    trl_trainer.epsilon_low, trl_trainer.epsilon_high = 0.2, 0.2 if epsilon_high is None else epsilon_high
    batch, ref, rewards = constructed_batch(agent.task, agent.policy)
    advantages = group_advantages(rewards, 4, "group")
    mask = batch.response_mask.float()
    agent.policy.zero_grad()
    scale = agent._loss_scale(mask.sum(1))
    ours = 0.0
    for idx in torch.arange(8).chunk(micro_batches):
        kl = KLPenalty(ref, 0.04, bias_correction)
        tokens = float(mask[idx].sum())
        loss, stats = agent._clipped_loss(batch, idx, advantages[:, None] * mask, mask, kl, scale, tokens)
        loss.backward()
        ours += float(loss.detach())
    theirs, grads = trl_loss_and_grads(trl_trainer, batch, ref, advantages, micro_batches)
    diff = max(float((p.grad - grads[k]).abs().max()) for k, p in agent.policy.named_parameters())
    print(f"{loss_type} epsilon_high={epsilon_high} micro={micro_batches} bias_correction={bias_correction}: "
          f"loss {ours:.7f} vs TRL {theirs:.7f} (|diff| {abs(ours - theirs):.1e}), max |grad diff| {diff:.1e}")
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert diff < 1e-5
    assert float(stats[0] + stats[1]) > 0  # the perturbed old log-probs do make ratios clip


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_group_advantages_equal_trl(trl_trainer, scale_rewards):
    trl_trainer.scale_rewards = scale_rewards
    trl_trainer.model.eval()
    rewards = torch.tensor([0.5, -1.0, 2.0, 0.3, 1.0, 1.0, 1.0, 1.0])  # the second group: zero std
    trl_trainer.rewards = rewards
    out = trl_trainer._generate_and_score_completions([{"prompt": p} for p in ("a b", "c d e") for _ in range(4)])
    ours = group_advantages(rewards, 4, scale_rewards)
    assert torch.allclose(ours, out["advantages"], atol=1e-5), (ours, out["advantages"])


# ---- the pieces -------------------------------------------------------------------------------------------
def test_group_advantages_are_zero_mean_per_group():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 4.0, 5.0])
    for scale in ("group", "batch", "none"):
        assert torch.allclose(group_advantages(rewards, 3, scale).view(2, 3).sum(1), torch.zeros(2), atol=1e-6)
    assert torch.equal(group_advantages(rewards, 3, "none"), torch.tensor([-1.0, 0.0, 1.0, 1.0, -1.0, 0.0]))


def test_select_and_concat_rows_keep_episodes_whole():
    task = count_task(max_new_tokens=T)
    batch, _, _ = constructed_batch(task, tiny_lm(task))
    short = select_rows(batch, torch.tensor([0, 4]))
    short = dataclasses.replace(short, prompt_ids=short.prompt_ids[:, 2:], prompt_mask=short.prompt_mask[:, 2:])
    both = RolloutBatch.concat([batch, short], task.pad_token_id)
    assert both.prompt_ids.shape == (10, 5) and both.response_ids.shape == (10, T)
    assert torch.equal(both.prompt_mask[8:, :2], torch.zeros(2, 2, dtype=torch.long))  # left-padded
    assert torch.equal(both.response_ids[8:], batch.response_ids[[0, 4]])
    assert [i["end_reason"] for i in both.infos[8:]] == [batch.infos[0]["end_reason"], batch.infos[4]["end_reason"]]
    assert both.rewards.tolist()[8:] == batch.rewards[[0, 4]].tolist()


# ---- training -------------------------------------------------------------------------------------------
def test_learns_count_task(tmp_path):
    make_agent(tmp_path).learn(2500, progress_bar=False)
    rows = progress(tmp_path / "run")
    late = np.mean([r["score"] for r in rows[-3:]])
    print(f"GRPO: {len(rows)} iterations, score {rows[0]['score']:.2f} -> {late:.2f}")
    assert rows[0]["score"] < 1.5 and late > rows[0]["score"] + 1.5
    assert "kl" not in rows[0]  # beta = 0 (TRL's default): no reference pass, no KL logged


def test_dynamic_sampling_and_overlong_filtering_learn(tmp_path):
    agent = make_agent(tmp_path, dynamic_sampling=True, mask_truncated_completions=True, loss_type="dr_grpo",
                       num_iterations=2, beta=0.01, max_num_gen_batches=3, epsilon_high=0.28)
    agent.learn(2500, progress_bar=False)
    rows = progress(tmp_path / "run")
    late = np.mean([r["score"] for r in rows[-3:]])
    assert late > rows[0]["score"] + 1.0
    assert all(1 <= r["generation_batches"] <= 3 for r in rows)
    assert "kl" in rows[0] and rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)


def test_dynamic_sampling_keeps_informative_groups(tmp_path):
    agent = make_agent(tmp_path, dynamic_sampling=True, max_num_gen_batches=3)
    batch, tokens, draws = agent._sample_groups()
    scores = batch.penalized_rewards(0.0).view(-1, 4)
    informative = (scores != scores[:, :1]).any(1)
    # Every generated token counts: the unused episodes of the extra generations too (each >= 1 token).
    assert len(batch.infos) == 32 and tokens >= int(batch.response_mask.sum()) + 32 * (draws - 1)
    # Informative groups come first; a batch with dropped groups in it took every allowed generation.
    assert not (informative[1:] & ~informative[:-1]).any()
    assert informative.all() or draws == 3


def test_huge_beta_keeps_policy_at_reference(tmp_path):
    make_agent(tmp_path, beta=100.0, learning_rate=1e-3).learn(1500, progress_bar=False)
    rows = progress(tmp_path / "run")
    assert max(abs(r["kl"]) for r in rows) < 0.5
    assert np.mean([r["score"] for r in rows[-3:]]) < 2.0


def check_resume_equals_uninterrupted(tmp_path: Path, monkeypatch, make, **settings) -> None:
    """A run killed after its 2nd checkpointed iteration and resumed ends where an uninterrupted one does."""
    straight = make(tmp_path, "straight", save_steps=1, **settings).learn(700, progress_bar=False)
    cls = type(straight)
    original = cls._iteration

    class Killed(Exception):
        pass

    def dies_at_third(self):
        if self.iteration == 2:
            raise Killed  # killed mid-iteration: iteration 2's checkpoint is the last one written
        return original(self)

    monkeypatch.setattr(cls, "_iteration", dies_at_third)
    with pytest.raises(Killed):
        make(tmp_path, "killed", save_steps=1, **settings).learn(700, progress_bar=False)
    monkeypatch.setattr(cls, "_iteration", original)
    resumed = make(tmp_path, "killed", save_steps=1, **settings).learn(700, resume=True, progress_bar=False)
    assert resumed.iteration == straight.iteration > 2
    for (name, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [r["score"] for r in progress(tmp_path / "straight")] == [r["score"] for r in progress(tmp_path / "killed")]


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    check_resume_equals_uninterrupted(tmp_path, monkeypatch, make_agent, num_iterations=2, beta=0.05,
                                      dynamic_sampling=True)


# ---- surface --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, message", [
    (dict(loss_type="ppo"), "loss_type='ppo' is unknown"),
    (dict(num_generations=3), "num_generations=3 must be >= 2 and divide batch_size=32"),
    (dict(num_generations=1), "num_generations=1 must be >= 2"),
    (dict(beta=-0.1), "beta=-0.1 must be >= 0"),
    (dict(epsilon=-0.2), "epsilon=-0.2 and epsilon_high=None must be >= 0"),
    (dict(epsilon_high=-1.0), "epsilon_high=-1.0 must be >= 0"),
    (dict(scale_rewards="std"), "scale_rewards='std'"),
    (dict(num_iterations=0), "num_iterations=0"),
    (dict(gradient_accumulation_steps=3), "gradient_accumulation_steps=3 must be >= 1 and divide num_mini_batches=2"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GRPOConfig(**{**BASE, **settings})


def test_registry_and_cli(tmp_path, capsys):
    spec = get_agent("grpo")
    config = build_config(spec, {"batch_size": 16, "beta": 0.05, "num_generations": 4, "log_dir": str(tmp_path)})
    assert isinstance(config, GRPOConfig) and (config.beta, config.num_generations) == (0.05, 4)
    with pytest.raises(SystemExit) as exit_:
        cli(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--loss-type", "--epsilon-high", "--num-iterations", "--scale-rewards", "--dynamic-sampling",
                 "--mask-truncated-completions"):
        assert flag in out


def test_save_and_load_round_trip(tmp_path):
    agent = make_agent(tmp_path, beta=0.05)
    agent.learn(1, progress_bar=False)
    agent.save(tmp_path / "saved")
    loaded = GRPO.load(tmp_path / "saved", count_task())
    assert loaded.config == agent.config and loaded.iteration == 1
    for a, b in zip(agent.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    obs = {"input_ids": np.zeros(12, dtype=np.int64), "attention_mask": np.ones(12, dtype=np.int64)}
    action, _ = loaded.predict(obs, deterministic=True)
    assert 0 <= int(action) < loaded.task.vocab_size
