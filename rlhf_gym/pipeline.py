"""``rlhf-gym pipeline``: the four steps of RLHF end to end, agents compared, a report written.

Step 0 (prepare) loads the embedded default policy, prompts and reward model, or with
``--from-scratch`` rebuilds them into the run folder (``rlhf_gym.build_defaults``, about
15 minutes), or with ``--model PATH`` uses your Hugging Face causal LM. Step 1 (SFT)
reports the policy's SFT metrics (its model card) and measures its samples on held-out
evaluation prompts. Step 2 (feedback and reward model) loads the default reward model,
or with ``--train-reward-model`` samples, labels with a simulated labeler and trains one
(``rlhf_gym.feedback``); either way it measures the reward model's pairwise accuracy on
freshly labeled held-out samples against the ceiling, the agreement of two independent
simulated labelers. Step 3 (RL) trains PPOKL, RLOO and stable-baselines3 PPO (through
the KL reward wrapper and ``KLPenaltyCallback``) on the same prompts and seed with the same
beta (SB3 on a smaller token budget: each of its tokens costs about 19x more), measures
best-of-n for n = 1..64 from the SFT policy, and evaluates every policy on the held-out
prompts: gold score, proxy (reward-model) score, KL to the reference, and the gold gain
against best-of-n's at the same KL.

Every stage writes its output atomically and is skipped when that output exists, and the
agents checkpoint as they train, so re-running the same command resumes a killed run.
The layout of the run folder is :class:`rlhf_gym.report.RunLayout`.

    rlhf-gym pipeline --out runs/demo            # the default run: about 5 minutes on 2 idle cores
    rlhf-gym report --out runs/demo              # re-render the report
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents import PPOKL, RLOO, PPOKLConfig, RLOOConfig
from agents.best_of_n import best_of_n_kl
from agents.lm import load_causal_lm
from agents.ppo_utils import kl_estimate
from agents.rollout import response_logprobs
from reward_models import (
    HFRewardModel,
    PromptResponses,
    RewardModel,
    SimulatedLabeler,
    agreement,
    evaluate_preferences,
    load_collection,
    save_preferences,
)
from reward_models.hf import resolve_device
from rlhf_common.config_cli import add_config_args, config_from_args
from rlhf_common.io import DataError, atomic_path, save_dir_atomic, write_json_atomic, write_jsonl_atomic
from rlhf_common.training import RunLogger, quiet_transformers, set_torch_threads
from rlhf_gym.collect import sample_groups, unscored
from rlhf_gym.report import AGENT_LABELS, RunLayout, format_table, summary_rows, write_report
from text_env import Task
from text_env.prompts import load_prompts

__all__ = ["PipelineConfig", "SB3PPOConfig", "best_of_n_curve", "cli", "evaluate_policy", "run_pipeline",
           "set_torch_threads", "train_sb3_ppo"]

AGENTS = tuple(AGENT_LABELS)
"""Agents step 3 can train: ``ppo_kl``, ``rloo``, ``sb3_ppo``."""
RESUMABLE_CHANGES = frozenset({"progress", "num_threads", "out"})
"""Settings that may differ when resuming: they do not change any result."""


@dataclass
class PipelineConfig:
    """Everything ``rlhf-gym pipeline`` does; each field is also a ``--flag``.

    The defaults are the demo, under 10 minutes on 2 idle CPU cores. ``timesteps`` is the
    budget of PPOKL and RLOO (env steps = generated tokens); SB3 PPO gets ``sb3_timesteps``,
    since its update re-encodes the whole window for every token (about 19x PPOKL's cost per
    token, ``bench/sb3_vs_ppokl.py``).
    """

    out: str = "runs/pipeline"
    """Run folder: stage outputs, agent logs and checkpoints, report.md, PNGs, CSVs. Re-running resumes it."""
    model: str | None = None
    """Your Hugging Face causal-LM folder as the SFT policy (its own tokenizer is used); default: the embedded one."""
    from_scratch: bool = False
    """Rebuild the default tokenizer, policy, prompts and reward model into the run folder first (~15 min)."""
    prompts: str | None = None
    """Training prompts, JSONL {"prompt": str} per line; default: the embedded prompts."""
    eval_prompts: str | None = None
    """Held-out evaluation prompts (same format); default: the embedded evaluation prompts."""
    reward_model: str | None = None
    """A reward-model folder (AutoModelForSequenceClassification, one label); default: the default task's."""
    train_reward_model: bool = False
    """Step 2 trains a reward model on simulated rankings of the policy's samples instead of loading one."""
    rm_prompts: int = 1000
    """With --train-reward-model: training prompts sampled K times and ranked (10% held out for validation)."""
    k: int = 4
    """Responses per prompt that a labeler ranks; also RLOO's samples per prompt."""
    labeler_temperature: float = 0.2
    """Noise of the simulated labelers (Bradley-Terry temperature in gold-score units)."""
    n_eval_prompts: int = 128
    """Held-out prompts every policy is evaluated on."""
    eval_samples: int = 16
    """Responses per evaluation prompt for each trained policy: 2,048 with 128 prompts, so the gold score's
    standard error (~0.014) is small next to the gains compared."""
    max_n: int = 64
    """Best-of-n is measured for n = 1, 2, 4, ... up to this power of two."""
    agents: str = "ppo_kl,rloo,sb3_ppo"
    """Comma-separated agents to train in step 3 (ppo_kl, rloo, sb3_ppo)."""
    timesteps: int = 196_608
    """Budget of PPOKL and RLOO: env steps (generated tokens), as in SB3's total_timesteps. PPOKL's KL levels
    off after about 80k; the rest buys reward at that KL."""
    sb3_timesteps: int = 12_288
    """Budget of SB3 PPO (env steps), smaller because each of its tokens costs about 19x more."""
    batch_size: int = 128
    """Episodes per iteration of PPOKL and RLOO; SB3 collects n_envs x n_steps tokens per rollout."""
    kl_coef: float = PPOKLConfig.init_kl_coef
    """Beta, fixed for every agent: PPOKL's per-token KL penalty, RLOO's KL in the reward, the KL penalty in
    SB3's rewards (PPOKLConfig's default)."""
    ppo_learning_rate: float = PPOKLConfig.learning_rate
    """PPOKL's Adam step size (4 epochs x ``ppo_minibatches`` per batch, annealed linearly; PPOKLConfig's
    default). Small steps spend KL on the reward rather than on noise: approx-KL per update stays near
    1e-3 (OAI's healthy runs: 5e-4), and the gold gain per nat of KL rises (3e-4 reached half of best-of-n's)."""
    ppo_minibatches: int = PPOKLConfig.num_minibatches
    """PPOKL's minibatches per epoch."""
    rloo_learning_rate: float = 3e-4
    """RLOO's Adam step size (one step per batch, annealed linearly)."""
    sb3_learning_rate: float = 1e-4
    """SB3 PPO's Adam step size."""
    sb3_n_epochs: int = 1
    """SB3 PPO's epochs per rollout: its update re-encodes the whole window for every token, so it is the cost."""
    sb3_n_envs: int = 16
    """SB3 PPO's sub-envs (single envs in a DummyVecEnv, each with the KL wrapper)."""
    sb3_n_steps: int = 32
    """SB3 PPO's steps per sub-env per rollout: sb3_n_envs x sb3_n_steps tokens per update."""
    checkpoint_every: int = 4
    """Agents save a resumable checkpoint every this many iterations (and at the end)."""
    max_new_tokens: int = 32
    """Response length cap."""
    seed: int = 0
    """Seeds sampling, labelers, agents and evaluation."""
    num_threads: int | None = None
    """Torch CPU threads; default: torch's choice (all cores) on an idle machine, 1 when the load average says
    other processes are computing (tiny models lose more to contended threads than they gain)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        names = self.agent_names
        unknown = [n for n in names if n not in AGENTS]
        if unknown or not names:
            raise ValueError(f"--agents {self.agents!r}: choose a comma-separated subset of {', '.join(AGENTS)}.")
        if self.from_scratch and self.model is not None:
            raise ValueError("--from-scratch rebuilds the default policy; it cannot be combined with --model.")
        if self.max_n < 1 or self.max_n & (self.max_n - 1):
            raise ValueError(f"--max-n {self.max_n} must be a power of two (1, 2, 4, ..., 64).")
        if self.k < 2 or self.batch_size % self.k:
            raise ValueError(f"--k {self.k} must be >= 2 and divide --batch-size {self.batch_size}.")
        small = {"n_eval_prompts": self.n_eval_prompts, "eval_samples": self.eval_samples,
                 "timesteps": self.timesteps, "sb3_timesteps": self.sb3_timesteps, "rm_prompts": self.rm_prompts,
                 "ppo_minibatches": self.ppo_minibatches,
                 "checkpoint_every": self.checkpoint_every}  # >= 1: every stage must be resumable
        for name, value in small.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value} must be >= 1.")

    @property
    def agent_names(self) -> list[str]:
        """The agents of ``agents``, in order."""
        return [n.strip() for n in self.agents.split(",") if n.strip()]


# ---- evaluation ------------------------------------------------------------------------
@torch.no_grad()
def evaluate_policy(
    model: Any,
    reference: Any,
    task: Task,
    prompts: Sequence[str],
    samples: int = 4,
    *,
    batch_size: int = 64,
    seed: int = 0,
    n_show: int = 5,
    progress: bool = True,
    desc: str = "evaluate",
) -> dict[str, Any]:
    """Gold score, proxy score and KL to ``reference`` of ``model``'s samples on ``prompts``.

    KL is per response: the sum over its tokens of ``log pi - log pi_ref`` (k1, unbiased;
    ``kl_k3`` is the never-negative k3 estimate), averaged over responses, at temperature 1.
    ``samples`` lists the first response to each of the first ``n_show`` prompts.
    """
    if task.gold_scorer is None:
        raise ValueError(f"task {task.name!r} has no gold_scorer; evaluation reports the gold score.")
    gold, proxy, kl1, kl3, length, eos, shown = [], [], [], [], [], [], []
    for batch in sample_groups(model, task, prompts, samples, batch_size=batch_size, seed=seed,
                               progress=progress, desc=desc):
        mask = batch.response_mask.float()  # (B, T)
        ref = response_logprobs(reference, batch, 1.0, task.vocab_size).logprobs  # (B, T)
        kl1 += (kl_estimate(batch.logprobs, ref, "k1") * mask).sum(1).tolist()
        kl3 += (kl_estimate(batch.logprobs, ref, "k3") * mask).sum(1).tolist()
        gold += batch.gold_scores.tolist()
        proxy += batch.scores.tolist()
        length += batch.lengths.tolist()
        eos += [info["end_reason"] == "eos" for info in batch.infos]
        for info in batch.infos[::samples]:
            if len(shown) < n_show:
                shown.append({"prompt": info["prompt"], "response": info["response"], "gold": info["gold_score"],
                              "proxy": info["score"]})
    return {
        "gold": float(np.mean(gold)), "gold_sem": float(np.std(gold) / math.sqrt(len(gold))),
        "proxy": float(np.mean(proxy)), "kl": float(np.mean(kl1)), "kl_k3": float(np.mean(kl3)),
        "response_length": float(np.mean(length)), "eos_fraction": float(np.mean(eos)),
        "episodes": len(gold), "samples": shown,
    }


@torch.no_grad()
def best_of_n_curve(
    reference: Any,
    task: Task,
    prompts: Sequence[str],
    max_n: int = 64,
    *,
    batch_size: int = 128,
    seed: int = 0,
    n_show: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Best-of-n from ``reference`` on ``prompts`` for n = 1 .. ``max_n``, from one set of samples.

    ``max_n`` responses are sampled per prompt once; for each n the gold and proxy scores
    of the reward model's favourite are averaged over every n-subset of them (the unbiased
    estimator of :func:`_best_of`). ``curve`` holds n = 1, 2, 4, ..., ``max_n`` for tables
    and plots, ``dense`` every n, to match an agent's KL (:func:`agents.best_of_n.matched_best_of_n`).
    KL(best-of-n || reference) is the analytic ln n - (n - 1) / n.
    """
    proxy, gold, length, eos, texts = [], [], [], [], []
    for batch in sample_groups(reference, task, prompts, max_n, batch_size=max(batch_size, max_n), seed=seed,
                               progress=progress, desc="best-of-n samples"):
        proxy.append(batch.scores.reshape(-1, max_n))  # (prompts in batch, max_n)
        gold.append(batch.gold_scores.reshape(-1, max_n))
        length.append(batch.lengths.cpu().numpy().reshape(-1, max_n))
        eos.append(np.array([i["end_reason"] == "eos" for i in batch.infos]).reshape(-1, max_n))
        texts += [[i["response"] for i in batch.infos[g : g + max_n]] for g in range(0, len(batch.infos), max_n)]
    proxy_a, gold_a, length_a = np.concatenate(proxy), np.concatenate(gold), np.concatenate(length)  # (P, max_n)
    dense = [{"n": n, "kl": best_of_n_kl(n), "gold": _best_of(proxy_a, gold_a, n),
              "proxy": _best_of(proxy_a, proxy_a, n)} for n in range(1, max_n + 1)]
    curve = [{**r, "response_length": _best_of(proxy_a, length_a, r["n"]), "episodes": int(proxy_a.size)}
             for r in dense if r["n"] & (r["n"] - 1) == 0]  # n = 1, 2, 4, ..., max_n
    best_all = proxy_a.argmax(1)  # (P,)
    shown = [{"prompt": prompts[p], "response": texts[p][0], "gold": float(gold_a[p, 0]),
              "best_response": texts[p][best_all[p]], "best_gold": float(gold_a[p, best_all[p]])}
             for p in range(min(n_show, len(prompts)))]
    return {"max_n": max_n, "prompts": len(prompts), "curve": curve, "dense": dense, "samples": shown,
            "reference": {"gold": float(gold_a.mean()), "proxy": float(proxy_a.mean()),
                          "response_length": float(length_a.mean()), "eos_fraction": float(np.concatenate(eos).mean())}}


