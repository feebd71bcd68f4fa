"""Subprocess vector envs: async (fork, spawn, forkserver) and SB3's SubprocVecEnv, after the parent ran episodes.

Each scenario runs in a fresh interpreter (``python -c``) under a hard timeout, so a worker
that hangs (as forked workers did in libgomp, see ``text_env.factory.one_torch_thread``)
fails its test instead of blocking the suite. The parent always runs an episode of the
default env on 2 torch threads first: that is what used to leave a forked worker waiting
for OpenMP threads that exist only in the parent. A ``-c`` parent has no main file, so a
spawned worker imports only what unpickling its env factory needs: it never imported
``text_env`` and gets it from the ``"text_env:RLHFText-v0"`` id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from text_env.defaults import ASSETS_DIR

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 100
"""Seconds a scenario may take; a hung worker is killed at this point and the test fails."""

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not (ASSETS_DIR / "reward_model").is_dir(), reason="no embedded default assets"),
]

PARENT_EPISODE = """
import sys
import gymnasium as gym
import numpy as np
import torch

torch.set_num_threads(2)  # the parent's OpenMP pool in use, as on any multi-core machine
ENV_ID = "text_env:RLHFText-v0"
OPTIONS = {"max_new_tokens": 4}


def parent_episode():
    env = gym.make(ENV_ID, **OPTIONS)
    env.reset(seed=0)
    done = False
    while not done:
        _, _, done, _, _ = env.step(7)
    env.close()


def assert_same_step(a, b, what):
    (obs_a, rew_a, *flags_a), (obs_b, rew_b, *flags_b) = a[:-1], b[:-1]
    for key in obs_b:
        np.testing.assert_array_equal(obs_a[key], obs_b[key], err_msg=f"{what}: obs[{key!r}]")
    # Workers run torch on one thread, the parent on two: scores may differ in the last bits.
    np.testing.assert_allclose(rew_a, rew_b, rtol=1e-5, atol=1e-6, err_msg=f"{what}: rewards")
    for flag_a, flag_b in zip(flags_a, flags_b, strict=True):
        np.testing.assert_array_equal(flag_a, flag_b, err_msg=f"{what}: done flags")
"""

ASYNC_VS_SYNC = PARENT_EPISODE + """
parent_episode()
context = sys.argv[1]
kwargs = dict(num_envs=2, **OPTIONS)
async_env = gym.make_vec(ENV_ID, vectorization_mode="async", vector_kwargs={"context": context}, **kwargs)
sync_env = gym.make_vec(ENV_ID, vectorization_mode="sync", **kwargs)
a, s = async_env.reset(seed=3), sync_env.reset(seed=3)
for key in s[0]:
    np.testing.assert_array_equal(a[0][key], s[0][key])
assert list(a[1]["prompt"]) == list(s[1]["prompt"])
rng = np.random.default_rng(0)
rewarded = 0
for step in range(12):
    actions = rng.integers(4, 200, size=2)
    a, s = async_env.step(actions), sync_env.step(actions)
    assert_same_step(a, s, f"step {step}")
    if "response" in s[4]:
        assert list(a[4]["response"]) == list(s[4]["response"]), step
    rewarded += int(np.count_nonzero(s[2]))
assert rewarded >= 4, rewarded  # episodes of <= 4 tokens: both workers scored responses
async_env.close()
sync_env.close()
print("SAME", rewarded)
"""

SB3_SUBPROC = PARENT_EPISODE + """
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

parent_episode()
env_kwargs = {"render_mode": None, **OPTIONS}  # render_mode: make_vec_env asks for "rgb_array" otherwise
for start_method in sys.argv[1:]:
    sub = make_vec_env(ENV_ID, n_envs=2, seed=0, env_kwargs=env_kwargs, vec_env_cls=SubprocVecEnv,
                       vec_env_kwargs={"start_method": start_method})
    dummy = make_vec_env(ENV_ID, n_envs=2, seed=0, env_kwargs=env_kwargs, vec_env_cls=DummyVecEnv)
    obs_sub, obs_dummy = sub.reset(), dummy.reset()
    for key in obs_dummy:
        np.testing.assert_array_equal(obs_sub[key], obs_dummy[key])
    for step in range(10):
        actions = np.array([5 + step, 9])
        a, s = sub.step(actions), dummy.step(actions)
        assert_same_step((*a[:3], None), (*s[:3], None), f"{start_method} step {step}")  # infos hold timings
    sub.close()
    dummy.close()
    print("SAME", start_method)
