"""Crash safety: ``kill -9`` at the worst moments, then resume; no checkpoint corrupt, no label lost.

Complements the single kill-and-resume tests of test_ppo_kl.py, test_sft.py,
test_reward_training.py and test_labeling.py with kills that land *inside* a
checkpoint write (a child process dies halfway through writing a checkpoint file, or
right after a rename), repeated kills at random moments, and a busy labeling session
killed again and again. After every kill the checkpoint on disk must load with the
trainer's own loader and the rerun must continue from it.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError

import pytest
import torch
from reward_fixtures import save_tiny_lm, write_synthetic_preferences
from rl_helpers import count_task, tiny_lm
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2LMHeadModel

from agents import PPOKL, PPOKLConfig
from agents.sft import SFTConfig, train_sft
from reward_models.train import CHECKPOINT_DIR, LOG_FILE, RewardTrainConfig, train_reward_model
from text_env.char_tokenizer import char_tokenizer

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
torch.set_num_threads(1)

# Installed first thing in a child: it SIGKILLs itself at a chosen point of a checkpoint write.
KILL_HOOK = '''
import io, os, signal


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def install(spec):
    """'torch.save:N': die halfway through writing the Nth torch.save file (a torn checkpoint file).
    'swap:N': die right after the Nth folder or file swap of rlhf_common.io (before its cleanup);
    'swap-to:NAME': die right after the swap that puts NAME in place."""
    what, n = spec.split(":")
    calls = [0]
    if what == "torch.save":
        n = int(n)
        import torch
        real = torch.save

        def save(obj, f, *args, **kwargs):
            calls[0] += 1
            if calls[0] < n:
                return real(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(f, "wb") as out:
                out.write(data[: len(data) // 2])
            _die()

        torch.save = save
    elif what in ("swap", "swap-to"):
        import rlhf_common.io as rio
        real = rio._replace

        def replace(src, dst):
            real(src, dst)
            calls[0] += 1
            if (calls[0] == int(n)) if what == "swap" else (dst.name == n):
                _die()

        rio._replace = replace
    else:
        raise ValueError(spec)
'''


def child_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "hook").mkdir(exist_ok=True)
    (tmp_path / "hook" / "killhook.py").write_text(KILL_HOOK)
    path = os.pathsep.join([str(REPO), str(TESTS), str(tmp_path / "hook")])
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def run_child(tmp_path: Path, code: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-c", code], env=child_env(tmp_path), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    return done


def temporaries(folder: Path, name: str) -> list[str]:
    """Half-written ``.NAME.*`` siblings that atomic saves leave when killed."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.")) if folder.is_dir() else []


# ---- PPOKL -------------------------------------------------------------------------------------
PPO_RUN = """
import killhook; killhook.install({spec!r})
import torch; torch.set_num_threads(1)
from rl_helpers import count_task, tiny_lm
from agents import PPOKL, PPOKLConfig
task = count_task(max_new_tokens=4, reward_delay={delay})
config = PPOKLConfig(**{config!r})
PPOKL(task, tiny_lm(task), config).learn({total}, resume={resume}, progress_bar=False)
"""
PPO_CONFIG = dict(batch_size=8, num_mini_batches=2, num_ppo_epochs=2, learning_rate=1e-3, save_steps=1,
                  beta=0.05, kl_target=None)
PPO_TOTAL = 200  # tokens: about 8 iterations of 8 responses of up to 4 tokens


def ppo_checkpoint_loads(checkpoint: Path) -> int:
    agent = PPOKL.load(checkpoint, count_task(max_new_tokens=4))
    assert all(torch.isfinite(p).all() for p in agent.policy.parameters())
    return agent.iteration


