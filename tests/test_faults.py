"""Faults every cluster has, beyond what tests/test_sweep.py and tests/test_train.py cover.

Already covered elsewhere (not repeated here): a trial that raises (simulated OOM) or whose loss
goes NaN is FAIL with the reason and the sweep goes on (test_sweep: resume_after_failure,
nan_loss_fails_the_trial); Ctrl-C as an in-process KeyboardInterrupt (test_sweep:
interrupt_finalises_both_records); a stale RUNNING trial of a dead local process
(test_sweep: stale_running_trial...); drop counting per reason (test_data).

Here: `kill -9` of one of two workers on PostgreSQL with Optuna's heartbeat; a real SIGTERM to
the CLI; a torn last line in the journal file; a data file with nothing usable through the CLI;
the same seed twice gives the same trials and metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from alignbench.sweep import run as run_mod
from alignbench.config import compose
from test_postgres import alignbench_cmd, check_consistent, mlflow_runs, start_workers, warm_cache

STATUS = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED"}


def wait_for(predicate, timeout: float, what: str, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p, log in procs:
            if p.poll() is not None:
                raise AssertionError(f"worker {p.pid} exited {p.returncode} early: "
                                     f"{Path(log).read_text(errors='replace')[-3000:]}")
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- kill -9 of one worker (PostgreSQL)

@pytest.mark.postgres
def test_kill_9_of_one_worker_on_postgres_the_others_carry_on(workdir, pg_url, mlflow_server):
    """Two workers on one PostgreSQL study; one is SIGKILLed mid-trial. Its trial is failed by Optuna's
    heartbeat (stale-trial sweep), its MLflow run ends KILLED, and the survivor finishes the budget."""
    warm_cache()
    experiment = "fault-kill9"
    args = ["sweep=smoke", "sweep.methods=[dpo]", "sweep.n_trials=2", f"sweep.experiment={experiment}",
            f"sweep.storage={pg_url}", f"tracking.uri={mlflow_server.uri}",
            "sweep.heartbeat_interval=1", "sweep.grace_period=3", "fault.sleep_per_step=2"]
    procs = start_workers(2, args, workdir, "kill9")
    pids = {p.pid for p, _ in procs}
    name = f"{experiment}/dpo"

    def both_running():
        study = optuna.load_study(study_name=name, storage=pg_url)
        running = {t.user_attrs.get("alignbench.worker", {}).get("pid"): t for t in study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING,)) if t.user_attrs.get("mlflow_run_id")}
        return running if pids <= set(running) else None

    try:
        running = wait_for(both_running, 600, "both workers in a trial", procs)
        time.sleep(1)
        (victim, _), (survivor, survivor_log) = procs[1], procs[0]
        killed_trial = running[victim.pid]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        survivor.wait(timeout=600)
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
    assert survivor.returncode == 0, survivor_log.read_text(errors="replace")[-3000:]

    study = optuna.load_study(study_name=name, storage=pg_url)
    dead = study.trials[killed_trial.number]
    assert dead.state == TrialState.FAIL
    parents, children = mlflow_runs(mlflow_server.uri, experiment)
    check_consistent(study, parents, children, budget=2)
    run = mlflow.MlflowClient(tracking_uri=mlflow_server.uri).get_run(killed_trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and "stale" in run.data.tags["failure_reason"]
    assert run.data.tags["optuna.trial_state"] == "FAIL"
    # The survivor carried on: it ran the trial that replaced the killed one.
    later = [t for t in study.trials if t.number > killed_trial.number and t.state in (TrialState.COMPLETE,
                                                                                       TrialState.PRUNED)]
    assert later and all(t.user_attrs["alignbench.worker"]["pid"] == survivor.pid for t in later)


# --------------------------------------------------------------------------- SIGTERM of the CLI

def journal_study(name: str, path: Path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name=name, storage=storage)


def test_sigterm_mid_trial_finalises_both_records(workdir):
    """`kill -TERM` of a single-worker `alignbench sweep` during a trial: exit 130, the Optuna trial FAIL
    (interrupted), its MLflow child run and the sweep's parent run KILLED; nothing left RUNNING."""
    warm_cache()
    cmd = alignbench_cmd("sweep", "sweep=smoke", "sweep.methods=[dpo]", "sweep.n_trials=1", "fault.sleep_per_step=2")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    log = workdir / "sigterm.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        def in_trial():
            (t,) = journal_study("sweep-smoke/dpo", workdir / "sweeps.journal").trials
            return t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
        wait_for(in_trial, 600, "a running trial", [(proc, log)])
        time.sleep(2)  # inside the training loop
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, log.read_text(errors="replace")[-3000:]
    assert "Re-run the same command to resume" in log.read_text(errors="replace")

    (t,) = journal_study("sweep-smoke/dpo", workdir / "sweeps.journal").trials
    assert t.state == TrialState.FAIL and t.user_attrs["failure_kind"] == "interrupted"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweep-smoke").experiment_id])
    child = [r for r in runs if r.data.tags.get("alignbench.role") == "trial"]
    parent = [r for r in runs if r.data.tags.get("alignbench.role") == "sweep"]
    assert len(child) == 1 and len(parent) == 1
    assert child[0].info.status == "KILLED" and "interrupted" in child[0].data.tags["failure_reason"]
    assert child[0].data.tags["optuna.trial_state"] == "FAIL"
    assert parent[0].info.status == "KILLED"


