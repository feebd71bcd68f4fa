"""Labeler reliability: the Dawid-Skene estimator, weighted preference rows and training, the CLI and the page API."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from reward_fixtures import random_samples, save_tiny_lm, share_of_a

from reward_models import (
    Comparison,
    FunctionRewardModel,
    PromptResponses,
    Ranking,
    SimulatedLabeler,
    load_preferences,
)
from reward_models.hf_model import load_reward_backbone
from reward_models.labeling import LabelingServer, LabelStore
from reward_models.labeling.cli import cli
from reward_models.reliability import estimate_reliability, format_reliability, reliability_weights, weighted_rows
from reward_models.train import RewardTrainConfig, ranking_loss, train_reward_model
from rlhf_common.io import DataError
from rlhf_common.training import claim_run_folder

LABELERS = ("a", "b", "c", "d", "e")
TOLERANCE = 0.04
"""Allowed |estimated - true| flip rate with ~2,000 judgements per labeler (about 4 standard errors)."""


def simulate(flips: tuple[float, ...], n_items: int = 600, k: int = 4, per_item: int = 3, seed: int = 0):
    """Dawid-Skene's own model: a true order per item, each of 3 random labelers flips each pair with its rate."""
    rng = np.random.default_rng(seed)
    judgements, truth = [], {}
    for item in range(n_items):
        order = rng.permutation(k)  # best first
        for i in range(k):
            for j in range(i + 1, k):
                hi, lo = int(order[i]), int(order[j])
                truth[item, min(hi, lo), max(hi, lo)] = hi < lo
        for who in rng.choice(len(flips), per_item, replace=False):
            for i in range(k):
                for j in range(i + 1, k):
                    hi, lo = int(order[i]), int(order[j])
                    if rng.random() < flips[who]:
                        hi, lo = lo, hi
                    judgements.append((item, item, LABELERS[who], hi, lo))
    return judgements, truth


def test_estimator_recovers_known_flip_rates_and_pair_orders():
    flips = (0.05, 0.1, 0.15, 0.3, 0.4)
    judgements, truth = simulate(flips)
    report = estimate_reliability(judgements, bootstrap=30)
    for r, f in zip(report.labelers, flips, strict=True):
        assert abs(r.flip_rate - f) < TOLERANCE, (r, f)
        assert 0.003 < r.se < 0.03 and r.judgements > 1500
    # Most posteriors are confident, and the confident ones are right.
    first_wins = np.array([truth[key] for key in report.pairs])
    sure = np.abs(report.posterior - 0.5) > 0.4
    assert sure.mean() > 0.5 and ((report.posterior[sure] > 0.5) == first_wins[sure]).mean() > 0.97
    weights = [r.weight for r in report.labelers]
    assert weights[0] == 1.0 and weights == sorted(weights, reverse=True) and weights[-1] < 0.3


def test_adversarial_labeler_is_detected_and_dropped_or_reversed():
    judgements, _ = simulate((0.1, 0.1, 0.15, 0.2, 0.9), n_items=300)
    report = estimate_reliability(judgements, bootstrap=20)
    adversary = report.by_labeler()["e"]
    assert adversary.adversarial and adversary.flip_rate > 0.8 and adversary.weight == 0.0
    assert not any(r.adversarial for r in report.labelers[:4])
    rows = [{"prompt": "p", "responses": ["x", "y", "z"], "labeler": "e", "weight": 0.5},
            {"prompt": "p", "chosen": "x", "rejected": "y", "score_chosen": 2, "score_rejected": 1, "labeler": "e"}]
    assert [r["weight"] for r in weighted_rows(rows, report)] == [0.0, 0.0]
    reversed_report = estimate_reliability(judgements, bootstrap=0, reverse_adversarial=True)
    flipped = weighted_rows(rows, reversed_report)
    assert flipped[0]["responses"] == ["z", "y", "x"] and flipped[0]["weight"] == pytest.approx(
        0.5 * reversed_report.by_labeler()["e"].weight) and flipped[0]["weight"] > 0.3
    assert (flipped[1]["chosen"], flipped[1]["score_chosen"]) == ("y", 1)
    assert reliability_weights([0.6, 0.7]).tolist() == [0.0, 0.0]  # nobody beats a coin: no weights to give


