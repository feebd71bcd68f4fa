"""The reward-model bias audit (reward_models/audit.py) and train-rm --debias length (reward_models/debias.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from reward_fixtures import random_samples, save_tiny_lm, share_of_a

from reward_models import FunctionRewardModel, HFRewardModel, SimulatedLabeler, save_preferences
from reward_models.audit import (
    audit_pairs,
    audit_scores,
    cheap_features,
    cli,
    gold_pair_accuracy,
    load_scored_samples,
)
from reward_models.debias import length_only_coef
from reward_models.preferences import Ranking
from reward_models.train import RewardTrainConfig, train_reward_model
from reward_models.train import cli as train_cli
from rlhf_common.io import DataError

WORDS = ["good", "day", "bad", "cat", "sun", "rain", "great", "dog"]


def random_texts(n: int, seed: int) -> list[str]:
    """Sentences of 1 to 20 random words, some with commas and a final mark, so every feature varies."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) + ("," if rng.random() < 0.2 else "") for _ in range(rng.randint(1, 20)))
            + rng.choice(["", ".", "!"]) for _ in range(n)]


def test_audit_detects_a_planted_length_bias():
    rng = np.random.default_rng(0)
    texts = random_texts(600, seed=0)
    gold = rng.normal(size=600)
    features = cheap_features(texts)
    fair = audit_scores(gold + 0.3 * rng.normal(size=600), gold, features)
    biased = audit_scores(gold + 0.3 * rng.normal(size=600) + 0.02 * features["length"], gold, features)
    length_fair, length_biased = fair["terms"]["length"], biased["terms"]["length"]
    assert abs(length_fair["t"]) < 3 and length_fair["incremental_r2"] < 0.01  # gold alone: nothing beyond it
    assert length_biased["t"] > 10 and length_biased["p"] < 1e-6 and length_biased["incremental_r2"] > 0.2
    assert biased["r2_full"] > biased["r2_gold"]
    assert fair["terms"]["gold"]["coef"] > 0.9 and 0.0 < fair["r2_gold"] <= 1.0


def test_cheap_features_by_hand():
    f = cheap_features(["Hi, you!", "a b a b a b"])
    assert f["length"].tolist() == [8, 11] and f["punctuation"].tolist() == [2, 0]
    assert f["repetition"][0] == 0 and f["repetition"][1] == pytest.approx(0.6)  # 3 of 5 bigrams repeat one


def test_gold_pair_accuracy_by_hand():
    result = gold_pair_accuracy([3.0, 1.0, 2.0, 5.0, 5.0], [1.0, 0.0, 0.0, 2.0, 1.0], ["p", "p", "p", "q", "q"])
    assert result["gold_pairs"] == 3  # (p1, p2) have equal gold: left out
    assert result["gold_pair_accuracy"] == pytest.approx(2.5 / 3)  # p's two pairs right, q's tie counts 1/2


def test_pairwise_audit_finds_a_reward_model_that_prefers_longer():
    items = [Ranking("", ("short", "much longer one")), Ranking("", ("a longer answer", "tiny"))]
    lengths = [float(len(r)) for it in items for r in it.responses]
    result = audit_pairs(lengths, items)  # scores = length: always prefers the longer
    assert result["rm_prefers_longer"] == 1.0 and result["labels_prefer_longer"] == 0.5
    assert result["excess_longer"] == 0.5
    assert result["accuracy_longer_chosen"] == 1.0 and result["accuracy_shorter_chosen"] == 0.0


def test_length_only_coef_recovers_a_known_coefficient():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4000, 2))
    first_wins = rng.random(4000) < 1 / (1 + np.exp(-1.5 * (z[:, 0] - z[:, 1])))
    rankings = [list(row) if win else list(row[::-1]) for row, win in zip(z, first_wins, strict=True)]
    assert length_only_coef(rankings) == pytest.approx(1.5, abs=0.15)


