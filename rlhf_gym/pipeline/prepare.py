"""Step 0 of the pipeline: which policy, tokenizer, prompts and reward model the run uses.

The embedded defaults; or with ``--from-scratch`` the defaults rebuilt into the run folder
(``rlhf_gym.build.defaults``, about 15 minutes); or with ``--model PATH`` your Hugging Face
causal LM with the default prompts. ``--prompts``, ``--eval-prompts`` and ``--reward-model``
replace one piece each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agents.lm import load_causal_lm
from rlhf_common.training import quiet_transformers
from rlhf_gym.pipeline.context import RunContext
from text_env.prompts import load_prompts

__all__ = ["prepare"]


def prepare(ctx: RunContext) -> dict[str, Any]:
    """Step 0: the policy, prompts, reward model and gold scorer of the run (``step0_setup.json``)."""
    cfg = ctx.config
    policy, source, card, prompts, eval_prompts, rm_path = _sources(ctx)
    prompts = Path(cfg.prompts) if cfg.prompts else prompts
    eval_prompts = Path(cfg.eval_prompts) if cfg.eval_prompts else eval_prompts
    n_prompts, n_eval = len(load_prompts(prompts)), len(load_prompts(eval_prompts))
    if cfg.reward_model:
        rm_path = Path(cfg.reward_model)
    with quiet_transformers():
        parameters = sum(p.numel() for p in load_causal_lm(policy).parameters())
    if cfg.train_reward_model:
        rm = f"trained in step 2 on simulated rankings ({ctx.layout.feedback.name}/reward_model)"
    else:
        rm = f"HFRewardModel('{rm_path}')" if rm_path else "the default task's reward model"
    return {"policy": str(policy), "policy_source": source, "parameters": parameters,
            "model_card": str(card) if card and card.is_file() else None,
            "prompts": str(prompts), "n_prompts": n_prompts, "eval_prompts": str(eval_prompts),
            "n_eval_prompts": min(n_eval, cfg.n_eval_prompts), "reward_model": rm,
            "reward_model_path": str(rm_path) if rm_path else None}


def _sources(ctx: RunContext) -> tuple[Path, str, Path | None, Path, Path, Path | None]:
    """``(policy, its source, model card, prompts, evaluation prompts, reward model)`` before the overrides."""
    from text_env import defaults

    cfg = ctx.config
    if cfg.from_scratch:
        assets = ctx.layout.assets
        if not (assets / "model_card.json").is_file():
            from rlhf_gym.build.defaults import BuildConfig, build_defaults

            ctx.say(f"step 0: rebuilding the default assets into {assets} (about 15 minutes)")
            build_defaults(BuildConfig(out=str(assets), work_dir=str(ctx.layout.root / "step0_build"),
                                       seed=cfg.seed, num_threads=torch.get_num_threads(), progress=cfg.progress))
        rm_path = assets / "reward_model" if (assets / "reward_model").is_dir() else None
        return (assets / "policy", "rebuilt from scratch", assets / "model_card.json", assets / "prompts.jsonl",
                assets / "eval_prompts.jsonl", rm_path)
    prompts, eval_prompts = defaults.default_prompts_path(), defaults.default_eval_prompts_path()
    if cfg.model is not None:
        if not (Path(cfg.model) / "config.json").is_file():
            raise ValueError(f"--model {cfg.model}: no config.json there; pass a Hugging Face causal-LM folder.")
        return Path(cfg.model), "your model", None, prompts, eval_prompts, None
    return (defaults.default_policy_path(), "embedded default", defaults.ASSETS_DIR / "model_card.json", prompts,
            eval_prompts, None)
