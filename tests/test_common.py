"""rlhf_common: the thread choice, the run folder, the logger, the NaN guard and the exit-code rule."""

import json
import multiprocessing as mp
import os
import time

import pytest
import torch

from rlhf_common import training
from rlhf_common.config_cli import EXIT_FAILURE, EXIT_USAGE, run_command
from rlhf_common.io import DataError


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat")
def test_busy_cores_sees_a_process_that_computes() -> None:
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_spin, args=(3.0,))
    child.start()
    try:
        time.sleep(1.0)  # the interpreter has started and spins
        assert training.busy_cores(0.5) >= 0.8
    finally:
        child.join()


def test_thread_choice_ignores_a_decaying_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(os, "getloadavg", lambda: (2.0, 2.0, 1.5))  # what `make test` leaves behind
        monkeypatch.setattr(training, "busy_cores", lambda interval=0.5: 0.05)  # nothing computes now
        assert training.set_torch_threads() == 2
        monkeypatch.setattr(training, "busy_cores", lambda interval=0.5: 1.0)  # another process holds a core
        assert training.set_torch_threads() == 1
        assert training.set_torch_threads(2) == 2  # an explicit choice wins
    finally:
        torch.set_num_threads(before)


def test_run_folder_refuses_other_settings(tmp_path) -> None:
    training.claim_run_folder(tmp_path / "run", {"seed": 0, "progress": True}, free={"progress"})
    training.claim_run_folder(tmp_path / "run", {"seed": 0, "progress": False}, free={"progress"})
    with pytest.raises(ValueError, match=r"--seed 0 -> 1"):
        training.claim_run_folder(tmp_path / "run", {"seed": 1, "progress": True}, free={"progress"})
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"seed": 0, "progress": True}


def test_logger_resume_drops_rows_after_the_checkpoint(tmp_path) -> None:
    log = training.RunLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        log.log(step, {"loss": float(step), "split": "train"})
    log.log(4, {"loss": 4.0, "gold": 0.5})  # a new column widens the table
    log.close()
    resumed = training.RunLogger(tmp_path, resume_step=2, tensorboard=False)
    resumed.log(3, {"loss": 30.0})
    resumed.close()
    rows = training.read_log(tmp_path / "progress.csv")
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "1"), ("2", "2"), ("3", "30")]
    log = training.RunLogger(tmp_path, tensorboard=False, filename="counts.csv")
    log.log(1, {"timesteps": 12_345_678, "kl": 1.23456789})
    log.close()
    assert training.read_log(tmp_path / "counts.csv")[0] == {"step": "1", "timesteps": "12345678", "kl": "1.23457"}


def test_checkpoint_round_trip_and_nan_guard(tmp_path) -> None:
    training.save_checkpoint(tmp_path / "ckpt", {"step": 7}, {"w": torch.ones(2)})
    state, tensors = training.load_checkpoint(tmp_path / "ckpt")
    assert state == {"step": 7} and torch.equal(tensors["w"], torch.ones(2))
    with pytest.raises(FloatingPointError, match=r"step 8: loss is nan.*last good checkpoint is .*ckpt"):
        training.check_finite(torch.tensor(float("nan")), "loss", "step 8", tmp_path / "ckpt")
    with pytest.raises(FloatingPointError) as no_checkpoint:  # none written yet: none is named
        training.check_finite(float("inf"), "loss", "step 1", tmp_path / "none")
    assert "checkpoint" not in str(no_checkpoint.value)


@pytest.mark.parametrize(("error", "code"), [(DataError("f.jsonl:3: bad"), EXIT_USAGE),
                                             (FileNotFoundError("x"), EXIT_USAGE),
                                             (FloatingPointError("nan"), EXIT_FAILURE),
                                             (RuntimeError("engine died"), EXIT_FAILURE)])
def test_exit_code_rule(error: Exception, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> None:
        raise error

    assert run_command("rlhf-gym x", fail) == code
    assert capsys.readouterr().err.startswith("rlhf-gym x: ")
    assert run_command("rlhf-gym x", lambda: None) == 0
