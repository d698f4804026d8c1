"""Sweeps end to end on tiny budgets: Optuna trials ↔ MLflow child runs, resume, pruning, failures.

Each test runs in its own directory (its own mlflow.db and sweeps.journal) with the shared
SFT cache; the smoke sweep's per-trial overrides are FAST-sized, and the tests shrink them further.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from alignbench.sweep import budget, liveness, selection
from alignbench.sweep import parent as parent_mod
from alignbench.sweep import plan as plan_mod
from alignbench.sweep import run as run_mod
from alignbench.sweep import storage as storage_mod
from alignbench.sweep import studies as studies_mod
from alignbench.tracking import store
from alignbench.config import ConfigError, compose, validate
from helpers import (NO_CONFIRM, TINY, assert_consistent, child_runs, interrupt_at, parent_runs, plan, studies,
                     sweep, sweep_cli)


def failing_sweep(*sweep_overrides: str, user: tuple[str, ...] = ()) -> dict:
    """A sweep whose methods stop on failures: it raises SweepFailed (the CLI exits 1) with its summary."""
    with pytest.raises(run_mod.SweepFailed, match="stopped by failures") as exc:
        sweep(*sweep_overrides, user=user)
    return exc.value.summary


# --------------------------------------------------------------------------- end to end

def test_smoke_sweep_end_to_end(workdir):
    summary = sweep("sweep.methods=[dpo,ipo]", "sweep.n_trials=2")
    trials = assert_consistent()
    assert len(trials) == 4
    for m in ("dpo", "ipo"):
        s = studies()[m]
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in s.trials) == 2
        assert s.trials[0].state == TrialState.COMPLETE  # the pruner needs one complete trial first
        e = summary["methods"][m]
        assert e["status"] == "done" and e["best"]["params"] and 0 <= e["best"]["win_rate"] <= 1
        assert e["best"]["win_rate_ci"][0] <= e["best"]["win_rate"] <= e["best"]["win_rate_ci"][1]
    (parent,) = parent_runs()
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.storage"] == f"journal://{Path('sweeps.journal').resolve()}"
    assert parent.data.params["sweep.study_names"] == "sweep-smoke/dpo,sweep-smoke/ipo"
    art = mlflow.MlflowClient().list_artifacts(parent.info.run_id)
    assert "sweep_summary.json" in [a.path for a in art]
    complete = [r for r in child_runs() if r.data.tags["optuna.trial_state"] == "COMPLETE"]
    for r in complete:
        for key in ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl", "train/loss"):
            assert key in r.data.metrics
        assert r.data.params["train.max_steps"] == "4"  # the user's override reached the trial

    # The same command again: budget reached, nothing reruns, the same parent run is reused.
    sweep("sweep.methods=[dpo,ipo]", "sweep.n_trials=2")
    assert len(assert_consistent()) == 4
    assert len(parent_runs()) == 1


def test_resume_after_failure_and_budget_counts_complete_only(workdir):
    # 1st invocation: every trial raises; the method stops at max_failures.
    summary = failing_sweep("sweep.methods=[dpo]", "sweep.n_trials=1", "sweep.max_failures=1",
                            user=("fault.raise_at_step=1",))
    assert summary["methods"]["dpo"]["status"] == "failures"
    (t0,) = studies()["dpo"].trials
    assert t0.state == TrialState.FAIL and "out of memory" in t0.user_attrs["failure_reason"]
    assert_consistent()
    # 2nd: no fault; the failed trial does not use the budget: one new trial runs.
    summary = sweep("sweep.methods=[dpo]", "sweep.n_trials=1", "sweep.max_failures=1")
    assert summary["methods"]["dpo"]["status"] == "done"
    assert [t.state for t in studies()["dpo"].trials] == [TrialState.FAIL, TrialState.COMPLETE]
    # 3rd: the same command: the complete trial is not rerun.
    sweep("sweep.methods=[dpo]", "sweep.n_trials=1", "sweep.max_failures=1")
    assert len(studies()["dpo"].trials) == 2
    assert_consistent()
    assert parent_runs()[0].info.status == "FINISHED"


def test_nan_loss_fails_the_trial_and_the_sweep_goes_on(workdir):
    summary = failing_sweep("sweep.methods=[dpo,simpo]", "sweep.n_trials=1", "sweep.max_failures=1",
                            user=("fault.nan_loss_at_step=1",))
    for m in ("dpo", "simpo"):  # simpo ran although dpo failed
        (t,) = studies()[m].trials
        assert t.state == TrialState.FAIL and "NonFiniteLoss" in t.user_attrs["failure_reason"]
        assert summary["methods"][m]["status"] == "failures"
    assert_consistent()


def test_a_bad_trial_is_pruned(workdir):
    # A finished trial that reached win rate 1.0 at every eval: the median pruner stops anything below.
    p = plan("sweep.methods=[dpo]", "sweep.n_trials=2")
    study = studies_mod.load_study(p, "dpo", storage_mod.make_storage(p))
    study.add_trial(optuna.trial.create_trial(
        params={"method.beta": 0.1, "method.lr": 5e-4}, value=1.0, intermediate_values={2: 1.0, 4: 1.0},
        distributions={"method.beta": optuna.distributions.FloatDistribution(0.01, 0.5, log=True),
                       "method.lr": optuna.distributions.FloatDistribution(1.7e-4, 1.5e-3, log=True)}))
    sweep("sweep.methods=[dpo]", "sweep.n_trials=2")
    t = studies()["dpo"].trials[1]
    assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [2]
    (run,) = child_runs()
    # not drawn as a failure in the MLflow UI: FINISHED, with the pruning in its name and tags
    assert run.info.status == "FINISHED" and run.data.tags["optuna.trial_state"] == "PRUNED"
    assert run.info.run_name == "dpo-001 (pruned)" and "failure_reason" not in run.data.tags
    assert run.data.tags["pruned_reason"].startswith("TrialPruned: pruned at step 2")
    assert "eval/win_rate" in run.data.metrics
    # the runs table's saved view shows the trials grouped by method, the searched params as columns
    exp = mlflow.MlflowClient().get_experiment_by_name("sweep-smoke")
    view = json.loads(json.loads(exp.tags[store.VIEW_TAG])["state"])
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "method"}]
    assert {"params.`method.beta`", "params.`method.lr`"} <= set(view["selectedColumns"])


def test_interrupt_finalises_both_records(workdir, monkeypatch):
    interrupt_at(monkeypatch, 2)
    with pytest.raises(SystemExit) as exc:
        sweep("sweep.methods=[dpo]", "sweep.n_trials=1")
    assert exc.value.code == 130
    (t,) = studies()["dpo"].trials
    assert t.state == TrialState.FAIL and t.user_attrs["failure_kind"] == "interrupted"
    (run,) = child_runs()
    assert run.info.status == "KILLED" and "interrupted" in run.data.tags["failure_reason"]
    assert parent_runs()[0].info.status == "KILLED"


def test_stale_running_trial_is_failed_and_its_run_killed(workdir):
    p = plan("sweep.methods=[dpo]", "sweep.n_trials=1")
    study = studies_mod.load_study(p, "dpo", storage_mod.make_storage(p))
    trial = study.ask()
    trial.suggest_float("method.beta", 0.01, 0.5, log=True)
    trial.suggest_float("method.lr", 1.7e-4, 1.5e-3, log=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    trial.set_user_attr("alignbench.worker", {"host": liveness.HOST, "pid": dead.pid, "start": 1.0})
    client = mlflow.MlflowClient()
    exp = client.create_experiment("sweep-smoke")
    run = client.create_run(exp, tags={"alignbench.role": "trial", "optuna.study": study.study_name,
                                       "optuna.trial_number": "0", "method": "dpo"})
    trial.set_user_attr("mlflow_run_id", run.info.run_id)

    sweep("sweep.methods=[dpo]", "sweep.n_trials=1")
    t0, t1 = studies()["dpo"].trials
    assert t0.state == TrialState.FAIL and t0.user_attrs["failure_kind"] == "stale"
    assert t1.state == TrialState.COMPLETE
    stale = client.get_run(run.info.run_id)
    assert stale.info.status == "KILLED" and stale.data.tags["optuna.trial_state"] == "FAIL"


# --------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("overrides, message", [
    (("sweep.methods=[dpo,foo]",), "sweep.methods: foo: unknown method"),
    (("sweep.methods=[dpo]", "method.beta=-1"), "method.beta=-1"),
    (("sweep.methods=[dpo]", "sweep.objective=best"), "sweep.objective=best"),
    (("sweep.methods=[ipo]", "method.beta=0.2"), "method.beta"),   # ipo has no beta
    (("sweep.methods=[dpo]", "+sweep.search_space.dpo=[method.nope]"), "method.nope"),
    (("sweep.methods=[dpo]", "sweep.batch_trials=0"), "sweep.batch_trials=0: must be an integer >= 1"),
])
def test_config_error_fails_before_any_trial(workdir, overrides, message):
    sweep_keys = [o for o in overrides if o.lstrip("+").startswith("sweep")]
    user = tuple(o for o in overrides if not o.lstrip("+").startswith("sweep"))
    with pytest.raises(ConfigError) as exc:
        sweep(*sweep_keys, user=user)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert not Path("sweeps.journal").exists() and not Path("mlflow.db").exists()


def test_batch_trials_is_n_workers_unless_set():
    """Workers started apart (a launcher, other machines) name their total in sweep.batch_trials."""
    from alignbench.sweep.plan import plan_sweep

    def batch(*o):
        return plan_sweep(compose(["sweep=smoke", "sweep.methods=[dpo]", *o]), overrides=[]).batch_trials

    assert (batch(), batch("sweep.n_workers=2"), batch("sweep.batch_trials=3")) == (1, 2, 3)


def test_cli_config_error_is_one_line(workdir):
    out = subprocess.run([sys.executable, "-m", "alignbench.cli", "sweep", "sweep=smoke", "sweep.methods=[dpo,foo]"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["alignbench: error: sweep.methods: foo: unknown method "
                                               "(choose from ppo, dpo, ipo, kto, simpo, rloo)"]


def test_cli_exits_1_when_a_method_stopped_on_failures(workdir):
    out = subprocess.run([sys.executable, "-m", "alignbench.cli", "sweep", "sweep=smoke", NO_CONFIRM,
                          "sweep.methods=[dpo]", "sweep.n_trials=1", "sweep.max_failures=1", *TINY,
                          "fault.raise_at_step=1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith(
        "alignbench: error: sweep smoke: 1 of 1 methods ended short of their budget: dpo 0 of 1 trials "
        "(stopped by failures: 1 failed, the last with RuntimeError: CUDA out of memory")
    assert parent_runs()[0].info.status == "FINISHED"  # the records are complete; only the outcome failed


# --------------------------------------------------------------------------- pieces

def test_search_spaces_cover_every_method_and_are_valid():
    from alignbench.config import METHODS

    for m in METHODS:
        space = plan_mod.load_space(m)
        assert "method.lr" in space
        cfg = compose([f"method={m}"])
        default_lr = cfg.method.lr
        assert space["method.lr"]["low"] <= default_lr <= space["method.lr"]["high"]
    assert plan_mod.load_space("dpo")["method.beta"] == {"low": 0.01, "high": 0.5, "log": True}
    for k in plan_mod.load_space("rloo")["method.rloo_k"]["choices"]:  # every choice is a valid config
        validate(compose(["method=rloo", f"method.rloo_k={k}"]))


def test_sampler_is_seeded_per_trial_count():
    p = plan("sweep.methods=[dpo]")
    a = [studies_mod.make_sampler(p, "dpo", k) for k in (0, 0, 1)]
    draws = []
    for s in a:
        study = optuna.create_study(sampler=s, direction="maximize")
        draws.append(study.ask().suggest_float("x", 0, 1))
    assert draws[0] == draws[1] != draws[2]


def test_over_budget_trials_are_detected(tmp_path):
    p = plan("sweep.methods=[dpo]", "sweep.n_trials=2", f"sweep.storage=journal://{tmp_path}/j.journal")
    study = studies_mod.load_study(p, "dpo", storage_mod.make_storage(p))
    t0, t1, t2 = study.ask(), study.ask(), study.ask()   # three workers asked for the last two slots
    assert not budget.over_budget(p, study, t0)
    assert not budget.over_budget(p, study, t1)
    assert budget.over_budget(p, study, t2)
    study.tell(t1, state=TrialState.FAIL)                 # a failure frees a slot
    assert not budget.over_budget(p, study, t2)


def test_storage_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_mod.storage_url(None) == f"journal://{tmp_path}/sweeps.journal"
    assert storage_mod.storage_url("journal:///x/y.journal") == "journal:///x/y.journal"
    assert storage_mod.storage_url("my.journal") == f"journal://{tmp_path}/my.journal"
    # psycopg 3 is not a dependency: a bare postgresql:// URL gets the psycopg2 driver we install
    assert storage_mod.storage_url("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert storage_mod.storage_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert storage_mod.storage_url("sqlite:///x.db") == "sqlite:///x.db"


def test_journal_path_and_open_storage_for_a_reader(tmp_path):
    assert storage_mod.journal_path("journal:///x/y.journal") == Path("/x/y.journal")
    assert storage_mod.journal_path("file:///x/y.journal") == Path("/x/y.journal")
    assert storage_mod.journal_path("file:y.journal") == Path("y.journal")
    assert storage_mod.journal_path("y.journal") == Path("y.journal")
    assert storage_mod.journal_path("sqlite:///x.db") is None
    assert storage_mod.journal_path("postgresql+psycopg2://u@h/db") is None
    assert storage_mod.open_storage("sqlite:///x.db") == "sqlite:///x.db"  # Optuna connects itself
    with pytest.raises(LookupError, match="does not exist"):
        storage_mod.open_storage(f"journal://{tmp_path}/missing.journal")
    journal = tmp_path / "s.journal"
    optuna.create_study(study_name="e/dpo", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert optuna.load_study(study_name="e/dpo", storage=storage_mod.open_storage(f"journal://{journal}"))


@pytest.mark.parametrize("pareto", [False, True])
def test_best_trial_rule_is_optunas_choice(tmp_path, pareto):
    """The shared rule (highest objective; pareto: then lower KL; then earliest trial) picks what
    Optuna picks, with ties and trials completed out of order (several workers)."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"] if pareto else ["maximize"])
    trials = [study.ask() for _ in range(6)]
    results = {3: (0.75, 2.0), 0: (0.5, 1.0), 5: (0.75, 1.0), 1: (0.75, 1.0), 2: (0.25, 0.5)}
    for number, (wr, kl) in results.items():  # completion order != trial order
        study.tell(trials[number], [wr, kl] if pareto else wr)
    study.tell(trials[4], state=TrialState.PRUNED)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    i = selection.best_index([t.values[0] for t in complete], [t.values[-1] for t in complete],
                             [t.number for t in complete], kl_tiebreak=pareto)
    optunas = max(study.best_trials, key=lambda t: t.values[0]) if pareto else study.best_trial
    assert complete[i].number == optunas.number == 1
    p = plan_mod.Plan(name="x", experiment="e", methods=["dpo"], n_trials=6, objective="pareto" if pareto else
                      "win_rate", seed=0, sampler={}, pruner={}, storage="", heartbeat_interval=None,
                      grace_period=None, n_workers=1, batch_trials=1, max_failures=1, spaces={},
                      trial_overrides={}, tracking={})
    assert studies_mod.best_trial(p, study).number == optunas.number
    assert selection.best_index([None, float("nan")]) is None
    assert selection.best_index([0.5, 0.5], [None, 3.0], [0, 1], kl_tiebreak=True) == 1  # no KL ranks last


