"""Bradley-Terry reward-model training: loss, padding, head init, learning, normalization, resume."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from reward_fixtures import save_tiny_lm, share_of_a, write_synthetic_preferences
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

from reward_models import (
    FunctionRewardModel,
    HFRewardModel,
    evaluate_preferences,
    load_preferences,
)
from reward_models.hf_model import NORMALIZATION_FILE, encode_for_reward, load_reward_backbone, sequence_scores
from reward_models.train import (
    CHECKPOINT_DIR,
    LOG_FILE,
    RewardTrainConfig,
    cli,
    ranking_loss,
    train_reward_model,
)
from rlhf_common.io import DataError
from text_env.char_tokenizer import char_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny GPT-2 causal LM folder and synthetic preferences (rankings of K = 4)."""
    root = tmp_path_factory.mktemp("rm")
    save_tiny_lm(root / "base")
    write_synthetic_preferences(root)
    return root


def config(work: Path, out: Path, **overrides) -> RewardTrainConfig:
    options = dict(
        model=str(work / "base"), data=str(work / "train.jsonl"), val_data=str(work / "val.jsonl"),
        out=str(out), learning_rate=3e-3, batch_size=16, num_train_epochs=2, eval_steps=10, progress=False,
    )
    options.update(overrides)
    return RewardTrainConfig(**options)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_scores(work: Path, a: Path, b: Path) -> None:
    """Two models give the same validation scores up to a constant.

    Bradley-Terry is shift-invariant, so the gradient along a constant shift of all scores
    is zero up to rounding, and Adam turns rounding noise of different batch shapes or
    thread counts into a small common shift; what the loss sees must agree.
    """
    val = load_preferences(work / "val.jsonl")
    prompts, responses = [it.prompt for it in val for _ in it.responses], [r for it in val for r in it.responses]
    tok = char_tokenizer("ab")
    scores = [
        HFRewardModel.from_model(AutoModelForSequenceClassification.from_pretrained(f), tok).score(prompts, responses)
        for f in (a, b)
    ]
    diff = scores[0] - scores[1]
    assert np.abs(diff - diff.mean()).max() < 1e-3 * (1 + np.abs(scores[0]).max())


def log_steps(out: Path) -> list[int]:
    with (out / LOG_FILE).open() as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


# ---- the loss ------------------------------------------------------------------------
def test_ranking_loss_by_hand():
    scores = torch.tensor([2.0, 1.0, 0.0, 0.5, 1.5])  # a ranking of 3, then a pair
    loss = ranking_loss(scores, [3, 2])

    def nls(x: float) -> float:
        return -math.log(1 / (1 + math.exp(-x)))

    ranking = (nls(1.0) + nls(2.0) + nls(1.0)) / 3
    pair = nls(-1.0)
    assert loss.item() == pytest.approx((ranking + pair) / 2, rel=1e-6)


def test_ranking_loss_scores_each_response_once_and_all_pairs_get_gradient():
    scores = torch.zeros(4, requires_grad=True)
    ranking_loss(scores, [4]).backward()
    # d/ds_i of mean over pairs of -log sigmoid(s_hi - s_lo) at 0: 0.5 * (#below - #above) / 6
    assert scores.grad.tolist() == pytest.approx([-0.25, -1 / 12, 1 / 12, 0.25])


# ---- inputs and padding --------------------------------------------------------------
@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_score_does_not_depend_on_padding(tmp_path, pad_is_eos):
    folder = save_tiny_lm(tmp_path / "lm", pad_is_eos=pad_is_eos)
    model = load_reward_backbone(str(folder)).eval()
    tok = HFRewardModel.from_model(model, char_tokenizer("ab")).tokenizer
    model.config.pad_token_id = 2 if pad_is_eos else 0
    short, long = encode_for_reward(tok, ["ab", "b"], ["ba", "aabbaabbababbbaa"], None)
    with torch.no_grad():
        alone = sequence_scores(model, [short])
        for side in ("right", "left"):
            batch = sequence_scores(model, [short, long], padding_side=side)
            assert batch[0].item() == pytest.approx(alone.item(), abs=1e-5), side
            assert batch[1].item() == pytest.approx(sequence_scores(model, [long]).item(), abs=1e-5), side
        # and the score really is read at the end, not at a fixed position
        assert sequence_scores(model, [short[:-2] + short[-1:]]).item() != pytest.approx(alone.item(), abs=1e-4)