def _best_of(proxy: np.ndarray, values: np.ndarray, n: int) -> float:
    """Mean of ``values`` at the proxy's favourite of a random n-subset of each row's samples.

    Exact over all subsets: the sample ranked ``i``-th lowest of ``N`` by the proxy (from 0)
    is the favourite of ``C(i, n-1)`` of the ``C(N, n)`` subsets. Lower variance than
    disjoint groups, and any n up to N works.
    """
    rows, samples = proxy.shape  # (P, N)
    order = np.argsort(proxy, axis=1, kind="stable")  # (P, N) ascending proxy
    weights = np.array([math.comb(i, n - 1) for i in range(samples)], dtype=np.float64) / math.comb(samples, n)  # (N,)
    return float((np.take_along_axis(values, order, 1) @ weights).mean())


# ---- SB3 PPO through the Gymnasium API -----------------------------------------------------
@dataclass
class SB3PPOConfig:
    """stable-baselines3 PPO on the LM adapter (``agents.sb3``) with the KL reward wrapper."""

    n_envs: int = 16
    """Single envs stepped together (SB3 DummyVecEnv), each wrapped in ``KLRewardWrapper``."""
    n_steps: int = 32
    """Env steps per sub-env per rollout: n_envs x n_steps tokens per update."""
    n_epochs: int = 1
    """Passes over each rollout."""
    n_minibatches: int = 4
    """Minibatches per epoch: SB3's batch_size is n_envs x n_steps / n_minibatches tokens (each token is a sample)."""
    learning_rate: float = 1e-4
    """Adam step size."""
    kl_coef: float = 0.05
    """Beta: the wrapper adds beta * log pi_ref(a|s) to each reward and ``KLPenaltyCallback`` subtracts
    beta * log pi(a|s), so every stored reward carries the per-token KL penalty of ``agents.PPOKL``."""
    seed: int = 0
    """Seeds SB3, the envs and the policy's sampling."""
    log_dir: str = "runs/sb3_ppo"
    """``progress.csv``, TensorBoard events, ``checkpoint.zip`` and the final ``policy/`` folder."""
    checkpoint_every: int = 4
    """Save ``checkpoint.zip`` every this many rollouts (and at the end); 0 only at the end."""

    def __post_init__(self) -> None:
        rollout = self.n_envs * self.n_steps
        if min(self.n_envs, self.n_steps, self.n_epochs, self.n_minibatches) < 1 or rollout % self.n_minibatches:
            raise ValueError(
                f"n_envs={self.n_envs}, n_steps={self.n_steps}, n_epochs={self.n_epochs} and "
                f"n_minibatches={self.n_minibatches} must be >= 1, and n_minibatches must divide n_envs x n_steps."
            )