def test_user_overrides_drop_sweep_and_method_keys():
    assert plan_mod.user_overrides(["sweep=smoke", "sweep.n_trials=3", "method=ipo", "seed=3",
                                     "train.max_steps=4"]) == ["seed=3", "train.max_steps=4"]


# --------------------------------------------------------------------------- slow: kill -9, workers

def _wait_for_running_child(timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1)
        if not Path("mlflow.db").exists():
            continue
        # under the CLI's own lock: a bare MlflowClient here would create the tables at the same
        # moment as the CLI does and make it fail with "table ... already exists"
        store.create_sqlite_store_once(f"sqlite:///{Path('mlflow.db').resolve()}")
        try:
            runs = child_runs()
        except Exception:
            continue
        if any(r.info.status == "RUNNING" for r in runs):
            return
    raise AssertionError("no trial started")


@pytest.mark.slow
def test_kill_9_mid_trial_then_resume(workdir):
    args = ["sweep=smoke", NO_CONFIRM, "sweep.methods=[dpo,ipo]", "sweep.n_trials=2", *TINY, "fault.sleep_per_step=1.5"]
    cmd, kw = sweep_cli(*args, cwd=workdir)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    try:
        _wait_for_running_child()
        time.sleep(2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert any(r.info.status == "RUNNING" for r in child_runs())
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = assert_consistent()
    for m in ("dpo", "ipo"):
        s = studies()[m]
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in s.trials) == 2
        assert len({t.number for t in s.trials}) == len(s.trials)
    assert any(t.user_attrs.get("failure_kind") == "stale" for _, t in trials)
    assert all(r.info.status != "RUNNING" for r in child_runs() + parent_runs())