def test_format_is_prompt_response_eos_and_long_inputs_keep_their_end():
    tok = char_tokenizer("ab")
    assert encode_for_reward(tok, ["ab"], ["b"], None) == [[1, 4, 5, 5, 2]]  # bos a b b eos
    assert encode_for_reward(tok, ["a"], ["b<eos>"], None) == [[1, 4, 5, 2]]  # no second eos
    with pytest.warns(UserWarning, match="1 of 2 .* exceed max_length=3"):
        ids = encode_for_reward(tok, ["aaaa", ""], ["b", "a"], 3)
    assert ids == [[4, 5, 2], [1, 4, 2]]


# ---- the model -------------------------------------------------------------------------
def test_backbone_from_causal_lm_keeps_weights_and_draws_a_new_head(work):
    lm = AutoModelForCausalLM.from_pretrained(work / "base")
    rm = load_reward_backbone(str(work / "base"), seed=1)
    assert torch.equal(rm.transformer.h[0].attn.c_attn.weight, lm.transformer.h[0].attn.c_attn.weight)
    head = rm.score.weight
    d = head.shape[1]
    assert head.shape == (1, d)
    assert 0.5 / math.sqrt(d + 1) < head.std().item() < 1.5 / math.sqrt(d + 1)
    assert abs(head.mean().item()) < 3 / math.sqrt(d * (d + 1))
    assert torch.equal(head, load_reward_backbone(str(work / "base"), seed=1).score.weight)  # seeded


def test_hf_reward_model_refuses_a_folder_without_a_trained_head(work):
    with pytest.raises(ValueError, match=r"score\.weight.*no trained reward model"):
        HFRewardModel(work / "base")


# ---- training ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(work):
    t = time.perf_counter()
    result = train_reward_model(config(work, work / "rm"))
    return result, time.perf_counter() - t


def test_training_learns_the_labelers_preferences(work, trained):
    result, seconds = trained
    assert result.finished and result.steps == 2 * math.ceil(240 / 16)
    val = load_preferences(work / "val.jsonl")
    gold_accuracy = evaluate_preferences(FunctionRewardModel(share_of_a), val).accuracy  # labeler vs its gold
    rm = HFRewardModel(work / "rm")
    accuracy = evaluate_preferences(rm, val).accuracy
    print(f"\nval accuracy {accuracy:.3f} (gold's agreement with the labels {gold_accuracy:.3f}), {seconds:.1f} s")
    assert accuracy > 0.8
    assert accuracy == pytest.approx(result.val.accuracy)  # the saved model is the evaluated one
    before = AutoModelForSequenceClassification.from_pretrained(work / "base", num_labels=1).state_dict()
    after = weights(work / "rm")
    changed = [k for k in after if k in before and not torch.equal(before[k], after[k])]
    assert "transformer.h.0.attn.c_attn.weight" in changed


