"""MLflow at the edge: one run per training, nested under a sweep's parent run.

A run's status tells the truth: FINISHED only when training and evaluation completed,
FAILED with the reason as a tag when it raised, KILLED when interrupted (Ctrl-C, SIGTERM); an
exception may name another ending (a pruned sweep trial: FINISHED, its reason in `pruned_reason`).
Metrics are logged asynchronously in batches (off the training hot path) and flushed
before the run is terminated.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import queue
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.time import get_current_time_millis

import alignbench
from alignbench.tracking import artifacts, store

log = logging.getLogger(__name__)
MAX_PARAM_LEN = 6000


def set_uri(uri: str | None) -> None:
    """None keeps MLflow's own default (sqlite:///mlflow.db in the working directory). The first time
    this process opens a store, `train` runs left RUNNING by a dead process are ended KILLED."""
    if uri:
        mlflow.set_tracking_uri(uri)
    current = mlflow.get_tracking_uri()
    store.create_sqlite_store_once(current)
    key = store.sqlite_path(current) or current
    if key not in _OPENED_STORES:
        _OPENED_STORES.add(key)
        try:
            store.reap_stale_train_runs(MlflowClient(tracking_uri=current))
        except mlflow.exceptions.MlflowException as exc:  # a store that cannot be searched still takes runs
            log.warning("could not look for stale runs in %s: %s", current, exc)
        # Opening a store leaves ~150k long-lived objects (SQLAlchemy's mappers, MLflow's modules);
        # frozen now, the next full collection (each trial's `settle_heap`) skips them instead of
        # walking them once more (~0.25 s on the first trial of a process).
        gc.freeze()


_OPENED_STORES: set = set()


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class MlflowTracker:
    """Logs into one MLflow run by id (no global active-run state, so nested runs are explicit).

    With `async_logging`, params, tags and metrics go onto a queue that one background thread
    gathers for `WRITE_INTERVAL` seconds and then writes together, params, tags and metrics in
    one synchronous `log_batch`: a short run's whole record is one round trip, at its end (when
    `flush` or `close` asks), and the writer does no store work while the run trains. `flush`
    waits for the queue; `tracked_run` closes the tracker (everything written) before it marks
    the run ended. Not MLflow's own async queue: its writer polls with a 1-second timeout, so
    shutting it down at every run's end cost ~1 s per trial (most of a smoke trial).
    """

    _STOP = object()
    WRITE_INTERVAL = 5.0  # seconds: a long run's metrics still reach the store (and the UI) as it goes

    def __init__(self, client: MlflowClient, run_id: str, async_logging: bool = True, artifact_uri: str | None = None):
        self.client, self.run_id, self.async_logging = client, run_id, async_logging
        self.artifact_uri = artifact_uri  # known when the run was created or reopened here; else read when needed
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # ---- the background writer
    def _write(self, params: list = (), tags: list = (), metrics: list = ()) -> None:
        """Params, tags and metrics in as few `log_batch` calls as MLflow's limits allow (100 params,
        100 tags, 1000 entities a call); a key logged twice keeps its last value."""
        params, tags = list({p.key: p for p in params}.values()), list({t.key: t for t in tags}.values())
        metrics = list(metrics)
        while params or tags or metrics:
            p, t = params[:100], tags[:100]
            params, tags = params[100:], tags[100:]
            m, metrics = metrics[:1000 - len(p) - len(t)], metrics[1000 - len(p) - len(t):]
            self.client.log_batch(self.run_id, metrics=m, params=p, tags=t, synchronous=True)

    def _worker(self) -> None:
        pending: dict = {"params": [], "tags": [], "metrics": []}
        deadline = None  # when the gathered items are written, WRITE_INTERVAL after the first of them
        while True:
            try:
                item = self._queue.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None  # the interval is over: write what was gathered
            if isinstance(item, tuple):
                pending[item[0]].extend(item[1])
                deadline = deadline or time.monotonic() + self.WRITE_INTERVAL
                continue
            self._safe_write(pending)
            deadline = None
            if item is self._STOP:
                return
            if isinstance(item, threading.Event):  # a flush marker: all before it is written
                item.set()

    def _safe_write(self, pending: dict) -> None:
        items = {kind: values[:] for kind, values in pending.items()}
        for values in pending.values():
            values.clear()
        if self._error is not None or not any(items.values()):
            return
        try:
            self._write(**items)
        except BaseException as exc:  # reported by the next flush, on the caller's thread
            self._error = exc

    def _log(self, kind: str, items: list, synchronous: bool | None) -> None:
        sync = (not self.async_logging) if synchronous is None else synchronous
        if sync:
            self.flush()  # keep the order of everything logged before
            self._write(**{kind: items})
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
        """Write artifacts in one go: `documents` {name.yaml|name.json: object}, and `tables`
        {name.json: list of row dicts} in `MlflowClient.log_table`'s format, tagged
        `mlflow.loggedArtifacts` so the MLflow UI shows them as tables. Not log_dict + log_table,
        which reads the whole run back."""
        documents, tables = documents or {}, tables or {}
        if tables:  # queued first: written with the rest while the files are (`artifact_dir`)
            self.set_tags({"mlflow.loggedArtifacts": json.dumps([{"path": n, "type": "table"} for n in tables])})
        with self.artifact_dir() as out:
            artifacts.write_files(out, documents, tables)

    @contextlib.contextmanager
    def artifact_dir(self, artifact_path: str = ""):
        """A directory whose files are the run's artifacts under `artifact_path` once the block ends:
        the run's own artifact directory on a local store (`artifacts`), else a temporary one
        uploaded at the end of the block (nothing is uploaded when the block raises). The writer
        writes what is queued meanwhile: a short run's record and its artifacts are written together."""
        if self._thread is not None:
            self._queue.put(threading.Event())  # a flush marker nobody waits for
        if self.artifact_uri is None:
            self.artifact_uri = self.client.get_run(self.run_id).info.artifact_uri
        local = artifacts.local_dir(self.artifact_uri)
        if local is not None:
            out = local / artifact_path
            out.mkdir(parents=True, exist_ok=True)
            yield out
            return
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
            self.client.log_artifacts(self.run_id, tmp, artifact_path or None)

    def log_dir(self, local_dir, artifact_path: str) -> None:
        """Upload a directory as `artifact_path/` (a saved policy, a checkpoint), after everything queued before it."""
        self.flush()
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def list_artifacts(self, path: str) -> list[str]:
        """The artifact paths directly under `path` of this run ([] if none)."""
        return [f.path for f in self.client.list_artifacts(self.run_id, path)]

    def download_artifacts(self, path: str, dst: str) -> str:
        import os

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bar in a run's log
        return self.client.download_artifacts(self.run_id, path, dst)

    def delete_artifacts(self, path: str) -> bool:
        return delete_artifacts(self.run_id, path)


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

    `run_id` reopens an existing run (a resumed sweep's parent) instead of creating one. A run
    without a parent or a role is a `train` run (`alignbench.role=train`); every run records the
    process that writes it (`store.process_tags`), so a run left RUNNING by a killed process is
    ended KILLED the next time alignbench opens the store.
    """
    set_uri(uri)
    client = MlflowClient()
    tags = dict(tags or {}) | ({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})
    if not parent_run_id and "alignbench.role" not in tags:
        tags["alignbench.role"] = "train"
    tags |= store.process_tags()
    if run_id:
        client.update_run(run_id, status="RUNNING")
        run = client.get_run(run_id)
        if "failure_reason" in run.data.tags:
            client.delete_tag(run_id, "failure_reason")
        set_run_tags(run_id, standard_tags(tags))
    else:
        run = new_run(client, experiment, run_name, tags)
    tracker = MlflowTracker(client, run.info.run_id, async_logging, run.info.artifact_uri)
    try:
        yield tracker
    except (KeyboardInterrupt, SystemExit) as exc:
        finish(tracker, "KILLED", f"interrupted: {type(exc).__name__}")
        raise
    except BaseException as exc:
        # An exception may say how the run ended (a sweep's pruned trials: FINISHED + `pruned_reason`).
        status = getattr(exc, "alignbench_status", "FAILED")
        finish(tracker, status, f"{type(exc).__name__}: {exc}", getattr(exc, "alignbench_reason_tag", "failure_reason"))
        raise
    else:
        finish(tracker, "FINISHED")


def finish(tracker: MlflowTracker, status: str, reason: str | None = None, reason_tag: str = "failure_reason") -> None:
    try:
        if reason:
            tracker.set_tags({reason_tag: reason[:5000]})
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
    return new_run(MlflowClient(), experiment, run_name, tags).info.run_id


def new_run(client: MlflowClient, experiment: str, run_name: str | None, tags: dict):
    tags = {k: str(v) for k, v in standard_tags(tags).items()}  # the REST store (http:// URI) takes strings only
    try:
        return client.create_run(store.experiment_id(client, experiment), run_name=run_name, tags=tags)
    except mlflow.exceptions.MlflowException:
        if not store.forget_experiment_id(client, experiment):
            raise
        return client.create_run(store.experiment_id(client, experiment), run_name=run_name, tags=tags)


def experiment_links(base: str, uri: str | None = None) -> list[tuple[str, str]]:
    """(experiment, url) of each experiment with alignbench runs, its runs table opened on the saved
    view `alignbench` in the UI at `base` (the experiments get the UI's tags on the way): the latest
    sweep's first (the experiment with a sweep's parent run started last), then the others, latest first."""
    set_uri(uri)
    client = MlflowClient()

    def latest(exp, role_filter: str = "") -> int:
        runs = client.search_runs([exp.experiment_id], role_filter, max_results=1, order_by=["attributes.start_time DESC"])
        return (runs[0].info.start_time or 0) if runs else -1

    found = store.alignbench_experiments(client)
    order = sorted(found, key=lambda e: (latest(e, "tags.`alignbench.role` = 'sweep'"), latest(e)), reverse=True)
    return [(e.name, store.view_url(base, e.experiment_id)) for e in order]


def delete_run(run_id: str, uri: str | None = None) -> None:
    set_uri(uri)
    MlflowClient().delete_run(run_id)


def set_run_tags(run_id: str, tags: dict, uri: str | None = None) -> None:
    set_uri(uri)
    MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


def open_tracker(run_id: str, uri: str | None = None) -> MlflowTracker:
    """A tracker on an existing run, for reading or pruning its artifacts (nothing is reopened)."""
    set_uri(uri)
    return MlflowTracker(MlflowClient(), run_id, async_logging=False)


def delete_artifacts(run_id: str, path: str, uri: str | None = None) -> bool:
    """Delete `path` (a file or folder) from a run's artifacts; False, with a warning, where the
    artifact store cannot delete (some remote stores)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    set_uri(uri)
    try:
        get_artifact_repository(MlflowClient().get_run(run_id).info.artifact_uri).delete_artifacts(path)
    except (NotImplementedError, mlflow.exceptions.MlflowException, OSError) as exc:
        log.warning("run %s: could not delete artifacts %s (%s)", run_id, path, exc)
        return False
    return True


def resume_problem(run_id: str, uri: str | None = None) -> str | None:
    """Why `resume=<run_id>` cannot continue that run (no such run, already FINISHED), or None."""
    set_uri(uri)
    try:
        run = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return f"resume={run_id}: no such MLflow run in {mlflow.get_tracking_uri()}"
    if run.info.status == "FINISHED":
        return f"resume={run_id}: the run is FINISHED; nothing to resume"
    return None
