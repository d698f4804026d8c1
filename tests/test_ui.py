"""`alignbench ui` after a real (tiny) smoke sweep, looked at in headless Chromium: the link it prints
opens the sweep's experiment on its runs table with the comparison columns, the runs grouped by
method (trials and confirmation runs visible), and the parent's description holds the summary table.

Slow (a sweep, the MLflow server and a browser): `pytest -m slow tests/test_ui.py`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow import MlflowClient

from chromium import Page, chromium  # noqa: F401  (session fixture: installs chromium when missing)
from pg import free_port
from helpers import TINY, cli_env, run_cli

TEXT = "document.body.innerText"


def start_ui(cwd, port: int) -> tuple[subprocess.Popen, str]:
    """`alignbench ui` in `cwd`; returns the process and the sweep experiment's link it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "alignbench.cli", "ui", f"ui.port={port}"], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    link, deadline = None, time.time() + 180
    while link is None:
        line = proc.stdout.readline()
        assert line and time.time() < deadline, f"alignbench ui printed no link for sweep-smoke (exit {proc.poll()})"
        m = re.match(r"\s+sweep-smoke: (http://\S+)", line)
        link = m.group(1) if m else None
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return proc, link
        except OSError:
            assert proc.poll() is None and time.time() < deadline, f"the MLflow UI did not start (exit {proc.poll()})"
            time.sleep(1)


@pytest.mark.slow
def test_the_ui_opens_the_sweep_on_its_runs_and_the_parent_holds_the_summary(tmp_path, shared_cache, chromium):
    run_cli("sweep", "sweep=smoke", "sweep.methods=[dpo]", "sweep.n_trials=2", "sweep.confirm_seeds=1",
            "sweep.pruner.type=none", *TINY, cwd=tmp_path, cache=shared_cache, check=True)
    look_at_the_ui(tmp_path, chromium)


def look_at_the_ui(cwd, chromium: str) -> None:
    """The checks, on the smoke sweep of dpo (2 trials, 1 confirmation seed) recorded in `cwd`."""
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep-smoke")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("alignbench.role") == "sweep"]
    children = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert children == ["dpo-000", "dpo-001", "dpo-confirm-seed1"]
    best = {k: parent.data.metrics[f"best/dpo/{k}"] for k in ("win_rate", "win_rate_ci_low", "win_rate_ci_high", "kl")}

    proc, link = start_ui(cwd, free_port())
    try:
        assert link.endswith(f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
                             "&viewStateShareKey=alignbench")
        with Page(chromium) as page:
            page.goto(link, width=2400, height=900)  # wide: the grid renders only the columns in view
            page.wait_for(f"/[1-9][0-9]* matching runs/.test({TEXT}) && {TEXT}.includes('Run Name')", 120)
            text = page.evaluate(TEXT)
            # the runs table, not the GenAI overview ("0 traces")
            assert page.evaluate("location.hash").startswith(f"#/experiments/{exp.experiment_id}/runs")
            assert "Run Name" in text, text[:2000]
            for column in ("eval/win_rate", "eval/win_rate_ci_low", "eval/kl", "method.beta", "method.lr"):
                assert column in text, f"column {column} not in the runs table"
            # the view groups the runs by method: the trials and confirmation runs show without a click
            page.wait_for(f"['Group: dpo', 'dpo-000', 'dpo-001', 'dpo-confirm-seed1'].every(n => {TEXT}.includes(n))", 60)
            # each column wide enough for its whole name (not "eval/win_rate_c" twice)
            widths = page.evaluate("Object.fromEntries([...document.querySelectorAll('.ag-header-cell[col-id]')]"
                                   ".map(h => [h.getAttribute('col-id'), h.getBoundingClientRect().width]))")
            assert widths["metrics.`eval/win_rate_ci_high`"] >= 8 * len("eval/win_rate_ci_high"), widths

            page.goto(link.split("#")[0] + f"#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
                      "?workflowType=machine_learning", width=1400, height=900)
            page.wait_for(f"{TEXT}.includes('alignbench sweep smoke')", 120)
            description = page.evaluate("""(() => { const t = document.body.innerText;
                return t.slice(t.indexOf('alignbench sweep smoke'), t.indexOf('Report:') + 200); })()""")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert "validation win rate [95% CI]" in description and "test win rate (confirmation mean)" in description
    # the summary table's dpo row: its best trial's win rate with its interval, and its KL
    assert f"{best['win_rate']:.3f} [{best['win_rate_ci_low']:.3f}, {best['win_rate_ci_high']:.3f}]" in description
    assert f"{best['kl']:.2f}" in description
    assert "Verdict: not yet" in description


def test_the_first_line_ui_prints_is_the_latest_sweeps_runs(tmp_path):
    """`alignbench ui`'s first line is the address to open: the runs view of the sweep started last
    (MLflow's root opens on GenAI views). Read before the MLflow server is up, then stopped."""
    from fake_sweep import fabricate_sweep

    old = fabricate_sweep(tmp_path, "older", methods=("dpo",), n_trials=1, n_prompts=4)
    time.sleep(0.05)
    new = fabricate_sweep(tmp_path, "newer", methods=("dpo",), n_trials=1, n_prompts=4)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "alignbench.cli", "ui", f"ui.port={port}", f"tracking.uri={new.uri}"],
                            cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    view = "/runs?workflowType=machine_learning&viewStateShareKey=alignbench"
    assert lines[0] == (f"open http://127.0.0.1:{port}/#/experiments/{new.experiment_id}{view}  "
                        "(sweep-newer: its runs)\n"), lines
    assert lines[1].startswith(f"alignbench: MLflow UI on http://127.0.0.1:{port} ")
    assert lines[2:] == [f"  sweep-newer: http://127.0.0.1:{port}/#/experiments/{new.experiment_id}{view}\n",
                         f"  sweep-older: http://127.0.0.1:{port}/#/experiments/{old.experiment_id}{view}\n"]


def test_the_sweeps_description_has_a_row_per_method_and_says_the_verdict_is_to_come():
    """The parent run's description after a sweep (fast: from a summary as `progress.summarize` makes it)."""
    from alignbench.sweep.description import sweep_note

    best = {"trial": 3, "win_rate": 0.6251, "win_rate_ci": [0.5, 0.74], "kl": 2.345, "params": {"method.beta": 0.1234}}
    summary = {"sweep": "s", "objective": "win_rate", "n_trials": 4, "methods": {
        "dpo": {"complete": 3, "pruned": 1, "failed": 0, "best": best,
                "confirmation": {"mean_win_rate": 0.61, "n_seeds": 2, "seeds": [1, 2, 3]}},
        "ipo": {"complete": 0, "pruned": 0, "failed": 3}}}
    note = sweep_note(summary, "7")
    # a ruled text table in a fenced block (MLflow draws Markdown tables without borders), columns aligned
    lines = note.splitlines()
    table = lines[lines.index("```") + 1:lines.index("```", lines.index("```") + 1)]
    assert [[c.strip() for c in line.strip("|").split(" | ")] for line in table[2:]] == [
        ["dpo", "3 / 1 / 0", "3", "0.625 [0.500, 0.740]", "2.35", "method.beta=0.123", "0.610", "2/3"],
        ["ipo", "0 / 0 / 3", "—", "—", "—", "—", "—", "0/0"]]
    assert table[0].startswith("| method | trials (complete / pruned / failed) | best trial |")
    assert len({len(line) for line in table}) == 1 and set(table[1]) == {"|", "-"}
    assert "(#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=alignbench)" in note
    assert "**Verdict:** not yet; `alignbench report report.sweep=s`" in note