def ppo_resume(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[PPOKL, list[int]]:
    seen: list[int] = []
    original = PPOKL._iteration

    def record(self: PPOKL) -> Any:
        seen.append(self.iteration)
        return original(self)

    with monkeypatch.context() as m:
        m.setattr(PPOKL, "_iteration", record)
        task = count_task(max_new_tokens=4)
        agent = PPOKL(task, tiny_lm(task), PPOKLConfig(**PPO_CONFIG, log_dir=str(log_dir)))
        agent.learn(PPO_TOTAL, resume=True, progress_bar=False)
    return agent, seen


def progress_steps(log_dir: Path) -> list[int]:
    with open(log_dir / "progress.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def test_ppo_killed_halfway_through_a_checkpoint_file_resumes_from_the_previous_one(tmp_path, monkeypatch):
    log_dir = tmp_path / "run"
    config = {**PPO_CONFIG, "log_dir": str(log_dir)}
    code = PPO_RUN.format(spec="torch.save:3", config=config, total=PPO_TOTAL, resume=False, delay=0.0)
    done = run_child(tmp_path, code)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert temporaries(log_dir, "checkpoint"), "the kill did not land inside a checkpoint write"
    assert ppo_checkpoint_loads(log_dir / "checkpoint") == 2  # the 3rd checkpoint was torn: the 2nd stands

    agent, seen = ppo_resume(log_dir, monkeypatch)
    assert seen[0] == 2 and agent.iteration == 2 + len(seen) and agent.num_timesteps >= PPO_TOTAL
    assert progress_steps(log_dir) == list(range(1, agent.iteration + 1))
    assert temporaries(log_dir, "checkpoint") == []  # the torn temporary was swept by the next save

    # Nothing of the torn write leaked into the run: it ends exactly where an uninterrupted run does.
    task = count_task(max_new_tokens=4)
    whole = PPOKL(task, tiny_lm(task), PPOKLConfig(**{**config, "log_dir": str(tmp_path / "whole")}))
    whole.learn(PPO_TOTAL, progress_bar=False)
    assert whole.iteration == agent.iteration
    for a, b in zip(whole.policy.parameters(), agent.policy.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


# ---- SFT ---------------------------------------------------------------------------------------
SFT_RUN = """
import killhook; killhook.install({spec!r})
import sys
from agents.sft import cli
sys.exit(cli({argv!r}))
"""


def sft_config(tmp_path: Path, **overrides: Any) -> SFTConfig:
    tok = char_tokenizer("abc ")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0))
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    data = tmp_path / "demos.jsonl"
    words = ["a", "b", "c", "ab", "ba", "cab"]
    data.write_text("".join(json.dumps({"prompt": f"{w} ", "response": f"{w} {w}"}) + "\n" for w in words * 6))
    options = dict(model=str(tmp_path / "base"), data=str(data), out=str(tmp_path / "out"), val_fraction=0.25,
                   batch_size=6, max_steps=24, eval_steps=4, logging_steps=2, patience=0, learning_rate=3e-3,
                   progress=False, num_threads=1)
    options.update(overrides)
    return SFTConfig(**options)


def sft_argv(config: SFTConfig) -> list[str]:
    keys = ["model", "data", "out", "val_fraction", "batch_size", "max_steps", "eval_steps", "logging_steps",
            "patience", "learning_rate", "num_threads"]
    return [x for k in keys for x in (f"--{k.replace('_', '-')}", str(getattr(config, k)))] + ["--no-progress"]


def sft_checkpoint_loads(checkpoint: Path) -> int:
    state = json.loads((checkpoint / "state.json").read_text())
    assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values())
    torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    return state["step"]


def test_sft_killed_halfway_through_a_checkpoint_file_resumes_from_the_previous_one(tmp_path, capfd):
    config = sft_config(tmp_path)
    out = Path(config.out)
    # Each checkpoint writes one trainer_state.pt: the 2nd torch.save is the 2nd checkpoint's.
    done = run_child(tmp_path, SFT_RUN.format(spec="torch.save:2", argv=sft_argv(config)))
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert temporaries(out, "checkpoint"), "the kill did not land inside a checkpoint write"
    assert sft_checkpoint_loads(out / "checkpoint") == config.eval_steps
    capfd.readouterr()
    result = train_sft(config)
    assert f"resuming {out} from step {config.eval_steps}." in capfd.readouterr().err
    assert result.steps == config.max_steps
    rows = [tuple(row.split(",")[:3:2]) for row in (out / "log.csv").read_text().splitlines()[1:]]  # (step, split)
    steps = [int(step) for step, _ in rows]
    assert steps == sorted(steps) and steps[-1] == config.max_steps and len(rows) == len(set(rows))
    assert temporaries(out, "checkpoint") == [] and temporaries(out, "model") == []


# ---- reward-model training ---------------------------------------------------------------------
RM_RUN = """
import killhook; killhook.install({spec!r})
from reward_models.train import cli
cli({argv!r})
"""


@pytest.fixture(scope="module")
def rm_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rm")
    save_tiny_lm(root / "base")
    write_synthetic_preferences(root, n_train=96, n_val=16)
    return root


def rm_config(work: Path, out: Path, **overrides: Any) -> RewardTrainConfig:
    options = dict(model=str(work / "base"), data=str(work / "train.jsonl"), val_data=str(work / "val.jsonl"),
                   out=str(out), learning_rate=3e-3, batch_size=8, num_train_epochs=1, save_steps=2, eval_steps=0,
                   progress=False)
    options.update(overrides)
    return RewardTrainConfig(**options)