def test_no_overlap_means_no_estimate():
    report = estimate_reliability([(1, 1, "a", 0, 1), (2, 2, "b", 0, 1)])
    assert [(r.labeler, r.flip_rate, r.weight) for r in report.labelers] == [("a", None, 1.0), ("b", None, 1.0)]
    assert "no response pair was judged by two or more labelers" in format_reliability(report)


def test_simulated_labelers_from_a_preference_file_and_weighted_export(tmp_path, capsys):
    """SimulatedLabeler rankings with a "labeler" field: the unreliable ones rank last; --out writes weights."""
    gold = FunctionRewardModel(share_of_a)
    items = random_samples(300, 4, seed=3)
    rng = np.random.default_rng(0)
    who = [rng.choice(5, 3, replace=False) for _ in items]
    rows = []
    for n, flip in enumerate((0.0, 0.0, 0.0, 0.4, 0.4)):
        mine = [it for it, w in zip(items, who, strict=True) if n in w]
        labeler = SimulatedLabeler(gold=gold, temperature=0.05, flip_prob=flip, seed=n)
        rows += [{**r.to_json(), "labeler": f"s{n}"} for r in labeler.label(mine)]
    labels, out = tmp_path / "prefs.jsonl", tmp_path / "weighted.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli(["reliability", "--labels", str(labels), "--out", str(out), "--json", "--bootstrap", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    flips = {r["labeler"]: r["flip_rate"] for r in report["labelers"]}
    assert max(flips[f"s{n}"] for n in range(3)) < min(flips["s3"], flips["s4"])
    weights = {r["labeler"]: r["weight"] for r in report["labelers"]}
    loaded = load_preferences(out)
    assert len(loaded) == len(rows)
    assert [p.weight for p in loaded] == pytest.approx([weights[r["labeler"]] for r in rows])
    assert cli(["reliability", "--labels", str(tmp_path / "missing.jsonl")]) == 2


def test_weight_is_parsed_carried_and_written_only_when_not_1(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text('{"prompt": "p", "responses": ["a", "b", "c"], "weight": 0.25}\n'
                    '{"prompt": "p", "chosen": "a", "rejected": "b", "weight": 0}\n'
                    '{"prompt": "p", "chosen": "a", "rejected": "c"}\n')
    ranking, zero, plain = load_preferences(path)
    assert ranking == Ranking("p", ("a", "b", "c"), 0.25) and [p.weight for p in ranking.pairs()] == [0.25] * 3
    assert zero.weight == 0.0 and plain == Comparison("p", "a", "c") and plain.weight == 1.0
    assert "weight" not in plain.to_json() and ranking.to_json()["weight"] == 0.25


@pytest.mark.parametrize("weight", ["-1", '"0.5"', "true", "NaN", "null", "[1]"])
def test_malformed_weight_is_an_error_naming_file_and_line(tmp_path, weight):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
                    f'{{"prompt": "p", "chosen": "a", "rejected": "b", "weight": {weight}}}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: 'weight' must be a finite number >= 0"):
        load_preferences(path)


def test_weighted_ranking_loss_and_a_weight_0_row_has_no_gradient():
    scores = torch.tensor([2.0, 1.0, 0.0, 0.5, 1.5], requires_grad=True)
    plain = ranking_loss(scores, [3, 2])
    assert torch.equal(plain, ranking_loss(scores, [3, 2], [1.0, 1.0]))  # default weights change no number
    weighted = ranking_loss(scores, [3, 2], [1.0, 0.0])
    assert weighted.item() == pytest.approx(ranking_loss(scores[:3], [3]).item() / 2)
    weighted.backward()
    assert scores.grad[3:].tolist() == [0.0, 0.0] and scores.grad[:3].abs().sum() > 0


def test_training_on_weight_0_rows_leaves_the_model_as_initialised(tmp_path):
    model = save_tiny_lm(tmp_path / "lm")
    data = tmp_path / "zero.jsonl"
    labeler = SimulatedLabeler(gold=FunctionRewardModel(share_of_a), temperature=0.05, seed=0)
    data.write_text("".join(json.dumps({**r.to_json(), "weight": 0}) + "\n"
                            for r in labeler.label(random_samples(16, 3, seed=1))))
    train_reward_model(RewardTrainConfig(model=str(model), data=str(data), out=str(tmp_path / "rm"), val_fraction=0,
                                         normalize=False, batch_size=4, progress=False, learning_rate=1e-2))
    from transformers import AutoModelForSequenceClassification

    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").state_dict()
    initial = load_reward_backbone(str(model), seed=0).state_dict()
    assert all(torch.equal(trained[k], initial[k]) for k in initial)


def label_store(tmp_path: Path) -> LabelStore:
    """A real SQLite store: 12 items ranked by ann and bob alike and by eve reversed."""
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"prompt": f"q{i}", "responses": ["x", "y", "z"]}) + "\n" for i in range(12)))
    store = LabelStore(tmp_path / "labels.sqlite")
    store.import_items(items)
    for item_id in range(1, 13):
        order = [item_id % 3, (item_id + 1) % 3, (item_id + 2) % 3]
        for who, ranking in (("ann", order), ("bob", order), ("eve", order[::-1])):
            store.add_label(item_id, who, ranking, "rank")
    return store


