"""The embedded default assets, the default task, users' own models, and the asset build."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors import safe_open

import text_env  # noqa: F401  (registers the environments)
from agents.lm import load_policy
from reward_models import HFRewardModel, UpbeatGoldScorer
from rlhf_common.io import PACKAGE_ROOT, DataError
from rlhf_gym.build.defaults import BuildConfig, build_defaults
from rlhf_gym.build.defaults import cli as build_cli
from rlhf_gym.build.model_card import model_card_markdown
from text_env.char_tokenizer import char_tokenizer
from text_env.defaults import (
    ASSETS_DIR,
    default_eval_prompts_path,
    default_policy_path,
    default_prompts_path,
    default_reward_model,
    default_reward_model_path,
    default_task,
    default_tokenizer_path,
)
from text_env.prompts import load_prompts


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared CPU extra threads only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sample_episode(env: gym.Env, model, rng: torch.Generator, prompt: str | None = None) -> dict:
    """Play one episode choosing each token by sampling the model's next-token distribution."""
    obs, info = env.reset(seed=0, options={"prompt": prompt} if prompt else None)
    vocab = env.action_space.n
    while True:
        ids = torch.as_tensor(obs["input_ids"])[None]  # (1, W)
        mask = torch.as_tensor(obs["attention_mask"])[None]  # (1, W), prompt left-padded
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[0, -1, :vocab]
        action = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=rng))
        obs, reward, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            return {**info, "reward": reward}


# ---- the shipped assets ------------------------------------------------------------------------
def test_default_policy_loads_offline_and_generates():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest before transformers is imported
    model, tok = load_policy(default_policy_path(), device="cpu")
    assert next(model.parameters()).dtype == torch.float32  # stored float16, loaded float32
    assert not model.training
    assert tok("")["input_ids"] == [tok.bos_token_id]  # an empty prompt still has a token
    ids = tok("The best thing about", return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**ids, do_sample=True, top_k=0, max_new_tokens=20, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(text.split()) >= 2


def test_default_assets_fit_the_budget_and_are_float16():
    size = sum(p.stat().st_size for p in ASSETS_DIR.rglob("*") if p.is_file())
    assert size < 20e6
    for folder in (default_policy_path(), default_reward_model_path()):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    card = json.loads((ASSETS_DIR / "model_card.json").read_text())
    assert len(card["samples"]) == 5 and card["sft"]["val_perplexity"] > 1
    assert model_card_markdown(card) == (ASSETS_DIR / "MODEL_CARD.md").read_text()
    text = (ASSETS_DIR / "model_card.json").read_text()
    assert str(PACKAGE_ROOT) not in text and "/tmp" not in text  # the build records no machine paths
    assert not {"out", "work_dir"} & set(card["config"])


def test_shipped_prompt_sets_are_disjoint_and_held_out():
    prompts, eval_prompts = load_prompts(default_prompts_path()), load_prompts(default_eval_prompts_path())
    assert len(prompts) >= 200 and len(eval_prompts) >= 200
    assert all(1 <= len(p.split()) <= 6 for p in prompts + eval_prompts)


def test_default_env_scores_sampled_responses_with_the_shipped_reward_model():
    env = gym.make("RLHFText-v0", max_new_tokens=12)
    model, tok = load_policy(default_policy_path(), device="cpu")
    assert env.action_space.n == len(tok)
    info = sample_episode(env, model, torch.Generator().manual_seed(0))
    assert info["prompt"] in load_prompts(default_prompts_path())
    rm = HFRewardModel(default_reward_model_path())
    assert info["reward"] == pytest.approx(rm.score([info["prompt"]], [info["response"]])[0], abs=1e-5)
    assert info["gold_score"] == pytest.approx(UpbeatGoldScorer().score([info["prompt"]], [info["response"]])[0])
    assert 1 <= info["response_length"] <= 12
    assert default_reward_model() is default_reward_model()  # loaded once, shared by every env


def test_default_reward_model_prefers_upbeat_finished_text():
    rm = default_reward_model()
    good, bad = rm.score(["Life is"] * 2, [" a wonderful gift, enjoy it!", " the the the the the the"])
    assert good > bad


def test_default_task_options(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "Hello"}\n{"prompt": "Goodbye", "other": 1}\n')
    task = default_task(prompts=path, max_new_tokens=5, max_prompt_tokens=8)
    assert task.prompts == ["Hello", "Goodbye"] and task.window == 13
    assert task.tokenizer.name_or_path == str(default_tokenizer_path())
    assert default_task(prompts=["Hi"]).prompts == ["Hi"]
    with pytest.raises(TypeError, match="only configure the default task"):
        gym.make("RLHFText-v0", task=task, max_new_tokens=3)


@pytest.mark.parametrize(
    "text, message",
    [("", "no prompts"), ('{"prompt": "a"}\n{"prompt": 1}\n', r":2: 'prompt' must be a string"),
     ('{"prompt": "a"}\n\n{"text": "b"}\n', r":3: missing key 'prompt'"), ("[1]\n", r":1: expected a JSON object")],
)
def test_load_prompts_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"prompts\.jsonl{message}" if message.startswith(":") else message):
        load_prompts(path)