def rm_argv(config: RewardTrainConfig) -> list[str]:
    return ["--model", config.model, "--data", config.data, "--val-data", config.val_data, "--out", config.out,
            "--learning-rate", str(config.learning_rate), "--batch-size", str(config.batch_size),
            "--num-train-epochs", str(config.num_train_epochs), "--save-steps", str(config.save_steps),
            "--eval-steps", "0", "--no-progress"]


def rm_checkpoint_loads(checkpoint: Path) -> int:
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint / "model", weights_only=True)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    return json.loads((checkpoint / "state.json").read_text())["step"]


def rm_log_steps(out: Path) -> list[int]:
    with (out / LOG_FILE).open() as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def test_reward_training_killed_halfway_through_a_checkpoint_file_resumes(rm_work, tmp_path):
    out = tmp_path / "rm"
    config = rm_config(rm_work, out)
    done = run_child(tmp_path, RM_RUN.format(spec="torch.save:2", argv=rm_argv(config)))
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert temporaries(out, CHECKPOINT_DIR), "the kill did not land inside a checkpoint write"
    assert rm_checkpoint_loads(out / CHECKPOINT_DIR) == 2
    result = train_reward_model(config)
    assert result.finished and result.steps == 12 and rm_log_steps(out) == list(range(1, 13))
    assert not (out / CHECKPOINT_DIR).exists() and temporaries(out, CHECKPOINT_DIR) == []
    assert temporaries(tmp_path, "rm") == []


@pytest.mark.slow
def test_reward_training_killed_right_after_the_final_swap_keeps_the_finished_model(rm_work, tmp_path):
    out = tmp_path / "rm"
    config = rm_config(rm_work, out)
    done = run_child(tmp_path, RM_RUN.format(spec="swap-to:rm", argv=rm_argv(config)))
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    from reward_models import HFRewardModel

    assert HFRewardModel(out).score(["", ""], ["aaaa", "bbbb"]).shape == (2,)
    result = train_reward_model(config)  # a rerun finds a finished model, not a checkpoint: trains afresh
    assert result.finished and temporaries(tmp_path, "rm") == []


# ---- labeling ----------------------------------------------------------------------------------
def start_labeling_server(tmp_path: Path, items: Path, db: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reward_models.labeling", "serve", "--items", str(items), "--db", str(db),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
        env={**child_env(tmp_path), "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"Open (http://\S+?/)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise AssertionError("the labeling server did not start")


def api(url: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path.lstrip("/"), data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except HTTPError as e:
        return e.code, json.loads(e.read())


def stored_labels(db: Path) -> dict[tuple[int, str], list[int]]:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return {(i, who): json.loads(r) for i, who, r in conn.execute("SELECT item_id, labeler, ranking FROM labels")}


@pytest.mark.slow  # four server generations under load; timing-dependent on a busy machine
def test_repeated_sigkill_in_a_busy_labeling_session_loses_no_acknowledged_label(tmp_path):
    n_items, labelers = 25, [f"labeler-{i}" for i in range(6)]
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"prompt": f"p{i}", "responses": ["x", "y", "z"]}) + "\n"
                             for i in range(n_items)))
    db = tmp_path / "labels.sqlite"
    acked: dict[tuple[int, str], list[int]] = {}
    lock = threading.Lock()
    rng = random.Random(0)

    def label_until_stopped(url: str, who: str) -> None:
        try:
            while True:
                status, nxt = api(url, f"/api/next?labeler={who}")
                if status != 200 or nxt["item"] is None:
                    return
                ranking = rng.sample(range(3), 3)
                status, _ = api(url, "/api/label", {"item_id": nxt["item"]["id"], "labeler": who, "ranking": ranking})
                if status == 200:
                    with lock:
                        acked[(nxt["item"]["id"], who)] = ranking
        except (URLError, OSError, ValueError, http.client.HTTPException):
            return  # the server was killed under us

    for round_ in range(4):
        proc, url = start_labeling_server(tmp_path, items, db)
        threads = [threading.Thread(target=label_until_stopped, args=(url, who)) for who in labelers]
        for t in threads:
            t.start()
        if round_ < 3:
            time.sleep(rng.uniform(0.3, 0.8))
            proc.send_signal(signal.SIGKILL)
        for t in threads:
            t.join(timeout=60)
        if round_ == 3:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if round_ < 3:
            assert proc.returncode == -signal.SIGKILL
        stored = stored_labels(db)
        lost = {k: v for k, v in acked.items() if stored.get(k) != v}
        assert lost == {}, f"round {round_}: {len(lost)} acknowledged labels lost"
    assert len(acked) == len(stored_labels(db)) == n_items * len(labelers)  # every labeler finished