def _sb3_monitor(config: SB3PPOConfig, total: int, progress: bool) -> Any:
    """An SB3 callback: per rollout, the finished episodes' proxy and gold scores and KL; CSV, TensorBoard, bar.

    A rollout's row is logged when the next rollout starts (or training ends), so its
    ``seconds`` cover the rollout and the update after it; the checkpoint is saved then too.
    """
    from stable_baselines3.common.callbacks import BaseCallback

    class Monitor(BaseCallback):
        def __init__(self, config: SB3PPOConfig, total: int, progress: bool) -> None:
            super().__init__()
            self.cfg, self.total, self.progress = config, total, progress

        def _on_training_start(self) -> None:
            from tqdm.auto import tqdm

            per_rollout = self.cfg.n_envs * self.cfg.n_steps
            self.rollouts = self.model.num_timesteps // per_rollout
            self.logger_ = RunLogger(self.cfg.log_dir, resume_step=self.rollouts or None)
            self.episodes = _logged_episodes(Path(self.cfg.log_dir) / "progress.csv", batch_size=0)
            self.bar = tqdm(total=self.total, initial=self.model.num_timesteps, unit="tok", desc="SB3 PPO",
                            disable=not self.progress)
            self.logp = np.zeros(self.training_env.num_envs)
            self.pending: dict[str, float] | None = None
            self.started = time.perf_counter()
            self._reset_stats()

        def _reset_stats(self) -> None:
            self.scores: list[float] = []
            self.golds: list[float] = []
            self.kls: list[float] = []
            self.lengths: list[int] = []

        def _on_step(self) -> bool:
            self.logp += self.locals["log_probs"].cpu().numpy()  # (n_envs,) log pi of the actions taken
            for i, (done, info) in enumerate(zip(self.locals["dones"], self.locals["infos"], strict=True)):
                if done:
                    self.scores.append(info["score"])
                    self.golds.append(info.get("gold_score", math.nan))
                    self.kls.append(self.logp[i] - info["episode_ref_logprob"])  # k1 summed over the response
                    self.lengths.append(info["response_length"])
                    self.logp[i] = 0.0
            self.bar.update(self.training_env.num_envs)
            return True

        def _on_rollout_end(self) -> None:
            self.episodes += len(self.scores)
            self.pending = {"episodes": self.episodes, "timesteps": self.model.num_timesteps}
            if self.scores:
                self.pending.update(score=float(np.mean(self.scores)), gold_score=float(np.mean(self.golds)),
                                    kl=float(np.mean(self.kls)), response_length=float(np.mean(self.lengths)))
                self.bar.set_postfix(score=f"{self.pending['score']:.3g}", kl=f"{self.pending['kl']:.3g}")
            self._reset_stats()

        def _on_rollout_start(self) -> None:
            self._flush(final=False)

        def _on_training_end(self) -> None:
            self._flush(final=True)
            self.bar.close()
            self.logger_.close()

        def _flush(self, final: bool) -> None:
            if self.pending is None:
                return
            now = time.perf_counter()
            self.rollouts += 1
            self.logger_.log(self.rollouts, {**self.pending, "seconds": now - self.started})
            self.started, self.pending = now, None
            every = self.cfg.checkpoint_every
            if final or (every and self.rollouts % every == 0):
                with atomic_path(Path(self.cfg.log_dir) / "checkpoint.zip") as tmp:
                    self.model.save(tmp)

    return Monitor(config, total, progress)


