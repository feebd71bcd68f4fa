"""Load: 50 concurrent labelers over loopback, bounded in time, lose no acknowledged label (bench/label_load.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "label_load.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("label_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["label_load"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fifty_concurrent_labelers_lose_no_label(tmp_path):
    result = load_bench().run(labelers=50, items=8, seconds=60, workdir=tmp_path)
    print("\n" + result.report())
    assert result.finished, "not every labeler finished within 60 s"
    assert not result.failures
    assert result.acknowledged == result.stored == 50 * 8
    assert result.lost == 0
    assert result.requests == 50 * (2 * 8 + 1) and result.requests_per_second > 0
