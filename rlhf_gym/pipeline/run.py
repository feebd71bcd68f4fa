"""The driver of ``rlhf-gym pipeline``: step 0, 1, 2 and 3 in order, each stage cached, then the report.

Every stage writes its output atomically and is skipped when that output exists, and the
agents checkpoint as they train, so re-running the same command resumes a killed run; the
run folder records the settings (``config.json``) and refuses to resume with others.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agents.registry import get_agent
from rlhf_common.config_cli import config_command
from rlhf_common.io import write_json_atomic
from rlhf_common.training import claim_run_folder, set_torch_threads
from rlhf_gym.pipeline.config import RESUMABLE_CHANGES, PipelineConfig
from rlhf_gym.pipeline.context import RunContext
from rlhf_gym.pipeline.feedback import load_reward_model, preference_labels, reward_model_metrics
from rlhf_gym.pipeline.prepare import prepare
from rlhf_gym.pipeline.report import format_table, summary_rows, write_report
from rlhf_gym.pipeline.rl import best_of_n, train_agent
from rlhf_gym.pipeline.sft import sft_metrics

__all__ = ["cli", "run_pipeline"]


def run_pipeline(config: PipelineConfig) -> list[dict[str, Any]]:
    """Run (or resume) the pipeline: every unfinished stage, then the report; returns the summary rows.

    The rows are printed as a table and also written to ``out/summary.csv``.
    """
    set_torch_threads(config.num_threads)
    started, cpu = time.perf_counter(), time.process_time()
    ctx = RunContext(config)
    claim_run_folder(ctx.layout.root, config, RESUMABLE_CHANGES, fix="rerun with the same flags to resume it, "
                     "or pass another --out for a new run.")
    layout = ctx.layout
    ctx.setup = _stage(ctx, "step 0: prepare", layout.setup, lambda: prepare(ctx))
    _stage(ctx, "step 1: SFT metrics", layout.sft, lambda: sft_metrics(ctx))
    rm_metrics = _stage(ctx, "step 2: reward model", layout.reward_model, lambda: reward_model_metrics(ctx))
    ctx.say(f"reward model: held-out accuracy {rm_metrics['accuracy']:.3f}, "
            f"ceiling (labeler agreement) {rm_metrics['ceiling']:.3f}")
    if config.label_agents:  # DPO, IPO: the rankings themselves, not a reward model trained on them
        _stage(ctx, "step 2: preference labels", layout.preference_labels, lambda: preference_labels(ctx))
    task = ctx.task(load_reward_model(ctx))
    _stage(ctx, "step 3: best-of-n", layout.best_of_n, lambda: best_of_n(ctx, task))
    for name in config.agent_names:
        _stage(ctx, f"step 3: {get_agent(name).label}", layout.agent_eval(name),
               lambda name=name: train_agent(ctx, name, task))
    report = write_report(layout.root, config.agent_names)
    rows = summary_rows(layout, config.agent_names)
    print(format_table(rows))
    print(f"\nreport: {report}; this invocation took {time.perf_counter() - started:.0f} s "
          f"({time.process_time() - cpu:.0f} s of CPU time)")
    return rows


def _stage(ctx: RunContext, name: str, path: Path, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The JSON output at ``path``: read when a previous run wrote it, else built and written atomically."""
    if path.is_file():
        ctx.say(f"{name}: done already ({path.name}), skipped")
        return json.loads(path.read_text(encoding="utf-8"))
    ctx.say(f"{name} ...")
    start, cpu = time.perf_counter(), time.process_time()
    result = build()
    # Wall time, and this process's CPU time (what the stage costs on an idle machine, per thread).
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["cpu_seconds"] = round(time.process_time() - cpu, 1)
    write_json_atomic(path, result)
    return result


def quietly(run: Callable[[Any], Any]) -> Callable[[Any], None]:
    """``run(config)`` without the warning each left-truncated prompt gives (a few long prompts, by design)."""

    def body(config: Any) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*left-truncated.*")
            run(config)

    return body


def cli(argv: Sequence[str] | None = None) -> int:
    """``rlhf-gym pipeline --out DIR``: all four RLHF steps, agents compared, a report; resumable."""
    return config_command(argv, "rlhf-gym pipeline", "The four steps of RLHF end to end, agents compared, "
                          "a report written; re-running resumes.", PipelineConfig, quietly(run_pipeline))
