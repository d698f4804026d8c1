"""MLflow at the edge: one run per training, nested under a sweep's parent run.

A run's status tells the truth: FINISHED only when training and evaluation completed,
FAILED with the reason as a tag when it raised, KILLED when interrupted (Ctrl-C, SIGTERM).
Metrics are logged asynchronously in batches (off the training hot path) and flushed
before the run is terminated.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import queue
import subprocess
import tempfile
import threading
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.time import get_current_time_millis

import alignbench

log = logging.getLogger(__name__)
MAX_PARAM_LEN = 6000


def set_uri(uri: str | None) -> None:
    """None keeps MLflow's own default (sqlite:///mlflow.db in the working directory)."""
    if uri:
        mlflow.set_tracking_uri(uri)
    _create_sqlite_store_once(mlflow.get_tracking_uri())


_READY_STORES: set = set()


def _create_sqlite_store_once(uri: str) -> None:
    """Create a SQLite tracking store under a file lock.

    MLflow creates its tables on first use without a lock, so workers started at the same
    instant in a fresh directory (by hand, or Hydra's joblib launcher) race and one fails with
    "table ... already exists". The first one here creates the store while the others wait.
    """
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):].split("?")[0]).resolve()  # a relative URI means another file in another cwd
    if db in _READY_STORES:
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates the tables if missing
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _READY_STORES.add(db)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # another worker created it first
        return client.get_experiment_by_name(name).experiment_id


