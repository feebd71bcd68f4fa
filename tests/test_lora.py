"""LoRA PPOKL/RLOO: adapters train, base weights stay, the reference is the adapter-disabled policy."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rl_helpers import count_task, tiny_lm
from transformers import AutoModelForCausalLM

from agents import PPOKL, RLOO, PPOKLConfig, RLOOConfig
from agents.lora import AdapterDisabled, LoraSettings, add_lora, is_lora
from agents.ppo_kl import cli

pytest.importorskip("peft")
torch.set_num_threads(1)
BASE = dict(batch_size=32, num_mini_batches=2, num_ppo_epochs=4, learning_rate=3e-3, beta=0.0, kl_target=None,
            save_steps=0, lora=LoraSettings(r=4, alpha=8))


def make_agent(tmp_path: Path, reference=None, **overrides) -> PPOKL:
    task = count_task()
    config = PPOKLConfig(**{**BASE, "log_dir": str(tmp_path / "run"), **overrides})
    return PPOKL(task, policy=tiny_lm(task), config=config, reference=reference)


def progress(log_dir: Path) -> list[dict[str, float]]:
    with open(log_dir / "progress.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def base_weights(agent: PPOKL) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in agent.policy.named_parameters() if not v.requires_grad}


def test_only_adapters_train_and_reference_is_the_disabled_adapter(tmp_path):
    agent = make_agent(tmp_path, beta=0.2)
    assert is_lora(agent.policy) and isinstance(agent.reference, AdapterDisabled)
    assert agent.reference.model is agent.policy  # one set of weights in memory
    trainable = {n for n, p in agent.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    optimised = {id(p) for group in agent.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in agent.policy.parameters() if not p.requires_grad}.isdisjoint(optimised)
    frozen = base_weights(agent)
    agent.learn(1, progress_bar=False)
    # B = 0 at init: policy == reference; the KL is 0 up to the rounding between the rollout's
    # cached decoding and the reference's packed pass.
    assert abs(progress(tmp_path / "run")[0]["kl"]) < 1e-5
    assert all(torch.equal(frozen[k], v) for k, v in agent.policy.named_parameters() if k in frozen)
    ids = torch.tensor([[1, 4, 5, 4, 4]])
    with torch.no_grad():
        policy_logits = agent.policy(input_ids=ids).logits
        reference_logits = agent.reference(input_ids=ids).logits
        with agent.policy.disable_adapter():
            assert torch.equal(agent.policy(input_ids=ids).logits, reference_logits)
    assert not torch.allclose(policy_logits, reference_logits)  # the adapters moved the policy


def test_lora_ppokl_learns_count_task(tmp_path):
    # A random 2-layer model's attention alone barely moves its output; an adapter on the
    # (tied, frozen) output head lets the policy learn the toy task in a few iterations.
    agent = make_agent(tmp_path, learning_rate=1e-2, lora=LoraSettings(r=8, alpha=16,
                                                                      target_modules=("c_attn", "lm_head")))
    agent.learn(2500, progress_bar=False)
    rows = progress(tmp_path / "run")
    assert rows[0]["score"] < 1.5
    assert np.mean([r["score"] for r in rows[-3:]]) > 5.0
    assert np.mean([r["kl"] for r in rows[-3:]]) > 1.0  # beta = 0: the adapters pull away from the base


def test_checkpoint_holds_adapter_and_base_and_resumes_identically(tmp_path):
    agent = make_agent(tmp_path, kl_target=1.0, beta=0.1)
    agent.learn(300, progress_bar=False)
    agent.save(tmp_path / "saved")
    saved = tmp_path / "saved"
    assert (saved / "policy" / "adapter_config.json").is_file()
    assert not (saved / "reference").exists()  # the reference is policy_base itself
    state = json.loads((saved / "state.json").read_text())
    assert state["config"]["lora"] == {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}
    base = AutoModelForCausalLM.from_pretrained(saved / "policy_base")  # a plain model, no adapter keys
    for name, param in base.named_parameters():
        assert torch.equal(param, tiny_lm(count_task()).get_parameter(name))
    loaded = PPOKL.load(saved, count_task())
    assert loaded.config.lora == agent.config.lora and isinstance(loaded.reference, AdapterDisabled)
    for x, y in zip(agent.policy.state_dict().values(), loaded.policy.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    loaded.config.log_dir = str(tmp_path / "run2")
    agent.learn(200, reset_num_timesteps=False, progress_bar=False)
    loaded.learn(200, reset_num_timesteps=False, progress_bar=False)
    for x, y in zip(agent.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert torch.equal(x, y)


def test_explicit_reference_is_a_separate_model_and_saved(tmp_path):
    task = count_task()
    agent = make_agent(tmp_path, reference=tiny_lm(task, seed=5))
    assert not isinstance(agent.reference, AdapterDisabled) and not is_lora(agent.reference)
    agent.learn(1, progress_bar=False)
    assert progress(tmp_path / "run")[0]["kl"] != 0.0  # a different model than the policy's base
    agent.save(tmp_path / "saved")
    loaded = PPOKL.load(tmp_path / "saved", task)
    for x, y in zip(agent.reference.parameters(), loaded.reference.parameters(), strict=True):
        assert torch.equal(x, y)


def test_rloo_with_lora(tmp_path):
    task = count_task()
    config = RLOOConfig(batch_size=16, num_mini_batches=2, num_generations=4, learning_rate=3e-3, save_steps=0,
                        log_dir=str(tmp_path / "run"), lora=LoraSettings(r=2))
    agent = RLOO(task, policy=tiny_lm(task), config=config)
    assert isinstance(agent.reference, AdapterDisabled)
    before = {n: p.clone() for n, p in agent.policy.named_parameters()}
    agent.learn(1, progress_bar=False)
    changed = {n for n, p in agent.policy.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)


def test_target_modules_follow_the_architecture():
    task = count_task()
    gpt2 = add_lora(tiny_lm(task), LoraSettings())
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in gpt2.named_parameters() if "lora_A" in n}
    assert adapted == {"c_attn"}  # peft's GPT-2 default
    explicit = add_lora(tiny_lm(task), LoraSettings(target_modules=("c_fc",)))
    assert {n for n, _ in explicit.named_parameters() if "lora_A" in n} and not any(
        "c_attn.lora" in n for n, _ in explicit.named_parameters())


def test_settings_parse_validate_and_cli_flag(tmp_path):
    assert LoraSettings.parse("r=16,alpha=32,target_modules=q_proj+v_proj") == LoraSettings(
        r=16, alpha=32.0, target_modules=("q_proj", "v_proj"))
    assert LoraSettings.parse("default") == LoraSettings()
    with pytest.raises(ValueError, match="key=value pairs"):
        LoraSettings.parse("rank=4")
    with pytest.raises(ValueError, match="r=0 must be >= 1"):
        LoraSettings(r=0)
    with pytest.raises(SystemExit):
        cli(["--lora", "bogus=1"])


def test_missing_peft_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match="pip install peft"):
        add_lora(tiny_lm(count_task()), LoraSettings())