def test_saved_folder_is_a_one_label_sequence_classifier(work, trained):
    files = sorted(p.name for p in (work / "rm").iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", NORMALIZATION_FILE, LOG_FILE} <= set(files)
    assert CHECKPOINT_DIR not in files and not any(f.endswith(".bin") for f in files)
    cfg = json.loads((work / "rm" / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2ForSequenceClassification"]
    assert cfg["pad_token_id"] == 0 and len(cfg["id2label"]) == 1
    assert log_steps(work / "rm") == list(range(1, 31))


@pytest.mark.parametrize(
    "arch, folded", [("gpt2", "transformer.ln_f.bias"), ("llama", ""), ("bert", "classifier.bias")]
)
def test_normalized_on_reference_samples_after_reload(work, tmp_path, arch, folded):
    if arch == "bert":
        tok = char_tokenizer("ab")
        torch.manual_seed(0)
        BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=48, pad_token_id=0)
                        ).save_pretrained(tmp_path / "base")
        tok.save_pretrained(tmp_path / "base")
    else:
        save_tiny_lm(tmp_path / "base", arch=arch)
    reference = tmp_path / "reference.jsonl"
    rng = np.random.default_rng(0)
    rows = [{"prompt": "", "response": "".join(rng.choice(["a", "b"], size=rng.integers(3, 12)))} for _ in range(60)]
    reference.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = train_reward_model(config(work, tmp_path / "rm", model=str(tmp_path / "base"), num_train_epochs=1,
                                       reference_data=str(reference), eval_steps=0))
    assert result.normalization.folded_into == folded
    assert (result.normalization.output_offset == 0.0) == bool(folded)
    responses = [r["response"] for r in rows]
    s = HFRewardModel(tmp_path / "rm").score([""] * len(rows), responses)
    assert abs(s.mean()) < 1e-3 and abs(s.std() - 1) < 1e-3
    saved = json.loads((tmp_path / "rm" / NORMALIZATION_FILE).read_text())
    assert saved["shift"] == pytest.approx(result.normalization.shift) and saved["reference_samples"] == 60


def test_micro_batches_accumulate_to_the_same_step(work, tmp_path):
    whole = train_reward_model(config(work, tmp_path / "a", max_steps=3, save_steps=0))
    parts = train_reward_model(config(work, tmp_path / "b", max_steps=3, save_steps=0, micro_batch_size=5))
    assert not whole.finished and not parts.finished
    assert_same_scores(work, tmp_path / "a" / CHECKPOINT_DIR / "model", tmp_path / "b" / CHECKPOINT_DIR / "model")


def test_resume_after_max_steps_equals_an_uninterrupted_run(work, tmp_path, trained):
    out = tmp_path / "rm"
    first = train_reward_model(config(work, out, max_steps=17))
    assert (first.finished, first.steps) == (False, 17)
    assert (out / CHECKPOINT_DIR / "state.json").is_file() and log_steps(out) == list(range(1, 18))
    second = train_reward_model(config(work, out))
    assert second.finished and second.steps == 30
    assert log_steps(out) == list(range(1, 31))
    full, resumed = weights(work / "rm"), weights(out)
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # same batches, same shapes: bit for bit


def test_resume_after_the_process_is_killed(work, tmp_path):
    out = tmp_path / "rm"
    argv = ["--model", str(work / "base"), "--data", str(work / "train.jsonl"), "--val-data", str(work / "val.jsonl"),
            "--out", str(out), "--learning-rate", "3e-3", "--batch-size", "16", "--num-train-epochs", "100",
            "--save-steps", "3", "--eval-steps", "0", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", f"from reward_models.train import cli; cli({argv!r})"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = out / CHECKPOINT_DIR / "state.json"
    try:
        deadline = time.monotonic() + 120
        while not (state.is_file() and json.loads(state.read_text())["step"] >= 6):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    saved = json.loads(state.read_text())["step"]
    assert 6 <= saved < 1500
    stop = saved + 4
    resumed = train_reward_model(config(work, out, num_train_epochs=100, save_steps=3, eval_steps=0, max_steps=stop))
    assert resumed.steps == stop and log_steps(out) == list(range(1, stop + 1))
    fresh = train_reward_model(config(work, tmp_path / "fresh", num_train_epochs=100, save_steps=3, eval_steps=0,
                                      max_steps=stop))
    assert fresh.steps == stop
    assert_same_scores(work, out / CHECKPOINT_DIR / "model", tmp_path / "fresh" / CHECKPOINT_DIR / "model")


def test_resume_refuses_other_settings_and_no_resume_starts_afresh(work, tmp_path):
    out = tmp_path / "rm"
    train_reward_model(config(work, out, max_steps=2))
    with pytest.raises(ValueError, match=r"other settings \(--learning-rate 0.003 -> 0.001\).*--no-resume"):
        train_reward_model(config(work, out, learning_rate=1e-3, max_steps=4))
    result = train_reward_model(config(work, out, learning_rate=1e-3, max_steps=1, resume=False))
    assert result.steps == 1 and log_steps(out) == [1]


def test_out_folder_with_other_files_is_refused(work, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds other files"):
        train_reward_model(config(work, tmp_path))
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_config_is_checked():
    with pytest.raises(ValueError, match="batch_size=0"):
        RewardTrainConfig(model="m", data="d", out="o", batch_size=0)
    with pytest.raises(ValueError, match="val_fraction"):
        replace(RewardTrainConfig(model="m", data="d", out="o"), val_fraction=1.0)


def test_cli(work, tmp_path, capsys):
    out = tmp_path / "rm"
    code = cli(["--model", str(work / "base"), "--data", str(work / "train.jsonl"), "--out", str(out),
                "--val-fraction", "0.2", "--learning-rate", "3e-3", "--batch-size", "32", "--no-progress"])
    assert code == 0
    assert "validation accuracy" in capsys.readouterr().out
    assert HFRewardModel(out).score(["", ""], ["aaaaa", "bbbbb"]).shape == (2,)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "", "responses": ["a"]}\n')
    assert cli(["--model", str(work / "base"), "--data", str(bad), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert f"{bad}:1: a ranking needs at least 2 responses" in capsys.readouterr().err


def test_hf_reward_model_batches_and_keeps_order(work, trained):
    rm = HFRewardModel(work / "rm", batch_size=3)
    responses = ["a" * n + "b" * (9 - n) for n in range(10)] + ["ab", "b"]
    s = rm.score([""] * len(responses), responses)
    one_by_one = [rm.score([""], [r])[0] for r in responses]
    assert s == pytest.approx(one_by_one, abs=1e-5)
    assert s[9] > s[0]  # more 'a' is better
    assert rm.score([], []).shape == (0,)
    assert rm.model.training is False


def test_tensorboard_log_is_kept_with_the_model(work, tmp_path):
    pytest.importorskip("tensorboard", reason="--tensorboard needs the tensorboard package")
    out = tmp_path / "rm"
    train_reward_model(config(work, out, num_train_epochs=1, tensorboard=True, eval_steps=5))
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())


def test_a_failure_after_the_last_step_loses_no_training(work, tmp_path, monkeypatch):
    import reward_models.train as train_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    out = tmp_path / "rm"
    with monkeypatch.context() as m:
        m.setattr(train_module, "normalize_scores", broken)
        with pytest.raises(OSError, match="disk full"):
            train_reward_model(config(work, out, num_train_epochs=1))
    assert json.loads((out / CHECKPOINT_DIR / "state.json").read_text())["step"] == 15
    result = train_reward_model(config(work, out, num_train_epochs=1))  # resumes after the last step: no step redone
    assert result.finished and result.steps == 15 and log_steps(out) == list(range(1, 16))
    assert result.val is not None and result.val.accuracy > 0.7
    assert not (out / CHECKPOINT_DIR).exists()


def test_too_few_reference_samples_fail_before_training(work, tmp_path):
    reference = tmp_path / "ref.jsonl"
    reference.write_text('{"prompt": "", "response": "ab"}\n')
    with pytest.raises(DataError, match=rf"{reference}: 1 reference sample\(s\).*--no-normalize"):
        train_reward_model(config(work, tmp_path / "rm", reference_data=str(reference)))
    assert not (tmp_path / "rm").exists()
