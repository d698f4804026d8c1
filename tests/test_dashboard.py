"""optuna-dashboard as the sweep's last line runs it (`optuna-dashboard <journal>`), on a sweep's
journal storage, bound to loopback: it starts, serves its page and lists the sweep's studies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from fake_sweep import fabricate_sweep
from pg import free_port


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return r.read()


def test_optuna_dashboard_serves_the_sweeps_studies(tmp_path):
    exe = shutil.which("optuna-dashboard") or str(Path(os.sys.executable).parent / "optuna-dashboard")
    if not Path(exe).exists():
        pytest.fail("optuna-dashboard is not installed: pip install -e '.[test]' installs it (the dashboard extra)")
    fake = fabricate_sweep(tmp_path, "dash", methods=("dpo", "ipo"), n_trials=2, n_prompts=4)
    port = free_port()
    proc = subprocess.Popen([exe, fake.journal, "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                page = _get(f"http://127.0.0.1:{port}/dashboard")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-2000:]
                assert time.time() < deadline, "optuna-dashboard did not answer within 120 s"
                time.sleep(0.5)
        assert b"<html" in page.lower() and b"<script" in page.lower()
        studies = json.loads(_get(f"http://127.0.0.1:{port}/api/studies"))["study_summaries"]
        assert sorted(s["study_name"] for s in studies) == sorted(fake.study_names.values())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_sweeps_last_line_names_the_install_command_only_when_missing(monkeypatch):
    import importlib.util

    from alignbench.sweep import progress

    assert progress.dashboard_command("sweeps.journal") == "optuna-dashboard sweeps.journal"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert progress.dashboard_command("sweeps.journal") == ("pip install optuna-dashboard && "
                                                            "optuna-dashboard sweeps.journal")
