"""alignbench.tracking.mlflow_runs: the tracker's background writer queues metrics off the hot path,
flushes them before the run ends, and hands a write error back to the caller."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_metrics_are_logged_async_and_flushed_before_the_run_ends(workdir, monkeypatch):
    """train/* metrics go onto the tracker's queue (no wait on the hot path) and are all in the
    store once the run has ended (tracking.finish flushes before set_terminated). The writer is
    held back until the 50 steps are logged, so nothing here depends on timing."""
    import threading

    import mlflow

    from alignbench.tracking import mlflow_runs as tracking

    gate = threading.Event()
    real_write = tracking.MlflowTracker._write

    def gated_write(self, **items):
        gate.wait()
        real_write(self, **items)

    monkeypatch.setattr(tracking.MlflowTracker, "_write", gated_write)
    with tracking.tracked_run("async-check", async_logging=True) as tracker:
        for step in range(1, 51):
            tracker.log_metrics({"train/loss": 1.0 / step, "train/lr": 1e-3}, step)
        run_id = tracker.run_id
        assert mlflow.MlflowClient().get_metric_history(run_id, "train/loss") == []  # queued, not written
        gate.set()
    assert tracker.pending == 0
    history = mlflow.MlflowClient().get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 51))
    assert mlflow.get_run(run_id).info.status == "FINISHED"


def test_a_write_error_in_the_background_reaches_the_caller(workdir, monkeypatch):
    from alignbench.tracking import mlflow_runs as tracking

    def failing_write(self, **items):
        raise RuntimeError("store unavailable")

    with pytest.raises(RuntimeError, match="store unavailable"):
        with tracking.tracked_run("async-error", async_logging=True) as tracker:
            monkeypatch.setattr(tracking.MlflowTracker, "_write", failing_write)
            tracker.log_metrics({"train/loss": 1.0}, 1)
            tracker.flush()


# --- The MLflow UI's experiment tags ----------------------------------------------------------------


def test_experiments_open_on_their_runs_in_the_mlflow_ui(workdir):
    """MLflow 3's UI opens an experiment on the page its kind names (without one, possibly the GenAI
    traces page): alignbench's experiments are "custom_model_development", also one that existed
    before without the tag; a user's own machine-learning kind is kept, a GenAI kind is not."""
    import json

    from mlflow import MlflowClient

    from alignbench.tracking import mlflow_runs as tracking
    from alignbench.tracking import store

    client = MlflowClient()
    with tracking.tracked_run("fresh", async_logging=False):
        pass
    old = client.create_experiment("made-before")  # as an older alignbench (or a user) left it
    genai = client.create_experiment("genai", tags={store.KIND_TAG: "genai_development"})
    mine = client.create_experiment("mine", tags={store.KIND_TAG: "finetuning", store.VIEW_TAG: "{}"})
    for name in ("made-before", "genai", "mine"):
        tracking.create_run(name, "r", {})
    kinds = {e.name: e.tags.get(store.KIND_TAG) for e in client.search_experiments()}
    assert kinds == {"Default": None, "fresh": "custom_model_development", "made-before": "custom_model_development",
                     "genai": "custom_model_development", "mine": "finetuning"}
    assert client.get_experiment(old).tags[store.PRIMARY_METRIC_TAG] == "eval/win_rate"
    assert client.get_experiment(mine).tags[store.VIEW_TAG] == "{}"  # the user's view is theirs
    view = json.loads(client.get_experiment(genai).tags[store.VIEW_TAG])
    columns = json.loads(view["state"])["selectedColumns"]
    assert view["name"] and isinstance(view["createdAt"], int)
    assert columns[:4] == ["metrics.`eval/win_rate`", "metrics.`eval/win_rate_ci_low`",
                           "metrics.`eval/win_rate_ci_high`", "metrics.`eval/kl`"]
    assert "tags.`method`" in columns
    state = json.loads(view["state"])  # headers whole (not "eval/win_rate_c" twice); runs grouped by method
    assert state["columnWidths"]["metrics.`eval/win_rate_ci_high`"] >= 8 * len("eval/win_rate_ci_high")
    assert state["columnOrder"][3:] == columns and state["groupBy"]["groupByKeys"][0]["groupByData"] == "method"


# --- Stale train runs --------------------------------------------------------------------------------


def test_a_train_run_killed_by_sigkill_is_marked_killed_when_the_store_is_opened(workdir):
    """`alignbench train` killed with SIGKILL leaves its run RUNNING; the next time alignbench opens
    the store the run is ended KILLED with the reason. While its process lives it is left alone,
    and so is a RUNNING run of another host."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    from alignbench.tracking import mlflow_runs as tracking
    from alignbench.tracking import store
    from helpers import FAST, cli_env

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)  # a plain client: opening the store through alignbench would reap
    # Create the store's tables before the child starts: two processes migrating one new SQLite file
    # at once can fail in either of them.
    client.search_experiments()
    proc = subprocess.Popen([sys.executable, "-m", "alignbench.cli", "train", *FAST, "fault.sleep_per_step=60"],
                            cwd=workdir, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        runs = []
        while not runs:
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")[-3000:]
            assert time.time() < deadline, "no RUNNING train run after 120 s"
            time.sleep(0.3)
            try:
                runs = client.search_runs([client.get_experiment_by_name("alignbench").experiment_id],
                                          "attributes.status = 'RUNNING'")
            except Exception:  # the store or the experiment is not there yet
                runs = []
        (run,) = runs
        tags = run.data.tags
        assert (tags["alignbench.role"], tags["alignbench.host"], tags["alignbench.pid"]) == (
            "train", store.HOST, str(proc.pid))
        assert store.reap_stale_train_runs(client) == 0  # alive: left alone
        elsewhere = client.create_run(run.info.experiment_id, tags={
            **{k: tags[k] for k in ("alignbench.role", "alignbench.pid", "alignbench.process_start")},
            "alignbench.host": "another-host"}).info.run_id
    finally:
        if proc.poll() is None:  # an exited child has nothing to kill, and its failure is the one to show
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # nothing ended it
    tracking.set_uri(uri)  # alignbench opens the store
    killed = client.get_run(run.info.run_id)
    assert killed.info.status == "KILLED" and killed.info.end_time is not None
    assert killed.data.tags["failure_reason"].startswith(f"stale: left RUNNING by process {proc.pid}")
    assert client.get_run(elsewhere).info.status == "RUNNING"  # another host's run: not ours to judge


# --- Round trips of a tracked run -----------------------------------------------------------------


def test_a_short_run_writes_its_params_tags_and_metrics_in_one_batch(workdir, monkeypatch):
    """Everything a short run logs asynchronously reaches the store in one `log_batch` round trip,
    at its end (`MlflowTracker.WRITE_INTERVAL`), with a tag set twice keeping its last value."""
    import mlflow

    from alignbench.tracking import mlflow_runs as tracking

    calls = []
    real = mlflow.MlflowClient.log_batch
    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", lambda self, *a, **kw: calls.append(kw) or real(self, *a, **kw))
    with tracking.tracked_run("one-batch", tags={"method": "dpo"}) as tracker:
        tracker.log_params({f"p{i}": i for i in range(150)})  # more than one batch's 100 params
        tracker.set_tags({"state": "running"})
        for step in range(1, 21):
            tracker.log_metrics({"train/loss": 1.0 / step}, step)
        tracker.set_tags({"state": "done"})
        run_id = tracker.run_id
    assert len(calls) == 2 and [len(c["params"]) for c in calls] == [100, 50]
    run = mlflow.MlflowClient().get_run(run_id)
    assert len(run.data.params) == 150 and run.data.tags["state"] == "done" and run.info.status == "FINISHED"
    assert len(mlflow.MlflowClient().get_metric_history(run_id, "train/loss")) == 20


KILLED_AFTER_THE_RUN = """
import os, signal, sys
from alignbench.tracking import mlflow_runs as tracking
with tracking.tracked_run("killed-after", tags={"method": "dpo"}) as tracker:
    tracker.log_params({"method.beta": 0.1})
    tracker.set_tags({"optuna.trial_state": "COMPLETE"})
    for step in range(1, 6):
        tracker.log_metrics({"train/loss": 1.0 / step}, step)
    tracker.log_metrics({"eval/win_rate": 0.6}, 5)
    tracker.log_files(documents={"config.yaml": {"method": {"beta": 0.1}}},
                      tables={"eval_samples.json": [{"prompt": "p", "reward": 1.5}]})
    with tracker.artifact_dir("policy") as out:  # as save_policy writes it
        (out / "model.safetensors").write_bytes(b"weights")
print(tracker.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the trial is over: nothing after this point runs
"""


def test_no_record_is_lost_when_the_process_is_killed_after_the_run_ends(workdir):
    """The writer is closed (everything written) before the run is marked ended: a process
    SIGKILLed right after its tracked block leaves every param, tag, metric and artifact in the store."""
    import json
    import signal
    import subprocess
    import sys

    import mlflow

    proc = subprocess.run([sys.executable, "-c", KILLED_AFTER_THE_RUN], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = mlflow.MlflowClient().get_run(proc.stdout.split()[-1])
    assert run.info.status == "FINISHED"
    assert run.data.params == {"method.beta": "0.1"} and run.data.tags["optuna.trial_state"] == "COMPLETE"
    assert run.data.metrics == {"train/loss": 0.2, "eval/win_rate": 0.6}
    assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")) == 5
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [{"path": "eval_samples.json", "type": "table"}]
    files = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(workdir / "got")))
    assert (files / "config.yaml").read_text() == "method:\n  beta: 0.1\n"
    assert json.loads((files / "eval_samples.json").read_text()) == {"columns": ["prompt", "reward"], "data": [["p", 1.5]]}
    assert (files / "policy" / "model.safetensors").read_bytes() == b"weights"


def test_artifacts_of_a_local_store_are_written_in_place(workdir, monkeypatch):
    """On a local artifact store the files are written once, into the run's artifact directory:
    no upload (`log_artifacts` copies) and no read of the run to find where its artifacts go."""
    import mlflow

    from alignbench.tracking import mlflow_runs as tracking

    calls = []
    for name in ("log_artifacts", "get_run"):
        real = getattr(mlflow.MlflowClient, name)
        monkeypatch.setattr(mlflow.MlflowClient, name, lambda self, *a, _n=name, _r=real, **kw: calls.append(_n) or _r(self, *a, **kw))
    with tracking.tracked_run("in-place") as tracker:
        tracker.log_files(documents={"config.yaml": {"a": 1}}, tables={"eval_samples.json": [{"x": 1}]})
        with tracker.artifact_dir("policy") as out:
            (out / "model.safetensors").write_bytes(b"w")
    assert calls == []
    assert sorted(f.path for f in mlflow.MlflowClient().list_artifacts(tracker.run_id)) == ["config.yaml", "eval_samples.json", "policy"]
    assert [f.path for f in mlflow.MlflowClient().list_artifacts(tracker.run_id, "policy")] == ["policy/model.safetensors"]


def test_artifacts_of_a_remote_store_are_uploaded_once_the_block_ends(workdir, monkeypatch):
    """Where artifacts are not on this machine (an MLflow server, S3) the files go to a temporary
    directory uploaded in one `log_artifacts` call; nothing is uploaded when the writing fails."""
    import mlflow

    from alignbench.tracking import artifacts
    from alignbench.tracking import mlflow_runs as tracking

    assert artifacts.local_dir("file:///tmp/a/artifacts") == Path("/tmp/a/artifacts")
    assert artifacts.local_dir("/tmp/a/artifacts") == Path("/tmp/a/artifacts")
    assert artifacts.local_dir("mlflow-artifacts:/1/abc/artifacts") is None
    assert artifacts.local_dir("s3://bucket/1/abc/artifacts") is None
    monkeypatch.setattr(artifacts, "local_dir", lambda uri: None)  # this store's artifacts, as if remote
    uploads = []
    real = mlflow.MlflowClient.log_artifacts
    monkeypatch.setattr(mlflow.MlflowClient, "log_artifacts", lambda self, *a: uploads.append(a[2:]) or real(self, *a))
    with tracking.tracked_run("remote") as tracker:
        with pytest.raises(OSError):
            with tracker.artifact_dir("broken"):
                raise OSError("disk full")
        with tracker.artifact_dir("policy") as out:
            (out / "model.safetensors").write_bytes(b"w")
    assert uploads == [("policy",)]
    assert [f.path for f in mlflow.MlflowClient().list_artifacts(tracker.run_id)] == ["policy"]


def test_a_process_looks_up_an_experiment_once_per_store(workdir, monkeypatch):
    """A sweep worker's trials after its first skip the experiment lookup; the same relative URI in
    another directory is another store, whose runs still land in the experiment they name."""
    import mlflow

    from alignbench.tracking import mlflow_runs as tracking

    RELATIVE = "sqlite:///runs.db"  # a file in the working directory, whichever it is
    lookups = []
    real = mlflow.MlflowClient.get_experiment_by_name
    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name",
                        lambda self, name: lookups.append(name) or real(self, name))
    run_ids = []
    for _ in range(3):
        with tracking.tracked_run("cached", uri=RELATIVE) as tracker:
            run_ids.append(tracker.run_id)
    assert lookups.count("cached") == 1
    assert {mlflow.get_run(r).info.experiment_id for r in run_ids} == {real(mlflow.MlflowClient(), "cached").experiment_id}

    (workdir / "elsewhere").mkdir()
    monkeypatch.chdir(workdir / "elsewhere")  # the same URI, now another file
    with tracking.tracked_run("decoy", uri=RELATIVE):  # takes the id "cached" has in the first store
        pass
    with tracking.tracked_run("cached", uri=RELATIVE) as tracker:
        pass
    client = mlflow.MlflowClient()
    assert client.get_experiment(client.get_run(tracker.run_id).info.experiment_id).name == "cached"
    assert lookups.count("cached") == 2


def test_objects_made_by_opening_a_store_are_frozen_out_of_later_collections(workdir):
    """Opening a store makes ~150k long-lived objects; frozen then, the next trial's full collection
    (`settle_heap`) does not walk them."""
    import gc

    from alignbench.tracking import mlflow_runs as tracking

    frozen = gc.get_freeze_count()
    tracking.set_uri(f"sqlite:///{workdir / 'fresh.db'}")
    assert gc.get_freeze_count() > frozen
    assert gc.get_count()[0] < 1000  # just frozen: hardly anything young left to collect


def test_a_sqlite_store_is_written_ahead_with_normal_sync_unless_turned_off(workdir, monkeypatch):
    """A store alignbench opens is switched to the write-ahead log, and every new connection to it
    syncs NORMAL (a commit waits for no disk flush); a run's record is all there. With
    ALIGNBENCH_SQLITE_WAL=0 a new store keeps SQLite's defaults (rollback journal, FULL sync)."""
    import sqlalchemy

    from alignbench.tracking import mlflow_runs as tracking

    def modes(db):
        with sqlalchemy.create_engine(f"sqlite:///{db}").connect() as conn:
            return (conn.exec_driver_sql("PRAGMA journal_mode").scalar(),
                    conn.exec_driver_sql("PRAGMA synchronous").scalar())

    with tracking.tracked_run("wal", uri=f"sqlite:///{workdir / 'a.db'}", tags={"method": "dpo"}) as tracker:
        tracker.log_params({"method.beta": 0.1})
    assert modes(workdir / "a.db") == ("wal", 1)  # 1: NORMAL
    run = tracking.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'a.db'}").get_run(tracker.run_id)
    assert run.data.params == {"method.beta": "0.1"} and run.info.status == "FINISHED"
    monkeypatch.setenv("ALIGNBENCH_SQLITE_WAL", "0")
    tracking.create_run("plain", None, {"method": "dpo"}, uri=f"sqlite:///{workdir / 'b.db'}")
    assert modes(workdir / "b.db") == ("delete", 2)  # 2: FULL, SQLite's default


def test_a_new_store_beside_another_stores_stale_wal_and_shm_files_is_one_line(tmp_path):
    """mlflow.db deleted while its -wal/-shm stay, and a new store made there: SQLite replays the stale
    log onto the new file, which then holds the old database's tables. Each command ends with one line
    naming the files (before: a sqlite3.OperationalError traceback, or runs written into the wrong store)."""
    import shutil
    import sqlite3

    from alignbench.tracking import mlflow_runs as tracking
    from helpers import run_cli

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    holder = sqlite3.connect(old / "mlflow.db")  # an old database whose log is not yet checkpointed
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.execute("CREATE TABLE samples (x)")
    holder.executemany("INSERT INTO samples VALUES (?)", [(i,) for i in range(2000)])
    holder.commit()
    uri = f"sqlite:///{new / 'mlflow.db'}"
    tracking.create_run("first", None, {"method": "dpo"}, uri=uri)
    for suffix in ("-wal", "-shm"):  # the old database's files, beside the new store
        shutil.copy(old / f"mlflow.db{suffix}", new / f"mlflow.db{suffix}")
    holder.close()
    for command in ("train", "report"):
        out = run_cli(command, cwd=new, cache=tmp_path / "cache", timeout=240)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (command, out.stderr[-2000:])
        assert [ln for ln in out.stderr.splitlines() if ln.startswith("alignbench: error:")] == [
            f"alignbench: error: tracking.uri={uri}: {new / 'mlflow.db'} is not a usable MLflow store (SQLite "
            "tables, but not MLflow's: samples; a stale mlflow.db-wal replayed onto a new file looks like this); "
            "move it aside, with any mlflow.db-wal and mlflow.db-shm beside it, or set tracking.uri"], command
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_a_store_that_is_not_sqlite_ends_each_command_with_one_line_at_once(tmp_path):
    """An overwritten mlflow.db: train, sweep, report and ui exit 2 with one line naming the file and
    what to move aside, before MLflow's engine retries (about 100 s of them) and before any training."""
    from helpers import run_cli

    junk = bytes(range(256)) * 20  # 5,120 bytes, no SQLite header
    (tmp_path / "mlflow.db").write_bytes(junk)
    for command in ("train", "sweep", "report", "ui"):
        out = run_cli(command, cwd=tmp_path, cache=tmp_path / "cache", timeout=240)
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith("alignbench: error:")]
        assert out.returncode == 2, (command, out.stderr[-2000:])
        assert errors == [f"alignbench: error: tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}: {tmp_path / 'mlflow.db'} "
                          "is not a usable MLflow store (file is not a database); move it aside, with any "
                          "mlflow.db-wal and mlflow.db-shm beside it, or set tracking.uri"], command
        assert "Operation will be retried" not in out.stderr, command
    assert (tmp_path / "mlflow.db").read_bytes() == junk  # nothing written over it
    assert not (tmp_path / "cache").exists()  # no SFT model trained before the store was checked
    assert not (tmp_path / "sweeps.journal").exists()  # nor a sweep's journal written
