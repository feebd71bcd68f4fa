"""agents.sft: response-only loss, learning, data errors, resuming, the command line, LoRA, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rl_helpers import torchrun
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import agents.sft as sft_module
from agents.demonstrations import IGNORE_INDEX, collate, encode_demonstration, evaluate_loss, load_demonstrations
from agents.lm import load_causal_lm
from agents.lora import LoraSettings
from agents.sft import SFTConfig, cli, train_sft
from agents.sft_baseline import sample_responses
from reward_models import FunctionRewardModel
from rlhf_common.io import DataError
from text_env.char_tokenizer import char_tokenizer

REPO = Path(__file__).resolve().parents[1]
ALPHABET = "abcdefghijklmnopqrstuvwxyz ,.!?"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared CPU extra threads only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model_dir(tmp_path: Path, n_layer: int = 1, **gpt2_config) -> Path:
    """A randomly initialised tiny GPT-2 with a character tokenizer, saved as an HF folder."""
    tok = char_tokenizer(ALPHABET)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=n_layer, n_head=2,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            **gpt2_config,
        )
    )
    path = tmp_path / "base"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_demos(path: Path, n: int) -> Path:
    """Learnable demonstrations: the response repeats the prompt's first word."""
    words = ["cat", "dog", "sun", "tree", "bird", "fish", "moon", "rain"]
    rows = []
    for i in range(n):
        w = words[i % len(words)]
        rows.append({"prompt": f"{w} says", "response": f" {w} {w}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path: Path, **overrides) -> SFTConfig:
    options = dict(
        data=str(write_demos(tmp_path / "demos.jsonl", 64)),
        out=str(tmp_path / "out"), val_fraction=0.25, batch_size=8, max_steps=40, learning_rate=3e-3,
        eval_steps=10, logging_steps=5, progress=False, patience=0,
    )
    options.update(overrides)
    if "model" not in options:
        options["model"] = str(tiny_model_dir(tmp_path))
    return SFTConfig(**options)


def test_labels_mask_prompt_and_padding():
    tok = char_tokenizer(ALPHABET)
    a = encode_demonstration(tok, {"prompt": "hi", "response": " yo"}, "x:1", max_length=32)
    b = encode_demonstration(tok, {"prompt": "", "response": "abcdef"}, "x:2", max_length=32)
    assert a.input_ids == [tok.bos_token_id, *tok.convert_tokens_to_ids(list("hi yo")), tok.eos_token_id]
    assert a.prompt_len == 3  # BOS + "hi"
    assert b.prompt_len == 1  # empty prompt: BOS only (pretraining)
    batch = collate([a, b], tok.pad_token_id)
    labels, ids = batch["labels"], batch["input_ids"]
    assert labels.shape == ids.shape == (2, 8)
    assert (labels[0, :3] == IGNORE_INDEX).all()  # BOS, h, i
    assert labels[0, 3:7].tolist() == ids[0, 3:7].tolist()  # " yo" + EOS
    assert (labels[0, 7:] == IGNORE_INDEX).all() and (batch["attention_mask"][0, 7:] == 0).all()  # padding
    assert labels[1, 0] == IGNORE_INDEX and labels[1, 1:].tolist() == ids[1, 1:].tolist()


def test_truncation_and_overlong_prompt():
    tok = char_tokenizer(ALPHABET)
    d = encode_demonstration(tok, {"prompt": "ab", "response": "cdefgh"}, "x:1", max_length=5)
    assert len(d.input_ids) == 5 and d.prompt_len == 3
    assert encode_demonstration(tok, {"prompt": "abcdef", "response": "g"}, "x:1", max_length=5) is None


def test_chat_rows_without_template_use_the_plain_hh_transcript():
    tok = char_tokenizer(ALPHABET + "HA:\n")
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    d = encode_demonstration(tok, row, "x:1", max_length=64)
    text = tok.decode(d.input_ids[: d.prompt_len], skip_special_tokens=True)
    assert text == "\n\nHuman: hi\n\nAssistant:"
    assert tok.decode(d.input_ids[d.prompt_len :], skip_special_tokens=True) == " yo"
    assert d.input_ids[-1] == tok.eos_token_id


def test_chat_rows_with_template_cut_the_last_assistant_turn():
    tok = char_tokenizer(ALPHABET + "<>|\n")
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    d = encode_demonstration(tok, row, "x:1", max_length=64)
    assert tok.decode(d.input_ids[: d.prompt_len]) == "<|user|>hi\n<|assistant|>"
    assert tok.decode(d.input_ids[d.prompt_len :]) == "yo\n"  # the template closes the turn; no EOS added


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "a"}', "missing key 'response'"),
        ('{"prompt": 3, "response": "b"}', "'prompt' must be a string"),
        ('{"text": "a"}', "needs 'prompt' and 'response'"),
        ('{"messages": [{"role": "user", "content": "a"}]}', "must be the assistant's response"),
        ('{"messages": [{"role": "assistant"}]}', "missing key 'content'"),
        ("{not json", "invalid JSON"),
    ],
)
def test_malformed_demonstrations_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=rf"bad\.jsonl:3: .*{message}"):
        load_demonstrations(path, char_tokenizer(ALPHABET), max_length=32)


