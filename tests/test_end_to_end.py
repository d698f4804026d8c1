"""A real smoke sweep through the CLI, then `alignbench report` on it: the outputs a user reads.

The sweep is the smoke sweep cut to two methods with the trial budget `TINY` of tests/helpers.py, and
no pruner, so each study has two complete trials: enough for Optuna's importances and history.
"""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from helpers import TINY, run_cli

METHODS = ("dpo", "ipo")


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory, shared_cache):
    cwd = tmp_path_factory.mktemp("e2e")
    run_cli("sweep", "sweep=smoke", f"sweep.methods=[{','.join(METHODS)}]", "sweep.n_trials=2",
            "sweep.pruner.type=none", *TINY, cwd=cwd, cache=shared_cache, check=True)
    printed = run_cli("report", cwd=cwd, cache=shared_cache, check=True).stdout
    out = cwd / "reports" / "smoke"
    assert f"report: {out.relative_to(cwd)}" in printed or f"report: {out}" in printed
    return cwd, out


def test_report_files_exist(smoke_report):
    _, out = smoke_report
    for name in ("report.html", "report.md", "runs.csv", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    figures = {p.name for p in (out / "figures").glob("*.png")}
    for method in METHODS:
        assert {f"importance_{method}.png", f"history_{method}.png"} <= figures


def test_report_has_the_optuna_sections(smoke_report):
    _, out = smoke_report
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert '<h2 id="optuna">Hyperparameter importances and optimisation history</h2>' in html
    optuna_section = html.split('<h2 id="optuna">')[1].split("<h2 ")[0]
    for method in METHODS:
        assert f'alt="Importances — {method}"' in optuna_section
        assert f'alt="Optimisation history — {method}"' in optuna_section
        assert f"{method}: importance</th>" in optuna_section  # the importances table
    importances = md.split("## Hyperparameter importances")[1].split("## Optimisation history")[0]
    history = md.split("## Optimisation history")[1].split("## Training curves")[0]
    for method in METHODS:
        assert f"(figures/importance_{method}.png)" in importances
        assert f"(figures/history_{method}.png)" in history


def test_one_best_trial_row_per_method(smoke_report):
    cwd, out = smoke_report
    summary = json.loads((out / "summary.json").read_text())
    headline = summary["headline"]
    assert sorted(r["method"] for r in headline) == sorted(METHODS)
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    for row in headline:
        assert row["n_complete"] == 2 and row["n_pruned"] == 0 and row["n_fail"] == 0
        assert 0.0 <= row["eval/win_rate_ci_low"] <= row["eval/win_rate"] <= row["eval/win_rate_ci_high"] <= 1.0
        run = client.get_run(row["run_id"])  # the best trial is a real trial run of that method
        assert run.data.tags["method"] == row["method"] and run.info.status == "FINISHED"
        assert run.data.metrics["eval/win_rate"] == pytest.approx(row["eval/win_rate"])
        # Optuna's importances cover exactly the swept hyperparameters, which the trial run logged.
        assert set(row["importances"]) == set(row["hyperparameters"]) and len(row["importances"]) >= 2
        assert sum(row["importances"].values()) == pytest.approx(1.0)
        assert set(row["importances"]) <= set(run.data.params)
    table = (out / "report.html").read_text().split('id="headline-table"')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + len(METHODS)  # the header, then one row per method
    for method in METHODS:
        assert f"<b>{method}</b>" in table
