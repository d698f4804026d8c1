"""Scale-out on a real PostgreSQL (started by tests/pg.py on 127.0.0.1): several `alignbench sweep`
workers share one Optuna study in PostgreSQL and log to an MLflow tracking server whose backend
store is PostgreSQL too — the multi-machine set-up of the README's "Scale-out" section, on one host.

These run in the default test command (marked `postgres`, not deselected).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest

from alignbench.sweep import run as run_mod
from alignbench.config import compose
from helpers import check_consistent, mlflow_runs, start_workers, wait_all, warm_cache

pytestmark = pytest.mark.postgres

def test_three_workers_share_one_study_on_postgres(workdir, pg_url, mlflow_server):
    """Three `alignbench sweep` processes started together on one study: exactly the budget, nothing lost
    or duplicated, one MLflow child run per trial, params equal in Optuna and MLflow."""
    warm_cache()
    experiment = "pg-three-workers"
    args = ["sweep=smoke", "sweep.methods=[dpo]", "sweep.n_trials=4", f"sweep.experiment={experiment}",
            f"sweep.storage={pg_url}", f"tracking.uri={mlflow_server.uri}", "sweep.heartbeat_interval=5",
            "sweep.batch_trials=3"]
    t0 = time.time()
    procs = start_workers(3, args, workdir, "pg")
    wait_all(procs)
    print(f"three workers: {time.time() - t0:.0f}s wall")

    study = optuna.load_study(study_name=f"{experiment}/dpo", storage=pg_url)
    parents, children = mlflow_runs(mlflow_server.uri, experiment)
    trials = check_consistent(study, parents, children, budget=4)
    assert len(parents) == 1, f"{len(parents)} parent runs: workers that raced on the new sweep did not converge"
    print(f"three workers: one parent run, trials by worker pid: {Counter(t.user_attrs['alignbench.worker']['pid'] for t in trials)}")
    pids = {p.pid for p, _ in procs}
    workers = {t.user_attrs["alignbench.worker"]["pid"] for t in trials}
    assert workers <= pids
    complete = [r for r in children if r.data.tags["optuna.trial_state"] == "COMPLETE"]
    assert complete and all("eval/win_rate" in r.data.metrics for r in complete)

    # The same command again resumes: the budget is reached, nothing reruns.
    wait_all(start_workers(1, args, workdir, "pg-again"))
    again = optuna.load_study(study_name=f"{experiment}/dpo", storage=pg_url)
    assert len(again.trials) == len(study.trials)


# --------------------------------------------------------------------------- the MLflow server's REST API

def rest(uri: str, endpoint: str, body: dict | None = None, query: str = "") -> dict:
    url = f"{uri}/api/2.0/mlflow/{endpoint}" + (f"?{query}" if query else "")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def restore_tracking_uri():
    """run_sweep sets MLflow's global tracking URI (and MLFLOW_TRACKING_URI): put both back afterwards."""
    from mlflow.tracking._tracking_service import utils

    before, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(before)
    if env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = env


def test_sweep_runs_through_the_mlflow_server_rest_api(workdir, pg_url, mlflow_server, restore_tracking_uri):
    """A small sweep with tracking.uri=http://127.0.0.1:P (backend store: PostgreSQL), read back over REST."""
    experiment = "pg-rest"
    sweep_keys = ["sweep.methods=[dpo]", "sweep.n_trials=2", "sweep.pruner.type=none",
                  f"sweep.experiment={experiment}", f"sweep.storage={pg_url}"]
    user = [f"tracking.uri={mlflow_server.uri}"]
    summary = run_mod.run_sweep(compose(["sweep=smoke", *sweep_keys, *user]), overrides=user, live=False)
    assert summary["methods"]["dpo"]["status"] == "done"
    assert not Path("mlflow.db").exists()  # nothing went to the local default store

    exp = rest(mlflow_server.uri, "experiments/get-by-name", query=f"experiment_name={experiment}")["experiment"]
    runs = rest(mlflow_server.uri, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if t.get("alignbench.role") == "sweep"]
    children = [(r, t) for r, t in zip(runs, tags) if t.get("alignbench.role") == "trial"]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    parent_id = parents[0]["info"]["run_id"]
    assert len(children) == 2
    study = optuna.load_study(study_name=f"{experiment}/dpo", storage=pg_url)
    assert sorted(int(t["optuna.trial_number"]) for _, t in children) == [t.number for t in study.trials]
    for run, t in children:
        assert run["info"]["status"] == "FINISHED"
        assert t["mlflow.parentRunId"] == parent_id and t["optuna.trial_state"] == "COMPLETE"
        assert t["method"] == "dpo" and t["optuna.study"] == f"{experiment}/dpo"
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        for key in ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl", "train/loss"):
            assert key in metrics, key
        assert 0.0 <= metrics["eval/win_rate"] <= 1.0
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        trial = study.trials[int(t["optuna.trial_number"])]
        assert {k: repr(v) for k, v in trial.params.items()} == {k: params[k] for k in trial.params}
        history = rest(mlflow_server.uri, "metrics/get-history",
                       query=f"run_id={run['info']['run_id']}&metric_key=eval/win_rate")["metrics"]
        assert [m["step"] for m in history] == [2, 4]
    # Artifacts went through the server's proxy to its --artifacts-destination.
    arts = rest(mlflow_server.uri, "artifacts/list", query=f"run_id={parent_id}")
    assert "sweep_summary.json" in [f["path"] for f in arts.get("files", [])]