@pytest.mark.slow
def test_two_workers_share_the_budget(workdir):
    summary = sweep("sweep.methods=[dpo,ipo]", "sweep.n_trials=3", "sweep.n_workers=2")
    trials = assert_consistent()
    for m in ("dpo", "ipo"):
        s = studies()[m]
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in s.trials) == 3
        assert summary["methods"][m]["status"] == "done"
    workers = {t.user_attrs["alignbench.worker"]["pid"] for _, t in trials}
    assert len(workers) == 2


def test_workers_that_race_on_a_new_sweep_converge_on_one_parent_run(workdir, monkeypatch):
    """Two workers both find no parent run and both create one: each looks again, adopts the
    oldest and deletes its own, so every child run points at the same parent."""
    p = plan()
    tags = {"alignbench.role": "sweep", "sweep.name": p.name}
    first, created = parent_mod.open_parent_run(p, tags)  # the worker that got there first
    assert created
    real = parent_mod.parent_runs
    calls = []

    def racing(plan_):  # the second worker's first look happens before the first worker's run exists
        calls.append(1)
        return [] if len(calls) == 1 else real(plan_)

    monkeypatch.setattr(parent_mod, "parent_runs", racing)
    adopted, created = parent_mod.open_parent_run(p, tags)
    assert (adopted, created) == (first, False) and len(calls) == 2
    monkeypatch.setattr(parent_mod, "parent_runs", real)
    assert [r.info.run_id for r in parent_runs()] == [first]  # the loser's run is deleted, not left RUNNING
    deleted = mlflow.MlflowClient().search_runs([mlflow.get_experiment_by_name("sweep-smoke").experiment_id],
                                                run_view_type=mlflow.entities.ViewType.DELETED_ONLY)
    assert len(deleted) == 1 and deleted[0].info.run_id != first
    # A sweep run afterwards adopts it too and logs its params there once.
    sweep("sweep.methods=[dpo]", "sweep.n_trials=1")
    (parent,) = parent_runs()
    assert parent.info.run_id == first and parent.info.status == "FINISHED"
    assert parent.data.params["sweep.n_trials"] == "1"
    assert {r.data.tags["mlflow.parentRunId"] for r in child_runs()} == {first}


