"""TRL interop: a TRL-trained reward model scores through HFRewardModel, and ours reads in TRL alike."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("trl", reason="TRL is not installed; `pip install trl` to test reward-model interop with it")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from reward_fixtures import random_samples, save_tiny_lm, share_of_a  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402
from trl import RewardConfig, RewardTrainer  # noqa: E402
from trl.trainer.reward_trainer import DataCollatorForPreference  # noqa: E402

from reward_models import (  # noqa: E402
    Comparison,
    FunctionRewardModel,
    HFRewardModel,
    SimulatedLabeler,
    evaluate_preferences,
    save_preferences,
    to_pairs,
)
from reward_models.hf_model import encode_for_reward  # noqa: E402
from reward_models.train import RewardTrainConfig, train_reward_model  # noqa: E402


def pairs(n: int, seed: int) -> list[Comparison]:
    labeler = SimulatedLabeler(gold=FunctionRewardModel(share_of_a), temperature=0.05, seed=seed)
    return to_pairs(labeler.label(random_samples(n, 2, seed=seed)))


def trl_trainer(model, tokenizer, out: Path, train: list[Comparison], val: list[Comparison], **args) -> RewardTrainer:
    # bf16=False: TRL's default bf16 autocast would round its own scores to ~3 digits.
    config = RewardConfig(
        output_dir=str(out), bf16=False, per_device_train_batch_size=16, per_device_eval_batch_size=64,
        learning_rate=3e-3, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, logging_steps=1000,
        dataloader_num_workers=0, seed=0, **args,
    )
    return RewardTrainer(
        model=model, args=config, processing_class=tokenizer,
        train_dataset=Dataset.from_list([c.to_json() for c in train]),
        eval_dataset=Dataset.from_list([c.to_json() for c in val]),
    )


def trl_rewards(trainer: RewardTrainer) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected rewards of the eval set exactly as TRL's compute_loss sees them."""
    data = trainer.eval_dataset
    batch = DataCollatorForPreference(pad_token_id=trainer.processing_class.pad_token_id)(list(data))
    model = trainer.model.eval()
    with torch.no_grad():
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    return torch.chunk(rewards, 2)


def test_trl_trained_reward_model_scores_through_hf_reward_model(tmp_path):
    base = save_tiny_lm(tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(base)
    train, val = pairs(300, seed=1), pairs(60, seed=2)
    trainer = trl_trainer(str(base), tok, tmp_path / "trl", train, val, max_steps=40)
    trainer.train()
    trainer.save_model(str(tmp_path / "trl_rm"))

    # The same token ids: prompt + response + eos, TRL's format.
    ours_ids = encode_for_reward(tok, [c.prompt for c in val], [c.chosen for c in val], None)
    assert ours_ids == [list(x) for x in trainer.eval_dataset["chosen_ids"]]

    chosen, rejected = trl_rewards(trainer)
    rm = HFRewardModel(tmp_path / "trl_rm", batch_size=7)
    prompts = [c.prompt for c in val]
    assert torch.allclose(torch.from_numpy(rm.score(prompts, [c.chosen for c in val])).float(), chosen, atol=1e-5)
    assert torch.allclose(torch.from_numpy(rm.score(prompts, [c.rejected for c in val])).float(), rejected, atol=1e-5)
    trl_accuracy = trainer.evaluate()["eval_accuracy"]
    accuracy = evaluate_preferences(rm, val).accuracy
    print(f"\nTRL-trained reward model: TRL eval accuracy {trl_accuracy:.3f}, ours {accuracy:.3f}")
    assert accuracy == pytest.approx(trl_accuracy, abs=1 / len(val)) and accuracy > 0.7


def test_our_reward_model_loads_in_trl_and_scores_the_same(tmp_path):
    base = save_tiny_lm(tmp_path / "base")
    train, val = pairs(300, seed=1), pairs(60, seed=2)
    save_preferences(tmp_path / "train.jsonl", train)
    save_preferences(tmp_path / "val.jsonl", val)
    result = train_reward_model(RewardTrainConfig(
        model=str(base), data=str(tmp_path / "train.jsonl"), val_data=str(tmp_path / "val.jsonl"),
        out=str(tmp_path / "rm"), learning_rate=3e-3, batch_size=16, progress=False,
    ))
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")  # TRL's expected form
    assert model.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    trainer = trl_trainer(model, tok, tmp_path / "trl", train, val)  # RewardTrainer checks num_labels == 1
    chosen, rejected = trl_rewards(trainer)
    rm = HFRewardModel(tmp_path / "rm")
    prompts = [c.prompt for c in val]
    assert torch.allclose(torch.from_numpy(rm.score(prompts, [c.chosen for c in val])).float(), chosen, atol=1e-5)
    assert torch.allclose(torch.from_numpy(rm.score(prompts, [c.rejected for c in val])).float(), rejected, atol=1e-5)
    # TRL sees the normalized scores too: mean 0, std 1 on the reference (training) responses.
    reference = list(dict.fromkeys(r for c in train for r in (c.chosen, c.rejected)))
    s = HFRewardModel.from_model(model, tok).score([""] * len(reference), reference)
    assert result.normalization.output_offset == 0.0
    assert abs(s.mean()) < 1e-3 and abs(s.std() - 1) < 1e-3
    accuracy = evaluate_preferences(rm, val).accuracy
    assert trainer.evaluate()["eval_accuracy"] == pytest.approx(accuracy, abs=1 / len(val))