# --------------------------------------------------------------------------- torn journal line

def sweep(*keys: str, user: tuple[str, ...] = ()):
    return run_mod.run_sweep(compose(["sweep=smoke", *keys, *user]), overrides=list(user), live=False)


def test_torn_last_line_of_the_journal_still_loads_and_resumes(workdir):
    """A process killed mid-write leaves half a JSON line at the end of the journal file: the study still
    loads, the same command resumes, and the journal stays readable afterwards."""
    sweep("sweep.methods=[dpo]", "sweep.n_trials=1")
    journal = workdir / "sweeps.journal"
    (first,) = journal_study("sweep-smoke/dpo", journal).trials
    with open(journal, "ab") as fh:
        fh.write(b'{"op_code":5,"worker_id":"dead-worker","trial_id":0,"par')  # no newline: torn write
    assert journal_study("sweep-smoke/dpo", journal).trials[0].params == first.params

    summary = sweep("sweep.methods=[dpo]", "sweep.n_trials=2")
    assert summary["methods"]["dpo"]["status"] == "done"
    trials = journal_study("sweep-smoke/dpo", journal).trials
    assert [t.number for t in trials] == [0, 1]
    assert trials[0].state == first.state and trials[0].params == first.params and trials[0].value == first.value
    assert trials[1].state in (TrialState.COMPLETE, TrialState.PRUNED) and trials[1].params
    for line in journal.read_bytes().splitlines():  # every record is whole again
        json.loads(line)
    sweep("sweep.methods=[dpo]", "sweep.n_trials=2")  # and it loads once more: nothing reruns
    assert len(journal_study("sweep-smoke/dpo", journal).trials) == 2


# --------------------------------------------------------------------------- bad data through the CLI

def test_a_data_file_with_no_usable_row_fails_with_one_line_naming_the_counts(workdir):
    rows = [{"prompt": "Review a film:", "chosen": "", "rejected": " bad"},
            {"prompt": "Review a cafe:", "chosen": " great", "rejected": ""},
            {"prompt": "Review a book:", "chosen": " same", "rejected": " same"},
            {"prompt": "Review a phone:", "chosen": " nice"},
            {"chosen": " good", "rejected": " bad"}]
    path = workdir / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge_dir = workdir / "reward_model"
    judge_dir.mkdir()
    out = subprocess.run(alignbench_cmd("train", "data=local", f"data.path={path}", "judge=reward_model",
                                        f"judge.path={judge_dir}", "tracking.enabled=false"),
                         capture_output=True, text=True, timeout=300, cwd=workdir)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("alignbench: error: only 0 usable rows of 5 after dropping: ")
    for count in ("empty_response=2", "chosen_equals_rejected=1", "missing_field=2"):
        assert count in lines[0]
    assert not (workdir / "mlflow.db").exists()


# --------------------------------------------------------------------------- reproducibility

def test_same_seed_twice_gives_identical_trials_and_metrics(workdir, monkeypatch):
    """Two sequential single-method sweeps with the same seed in separate directories: the same trial
    params (Optuna) and the same metrics, step by step (MLflow), wall-clock timings aside."""
    def timing(key: str) -> bool:
        return key.startswith("time/") or "seconds" in key or "per_sec" in key
    results = []
    for name in ("first", "second"):
        d = workdir / name
        d.mkdir()
        monkeypatch.chdir(d)
        sweep("sweep.methods=[dpo]", "sweep.n_trials=2", "sweep.pruner.type=none")
        study = journal_study("sweep-smoke/dpo", d / "sweeps.journal")
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{d / 'mlflow.db'}")
        exp = client.get_experiment_by_name("sweep-smoke")
        metrics = {}
        for r in client.search_runs([exp.experiment_id], "tags.`alignbench.role` = 'trial'"):
            number = int(r.data.tags["optuna.trial_number"])
            metrics[number] = {k: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)]
                               for k in r.data.metrics if not timing(k)}
        results.append(([(t.number, t.state, t.params, t.values) for t in study.trials], metrics))
    (trials_a, metrics_a), (trials_b, metrics_b) = results
    assert len(trials_a) == 2 and all(state == TrialState.COMPLETE for _, state, _, _ in trials_a)
    assert trials_a == trials_b
    assert metrics_a[0].keys() >= {"eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl",
                                   "train/loss"}
    assert metrics_a == metrics_b
