"""Faults every cluster has, beyond what tests/test_sweep.py and tests/test_train.py cover.

Already covered elsewhere (not repeated here): a trial that raises (simulated OOM) or whose loss
goes NaN is FAIL with the reason and the sweep goes on (test_sweep: resume_after_failure,
nan_loss_fails_the_trial); Ctrl-C as an in-process KeyboardInterrupt (test_sweep:
interrupt_finalises_both_records); a stale RUNNING trial of a dead local process
(test_sweep: stale_running_trial...); drop counting per reason (test_data_pipeline).

Here: `kill -9` of one of two workers on PostgreSQL with Optuna's heartbeat; a real SIGTERM to
the CLI; a torn last line in the journal file; a data file with nothing usable through the CLI;
the same seed twice gives the same trials and metrics.
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

from alignbench.sweep import run as run_mod
from alignbench.config import compose
from helpers import alignbench_cmd, check_consistent, mlflow_runs, start_workers, warm_cache



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
            "sweep.heartbeat_interval=1", "sweep.grace_period=3", "fault.sleep_per_step=2",
                "sweep.batch_trials=2"]
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


# --------------------------------------------------------------------------- SIGTERM to `alignbench train`

def _run_then_sigterm(cmd: list[str], cwd: Path, env: dict, marker: str, delay: float):
    """Start `cmd`, wait for `marker` in its output, SIGTERM it `delay` s later: (exit status, stderr,
    seconds from the signal to the exit)."""
    err = cwd / "stderr.log"
    with open(err, "w") as err_fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err_fh, text=True)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                break
        else:
            raise AssertionError(f"no {marker!r} before exit {proc.wait()}: {''.join(seen)[-3000:]}"
                                 f"{err.read_text()[-3000:]}")
        time.sleep(delay)
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.stdout.read()
        proc.wait(timeout=120)
        elapsed = time.time() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err.read_text(), elapsed


@pytest.mark.parametrize("stage, overrides, marker, delay", [
    # A cold cache and an SFT stage far too long to finish: the signal lands in the tokenizer's or SFT's training.
    ("sft", ["model.sft.steps=100000"], "SFT stage: training the built-in model", 0.5),
    # Slow: 374 s on the 2-core machine at load average ~15 (a whole set-up and three steps before the signal).
    pytest.param("training", ["fault.sleep_per_step=2"], "step 3: win rate", 0.0, marks=pytest.mark.slow),
])
def test_sigterm_to_train_is_one_line_exit_130_and_a_killed_run(workdir, shared_cache, tmp_path, stage, overrides,
                                                                 marker, delay):
    from helpers import FAST

    from alignbench.training.settings import run_settings
    from alignbench.training.setup import prepare

    cache_dir = tmp_path / "cold-cache" if stage == "sft" else shared_cache
    if stage == "training":
        prepare(run_settings(compose(FAST)))  # the SFT model is cached: the run reaches training quickly
    env = dict(os.environ, PYTHONUNBUFFERED="1", ALIGNBENCH_CACHE=str(cache_dir))
    env.pop("MLFLOW_TRACKING_URI", None)
    status, stderr, elapsed = _run_then_sigterm(alignbench_cmd("train", *FAST, *overrides), workdir, env, marker,
                                                delay)
    lines = [ln for ln in stderr.splitlines() if ln.startswith("alignbench:")]
    assert status == 130, stderr[-3000:]
    assert len(lines) == 1 and stderr.strip().endswith(lines[0]) and "Traceback" not in stderr, stderr[-3000:]
    assert lines[0].startswith("alignbench: train interrupted (SIGTERM); MLflow run ") and "KILLED" in lines[0]
    assert elapsed < 10, f"{stage}: {elapsed:.1f} s from SIGTERM to exit"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("alignbench").experiment_id])
    assert run.info.run_id in lines[0] and run.info.status == "KILLED"
    assert run.data.tags["failure_reason"].startswith("interrupted")


def test_sigterm_stops_tokenizer_training_within_a_second(tmp_path):
    """HF tokenizers' BPE training is one long C call: run in the main thread, a signal waits for it
    to finish (tens of seconds on a big corpus). `train_tokenizer` runs it so SIGTERM ends it at once."""
    script = (
        "import random, time\n"
        "from alignbench.models.builtin import train_tokenizer\n"
        "from alignbench.process import interrupt_on_sigterm\n"
        "interrupt_on_sigterm()\n"
        "rng = random.Random(0)\n"
        "words = [''.join(rng.choice('abcdefghij') for _ in range(rng.randint(3, 9))) for _ in range(20000)]\n"
        "texts = [' '.join(rng.choices(words, k=60)) for _ in range(60000)]\n"
        "print('training', flush=True)\n"
        "t = time.time()\n"
        "try:\n"
        "    train_tokenizer(texts, 4000)\n"
        "    print(f'finished in {time.time() - t:.1f} s', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "training"
        time.sleep(1.0)
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read()
        proc.wait(timeout=120)
        elapsed = time.time() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.strip() == "interrupted" and elapsed < 5, (out[-2000:], elapsed)  # ~0.5 s when the CPUs are idle


# --------------------------------------------------------------------------- a full disk: the exit status says so

@pytest.mark.slow  # 194 s on the 2-core machine at load average ~15 (two methods' trials, twice)
def test_a_sweep_stopped_by_storage_errors_exits_1_naming_the_methods_then_resumes(workdir, monkeypatch, capsys):
    """Every trial's training fails on a write to a full disk (`sqlite3.OperationalError: database or disk
    is full`, as MLflow's SQLite store raised it on a 3 MB tmpfs): the sweep stops each method after
    sweep.max_failures, and `alignbench sweep` exits 1
    with one line naming each method, how far it got and why. With the space back, the same command
    resumes and exits 0 with the whole budget."""
    import sqlite3

    from alignbench import cli
    from alignbench.training import run as training_run

    warm_cache()
    args = ["sweep=smoke", "sweep.methods=[dpo,ipo]", "sweep.n_trials=1", "sweep.confirm_seeds=0",
            "sweep.max_failures=2"]

    def disk_full(cfg, tracker, *args, **kwargs):
        tracker.log_metrics({"train/loss": 1.0}, 0)  # the trial's run is written to before the disk fills
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as fault:
        fault.setattr(training_run, "train", disk_full)
        with pytest.raises(SystemExit) as stop:
            cli.sweep_command(compose(args))
    assert stop.value.code == 1
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("alignbench: error:")]
    assert line.startswith("alignbench: error: sweep smoke: 2 of 2 methods ended short of their budget: ")
    for method in ("dpo", "ipo"):
        assert (f"{method} 0 of 1 trials (stopped by failures: 2 failed, the last with OperationalError: "
                "database or disk is full)") in line, line

    cli.sweep_command(compose(args))  # the space is back: resumes, no SystemExit
    for method in ("dpo", "ipo"):
        trials = journal_study(f"sweep-smoke/{method}", workdir / "sweeps.journal").trials
        assert [t.state for t in trials].count(TrialState.FAIL) == 2
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 1  # the whole budget