def train_sb3_ppo(
    task: Task, policy: str | os.PathLike[str], total_timesteps: int, config: SB3PPOConfig, progress: bool = True
) -> Any:
    """Train SB3 PPO on ``task`` from the causal LM folder ``policy``; resumes ``log_dir/checkpoint.zip``.

    The policy is :class:`agents.sb3.LMActorCriticPolicy`; every sub-env is a single
    ``RLHFText-v0`` env in :class:`text_env.wrappers.KLRewardWrapper` with a frozen copy of
    the initial policy as reference, and :class:`agents.sb3.KLPenaltyCallback` subtracts
    ``beta * log pi(a|s)`` from each stored reward: the returns carry the exact per-token KL
    penalty, so SB3 optimises ``E[score] - beta * KL`` with ``ent_coef = 0``. Returns the trained
    ``PPO`` model; its language model is ``model.policy.features_extractor.lm``, also saved as a
    Hugging Face folder in ``log_dir/policy``.
    """
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.env_util import make_vec_env

    from agents.sb3 import KLPenaltyCallback, LMActorCriticPolicy, lm_policy_kwargs
    from text_env.wrappers import KLRewardWrapper

    log_dir = Path(config.log_dir)
    device = resolve_device("auto")
    with quiet_transformers():
        reference = load_causal_lm(policy, device=device)
    # One frozen reference shared by the wrappers: read-only, each wrapper keeps its own KV cache.
    venv = make_vec_env(lambda: KLRewardWrapper(gym.make("RLHFText-v0", task=task), reference, config.kl_coef),
                        n_envs=config.n_envs, seed=config.seed)
    checkpoint = log_dir / "checkpoint.zip"
    resumed = checkpoint.is_file()
    with quiet_transformers():
        if resumed:
            model = PPO.load(checkpoint, env=venv, device=device)
        else:
            model = PPO(
                LMActorCriticPolicy, venv, policy_kwargs=lm_policy_kwargs(str(policy)),
                learning_rate=config.learning_rate, n_steps=config.n_steps,
                batch_size=config.n_envs * config.n_steps // config.n_minibatches,
                n_epochs=config.n_epochs, gamma=1.0, gae_lambda=0.95, clip_range=0.2, vf_coef=0.1,
                max_grad_norm=1.0, ent_coef=0.0, seed=config.seed, device=device,
            )
    remaining = total_timesteps - model.num_timesteps
    if remaining > 0:
        with _quiet_padding_warning():
            callbacks = [KLPenaltyCallback(config.kl_coef), _sb3_monitor(config, total_timesteps, progress)]
            model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=not resumed)
    lm = model.policy.features_extractor.lm

    def write(tmp: Path) -> None:
        lm.save_pretrained(tmp, safe_serialization=True)
        task.tokenizer.save_pretrained(tmp)

    with quiet_transformers():
        save_dir_atomic(log_dir / "policy", write)
    venv.close()
    return model