class MlflowTracker:
    """Logs into one MLflow run by id (no global active-run state, so nested runs are explicit).

    With `async_logging`, params, tags and metrics go onto a queue that one background thread
    writes with synchronous `log_batch` calls, coalescing queued metrics into batches; `flush`
    waits for the queue. Not MLflow's own async queue: its writer polls with a 1-second timeout,
    so shutting it down at every run's end cost ~1 s per trial (most of a smoke trial).
    """

    _STOP = object()

    def __init__(self, client: MlflowClient, run_id: str, async_logging: bool = True):
        self.client, self.run_id, self.async_logging = client, run_id, async_logging
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # ---- the background writer
    def _write(self, kind: str, items: list) -> None:
        if kind == "params":
            for s in range(0, len(items), 100):  # MLflow's per-batch param limit
                self.client.log_batch(self.run_id, params=items[s:s + 100], synchronous=True)
        elif kind == "tags":
            for s in range(0, len(items), 100):
                self.client.log_batch(self.run_id, tags=items[s:s + 100], synchronous=True)
        else:
            for s in range(0, len(items), 1000):  # the per-batch metric limit
                self.client.log_batch(self.run_id, metrics=items[s:s + 1000], synchronous=True)

    def _worker(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:  # take whatever else is queued: consecutive metrics become one batch
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            metrics: list = []
            for item in items:
                if isinstance(item, tuple) and item[0] == "metrics":
                    metrics.extend(item[1])
                    continue
                self._safe_write("metrics", metrics)
                metrics = []
                if item is self._STOP:
                    return
                if isinstance(item, threading.Event):  # a flush marker: all before it is written
                    item.set()
                else:
                    self._safe_write(*item)
            self._safe_write("metrics", metrics)

    def _safe_write(self, kind: str, items: list) -> None:
        if not items or self._error is not None:
            return
        try:
            self._write(kind, items)
        except BaseException as exc:  # reported by the next flush, on the caller's thread
            self._error = exc

    def _log(self, kind: str, items: list, synchronous: bool | None) -> None:
        sync = (not self.async_logging) if synchronous is None else synchronous
        if sync:
            self.flush()  # keep the order of everything logged before
            self._write(kind, items)
            return
        if self._thread is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._worker, name=f"mlflow-log-{self.run_id[:8]}", daemon=True)
            self._thread.start()
        self._queue.put((kind, items))

    @property
    def pending(self) -> int:
        """Items queued and not yet taken by the writer (0 when logging synchronously)."""
        return 0 if self._queue is None else self._queue.qsize()

    def flush(self) -> None:
        """Wait until everything queued is in the store; re-raise a write error from the background."""
        if self._thread is not None:
            done = threading.Event()
            self._queue.put(done)
            while not done.wait(0.5):
                if not self._thread.is_alive():
                    break
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        """Flush and stop the background writer."""
        try:
            self.flush()
        finally:
            if self._thread is not None:
                self._queue.put(self._STOP)
                self._thread.join()
                self._thread = self._queue = None

    # ---- what callers log
    def log_params(self, params: dict, synchronous: bool | None = None) -> None:
        self._log("params", [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()], synchronous)

    def set_tags(self, tags: dict, synchronous: bool | None = None) -> None:
        self._log("tags", [RunTag(k, str(v)) for k, v in tags.items()], synchronous)

    def log_metrics(self, metrics: dict, step: int) -> None:
        now = get_current_time_millis()
        self._log("metrics", [Metric(k, float(v), now, step) for k, v in metrics.items()], None)

    def log_files(self, documents: dict | None = None, tables: dict | None = None) -> None:
        """Write artifacts in one upload: `documents` {name.yaml|name.json: object}, and `tables`
        {name.json: list of row dicts} in `MlflowClient.log_table`'s format (pandas "split" JSON),
        tagged `mlflow.loggedArtifacts` so the MLflow UI shows them as tables. One
        `log_artifacts` call instead of log_dict + log_table, which reads the whole run back."""
        import pandas as pd
        import yaml

        documents, tables = documents or {}, tables or {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, obj in documents.items():
                text = (yaml.safe_dump(obj, sort_keys=False) if name.endswith((".yaml", ".yml"))
                        else json.dumps(obj, indent=2, default=str))
                (Path(tmp) / name).write_text(text)
            for name, rows in tables.items():
                pd.DataFrame(rows).to_json(Path(tmp) / name, orient="split", index=False, date_format="iso")
            self.client.log_artifacts(self.run_id, tmp)
        if tables:
            self.set_tags({"mlflow.loggedArtifacts": json.dumps([{"path": n, "type": "table"} for n in tables])})


def standard_tags(extra: dict | None = None) -> dict:
    tags = {"alignbench.version": alignbench.__version__}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags | (extra or {})


@contextlib.contextmanager
def tracked_run(experiment: str, run_name: str | None = None, parent_run_id: str | None = None,
                tags: dict | None = None, async_logging: bool = True, uri: str | None = None,
                run_id: str | None = None):
    """An MLflow run whose final status is the truth about how the block ended.

    `run_id` reopens an existing run (a resumed sweep's parent) instead of creating one.
    """
    set_uri(uri)
    client = MlflowClient()
    tags = dict(tags or {}) | ({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})
    if run_id:
        client.update_run(run_id, status="RUNNING")
        if "failure_reason" in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, "failure_reason")
        set_run_tags(run_id, standard_tags(tags))
    else:
        run_id = create_run(experiment, run_name, tags)
    tracker = MlflowTracker(client, run_id, async_logging)
    try:
        yield tracker
    except (KeyboardInterrupt, SystemExit) as exc:
        finish(tracker, "KILLED", f"interrupted: {type(exc).__name__}")
        raise
    except BaseException as exc:
        # An exception may say how the run ended (a sweep marks pruned trials KILLED + tag).
        status = getattr(exc, "alignbench_status", "FAILED")
        finish(tracker, status, f"{type(exc).__name__}: {exc}")
        raise
    else:
        finish(tracker, "FINISHED")


def finish(tracker: MlflowTracker, status: str, reason: str | None = None) -> None:
    try:
        if reason:
            tracker.set_tags({"failure_reason": reason[:5000]})
        tracker.close()
    finally:
        tracker.client.set_terminated(tracker.run_id, status)


def mark_killed(run_id: str, reason: str, uri: str | None = None) -> None:
    """End a run left RUNNING by a killed process."""
    set_uri(uri)
    client = MlflowClient()
    client.set_tag(run_id, "failure_reason", reason)
    client.set_terminated(run_id, "KILLED")


def search_runs(experiment: str, filter_string: str = "", uri: str | None = None) -> list:
    """Runs of `experiment` matching an MLflow filter string, oldest first ([] if no such experiment)."""
    set_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string, max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def create_run(experiment: str, run_name: str | None, tags: dict, uri: str | None = None) -> str:
    set_uri(uri)
    client = MlflowClient()
    tags = {k: str(v) for k, v in standard_tags(tags).items()}  # the REST store (http:// URI) takes strings only
    return client.create_run(experiment_id(client, experiment), run_name=run_name, tags=tags).info.run_id


def delete_run(run_id: str, uri: str | None = None) -> None:
    set_uri(uri)
    MlflowClient().delete_run(run_id)


def set_run_tags(run_id: str, tags: dict, uri: str | None = None) -> None:
    set_uri(uri)
    MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