# ---- a user's own model ---------------------------------------------------------------------------
def save_llama(path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer("".join(chr(c) for c in range(32, 127)))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def save_gpt_neox(path: Path) -> None:
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    tok = AutoTokenizer.from_pretrained(default_tokenizer_path())
    config = GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    GPTNeoXForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


@pytest.mark.parametrize("save", [save_llama, save_gpt_neox], ids=["llama", "gpt_neox"])
def test_own_model_as_policy_through_a_path(tmp_path, save):
    torch.manual_seed(0)
    save(tmp_path)
    env = gym.make("RLHFText-v0", model=str(tmp_path), max_new_tokens=6)
    model, tok = load_policy(tmp_path, device="cpu")
    assert env.action_space.n == len(tok) == model.config.vocab_size
    rng = torch.Generator().manual_seed(0)
    for prompt in ("Once upon a time", None):
        info = sample_episode(env, model, rng, prompt)
        assert info["end_reason"] in ("eos", "max_new_tokens") and 1 <= info["response_length"] <= 6
        assert np.isfinite(info["score"])
        assert prompt is None or info["prompt"] == prompt


# ---- the build, on a tiny corpus ----------------------------------------------------------------------
def test_build_defaults_on_a_tiny_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "off").mkdir(parents=True)
    words = "happy days bring joy and calm to every small town near the sea while birds sing".split()
    rng = np.random.default_rng(0)
    entries = [" ".join(rng.choice(words, size=int(rng.integers(6, 14)))) + "." for _ in range(120)]
    (corpus / "wisdom").write_text("\n%\n".join(entries) + "\n%\n@@@@ ### !!! ***\n%\n" + "long " * 200 + "\n")
    (corpus / "wisdom.dat").write_bytes(b"\x00\x01binary")
    (corpus / "ascii-art").write_text("a picture made of letters only\n%\n")
    (corpus / "off" / "rude").write_text("an offensive entry made of words\n%\n")
    options = dict(
        out=str(tmp_path / "assets"), work_dir=str(tmp_path / "work"), corpus=str(corpus), n_val=10,
        n_prompts=8, n_eval_prompts=8, vocab_size=300, n_layer=1, n_embd=16, n_head=2, context=32,
        batch_size=8, pretrain_steps=30, sft_steps=10, eval_steps=10, n_baseline_prompts=4, num_threads=1,
        rm_prompts=24, rm_num_generations=3,
    )
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    assert build_cli([*flags, "--no-progress"]) == 0
    card = json.loads((tmp_path / "assets" / "model_card.json").read_text())
    config = BuildConfig(**options, progress=False)

    assert card["corpus"]["files"] == ["wisdom"]
    assert card["corpus"]["entries_read"] == 122
    assert card["corpus"]["skipped_non_letters"] == 1 and card["corpus"]["skipped_length"] == 1
    assert card["corpus"]["train"] + 10 + 8 + 8 == card["corpus"]["entries_kept"]
    pre, sft = card["pretrain"], card["sft"]
    assert pre["steps"] == 30 and sft["steps"] == 10 and sft["val_loss"] > 0

    assets = Path(config.out)
    model, tok = load_policy(assets / "policy", device="cpu")
    assert tok("")["input_ids"] == [tok.bos_token_id] and len(tok) == 300
    assert (model.config.n_layer, model.config.n_embd, model.config.n_positions) == (1, 16, 32)
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    # Held-out prompts: no prompt entry was trained on.
    trained = [json.loads(line)["response"] for line in (tmp_path / "work" / "pretrain.jsonl").read_text().splitlines()]
    for p in load_prompts(assets / "prompts.jsonl"):
        assert 1 <= len(p.split()) <= 6
    held_out = set(entries) - set(trained)
    assert len(held_out) == 8 + 8 + 10
    sft_rows = [json.loads(line) for line in (tmp_path / "work" / "sft.jsonl").read_text().splitlines()]
    assert {r["prompt"] + r["response"] for r in sft_rows} == set(trained)
    assert "## The default assets" in (assets / "MODEL_CARD.md").read_text()
    # Step 5: a reward model from simulated feedback, shipped in float16, and the baseline it measures.
    rm_card = card["reward_model"]
    assert rm_card["prompts"] == 24 and rm_card["train_rankings"] + rm_card["val_rankings"] <= 24
    assert 0 <= rm_card["val_accuracy"] <= 1 and 0 <= rm_card["ceiling_labeler_agreement"] <= 1
    rm = HFRewardModel(assets / "reward_model")
    assert rm.score(["happy"], [" days bring joy."]).shape == (1,)
    assert set(card["baseline"]) >= {"mean_proxy_score", "mean_gold_score"} and card["baseline"]["prompts"] == 4

    # Same settings again: everything is reused, the same card numbers come out.
    again = build_defaults(config)
    assert again["sft"] == card["sft"] and again["pretrain"] == card["pretrain"]
    assert again["reward_model"]["val_accuracy"] == rm_card["val_accuracy"]
    only_rm = build_defaults(BuildConfig(**{**config.__dict__, "stage": "reward-model"}))
    assert only_rm["pretrain"] == card["pretrain"] and only_rm["baseline"] == card["baseline"]
    with pytest.raises(ValueError, match="other settings .*--rm-learning-rate"):
        build_defaults(BuildConfig(**{**config.__dict__, "rm_learning_rate": 1e-3}))
    with pytest.raises(ValueError, match="other settings .*--vocab-size"):
        build_defaults(BuildConfig(**{**config.__dict__, "vocab_size": 280}))