@contextmanager
def _quiet_padding_warning() -> Iterator[None]:
    """Hide transformers' one-off "pass an attention_mask" advice: the KL wrapper's inputs are never padded."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# ---- the pipeline ----------------------------------------------------------------------------
class Pipeline:
    """The stages of one run; :meth:`run` executes those whose output is missing."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.layout = RunLayout(Path(config.out))
        self.setup: dict[str, Any] = {}
        """Step 0's output, once :meth:`run` has it."""
        self._reference: Any = None

    # ---- plumbing -------------------------------------------------------------------------
    def _check_config(self) -> None:
        """Record the config on the first run; refuse to resume a run made with other settings."""
        path, now = self.layout.config, asdict(self.config)
        if path.is_file():
            before = json.loads(path.read_text(encoding="utf-8"))
            changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k])
            if changed:
                detail = ", ".join(f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in changed)
                raise ValueError(
                    f"--out {self.layout.root} holds a run with other settings ({detail}); rerun with the same "
                    "flags to resume it, or pass another --out for a new run."
                )
        else:
            write_json_atomic(path, now)

    def _stage(self, name: str, path: Path, build: Callable[[], Any]) -> Any:
        """The JSON output at ``path``: read when a previous run wrote it, else built and written atomically."""
        if path.is_file():
            self._say(f"{name}: done already ({path.name}), skipped")
            return json.loads(path.read_text(encoding="utf-8"))
        self._say(f"{name} ...")
        start, cpu = time.perf_counter(), time.process_time()
        result = build()
        # Wall time, and this process's CPU time (what the stage costs on an idle machine, per thread).
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["cpu_seconds"] = round(time.process_time() - cpu, 1)
        write_json_atomic(path, result)
        return result

    def _say(self, text: str) -> None:
        if self.config.progress:
            print(f"[rlhf-gym pipeline] {text}", flush=True)

    def task(self, reward_model: RewardModel) -> Task:
        """The RL task: the policy's tokenizer, the training prompts, ``reward_model``, the default gold scorer."""
        from text_env.defaults import default_task

        setup = self.setup
        return default_task(model=None if setup["policy_source"] == "embedded default" else setup["policy"],
                            prompts=setup["prompts"], reward_model=reward_model,
                            max_new_tokens=self.config.max_new_tokens)

    @property
    def reference(self) -> Any:
        """The SFT policy, frozen: the KL anchor and the best-of-n sampler."""
        if self._reference is None:
            with quiet_transformers():
                self._reference = load_causal_lm(self.setup["policy"]).requires_grad_(False)
        return self._reference

    @property
    def eval_prompts(self) -> list[str]:
        """The held-out prompts every policy is evaluated on."""
        return load_prompts(self.setup["eval_prompts"])[: self.config.n_eval_prompts]

    # ---- step 0 ---------------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Step 0: the policy, prompts, reward model and gold scorer of the run."""
        from text_env import defaults

        cfg = self.config
        if cfg.from_scratch:
            assets = self.layout.assets
            if not (assets / "model_card.json").is_file():
                from rlhf_gym.build_defaults import BuildConfig, build_defaults

                self._say(f"step 0: rebuilding the default assets into {assets} (about 15 minutes)")
                build_defaults(BuildConfig(out=str(assets), work_dir=str(self.layout.root / "step0_build"),
                                           seed=cfg.seed, num_threads=torch.get_num_threads(),
                                           progress=cfg.progress))
            policy, source, card = assets / "policy", "rebuilt from scratch", assets / "model_card.json"
            prompts, eval_prompts, rm_path = assets / "prompts.jsonl", assets / "eval_prompts.jsonl", None
            if (assets / "reward_model").is_dir():
                rm_path = assets / "reward_model"
        elif cfg.model is not None:
            if not (Path(cfg.model) / "config.json").is_file():
                raise ValueError(f"--model {cfg.model}: no config.json there; pass a Hugging Face causal-LM folder.")
            policy, source, card, rm_path = Path(cfg.model), "your model", None, None
            prompts, eval_prompts = defaults.default_prompts_path(), defaults.default_eval_prompts_path()
        else:
            policy, source = defaults.default_policy_path(), "embedded default"
            card, rm_path = defaults.ASSETS_DIR / "model_card.json", None
            prompts, eval_prompts = defaults.default_prompts_path(), defaults.default_eval_prompts_path()
        prompts = Path(cfg.prompts) if cfg.prompts else prompts
        eval_prompts = Path(cfg.eval_prompts) if cfg.eval_prompts else eval_prompts
        n_prompts, n_eval = len(load_prompts(prompts)), len(load_prompts(eval_prompts))
        if cfg.reward_model:
            rm_path = Path(cfg.reward_model)
        with quiet_transformers():
            parameters = sum(p.numel() for p in load_causal_lm(policy).parameters())
        if cfg.train_reward_model:
            rm = f"trained in step 2 on simulated rankings ({self.layout.feedback.name}/reward_model)"
        else:
            rm = f"HFRewardModel('{rm_path}')" if rm_path else "the default task's reward model"
        return {"policy": str(policy), "policy_source": source, "parameters": parameters,
                "model_card": str(card) if card and card.is_file() else None,
                "prompts": str(prompts), "n_prompts": n_prompts, "eval_prompts": str(eval_prompts),
                "n_eval_prompts": min(n_eval, cfg.n_eval_prompts), "reward_model": rm,
                "reward_model_path": str(rm_path) if rm_path else None}

    # ---- step 1 ---------------------------------------------------------------------------
    def sft_metrics(self) -> dict[str, Any]:
        """Step 1: the model card's SFT metrics (when there is one) and the policy's held-out samples."""
        cfg, setup = self.config, self.setup
        task = self.task(unscored())  # no reward model yet: only the gold scorer is used
        rows, gold, length, eos = [], [], [], []
        for batch in sample_groups(self.reference, task, self.eval_prompts, cfg.k, batch_size=cfg.batch_size,
                                   seed=cfg.seed + 1, progress=cfg.progress, desc="step 1: SFT samples"):
            gold += batch.gold_scores.tolist()
            length += batch.lengths.tolist()
            eos += [info["end_reason"] == "eos" for info in batch.infos]
            for g in range(0, len(batch.infos), cfg.k):
                group = batch.infos[g : g + cfg.k]
                rows.append({"prompt": group[0]["prompt"], "responses": [i["response"] for i in group],
                             "gold": [i["gold_score"] for i in group]})
        write_jsonl_atomic(self.layout.reference_samples, rows)
        card = None
        if setup["model_card"]:
            sft = json.loads(Path(setup["model_card"]).read_text(encoding="utf-8")).get("sft")
            if sft:
                card = {"val_loss": sft["val_loss"], "val_perplexity": sft["val_perplexity"], "steps": sft["steps"]}
        return {"model_card": card, "gold_scorer": repr(task.gold_scorer), "prompts": len(rows), "k": cfg.k,
                "samples": len(gold),
                "gold": float(np.mean(gold)), "gold_std": float(np.std(gold)),
                "response_length": float(np.mean(length)), "eos_fraction": float(np.mean(eos))}

    # ---- step 2 ---------------------------------------------------------------------------
    def load_reward_model(self) -> RewardModel:
        """The run's reward model: trained in step 2, a given folder, or the default task's."""
        from text_env.defaults import default_task

        with quiet_transformers():
            if self.config.train_reward_model:
                return HFRewardModel(self.layout.feedback / "reward_model")
            if self.setup["reward_model_path"]:
                return HFRewardModel(self.setup["reward_model_path"])
            return default_task().reward_model

    def reward_model_metrics(self) -> dict[str, Any]:
        """Step 2: train (or load) the reward model; its held-out accuracy against the labelers' ceiling."""
        cfg = self.config
        training = None
        if cfg.train_reward_model:
            from rlhf_gym.feedback import FeedbackConfig, simulated_feedback

            prompts = load_prompts(self.setup["prompts"])[: cfg.rm_prompts]
            training = simulated_feedback(self.setup["policy"], prompts, self.layout.feedback, FeedbackConfig(
                k=cfg.k, labeler_temperature=cfg.labeler_temperature, max_new_tokens=cfg.max_new_tokens,
                seed=cfg.seed, progress=cfg.progress))
        rm = self.load_reward_model()
        gold = self.task(unscored()).gold_scorer
        items = [PromptResponses(i.prompt, i.responses) for i in load_collection(self.layout.reference_samples)]

        def labeler(seed: int, temperature: float) -> SimulatedLabeler:
            return SimulatedLabeler(gold=gold, temperature=temperature, seed=seed)

        # Held-out SFT samples of the evaluation prompts, ranked by two independent labelers and by gold.
        labels = labeler(cfg.seed + 11, cfg.labeler_temperature).label(items)
        second = labeler(cfg.seed + 12, cfg.labeler_temperature).label(items)
        gold_order = labeler(cfg.seed, 0.0).label(items)
        if not labels:
            raise DataError(f"{self.layout.reference_samples}: no prompt has two distinct SFT samples to rank.")
        save_preferences(self.layout.root / "step2_heldout_labels.jsonl", labels)
        metrics = evaluate_preferences(rm, labels)
        flat = [(it.prompt, r) for it in labels for r in it.responses]
        scores = rm.score([p for p, _ in flat], [r for _, r in flat])
        source = (f"Trained in step 2 on {training['train_rankings']} simulated rankings of {cfg.k} SFT samples"
                  if training else f"Loaded: {self.setup['reward_model']}")
        return {"source": source, "accuracy": metrics.accuracy, "margin": metrics.margin, "pairs": metrics.pairs,
                "prompts": len(labels), "ceiling": agreement(labels, second),
                "gold_accuracy": evaluate_preferences(rm, gold_order).accuracy,
                "labeler_gold_agreement": agreement(labels, gold_order),
                "labeler_temperature": cfg.labeler_temperature,
                "proxy_mean": float(scores.mean()), "proxy_std": float(scores.std()), "training": training}

    # ---- step 3 ---------------------------------------------------------------------------
    def best_of_n(self, task: Task) -> dict[str, Any]:
        """Step 3: the best-of-n curve of the SFT policy on the evaluation prompts."""
        cfg = self.config
        return best_of_n_curve(self.reference, task, self.eval_prompts, cfg.max_n, batch_size=2 * cfg.batch_size,
                               seed=cfg.seed + 2, progress=cfg.progress)

    def train_agent(self, name: str, task: Task) -> dict[str, Any]:
        """Step 3: train one agent for the budget (resuming its checkpoint), then evaluate it held out."""
        cfg, log_dir = self.config, self.layout.agent_dir(name)
        if name == "sb3_ppo":
            sb3 = SB3PPOConfig(n_envs=cfg.sb3_n_envs, n_steps=cfg.sb3_n_steps, n_epochs=cfg.sb3_n_epochs,
                               learning_rate=cfg.sb3_learning_rate, kl_coef=cfg.kl_coef, seed=cfg.seed,
                               log_dir=str(log_dir), checkpoint_every=cfg.checkpoint_every)
            model = train_sb3_ppo(task, self.setup["policy"], cfg.sb3_timesteps, sb3, progress=cfg.progress)
            # SB3 trains on CPU; evaluate next to the reference (on CUDA when there is one).
            policy = model.policy.features_extractor.lm.eval().to(self.reference.device)
            timesteps = model.num_timesteps
        else:
            common = dict(batch_size=cfg.batch_size, seed=cfg.seed, log_dir=str(log_dir),
                          checkpoint_every=cfg.checkpoint_every)
            if name == "ppo_kl":
                agent: PPOKL | RLOO = PPOKL(task, self.setup["policy"], PPOKLConfig(
                    learning_rate=cfg.ppo_learning_rate, num_minibatches=cfg.ppo_minibatches,
                    init_kl_coef=cfg.kl_coef, kl_target=None, **common))
            else:
                agent = RLOO(task, self.setup["policy"], RLOOConfig(
                    learning_rate=cfg.rloo_learning_rate, kl_coef=cfg.kl_coef, rloo_k=cfg.k, **common))
            resume = (agent.checkpoint_dir / "state.json").is_file()  # a killed run of this stage
            agent.learn(cfg.timesteps, resume=resume, progress_bar=cfg.progress)
            policy, timesteps = agent.policy, agent.num_timesteps
        result = evaluate_policy(policy, self.reference, task, self.eval_prompts, cfg.eval_samples,
                                 batch_size=cfg.batch_size, seed=cfg.seed + 3, progress=cfg.progress,
                                 desc=f"evaluate {AGENT_LABELS[name]}")
        episodes = _logged_episodes(log_dir / "progress.csv", cfg.batch_size)
        return {**result, "agent": name, "train_timesteps": int(timesteps), "train_episodes": episodes,
                "train_seconds": round(_logged_seconds(log_dir / "progress.csv", cfg.batch_size), 1),
                "policy_dir": str(log_dir / ("policy" if name == "sb3_ppo" else "checkpoint/policy"))}

    # ---- everything ---------------------------------------------------------------------------
    def run(self) -> list[dict[str, Any]]:
        """Run every unfinished stage, write the report, print and return the summary rows."""
        cfg = self.config
        set_torch_threads(cfg.num_threads)
        started, cpu = time.perf_counter(), time.process_time()
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self._check_config()
        self.setup = self._stage("step 0: prepare", self.layout.setup, self.prepare)
        self._stage("step 1: SFT metrics", self.layout.sft, self.sft_metrics)
        rm_metrics = self._stage("step 2: reward model", self.layout.reward_model, self.reward_model_metrics)
        self._say(f"reward model: held-out accuracy {rm_metrics['accuracy']:.3f}, "
                  f"ceiling (labeler agreement) {rm_metrics['ceiling']:.3f}")
        task = self.task(self.load_reward_model())
        self._stage("step 3: best-of-n", self.layout.best_of_n, lambda: self.best_of_n(task))
        for name in cfg.agent_names:
            self._stage(f"step 3: {AGENT_LABELS[name]}", self.layout.agent_eval(name),
                        lambda name=name: self.train_agent(name, task))
        report = write_report(self.layout.root, cfg.agent_names)
        rows = summary_rows(self.layout, cfg.agent_names)
        print(format_table(rows))
        print(f"\nreport: {report}; this invocation took {time.perf_counter() - started:.0f} s "
              f"({time.process_time() - cpu:.0f} s of CPU time)")
        return rows


