"""The main job: `rlhf-gym collect`, the pipeline end to end with a tiny budget, its resumption, the report."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest

from agents import PPOKL
from agents.best_of_n import best_of_n_kl, best_of_n_mean, matched_best_of_n
from agents.registry import AGENTS, AgentSpec
from reward_models import load_collection
from rlhf_gym import collect
from rlhf_gym.pipeline import PipelineConfig, report, run, run_pipeline
from rlhf_gym.pipeline.layout import RunLayout


def default_assets_or_skip() -> None:
    from text_env.defaults import default_policy_path, default_task

    try:
        default_policy_path()
        default_task()
    except FileNotFoundError as e:
        pytest.skip(f"no embedded default assets: {e}")


def tiny(out, **overrides) -> PipelineConfig:
    """A pipeline run of seconds: 4 evaluation prompts, best-of-4, a few iterations per agent."""
    options = dict(out=str(out), agents="ppo_kl,rloo,sb3_ppo", n_eval_prompts=4, eval_samples=2, max_n=4,
                   batch_size=8, timesteps=192,
                   agent_settings="sb3_ppo.timesteps=192,sb3_ppo.num_envs=4,sb3_ppo.n_steps=16", save_steps=1,
                   num_threads=1, progress=False)
    options.update(overrides)
    return PipelineConfig(**options)


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- collect -----------------------------------------------------------------------------
def test_collect_writes_n_responses_per_prompt_deterministically(tmp_path):
    from text_env.defaults import default_prompts_path
    from text_env.prompts import load_prompts

    try:
        default_prompts_path()
    except FileNotFoundError as e:
        pytest.skip(f"no embedded default assets: {e}")

    argv = ["--n-prompts", "3", "--num-generations", "2", "--batch-size", "4", "--max-new-tokens", "8", "--no-progress"]
    assert collect.cli([*argv, "--out", str(tmp_path / "a.jsonl")]) == 0
    assert collect.cli([*argv, "--out", str(tmp_path / "b.jsonl")]) == 0
    items = load_collection(tmp_path / "a.jsonl")  # the labeling page's and simulate-labels' reader
    assert [it.prompt for it in items] == load_prompts(default_prompts_path())[:3]
    assert all(len(it.responses) == 2 and all(isinstance(r, str) for r in it.responses) for it in items)
    # Two samples of one prompt differ somewhere (sampling, not copies of one response).
    assert any(it.responses[0] != it.responses[1] for it in items)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()  # same seed, same rows


def test_collect_renders_conversation_prompts(tmp_path):
    import json

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": [{"role": "user", "content": "Tell me a joke"}]}) + "\n")
    argv = ["--prompts", str(prompts), "--num-generations", "2", "--batch-size", "2", "--max-new-tokens", "4",
            "--no-progress", "--out", str(tmp_path / "c.jsonl")]
    assert collect.cli(argv) == 0
    [item] = load_collection(tmp_path / "c.jsonl")
    assert item.prompt == "\n\nHuman: Tell me a joke\n\nAssistant:"  # the default tokenizer has no chat template


def test_collect_refuses_bad_flags(tmp_path, capsys):
    assert collect.cli(["--num-generations", "0", "--out", str(tmp_path / "c.jsonl")]) == 2
    assert "--num-generations 0" in capsys.readouterr().err
    assert not (tmp_path / "c.jsonl").exists()


# ---- pure pieces ---------------------------------------------------------------------------
def test_best_of_averages_the_proxy_favourite_over_every_subset():
    proxy = np.array([[1.0, 3.0, 2.0, 0.0], [0.0, 1.0, 5.0, 4.0]])
    gold = np.array([[10.0, 30.0, 20.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    assert best_of_n_mean(proxy, gold, 1) == pytest.approx(70 / 8)
    # the 6 pairs of row 1 keep golds 30, 20, 10, 30, 30, 20; those of row 2 keep 2, 3, 4, 3, 4, 3
    assert best_of_n_mean(proxy, gold, 2) == pytest.approx((140 / 6 + 19 / 6) / 2)
    assert best_of_n_mean(proxy, gold, 3) == pytest.approx((110 / 4 + 13 / 4) / 2)  # leave one out, 4 ways
    assert best_of_n_mean(proxy, gold, 4) == pytest.approx((30 + 3) / 2)


def test_matched_best_of_n_interpolates_in_kl_and_stops_at_the_largest_n():
    dense = [{"n": n, "kl": best_of_n_kl(n), "gold": g, "proxy": 2 * g} for n, g in ((1, 0.0), (2, 0.1), (3, 0.4))]
    mid = (best_of_n_kl(2) + best_of_n_kl(3)) / 2
    assert matched_best_of_n(dense, mid) == pytest.approx({"n": 2.5, "kl": mid, "gold": 0.25, "proxy": 0.5})
    assert matched_best_of_n(dense, 0.0)["gold"] == 0.0 and matched_best_of_n(dense, -0.01)["n"] == 1.0
    assert matched_best_of_n(dense, best_of_n_kl(3) + 1e-9) is None


@pytest.mark.parametrize("bad", [dict(max_n=48), dict(agents="ppo_kl,dqn"), dict(agents=""), dict(num_generations=3),
                                 dict(model="m", from_scratch=True), dict(timesteps=0), dict(save_steps=0),
                                 dict(agent_settings="sb3_ppo.timesteps=0"),
                                 dict(agent_settings="ppo_kl.num_mini_batches=0")])
def test_config_refuses_bad_settings(bad):
    with pytest.raises(ValueError):
        PipelineConfig(**bad)


def test_the_demo_builds_each_agent_from_the_registry_with_its_own_settings():
    config = PipelineConfig()
    assert config.agent_names == ["ppo_kl", "rloo", "sb3_ppo"]
    ppo = config.agent_config("ppo_kl", "logs/ppo_kl")
    assert (ppo.beta, ppo.learning_rate, ppo.num_mini_batches, ppo.num_ppo_epochs, ppo.kl_target) == \
        (0.3, 5e-5, 2, 4, None)
    rloo = config.agent_config("rloo", "logs/rloo")
    assert (rloo.beta, rloo.learning_rate, rloo.num_generations) == (0.3, 3e-4, 4)
    for agent in (ppo, rloo):
        assert (agent.batch_size, agent.seed, agent.save_steps) == (128, 0, 4)
    sb3 = config.agent_config("sb3_ppo", "logs/sb3_ppo")
    assert (sb3.learning_rate, sb3.num_ppo_epochs, sb3.num_mini_batches) == (1e-4, 1, 4)
    assert (sb3.num_envs, sb3.n_steps) == (16, 32)
    assert (sb3.beta, sb3.seed, sb3.save_steps, sb3.log_dir) == (0.3, 0, 4, "logs/sb3_ppo")
    assert [config.budget(n) for n in config.agent_names] == [196_608, 196_608, 12_288]

    custom = PipelineConfig(agent_settings="rloo.learning_rate=1e-4, sb3_ppo.timesteps=12288,ppo_kl.kl_target=none")
    assert custom.agent_config("rloo", "x").learning_rate == 1e-4 and custom.budget("sb3_ppo") == 12288
    assert custom.agent_config("ppo_kl", "x").kl_target is None


@pytest.mark.parametrize("text, message", [
    ("rloo.learning_rte=1e-4", "RLOOConfig of agent 'rloo' has no field 'learning_rte'; valid fields: timesteps, "),
    ("rloo.learning_rate=fast", "learning_rate must be a float"),
    ("dqn.learning_rate=1e-4", "unknown agent 'dqn'; registered agents: ppo_kl, rloo, sb3_ppo"),
    ("rloo.log_dir=elsewhere", "has no field 'log_dir'"),
    ("learning_rate=1e-4", "write AGENT.FIELD=VALUE"),
])
def test_agent_settings_errors_name_the_agent_the_field_and_the_fix(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PipelineConfig(agent_settings=text)


def test_a_registered_agent_joins_the_pipeline_without_touching_it(monkeypatch):
    spec = AgentSpec("ppo_kl_fast", "PPOKL, faster", "agents.ppo_kl:PPOKL", "agents.ppo_kl:PPOKLConfig",
                     {"learning_rate": 3e-4}, budget_share=0.25)
    monkeypatch.setitem(AGENTS, spec.name, spec)
    config = PipelineConfig(agents="ppo_kl,ppo_kl_fast", agent_settings="ppo_kl_fast.num_mini_batches=4")
    fast = config.agent_config("ppo_kl_fast", "x")
    assert (fast.learning_rate, fast.num_mini_batches, fast.beta) == (3e-4, 4, 0.3)
    assert config.budget("ppo_kl_fast") == 49_152  # a quarter of the pipeline's 196,608


def test_resuming_with_other_settings_is_refused(tmp_path, monkeypatch):
    def stop(ctx):
        raise KeyboardInterrupt  # the run folder is claimed before step 0 starts

    monkeypatch.setattr(run, "prepare", stop)
    for config in (tiny(tmp_path), tiny(tmp_path, progress=True)):  # display settings may change
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(config)
    with pytest.raises(ValueError, match="--timesteps 192 -> 384"):
        run_pipeline(tiny(tmp_path, timesteps=384))


def test_report_cli_needs_a_run(tmp_path, capsys):
    assert report.cli(["--out", str(tmp_path)]) == 2
    assert "no pipeline run" in capsys.readouterr().err


# ---- end to end ------------------------------------------------------------------------------
def test_pipeline_runs_end_to_end_then_skips_every_finished_stage(tmp_path, monkeypatch, capsys):
    pytest.importorskip("stable_baselines3")
    default_assets_or_skip()
    rows = run_pipeline(tiny(tmp_path))
    printed = capsys.readouterr().out
    layout = RunLayout(tmp_path)

    names = [r["policy"] for r in rows]
    assert names == ["SFT reference", "best-of-2", "best-of-4", "PPOKL", "RLOO", "SB3 PPO + KL wrapper"]
    assert "| PPOKL |" in printed and "| best-of-4 |" in printed  # the summary table is printed
    by_name = {r["policy"]: r for r in rows}
    assert by_name["SFT reference"]["kl"] == 0.0
    assert by_name["best-of-4"]["kl"] == pytest.approx(math.log(4) - 3 / 4)
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("gold", "proxy", "kl", "response_length"))
    for r in rows[3:]:  # each agent is set against best-of-n at its KL, measured up to n = 4
        assert (r["bon_gold"] is None) == (r["kl"] > math.log(4) - 3 / 4)
    for name in ("ppo_kl", "rloo", "sb3_ppo"):
        ev = json.loads(layout.agent_eval(name).read_text())
        assert ev["episodes"] == 4 * 2 and ev["train_timesteps"] >= 192 and ev["train_episodes"] > 0
        progress = read_csv(layout.agent_dir(name) / "progress.csv")
        assert progress and {"score", "gold_score", "kl"} <= set(progress[0])
        assert list(layout.agent_dir(name).glob("events.out.tfevents.*")), f"{name}: no TensorBoard log"

    rm = json.loads(layout.reward_model.read_text())
    assert 0.0 <= rm["accuracy"] <= 1.0 and 0.0 <= rm["ceiling"] <= 1.0 and rm["pairs"] > 0
    md = layout.report.read_text()
    for section in ("Step 0", "Step 1", "Step 2", "Step 3", "Samples before and after", "best-of-n's at same KL"):
        assert section in md
    for name in ("training_curves", "frontier", "reward_model"):
        png = layout.png(name)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
        assert f"({png.name})" in md
    assert [r["policy"] for r in read_csv(layout.summary_csv)] == names
    assert {r["agent"] for r in read_csv(layout.curves_csv)} == {"ppo_kl", "rloo", "sb3_ppo"}
    assert [int(r["n"]) for r in read_csv(layout.best_of_n_csv)] == [1, 2, 4]

    # Re-running the same command skips every stage: nothing is trained, sampled or rewritten.
    outputs = [layout.setup, layout.sft, layout.reward_model, layout.best_of_n,
               *(layout.agent_eval(n) for n in ("ppo_kl", "rloo", "sb3_ppo"))]
    stamps = [p.stat().st_mtime_ns for p in outputs]

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    for step in ("prepare", "sft_metrics", "reward_model_metrics", "best_of_n", "train_agent"):
        monkeypatch.setattr(run, step, refuse)
    assert run_pipeline(tiny(tmp_path)) == rows
    assert [p.stat().st_mtime_ns for p in outputs] == stamps


def test_an_interrupted_agent_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    default_assets_or_skip()
    config = tiny(tmp_path, agents="ppo_kl", timesteps=384)
    original = PPOKL._iteration
    calls = {"n": 0}

    def killed_on_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user's Ctrl-C in the middle of step 3
        return original(self)

    monkeypatch.setattr(PPOKL, "_iteration", killed_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config)
    layout = RunLayout(tmp_path)
    assert not layout.agent_eval("ppo_kl").exists()
    assert [r["step"] for r in read_csv(layout.agent_dir("ppo_kl") / "progress.csv")] == ["1", "2"]
    state = json.loads((layout.agent_dir("ppo_kl") / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == 2

    monkeypatch.setattr(PPOKL, "_iteration", original)
    run_pipeline(config)
    steps = [int(r["step"]) for r in read_csv(layout.agent_dir("ppo_kl") / "progress.csv")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 2  # continued at 3, no step logged twice
    ev = json.loads(layout.agent_eval("ppo_kl").read_text())
    assert ev["train_timesteps"] >= 384 and ev["train_episodes"] == 8 * len(steps)


def test_the_demo_extra_installs_what_the_pipeline_agents_import():
    """`make demo` installs `.[demo]` only: it must hold the SB3 adapter's imports (sb3-contrib too) and TensorBoard."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras["sb3"]) <= set(extras["demo"])
    assert any(req.startswith("tensorboard") for req in extras["demo"])
