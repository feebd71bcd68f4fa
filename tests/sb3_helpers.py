"""Shared by the generic-agent tests: a quiet SB3 set-up, imported into each test module."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def quiet_sb3(tmp_path_factory):
    """One torch thread (tiny models: more only contend with other jobs); SB3's per-run log dirs in a tmp dir."""
    threads, logdir = torch.get_num_threads(), os.environ.get("SB3_LOGDIR")
    torch.set_num_threads(1)
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3_logs"))
    yield
    torch.set_num_threads(threads)
    if logdir is None:
        os.environ.pop("SB3_LOGDIR")
    else:
        os.environ["SB3_LOGDIR"] = logdir
