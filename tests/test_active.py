"""Active selection (reward_models.active): the criteria on constructed cases, the labeling server's active order."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
from test_labeling import call, label, serve, write_jsonl  # noqa: F401 (serve: a fixture)

from reward_models import FunctionRewardModel
from reward_models.active import informative_first, informativeness, rank_items, score_items, select_batch
from reward_models.labeling import LabelingServer
from reward_models.labeling.cli import cli
from reward_models.preferences import PromptResponses

# Three items of K = 3 under an ensemble of 3 models (rows):
SURE = np.array([[4.0, 2.0, 0.0], [4.1, 2.0, 0.1], [3.9, 2.1, 0.0]])  # every member sure, and they agree
DISAGREE = np.array([[3.0, 0.0, 1.5], [0.0, 3.0, 1.5], [1.5, 1.5, 0.0]])  # each member sure, of different orders
COIN_FLIP = np.zeros((3, 3))  # every member sure that each pair is a coin flip: the label would be noise


def test_one_model_picks_the_most_uncertain_item() -> None:
    one = [SURE[:1], np.array([[0.2, 0.0, 0.1]]), np.array([[1.0, 0.0, 2.0]])]
    assert select_batch(one, 1, "entropy") == [1]
    assert rank_items(one, "entropy") == [1, 2, 0]
    assert informativeness(np.zeros(2), "entropy") == pytest.approx(math.log(2))  # a coin flip: ln 2 nats


def test_bald_prefers_disagreement_to_noise() -> None:
    items = [SURE, COIN_FLIP, DISAGREE]
    assert select_batch(items, 1, "bald") == [2]
    assert informativeness(COIN_FLIP, "bald") == pytest.approx(0.0)  # nothing to learn: every member agrees
    assert select_batch(items, 1, "variance") == [2]
    assert select_batch(items, 1, "entropy") == [1]  # entropy alone chases the noise
    assert select_batch(items, 3, "bald", exclude=[2]) == [0, 1]  # a little disagreement beats none


def test_bad_criterion_and_item_are_refused() -> None:
    with pytest.raises(ValueError, match="criterion 'bold': choose one of entropy, bald, variance"):
        informativeness(SURE, "bold")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 responses"):
        informativeness(np.zeros((3, 1)), "bald")
    with pytest.raises(ValueError, match="'bald' measures disagreement and is 0 for one model"):
        select_batch([SURE[:1], SURE[1:2]], 1, "bald")


def test_score_items_splits_scores_per_item() -> None:
    items = [PromptResponses("p", ("a", "bbb")), PromptResponses("q", ("cc", "d", "eeee"))]
    models = [FunctionRewardModel(lambda p, r: float(len(r))), FunctionRewardModel(lambda p, r: -float(len(r)))]
    scores = score_items(models, items)
    assert [s.shape for s in scores] == [(2, 2), (2, 3)]
    assert scores[1].tolist() == [[2.0, 1.0, 4.0], [-2.0, -1.0, -4.0]]


def by_length(prompt: str, response: str) -> float:
    """A reward model that likes long responses: sure about responses of very different lengths."""
    return float(len(response))


ITEMS = [
    {"prompt": "clear", "responses": ["a", "a much longer response"]},
    {"prompt": "unclear", "responses": ["same size", "equal len"]},  # equal lengths: the model is unsure
]


def test_server_serves_the_most_informative_item_first(serve) -> None:  # noqa: F811 (the fixture)
    url, store = serve(ITEMS)
    assert call(url, "/api/next?labeler=ann")[1]["item"]["prompt"] == "clear"  # default: import order
    store.order_items(informative_first([FunctionRewardModel(by_length)]))
    first = call(url, "/api/next?labeler=ann")[1]["item"]
    assert first["prompt"] == "unclear"
    assert label(url, first["id"], "ann", [0, 1])[0] == 200
    assert call(url, "/api/next?labeler=ann")[1]["item"]["prompt"] == "clear"


def test_cli_serves_actively_with_a_reward_model(tmp_path: Path, monkeypatch, capsys) -> None:
    from reward_fixtures import save_tiny_lm

    from reward_models.hf_model import HFRewardModel, load_reward_backbone
    from text_env.char_tokenizer import char_tokenizer

    load_reward_backbone(str(save_tiny_lm(tmp_path / "lm")), seed=3).save_pretrained(tmp_path / "rm")
    char_tokenizer("ab").save_pretrained(tmp_path / "rm")
    items = [{"prompt": "", "responses": list(r), "id": i} for i, r in enumerate(
        [("ab", "ba", "aab"), ("bbbb", "a"), ("abab", "baba", "aa", "b"), ("aaaa", "bbbb")])]
    samples = [PromptResponses("", tuple(it["responses"])) for it in items]
    scores = score_items([HFRewardModel(tmp_path / "rm")], samples)
    expected = items[rank_items(scores, "entropy")[0]]["responses"]
    served = []

    class OneRequest(LabelingServer):
        """The real server, stopped after one /api/next (the CLI's serve_forever would wait for Ctrl-C)."""

        def serve_forever(self, poll_interval: float = 0.5) -> None:
            thread = threading.Thread(target=super().serve_forever, args=(0.02,))
            thread.start()
            try:
                served.append(call(self.url, "/api/next?labeler=ann")[1]["item"]["responses"])
            finally:
                self.shutdown()
                thread.join()

    monkeypatch.setattr("reward_models.labeling.cli.LabelingServer", OneRequest)
    assert cli(["serve", "--items", str(write_jsonl(tmp_path / "items.jsonl", items)), "--db", str(tmp_path / "db"),
                "--port", "0", "--order", "active", "--reward-model", str(tmp_path / "rm")]) == 0
    assert served == [expected]
    assert "most informative items first (entropy under 1 reward model(s))" in capsys.readouterr().out


def test_cli_refuses_bad_order_arguments(tmp_path: Path, capsys) -> None:
    items = str(write_jsonl(tmp_path / "c.jsonl", ITEMS))
    db = str(tmp_path / "db.sqlite")
    assert cli(["serve", "--items", items, "--db", db, "--order", "active"]) == 2
    assert "--order active needs --reward-model PATH" in capsys.readouterr().err
    assert cli(["serve", "--items", items, "--db", db, "--reward-model", str(tmp_path)]) == 2
    assert "--reward-model is only read with --order active" in capsys.readouterr().err
    assert cli(["serve", "--items", items, "--db", db, "--order", "active", "--reward-model",
                str(tmp_path / "missing")]) == 2
    assert "--reward-model" in (err := capsys.readouterr().err) and "missing" in err
    with pytest.raises(SystemExit) as exit_info:
        cli(["serve", "--items", items, "--db", db, "--order", "newest"])
    assert exit_info.value.code == 2
    assert "argument --order: invalid choice: 'newest'" in capsys.readouterr().err


def test_study_loop_labels_in_rounds_and_reports_the_cost() -> None:
    import torch

    from rlhf_gym.feedback_studies.active import ActiveStudyConfig, Pool, labels_to_threshold, run_arm

    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(600, 8)), rng.normal(size=8)
    noisy = x @ w + rng.gumbel(size=600)  # a Plackett-Luce labeler of the true reward x @ w

    def rankings(start: int, stop: int) -> list[np.ndarray]:
        return [np.arange(i, i + 3)[np.argsort(-noisy[i : i + 3])] for i in range(start, stop, 3)]

    pool = Pool(torch.tensor(x, dtype=torch.float32), rankings(0, 450), rankings(450, 600), rankings(450, 600))
    config = ActiveStudyConfig(initial_labels=20, labels_per_round=20, max_labels=100, ensemble_size=3)
    curves = {arm: run_arm(config, pool, arm, seed=0) for arm in ("random", "active")}
    for curve in curves.values():
        assert [r["labels"] for r in curve] == [20, 40, 60, 80, 100]
        assert curve[-1]["accuracy"] > 0.7  # the true reward is linear in the features: the head learns it
    assert curves["random"][0]["accuracy"] == curves["active"][0]["accuracy"]  # the same first items
    assert labels_to_threshold(curves["random"], 0.0) == 20
    assert labels_to_threshold(curves["random"], 1.01) is None