# ---- the atomic folder swap itself, under fire --------------------------------------------------
SAVER = """
import hashlib, json, os, signal, sys
from pathlib import Path
from rlhf_common.io import save_dir_atomic
target, die_at_replace, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if die_at_replace:
    real, calls = os.replace, [0]
    def replace(src, dst):
        real(src, dst)
        calls[0] += 1
        if calls[0] == die_at_replace:
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
version = int(sys.argv[4])
while True:
    version += 1
    def write(folder, v=version):
        files = {{}}
        for i in range(3):
            data = os.urandom(16) * (size // 16)
            (folder / f"part{{i}}.bin").write_bytes(data)
            files[f"part{{i}}.bin"] = hashlib.sha256(data).hexdigest()
        (folder / "manifest.json").write_text(json.dumps({{"version": v, "files": files}}))
    save_dir_atomic(target, write)
    print(version, flush=True)
"""


def check_folder(target: Path) -> int:
    """The version of a complete checkpoint folder; fails on a missing, partial or mixed one."""
    assert target.is_dir(), f"{target} is missing: a kill between two renames lost it"
    manifest = json.loads((target / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == digest, f"{name} is torn or mixed"
    assert sorted(p.name for p in target.iterdir()) == sorted([*manifest["files"], "manifest.json"])
    return manifest["version"]


def run_saver(tmp_path: Path, target: Path, die_at_replace: int, size: int, start: int,
              kill_after: Callable[[subprocess.Popen[str]], list[str]]) -> list[int]:
    """Versions the saver reported complete before it died (``kill_after`` returns the lines it read)."""
    script = tmp_path / "saver.py"
    script.write_text(SAVER.format())
    proc = subprocess.Popen([sys.executable, str(script), str(target), str(die_at_replace), str(size), str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(tmp_path))
    lines = kill_after(proc)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    return [int(v) for v in "".join(lines).split() + out.split()]


@pytest.mark.parametrize("die_at_replace", [1, 2, 3])
def test_a_kill_right_after_any_rename_leaves_a_whole_folder(tmp_path, die_at_replace):
    target = tmp_path / "checkpoint"

    def kill_after_a_few_saves(proc: subprocess.Popen[str]) -> list[str]:
        assert proc.stdout is not None
        lines = []
        for _ in range(4):  # an implementation that renames less often dies by our hand
            lines.append(proc.stdout.readline())
            if not lines[-1]:
                return lines
        proc.send_signal(signal.SIGKILL)
        return lines

    saved = run_saver(tmp_path, target, die_at_replace, 4096, 0, kill_after_a_few_saves)
    assert saved or die_at_replace == 1, "the saver died before completing a save"
    if saved or target.exists():
        assert check_folder(target) >= max(saved, default=0)


def test_a_folder_left_aside_by_the_fallback_swap_is_put_back(tmp_path, monkeypatch):
    """Without an atomic exchange (not Linux), a kill between the two renames leaves only ``.NAME.old``."""
    import rlhf_common.io as rio

    monkeypatch.setattr(rio, "_exchange", lambda a, b: False)
    target = tmp_path / "checkpoint"
    rio.save_dir_atomic(target, lambda d: (d / "v").write_text("1"))
    os.replace(target, tmp_path / ".checkpoint.old")  # the state such a kill leaves

    def fail(folder: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        rio.save_dir_atomic(target, fail)
    assert (target / "v").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


KILLS = 8


def test_random_kills_during_folder_saves_never_leave_a_torn_folder_or_pile_up_temporaries(tmp_path):
    target, rng, version, torn = tmp_path / "checkpoint", random.Random(1), 0, 0

    def kill_at_random(proc: subprocess.Popen[str]) -> list[str]:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # one complete save, so there is something to protect
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        return [first]

    for _ in range(KILLS):
        saved = run_saver(tmp_path, target, 0, 1 << 20, version, kill_at_random)
        version = check_folder(target)
        assert not saved or version >= saved[-1]
        torn += bool(temporaries(tmp_path, "checkpoint"))
        assert len(temporaries(tmp_path, "checkpoint")) <= 1  # each new writer sweeps its dead predecessors'
    print(f"\n{torn} of {KILLS} kills landed inside a save")
    assert torn >= KILLS // 3, "the kills should often land mid-save; the test lost its point"


# ---- training logs rewritten on resume ------------------------------------------------------------
def _rm_log(folder: Path, resume_step: int) -> None:
    from rlhf_common.training import RunLogger

    RunLogger(folder, resume_step=resume_step, filename=LOG_FILE, tensorboard=False).close()


def _ppo_log(folder: Path, resume_step: int) -> None:
    from rlhf_common.training import RunLogger

    RunLogger(folder, resume_step=resume_step).close()


def _sft_log(folder: Path, resume_step: int) -> None:
    from rlhf_common.training import RunLogger

    RunLogger(folder, resume_step=resume_step, filename="log.csv", tensorboard=False).close()


@pytest.mark.parametrize(
    ("open_log", "name"),
    [
        pytest.param(_rm_log, LOG_FILE, id="reward_models.train"),
        pytest.param(_ppo_log, "progress.csv", id="rlhf_common.training.RunLogger"),
        pytest.param(_sft_log, "log.csv", id="agents.sft"),
    ],
)
def test_a_crash_while_a_resumed_run_rewrites_its_log_keeps_the_old_rows(tmp_path, monkeypatch, open_log, name):
    """On resume each trainer drops the rows logged after the checkpoint by rewriting its CSV log.

    A crash in the middle of that rewrite (here: the write raising, which leaves the file as
    a kill would) must leave the log as it was, not truncated to its header.
    """
    rows = "".join(f"{step},{step % 3},{0.5 / step}\n" for step in range(1, 11))
    (tmp_path / name).write_text("step,epoch,loss\n" + rows)
    before = (tmp_path / name).read_text()

    def crash(self: csv.DictWriter, rows: Any) -> None:
        raise OSError("killed mid-write")

    monkeypatch.setattr(csv.DictWriter, "writerows", crash)
    with pytest.raises(OSError, match="killed mid-write"):
        open_log(tmp_path, 5)
    assert (tmp_path / name).read_text() == before


# ---- repeated kills at random moments (slow) ---------------------------------------------------
def kill_repeatedly(tmp_path: Path, code: str, watch: Path, kills: int, seed: int,
                    check: Callable[[Path], int]) -> list[int]:
    """Start ``code``, SIGKILL it at a random moment after its first checkpoint, check, repeat."""
    rng, seen = random.Random(seed), []
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", code], env=child_env(tmp_path), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        before = (watch / "state.json").stat().st_mtime_ns if (watch / "state.json").exists() else None
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            state = watch / "state.json"
            if state.exists() and state.stat().st_mtime_ns != before:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(check(watch))
        assert seen == sorted(seen), f"progress went backwards: {seen}"
    return seen


@pytest.mark.slow
def test_ppo_survives_repeated_random_kills(tmp_path, monkeypatch):
    log_dir = tmp_path / "run"
    # A slow (sleeping) reward model stretches the iterations so that four kills fit in one run.
    code = PPO_RUN.format(spec="torch.save:1000000", config={**PPO_CONFIG, "log_dir": str(log_dir)}, total=600,
                          resume=True, delay=0.05)
    seen = kill_repeatedly(tmp_path, code, log_dir / "checkpoint", kills=4, seed=2, check=ppo_checkpoint_loads)
    task = count_task(max_new_tokens=4)
    agent = PPOKL(task, tiny_lm(task), PPOKLConfig(**PPO_CONFIG, log_dir=str(log_dir)))
    agent.learn(600, resume=True, progress_bar=False)
    assert agent.iteration > seen[-1] and agent.num_timesteps >= 600
    assert progress_steps(log_dir) == list(range(1, agent.iteration + 1))


@pytest.mark.slow
def test_sft_survives_repeated_random_kills(tmp_path):
    config = sft_config(tmp_path, max_steps=200, eval_steps=2)
    out = Path(config.out)
    seen = kill_repeatedly(tmp_path, SFT_RUN.format(spec="torch.save:1000000", argv=sft_argv(config)),
                           out / "checkpoint", kills=4, seed=3, check=sft_checkpoint_loads)
    result = train_sft(config)
    assert result.steps == 200 and seen[-1] < 200
    steps = [int(row.split(",")[0]) for row in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and steps[-1] == 200


@pytest.mark.slow
def test_reward_training_survives_repeated_random_kills(rm_work, tmp_path):
    out = tmp_path / "rm"
    config = rm_config(rm_work, out, num_train_epochs=40, save_steps=1)
    seen = kill_repeatedly(tmp_path, RM_RUN.format(spec="torch.save:1000000", argv=rm_argv(config)),
                           out / CHECKPOINT_DIR, kills=4, seed=4, check=rm_checkpoint_loads)
    stop = seen[-1] + 3
    result = train_reward_model(rm_config(rm_work, out, num_train_epochs=40, save_steps=1, max_steps=stop))
    assert result.steps == stop and rm_log_steps(out) == list(range(1, stop + 1))