def _progress_rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        return []
    with csv_path.open(newline="") as f:
        return list(csv.DictReader(f))


def _logged_seconds(csv_path: Path, batch_size: int) -> float:
    """Training time summed over the logged iterations (resumed parts included, checkpoint saves not)."""
    total = 0.0
    for row in _progress_rows(csv_path):
        total += float(row["seconds"]) if row.get("seconds") else batch_size / float(row["episodes_per_second"])
    return total


def _logged_episodes(csv_path: Path, batch_size: int) -> int:
    """Episodes trained so far: the SB3 table's own count, else iterations x ``batch_size`` (0 without a table)."""
    rows = _progress_rows(csv_path)
    if not rows:
        return 0
    last = rows[-1]
    return int(float(last["episodes"])) if last.get("episodes") else int(last["step"]) * batch_size


def run_pipeline(config: PipelineConfig) -> list[dict[str, Any]]:
    """Run (or resume) the pipeline; returns the summary rows (also in ``out/summary.csv``)."""
    return Pipeline(config).run()


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym pipeline --out DIR``: all four RLHF steps, agents compared, a report; resumable."""
    parser = argparse.ArgumentParser(prog="rlhf-gym pipeline", description=__doc__.splitlines()[0])
    add_config_args(parser, PipelineConfig)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(PipelineConfig, args)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*left-truncated.*")  # a few long prompts, by design
            run_pipeline(config)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"rlhf-gym pipeline: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
