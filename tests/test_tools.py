"""The scripts under tools/ still run against the current code (they are not imported by anything
else, so nothing else would notice them break). Slow: each trains a short run first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import cli_env

TOOLS = Path(__file__).resolve().parent.parent / "tools"


@pytest.mark.slow
def test_eval_samples_tradeoff_prints_one_row_per_budget(tmp_path):
    out = subprocess.run([sys.executable, str(TOOLS / "eval_samples_tradeoff.py"), "train.max_steps=2", "threads=1",
                          "tracking.enabled=false"], cwd=tmp_path, env=cli_env(tmp_path / "cache"),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["prompts", "samples"])
    rows = [line.split() for line in lines[header + 1:] if line.strip()]
    assert [(int(r[0]), int(r[1]), int(r[2])) for r in rows] == [(16, 4, 64), (32, 1, 32), (32, 2, 64), (64, 1, 64),
                                                                 (64, 2, 128), (64, 4, 256)]
    assert all(0 < float(r[4]) < 1 for r in rows)  # interval widths of a win rate