def test_label_agreement_shows_reliabilities(tmp_path, capsys):
    label_store(tmp_path).close()
    db = str(tmp_path / "labels.sqlite")
    assert cli(["agreement", "--db", db]) == 0
    text = capsys.readouterr().out
    assert "ann ~ bob" in text and "flip rate" in text
    eve = next(line for line in text.splitlines() if line.startswith("eve "))
    assert "adversarial: dropped" in eve and " 0.000" in eve
    assert cli(["agreement", "--db", db, "--json"]) == 0
    rel = {r["labeler"]: r for r in json.loads(capsys.readouterr().out)["reliability"]["labelers"]}
    assert rel["eve"]["flip_rate"] > 0.9 > 0.1 > rel["ann"]["flip_rate"] and rel["ann"]["se"] is not None
    out = tmp_path / "weighted.jsonl"
    assert cli(["reliability", "--db", db, "--out", str(out)]) == 0
    assert sorted({p.weight for p in load_preferences(out)}) == [0.0, 1.0]


def test_progress_api_returns_reliabilities(tmp_path):
    with label_store(tmp_path) as store:
        server = LabelingServer(store, "rank", "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        thread.start()
        try:
            with urllib.request.urlopen(server.url + "api/progress", timeout=10) as resp:
                body = json.loads(resp.read())
        finally:
            server.shutdown()
            server.server_close()
    assert body["labelers"] == {"ann": 12, "bob": 12, "eve": 12}
    rel = {r["labeler"]: r for r in body["reliability"]["labelers"]}
    assert rel["eve"]["adversarial"] and rel["eve"]["weight"] == 0.0 and rel["bob"]["weight"] == 1.0
    assert body["reliability"]["overlapping_pairs"] == 36


def test_page_shows_reliabilities_as_text(tmp_path):
    """The labeling page's reliability table, in real headless Chromium; a labeler name of HTML stays text."""
    from playwright.sync_api import expect, sync_playwright
    from test_labeling_browser import CHROMIUM, CHROMIUM_ARGS

    payload = '<img src=x onerror="window.__pwned = 2">'  # a labeler name fits 64 characters
    with label_store(tmp_path) as store:
        for item_id in range(1, 7):
            store.add_label(item_id, payload, [0, 1, 2], "rank")
        server = LabelingServer(store, "rank", "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
                page = browser.new_page()
                page.set_default_timeout(10_000)
                page.goto(server.page_url("ann"))
                rows = page.locator("#reliability tr")
                expect(rows).to_have_count(4)
                expect(rows.filter(has_text="eve")).to_contain_text("(adversarial)")
                expect(rows.first.locator("td").first).to_have_text(payload)  # "<" sorts first
                assert page.evaluate("window.__pwned") is None
                browser.close()
        finally:
            server.shutdown()
            server.server_close()


def test_study_panels_differ_in_flips_only():
    """reliability-study's labels: 3 labelers per item; the noisy panel is the clean one with some rankings reversed."""
    from rlhf_gym.feedback_studies.reliability import ReliabilityStudyConfig, label_panel, true_flip_rates

    items = [PromptResponses("Tell me", ("a fine day.", "bad", "I love it!", "ok then.")) for _ in range(40)]
    items = [PromptResponses(f"{i}", it.responses) for i, it in enumerate(items)]
    config = ReliabilityStudyConfig()
    clean = label_panel(items, (0.0,) * 5, config, seed=0)
    noisy = label_panel(items, (0.0, 0.0, 0.0, 0.4, 1.0), config, seed=0)
    assert len(clean) == len(noisy) == 3 * len(items)
    for a, b in zip(clean, noisy, strict=True):
        assert (a["prompt"], a["labeler"]) == (b["prompt"], b["labeler"])
        assert b["responses"] == (a["responses"][::-1] if b["labeler"] == "l5" else b["responses"])
        assert b["labeler"] in ("l4", "l5") or a == b
    true = true_flip_rates(noisy, items)
    assert true["l5"] > 0.8 > 0.2 > true["l1"]


def test_per_label_weights_follow_the_posterior(tmp_path, capsys):
    """--per-label: a label against the consensus gets weight 0 (or is reversed), one with it about 1."""
    label_store(tmp_path).close()
    db, out = str(tmp_path / "labels.sqlite"), tmp_path / "w.jsonl"
    assert cli(["reliability", "--db", db, "--out", str(out), "--per-label", "--bootstrap", "0"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["labeler"] for r in rows if r["weight"] == 0} == {"eve"}
    assert min(r["weight"] for r in rows if r["labeler"] != "eve") > 0.99
    assert cli(["reliability", "--db", db, "--out", str(out), "--per-label", "--reverse-adversarial"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ann, eve = (next(r for r in rows if r["labeler"] == who and r["prompt"] == "q1") for who in ("ann", "eve"))
    assert eve["responses"] == ann["responses"] and eve["weight"] > 0.99
    capsys.readouterr()


def test_best_mode_labels_are_read_too(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"prompt": f"q{i}", "responses": ["x", "y", "z"]}) + "\n" for i in range(12)))
    with LabelStore(tmp_path / "best.sqlite") as store:
        store.import_items(items)
        for item_id in range(1, 13):
            for who, best in (("ann", 0), ("bob", 0), ("eve", 2)):
                store.add_label(item_id, who, [best], "best")
        rel = store.reliability(bootstrap=10).by_labeler()
    assert rel["eve"].flip_rate > 0.5 > 0.2 > rel["ann"].flip_rate and rel["eve"].judgements == 12


@pytest.mark.parametrize("study", ["reliability", "bias", "judge"])
def test_a_study_refuses_to_resume_a_folder_with_other_settings(tmp_path, study):
    from rlhf_gym.feedback_studies import bias, judge, reliability

    run, config = {"reliability": (reliability.run_study, reliability.ReliabilityStudyConfig),
                   "bias": (bias.run_bias_study, bias.BiasStudyConfig),
                   "judge": (judge.run_judge_study, judge.JudgeStudyConfig)}[study]
    claim_run_folder(tmp_path, config(out=str(tmp_path), rm_learning_rate=1e-4))  # a run started here
    with pytest.raises(ValueError, match="other settings"):
        run(config(out=str(tmp_path), rm_learning_rate=2e-4, num_threads=1))
