"""Untrusted files: pickles with code in them are refused, model-folder code never runs unless asked.

The payloads are live: a pickled object whose ``__reduce__`` calls ``exec`` and a model
folder whose ``auto_map`` points at Python files; each writes a marker file when it runs.
The positive controls show that they do run when the protection is turned off
(``torch.load(weights_only=False)``, ``trust_remote_code=True``), so a missing marker
means the loader refused, not that the payload was broken.
"""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from rl_helpers import count_task, tiny_lm
from safetensors.torch import save_model
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from agents import PPOKL, PPOKLConfig
from agents.lm import load_causal_lm, load_policy
from agents.sft import SFTConfig, train_sft
from reward_models.hf import UnsafeCheckpointError, load_tokenizer
from reward_models.hf_model import HFRewardModel, load_reward_backbone
from reward_models.train import CHECKPOINT_DIR, RewardTrainConfig, train_reward_model
from text_env.char_tokenizer import char_tokenizer

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = char_tokenizer("ab")
torch.set_num_threads(1)


class Payload:
    """Unpickling this runs ``exec``: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'a').write('pickle ran\\n')",))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def gpt2(classifier: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(TOKENIZER), n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=1,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return (GPT2ForSequenceClassification if classifier else GPT2LMHeadModel)(config)


def pickle_folder(folder: Path, marker: Path, classifier: bool = False) -> Path:
    """A Hugging Face folder whose only weights file is a pickle with a payload next to the tensors."""
    model = gpt2(classifier)
    model.save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    torch.save({**model.state_dict(), "extra": Payload(marker)}, folder / "pytorch_model.bin")
    return folder


def test_the_pickle_payload_is_live(tmp_path, marker):
    folder = pickle_folder(tmp_path / "m", marker)
    torch.load(folder / "pytorch_model.bin", weights_only=False)  # what a careless loader would do
    assert marker.read_text() == "pickle ran\n"


def test_a_plain_tensor_pickle_still_loads(tmp_path):
    """Refusing code is not refusing .bin files: a pickle of tensors only is safe under weights_only=True."""
    model = gpt2()
    model.save_pretrained(tmp_path / "m")
    TOKENIZER.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    loaded = load_causal_lm(tmp_path / "m", device="cpu")
    pairs = zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize(
    ("loader", "classifier", "clear"),
    [
        pytest.param(lambda p: load_causal_lm(p, device="cpu"), False, False, id="agents.lm.load_causal_lm"),
        pytest.param(lambda p: load_policy(p, device="cpu"), False, False, id="agents.lm.load_policy"),
        pytest.param(lambda p: HFRewardModel(p), True, True, id="HFRewardModel"),
        pytest.param(lambda p: load_reward_backbone(str(p)), True, True, id="load_reward_backbone"),
        pytest.param(lambda p: load_reward_backbone(str(p)), False, True, id="load_reward_backbone-from-lm"),
    ],
)
def test_model_folders_with_pickled_code_are_refused(tmp_path, marker, loader, classifier, clear):
    folder = pickle_folder(tmp_path / "m", marker, classifier)
    with pytest.raises(Exception) as err:
        loader(folder)
    assert not marker.exists(), "the pickle's code ran"
    message = str(err.value)
    assert "Weights only load failed" in message or "refused to load" in message
    if clear:  # reward_models names the folder and the culprit instead of suggesting weights_only=False
        assert isinstance(err.value, UnsafeCheckpointError)
        assert message.startswith(f"{folder}: refused to load") and "'exec'" in message
        assert "weights_only=False" not in message


def test_reward_training_refuses_a_pickled_base_model_and_a_pickled_optimizer_state(tmp_path, marker, capsys):
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps({"prompt": "", "responses": ["a" * i + "b", "b" * i + "a"]}) + "\n"
                            for i in range(1, 9)))
    pickle_folder(tmp_path / "evil", marker)
    from reward_models.train import cli

    assert cli(["--model", str(tmp_path / "evil"), "--data", str(data), "--out", str(tmp_path / "x"),
                "--no-progress"]) == 2
    assert "refused to load" in capsys.readouterr().err and not marker.exists()

    gpt2().save_pretrained(tmp_path / "base")
    TOKENIZER.save_pretrained(tmp_path / "base")
    config = RewardTrainConfig(model=str(tmp_path / "base"), data=str(data), out=str(tmp_path / "rm"), batch_size=2,
                               max_steps=1, val_fraction=0, progress=False)
    assert not train_reward_model(config).finished  # stopped at max_steps with a checkpoint
    optimizer_file = tmp_path / "rm" / CHECKPOINT_DIR / "trainer_state.pt"
    torch.save({"optimizer": Payload(marker)}, optimizer_file)
    with pytest.raises(UnsafeCheckpointError, match=rf"^{optimizer_file}: refused to load"):
        train_reward_model(RewardTrainConfig(**{**config.__dict__, "max_steps": 2}))
    assert not marker.exists()


def test_sft_resume_refuses_a_pickled_optimizer_state(tmp_path, marker):
    gpt2().save_pretrained(tmp_path / "base")
    TOKENIZER.save_pretrained(tmp_path / "base")
    data = tmp_path / "demos.jsonl"
    data.write_text("".join(json.dumps({"prompt": "a", "response": "b" * i}) + "\n" for i in range(1, 9)))
    config = SFTConfig(model=str(tmp_path / "base"), data=str(data), out=str(tmp_path / "out"), val_fraction=0.25,
                       batch_size=2, max_steps=4, eval_steps=2, progress=False)
    checkpoint = Path(config.out) / "checkpoint"  # what a killed run leaves, with a planted optimizer state
    checkpoint.mkdir(parents=True)
    save_model(gpt2(), str(checkpoint / "model.safetensors"))
    torch.save({"optimizer": Payload(marker)}, checkpoint / "trainer_state.pt")
    state = {"step": 2, "best_val": 1.0, "best_step": 2, "bad_evals": 0,
             "config": {f.name: getattr(config, f.name) for f in fields(config)}}
    (checkpoint / "state.json").write_text(json.dumps(state))
    with pytest.raises(Exception, match="Weights only load failed|refused to load"):
        train_sft(config)
    assert not marker.exists()


def test_agent_checkpoint_with_a_pickled_trainer_state_is_refused(tmp_path, marker):
    task = count_task()
    agent = PPOKL(task, tiny_lm(task), PPOKLConfig(batch_size=4, num_mini_batches=2, log_dir=str(tmp_path / "run")))
    agent.save(tmp_path / "saved")
    torch.save({"generator": Payload(marker)}, tmp_path / "saved" / "trainer_state.pt")
    with pytest.raises(Exception, match="Weights only load failed|refused to load"):
        PPOKL.load(tmp_path / "saved", task)
    assert not marker.exists()


# ---- trust_remote_code --------------------------------------------------------------------------
def remote_code_folder(folder: Path, marker: Path, model_type: str) -> Path:
    """A model folder whose config and tokenizer point (auto_map) at Python files that write ``marker``."""
    model = gpt2(classifier=True)
    model.save_pretrained(folder)
    TOKENIZER.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilLM",
        "AutoModelForSequenceClassification": "modeling_evil.EvilClassifier",
    }
    (folder / "config.json").write_text(json.dumps(config))
    tok_config = json.loads((folder / "tokenizer_config.json").read_text())
    tok_config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", "tokenization_evil.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    payload = f"open({str(marker)!r}, 'a').write(__name__ + ' ran\\n')\n"
    (folder / "configuration_evil.py").write_text(payload + textwrap.dedent("""
        from transformers import GPT2Config
        class EvilConfig(GPT2Config):
            model_type = "evil-gpt"
    """))
    (folder / "modeling_evil.py").write_text(payload + textwrap.dedent("""
        from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel
        from .configuration_evil import EvilConfig
        class EvilLM(GPT2LMHeadModel):
            config_class = EvilConfig
        class EvilClassifier(GPT2ForSequenceClassification):
            config_class = EvilConfig
    """))
    (folder / "tokenization_evil.py").write_text(payload + textwrap.dedent("""
        from transformers import PreTrainedTokenizerFast
        class EvilTokenizer(PreTrainedTokenizerFast):
            pass
    """))
    return folder


LOADERS = {
    "load_causal_lm": lambda p: load_causal_lm(p, device="cpu"),
    "load_tokenizer": lambda p: load_tokenizer(p),
    "HFRewardModel": lambda p: HFRewardModel(p),
    "load_reward_backbone": lambda p: load_reward_backbone(str(p)),
}


@pytest.mark.parametrize("model_type", ["evil-gpt", "gpt2"])  # unknown to transformers / a built-in architecture
@pytest.mark.parametrize("loader", list(LOADERS))
def test_model_folder_code_does_not_run_by_default(tmp_path, marker, monkeypatch, loader, model_type):
    folder = remote_code_folder(tmp_path / "m", marker, model_type)
    monkeypatch.setattr(builtins, "input", lambda *a: pytest.fail("transformers asked whether to run the code"))
    try:
        LOADERS[loader](folder)
    except ValueError as e:  # an unknown architecture needs the code: refused, naming the flag
        assert "trust_remote_code" in str(e)
    assert not marker.exists(), marker.read_text()


def test_ppo_critic_folder_code_does_not_run(tmp_path, marker, monkeypatch):
    folder = remote_code_folder(tmp_path / "critic", marker, "evil-gpt")
    asked = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": asked.append(prompt) or "y")  # a user who says yes
    task = count_task()
    config = PPOKLConfig(batch_size=4, num_mini_batches=2, value_head="critic", critic_path=str(folder),
                         log_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="trust_remote_code"):
        PPOKL(task, tiny_lm(task), config)
    assert not asked and not marker.exists()


def test_trust_remote_code_is_off_by_default_everywhere():
    import inspect

    from agents.sb3 import lm_policy_kwargs

    for fn in (load_causal_lm, load_policy, load_tokenizer, HFRewardModel, load_reward_backbone, lm_policy_kwargs):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False, fn
    for config_class in (RewardTrainConfig, SFTConfig):
        assert {f.name: f.default for f in fields(config_class)}["trust_remote_code"] is False


def test_model_folder_code_runs_when_asked(tmp_path, marker):
    """Positive control, in a child with its own HF_HOME: trust_remote_code=True does run the folder's code."""
    folder = remote_code_folder(tmp_path / "m", marker, "evil-gpt")
    script = f"from agents.lm import load_policy; load_policy({str(folder)!r}, device='cpu', trust_remote_code=True)"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    ran = marker.read_text()
    assert "configuration_evil ran" in ran and "modeling_evil ran" in ran and "tokenization_evil ran" in ran