"""


def run_scenario(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args`` under TIMEOUT; on a hang, kill its whole process group and fail."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too: a hung one would outlive the parent
        out, err = proc.communicate()
        pytest.fail(f"the scenario hung for {TIMEOUT} s (args {args}); stdout:\n{out}\nstderr tail:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr tail:\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_async_vector_env_equals_sync_after_parent_episodes(context):
    result = run_scenario(ASYNC_VS_SYNC, context)
    assert_ok(result)
    assert "SAME" in result.stdout


def test_sb3_subproc_vec_env_equals_dummy_after_parent_episodes():
    pytest.importorskip("stable_baselines3")
    result = run_scenario(SB3_SUBPROC, "fork", "forkserver")  # forkserver: SubprocVecEnv's default on Linux
    assert_ok(result)
    assert result.stdout.split() == ["SAME", "fork", "SAME", "forkserver"]


def test_bare_id_in_a_worker_that_never_imported_text_env_fails_at_once():
    """Without the ``text_env:`` prefix a spawned SB3 worker has no such id: an error, not a hang."""
    pytest.importorskip("stable_baselines3")
    code = """
    import text_env  # registers in the parent only
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    make_vec_env("RLHFText-v0", n_envs=1, env_kwargs={"render_mode": None}, vec_env_cls=SubprocVecEnv,
                 vec_env_kwargs={"start_method": "spawn"})
    """
    start = time.monotonic()
    result = run_scenario(code)
    assert result.returncode != 0
    assert "Environment `RLHFText` doesn't exist" in result.stderr
    assert time.monotonic() - start < 60


CHESS_FORK = """
import glob
import gymnasium as gym
import numpy as np
import torch

torch.set_num_threads(2)
ENV_ID = "text_env:ChessMoveCritic-v0"


def first_legal(masks):
    return np.array([np.flatnonzero(mask)[0] for mask in masks])


def play(env, steps, masks):
    rewards = []
    for _ in range(steps):
        rewards.append(env.step(first_legal(masks()))[1])
    return np.array(rewards)


single = gym.make(ENV_ID)  # the learned critic: a torch model, run on 2 threads here
single.reset(seed=0)
done = False
while not done:
    _, _, done, _, _ = single.step(int(np.flatnonzero(single.unwrapped.action_masks())[0]))

async_env = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="async", vector_kwargs={"context": "fork"})
sync_env = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="sync")
async_env.reset(seed=1)
sync_env.reset(seed=1)
masks = lambda: np.stack([e.unwrapped.action_masks() for e in sync_env.envs])
rewards_sync = play(sync_env, 6, masks)
rewards_async = play(async_env, 6, lambda: np.stack(async_env.call("action_masks")))
np.testing.assert_allclose(rewards_async, rewards_sync, rtol=1e-5, atol=1e-6)
assert (rewards_sync > 0).sum() >= 2, rewards_sync
async_env.close()
sync_env.close()
print("LEARNED SAME")

try:
    from text_env.chess import find_stockfish
    find_stockfish(None)
except Exception as e:  # no engine on this machine
    print("NO STOCKFISH", e)
    raise SystemExit(0)
stockfish = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode="async", critic="stockfish",
                         vector_kwargs={"context": "fork"})
stockfish.reset(seed=1)
rewards = play(stockfish, 6, lambda: np.stack(stockfish.call("action_masks")))
assert (rewards > 0).sum() >= 2, rewards
workers = [p.pid for p in stockfish.processes]
# The engine is a child of the worker's thread that started it: read every thread's children.
engines = [int(pid) for w in workers for f in glob.glob(f"/proc/{w}/task/*/children") for pid in open(f).read().split()]
assert len(engines) == 2, engines  # one engine per worker
stockfish.close()


def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except FileNotFoundError:
        return False


assert not any(alive(pid) for pid in engines), engines
print("STOCKFISH CLOSED")
"""


def test_chess_async_fork_after_parent_episodes_and_engines_close():
    result = run_scenario(CHESS_FORK)
    assert_ok(result)
    assert "LEARNED SAME" in result.stdout
    assert "STOCKFISH CLOSED" in result.stdout or "NO STOCKFISH" in result.stdout