# ---- --debias length on a tiny reward model -------------------------------------------
@pytest.fixture(scope="module")
def biased_work(tmp_path_factory) -> Path:
    """A tiny GPT-2 and rankings of a/b strings by a labeler who likes 'a' and, more, long strings."""
    root = tmp_path_factory.mktemp("debias")
    save_tiny_lm(root / "base")
    labeler = SimulatedLabeler(gold=FunctionRewardModel(share_of_a), temperature=0.05, bias_per_char=0.08, seed=0)
    save_preferences(root / "train.jsonl", labeler.label(random_samples(240, 4, seed=1)))
    samples = random_samples(100, 4, seed=2)
    rows = [{"prompt": it.prompt, "responses": list(it.responses),
             "gold": [share_of_a("", r) for r in it.responses]} for it in samples]
    (root / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, debias in (("plain", None), ("debiased", "length")):
        train_reward_model(RewardTrainConfig(
            model=str(root / "base"), data=str(root / "train.jsonl"), out=str(root / name), val_fraction=0.0,
            learning_rate=3e-3, batch_size=16, num_train_epochs=2, progress=False, debias=debias))
    return root


def length_coef(root: Path, name: str) -> dict:
    prompts, responses, gold = load_scored_samples(root / "samples.jsonl")
    scores = HFRewardModel(root / name).score(prompts, responses)
    return audit_scores(scores, gold, cheap_features(responses))["terms"]["length"]


def test_debias_length_removes_a_planted_length_bias(biased_work):
    plain, debiased = length_coef(biased_work, "plain"), length_coef(biased_work, "debiased")
    print(f"\nlength coefficient: plain {plain['coef']:+.3f} ± {plain['se']:.3f}, "
          f"debiased {debiased['coef']:+.3f} ± {debiased['se']:.3f}")
    assert plain["t"] > 5  # the labeler's bias is learned
    assert abs(debiased["coef"]) < 0.5 * plain["coef"]
    record = json.loads((biased_work / "debiased" / "debias.json").read_text())
    assert record["debias"] == "length" and record["initial_coef"] > 0.5  # the covariate took the bias
    assert not (biased_work / "plain" / "debias.json").exists()


def test_audit_cli_writes_its_files(biased_work, tmp_path, capsys):
    prefs = biased_work / "train.jsonl"
    code = cli(["--reward-model", str(biased_work / "plain"), "--samples", str(biased_work / "samples.jsonl"),
                "--preferences", str(prefs), "--out", str(tmp_path / "audit")])
    assert code == 0
    record = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert set(record["samples"]["terms"]) == {"gold", "length"}  # a/b strings: no punctuation, no repeated words
    assert record["samples"]["constant_features"] == ["punctuation", "repetition"]
    assert record["pairs"]["pairs"] > 0
    assert (tmp_path / "audit" / "residual_vs_length.png").stat().st_size > 1000
    assert "| length |" in (tmp_path / "audit" / "audit.md").read_text() and "| length |" in capsys.readouterr().out


def test_bad_samples_name_file_and_line(biased_work, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "", "response": "ab", "gold": 0.5}\n{"prompt": "", "response": "ba"}\n')
    with pytest.raises(DataError, match=rf"{bad}:2: no 'gold' score.*--gold upbeat"):
        load_scored_samples(bad)
    bad.write_text('{"prompt": "", "responses": ["ab", "ba"], "gold": [0.5]}\n')
    with pytest.raises(DataError, match=rf"{bad}:1: 'gold' must be 2 finite"):
        load_scored_samples(bad)
    code = cli(["--reward-model", str(biased_work / "plain"), "--samples", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2 and f"{bad}:1" in capsys.readouterr().err
    assert load_scored_samples(bad, FunctionRewardModel(share_of_a))[2].tolist() == [0.5, 0.5]  # a scorer: no key
    assert cli(["--reward-model", "x", "--out", str(tmp_path / "o")]) == 2  # neither --samples nor --preferences


def test_unknown_debias_name_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="debias='verbosity'.*'length'"):
        RewardTrainConfig(model="m", data="d", out="o", debias="verbosity")
    with pytest.raises(SystemExit) as e:
        train_cli(["--model", "m", "--data", "d", "--out", str(tmp_path), "--debias", "verbosity"])
    assert e.value.code == 2 and "--debias" in capsys.readouterr().err