def test_cli_reports_bad_data_with_file_and_line(tmp_path, capsys):
    cfg = config(tmp_path)
    Path(cfg.data).write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    assert cli(["--model", cfg.model, "--data", cfg.data, "--out", cfg.out, "--no-progress"]) == 2
    assert "demos.jsonl:2: missing key 'response'" in capsys.readouterr().err


def test_sft_lowers_validation_loss_and_changes_parameters(tmp_path):
    cfg = config(tmp_path)
    before = load_causal_lm(cfg.model, device="cpu")
    scorer = FunctionRewardModel(lambda p, r: float(r.count(p.split()[0])), name="echo")
    prompts = ["cat says", "dog says", "sun says"]
    result = train_sft(cfg, scorer=scorer, prompts=prompts)

    log = (Path(cfg.out) / "log.csv").read_text().splitlines()
    val = [float(row.split(",")[3]) for row in log[1:] if ",val," in row]
    assert len(val) == 4 and val[-1] < val[0] - 0.5
    assert result.val_loss == pytest.approx(min(val), abs=1e-5)
    after = load_causal_lm(result.model_dir, device="cpu")
    changed = [
        name for (name, p), q in zip(before.named_parameters(), after.parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert len(changed) == len(list(before.parameters()))

    baseline = json.loads((Path(cfg.out) / "baseline.json").read_text())["result"]
    assert baseline["val_loss"] == pytest.approx(result.val_loss)
    assert baseline["val_perplexity"] == pytest.approx(torch.tensor(result.val_loss).exp().item(), rel=1e-5)
    assert result.mean_score is not None and len(result.samples) == 3
    responses = [s["response"] for s in result.samples]
    assert responses == sample_responses(after, char_tokenizer(ALPHABET), prompts, cfg.sample_max_new_tokens, cfg.seed)
    assert not (Path(cfg.out) / "checkpoint").exists()
    # A re-run of a finished run reports it without training again.
    assert train_sft(cfg).val_loss == result.val_loss


def test_early_stopping_keeps_the_best_model(tmp_path):
    cfg = config(tmp_path, learning_rate=0.3, max_steps=500, eval_steps=5, patience=2, lr_scheduler_type="constant")
    result = train_sft(cfg)
    assert result.early_stopped and result.steps < 500
    assert result.steps == result.best_step + 2 * 5


def test_changed_settings_refuse_to_resume(tmp_path):
    cfg = config(tmp_path, max_steps=10)
    train_sft(cfg)
    with pytest.raises(ValueError, match=r"--learning-rate 0.003 -> 0.001.*new --out"):
        train_sft(SFTConfig(**{**cfg.__dict__, "learning_rate": 1e-3}))


def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path):
    cfg = config(tmp_path, max_steps=120, eval_steps=5)
    args = [
        "--model", cfg.model, "--data", cfg.data, "--out", cfg.out, "--val-fraction", "0.25",
        "--batch-size", "8", "--max-steps", "120", "--learning-rate", "0.003", "--eval-steps", "5",
        "--logging-steps", "5", "--patience", "0", "--no-progress", "--num-threads", "1",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "agents.sft", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = Path(cfg.out) / "checkpoint" / "state.json"
    deadline = time.time() + 60
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved_step = json.loads(state.read_text())["step"]
    assert 0 < saved_step < 120, "the run must be killed mid-way for this test to mean anything"

    # Same command again: it resumes, continues the step counter and finishes.
    done = subprocess.run([sys.executable, "-m", "agents.sft", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    resumed_from = int(done.stderr.split(f"resuming {cfg.out} from step ")[1].split(".")[0])
    assert resumed_from >= saved_step
    result = json.loads(done.stdout)
    assert result["steps"] == 120
    steps = [int(row.split(",")[0]) for row in (Path(cfg.out) / "log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and steps[-1] == 120  # no rows repeated from before the resume

    # Model, optimizer, scheduler, data order and RNG all came back: same result as one whole run.
    whole = train_sft(SFTConfig(**{**cfg.__dict__, "out": str(tmp_path / "whole"), "num_threads": 1}))
    assert result["val_loss"] == pytest.approx(whole.val_loss, abs=1e-4)
    assert result["best_step"] == whole.best_step


def weights(folder: str | Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


# ---- LoRA ------------------------------------------------------------------------------------
LORA = LoraSettings(r=8, alpha=16, target_modules=("c_attn", "c_proj", "c_fc"))


def lora_config(tmp_path: Path, **overrides) -> SFTConfig:
    options = dict(val_data=str(write_demos(tmp_path / "val.jsonl", 16)), lora=LORA, learning_rate=3e-2)
    return config(tmp_path, **{**options, **overrides})


def checkpoint_spy(monkeypatch) -> list[dict]:
    """Record, at every checkpoint, the parameters and what the optimizer holds."""
    real, seen = sft_module._save_checkpoint, []

    def spy(path, config, model, optimizer, scheduler, state):
        seen.append({
            "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "trainable": {n for n, p in model.named_parameters() if p.requires_grad},
            "optimized": {id(p) for group in optimizer.param_groups for p in group["params"]},
            "trainable_ids": {id(p) for p in model.parameters() if p.requires_grad},
        })
        real(path, config, model, optimizer, scheduler, state)

    monkeypatch.setattr(sft_module, "_save_checkpoint", spy)
    return seen


def test_lora_sft_trains_adapters_only_and_saves_a_merged_model(tmp_path, monkeypatch):
    pytest.importorskip("peft")
    cfg = lora_config(tmp_path)
    seen = checkpoint_spy(monkeypatch)
    base = AutoModelForCausalLM.from_pretrained(cfg.model)
    tok = char_tokenizer(ALPHABET)
    val_set = load_demonstrations(cfg.val_data, tok, max_length=64)
    before = evaluate_loss(base, val_set, 8, tok.pad_token_id)
    result = train_sft(cfg)

    # Validation loss fell, at every evaluation.
    log = (Path(cfg.out) / "log.csv").read_text().splitlines()
    val = [float(row.split(",")[3]) for row in log[1:] if ",val," in row]
    assert len(val) == 4 and all(b < a for a, b in zip([before, *val], val, strict=False))
    assert val[-1] < before - 0.1
    # Only the adapters trained: the optimizer holds them alone, the base weights never moved.
    first, last = seen[0], seen[-1]
    assert first["trainable"] and all("lora_" in n for n in first["trainable"])
    assert first["optimized"] == first["trainable_ids"]
    plain = dict(base.named_parameters())
    for name, p in last["params"].items():
        if name not in last["trainable"]:
            assert torch.equal(p, plain[name.removeprefix("base_model.model.").replace(".base_layer.", ".")]), name
    assert all(not torch.equal(first["params"][n], last["params"][n]) for n in last["trainable"] if "lora_B" in n)
    # The output is a plain causal LM with the adapters merged: same loss as the adapter model had.
    out = Path(result.model_dir)
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.state_dict().keys() == base.state_dict().keys()
    changed = {n for (n, p), q in zip(base.named_parameters(), merged.parameters(), strict=True)
               if not torch.equal(p, q)}
    assert changed == {f"transformer.h.0.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert evaluate_loss(merged, val_set, 8, tok.pad_token_id) == pytest.approx(result.val_loss, abs=1e-6)


def test_lora_on_a_tied_embedding_is_refused(tmp_path):
    pytest.importorskip("peft")
    cfg = lora_config(tmp_path, lora=LoraSettings(target_modules=("c_attn", "lm_head")))
    with pytest.raises(ValueError, match=r"\['lm_head'\].*tied embeddings.*target_modules"):
        train_sft(cfg)


def test_lora_sft_resumes_like_an_uninterrupted_run(tmp_path, monkeypatch, capfd):
    pytest.importorskip("peft")
    cfg = lora_config(tmp_path, max_steps=30)
    real, calls = sft_module.evaluate_loss, [0]

    def killed_at_second_evaluation(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sft_module, "evaluate_loss", killed_at_second_evaluation)
    with pytest.raises(KeyboardInterrupt):
        train_sft(cfg)
    checkpoint = Path(cfg.out) / "checkpoint"
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 10
    assert all("lora_" in name for name in load_file(checkpoint / "model.safetensors"))
    monkeypatch.undo()

    # The same run from the command line (--lora maps onto the same settings) resumes and finishes.
    flags = ["--model", cfg.model, "--data", cfg.data, "--val-data", cfg.val_data, "--out", cfg.out,
             "--val-fraction", "0.25", "--batch-size", "8", "--max-steps", "30", "--learning-rate", "0.03",
             "--eval-steps", "10", "--logging-steps", "5", "--patience", "0", "--no-progress",
             "--lora", "r=8,alpha=16,target_modules=c_attn+c_proj+c_fc"]
    capfd.readouterr()
    assert cli(flags) == 0
    captured = capfd.readouterr()
    assert f"resuming {cfg.out} from step 10." in captured.err
    resumed = json.loads(captured.out)
    whole = train_sft(SFTConfig(**{**cfg.__dict__, "out": str(tmp_path / "whole")}))
    assert resumed["val_loss"] == pytest.approx(whole.val_loss, abs=1e-6)
    a, b = weights(resumed["model_dir"]), weights(whole.model_dir)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_lora_flag_errors_name_the_flag(tmp_path, capsys):
    cfg = config(tmp_path)
    with pytest.raises(SystemExit):
        cli(["--model", cfg.model, "--data", cfg.data, "--out", cfg.out, "--lora", "rank=8"])
    assert "--lora: --lora 'rank=8': give key=value pairs of r, alpha" in capsys.readouterr().err


# ---- torchrun --------------------------------------------------------------------------------
def test_two_torchrun_ranks_take_the_one_process_steps(tmp_path):
    """2 ranks, each with half of every micro-batch, equal 1 process over the same global batches."""
    model = tiny_model_dir(tmp_path, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # no dropout: exact
    # 22 rows in batches of 4: each epoch ends with a 2-row batch; 7 validation rows split 4 + 3.
    cfg = config(tmp_path, model=str(model), data=str(write_demos(tmp_path / "train.jsonl", 22)),
                 val_data=str(write_demos(tmp_path / "val.jsonl", 7)), out=str(tmp_path / "one"), batch_size=4,
                 gradient_accumulation_steps=2, max_steps=6, eval_steps=3, logging_steps=1, learning_rate=1e-2)
    one = train_sft(cfg)
    flags = ["--model", cfg.model, "--data", cfg.data, "--val-data", cfg.val_data, "--out", str(tmp_path / "two"),
             "--batch-size", "4", "--gradient-accumulation-steps", "2", "--max-steps", "6", "--eval-steps", "3",
             "--logging-steps", "1", "--learning-rate", "0.01", "--patience", "0", "--no-progress"]
    done = torchrun(2, "-m", "agents.sft", *flags)
    two = json.loads(done.stdout)  # rank 0 alone reports

    single, double, initial = weights(one.model_dir), weights(two["model_dir"]), weights(model)
    # The attention key bias adds one amount to all of a query's scores, which softmax ignores: its
    # gradient is 0 up to rounding, and AdamW (eps 1e-8) turns that rounding noise into steps of ~lr.
    for w in (single, double):
        w["transformer.h.0.attn.c_attn.bias"][32:64] = 0.0
    moved = max((single[k] - initial[k]).abs().max().item() for k in initial)
    diff = max((single[k] - double[k]).abs().max().item() for k in single)
    print(f"largest parameter move {moved:.2e}; largest 1-process vs 2-process difference {diff:.2e}")
    assert moved > 1e-2 and diff < 1e-5
    assert two["steps"] == one.steps == 6 and two["best_step"] == one.best_step
    assert two["val_loss"] == pytest.approx(one.val_loss, rel=1e-6)
    # Rank 0 alone wrote the log: the same rows, with the same losses.
    rows_one, rows_two = ((tmp_path / d / "log.csv").read_text().splitlines()[1:] for d in ("one", "two"))
    assert len(rows_two) == len(rows_one) == 6 + 2
    for a, b in zip(rows_one, rows_two, strict=True):
        assert a.split(",")[:3] == b.split(",")[:3]
        assert float(a.split(",")[3]) == pytest.approx(float(b.split(",")[3]), rel=1e-5)
    assert (tmp_path / "two" / "trainer_state.json").is_file() and not (tmp_path / "two" / "checkpoint").exists()