def test_hydra_joblib_launcher_starts_workers_that_share_the_budget(workdir):
    """The README's one-machine launcher recipe: `--multirun hydra/launcher=joblib` with a dummy
    `+sweep.worker=0,1` starts two identical workers at the same instant in a fresh directory
    (which also races MLflow's creation of mlflow.db: tracking creates it under a file lock)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    # 1 s per step: a trial takes >= 4 s, so one worker cannot finish the budget before the other
    # has imported torch (both taking part is asserted below)
    cmd, kw = sweep_cli("--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "+sweep.worker=0,1",
                   "sweep=smoke", NO_CONFIRM, "sweep.methods=[dpo]", "sweep.n_trials=4", *TINY,
                   "fault.sleep_per_step=1.0", "sweep.batch_trials=2", cwd=workdir)
    kw["env"].pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = assert_consistent()
    (s,) = studies().values()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in s.trials) == 4
    assert len({t.user_attrs["alignbench.worker"]["pid"] for _, t in trials}) == 2
    assert len(parent_runs()) == 1 and parent_runs()[0].info.status == "FINISHED"


def test_a_finished_trials_running_run_is_killed_only_when_its_worker_is_gone(workdir):
    """Between telling Optuna and ending its MLflow run, a live worker's run is RUNNING with the
    trial already COMPLETE: another worker's reaper must leave it alone, and end it once that
    worker is dead."""
    p = plan("sweep.methods=[dpo]", "sweep.n_trials=1")
    study = studies_mod.load_study(p, "dpo", storage_mod.make_storage(p))
    client = mlflow.MlflowClient()
    exp = client.create_experiment("sweep-smoke")
    dead = subprocess.Popen(["true"])
    dead.wait()
    workers = {"alive": liveness.worker_tag(), "dead": {"host": liveness.HOST, "pid": dead.pid, "start": 1.0}}
    runs = {}
    for who, worker in workers.items():
        trial = study.ask()
        trial.set_user_attr("alignbench.worker", worker)
        runs[who] = client.create_run(exp, tags={"alignbench.role": "trial", "optuna.study": study.study_name,
                                                 "optuna.trial_number": str(trial.number)}).info.run_id
        study.tell(trial, 0.5)
    liveness.reap_stale(p, study)
    assert client.get_run(runs["alive"]).info.status == "RUNNING"
    killed = client.get_run(runs["dead"])
    assert killed.info.status == "KILLED" and killed.data.tags["optuna.trial_state"] == "COMPLETE"


def test_a_worker_that_loses_the_race_to_write_the_parents_params_goes_on(workdir):
    """Workers opening a new sweep together: one finds the parent run before its creator has logged
    the params, and its own write fails on the unique key (PostgreSQL). The params are there: it goes
    on and sets its tags. A write that fails with no params written still raises."""
    from mlflow.exceptions import MlflowException

    p = plan()
    parent, created = parent_mod.open_parent_run(p, {"alignbench.role": "sweep", "sweep.name": p.name})
    client = mlflow.MlflowClient()

    class LateTracker:  # the creator's write lands between this worker's look and its own write
        def __init__(self, creator_writes: bool):
            self.client, self.run_id, self.creator_writes, self.tags = client, parent, creator_writes, {}

        def log_params(self, params):
            if self.creator_writes:
                for key, value in params.items():
                    client.log_param(parent, key, value)
            raise MlflowException("duplicate key value violates unique constraint \"param_pk\"")

        def set_tags(self, tags):
            self.tags.update(tags)

    with pytest.raises(MlflowException, match="param_pk"):
        run_mod._record_sweep(p, LateTracker(creator_writes=False), parent, created=False)
    late = LateTracker(creator_writes=True)
    assert run_mod._record_sweep(p, late, parent, created=False) == parent
    assert client.get_run(parent).data.params["sweep.name"] == "smoke"
    assert late.tags["sweep.name"] == "smoke" and "sweep.pruner" not in late.tags
