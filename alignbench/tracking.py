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
import subprocess
import tempfile
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
    """Logs into one MLflow run by id (no global active-run state, so nested runs are explicit)."""

    def __init__(self, client: MlflowClient, run_id: str, async_logging: bool = True):
        self.client, self.run_id, self.async_logging = client, run_id, async_logging
        self._pending = []

    def _log_batch(self, synchronous: bool | None, **batch) -> None:
        """Asynchronous unless asked (or async logging is off); `flush` waits for all of it."""
        sync = (not self.async_logging) if synchronous is None else synchronous
        op = self.client.log_batch(self.run_id, synchronous=sync, **batch)
        if op is not None:
            self._pending.append(op)

    def log_params(self, params: dict, synchronous: bool | None = None) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for s in range(0, len(items), 100):  # MLflow's per-batch param limit
            self._log_batch(synchronous, params=items[s:s + 100])

    def set_tags(self, tags: dict, synchronous: bool | None = None) -> None:
        self._log_batch(synchronous, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict, step: int) -> None:
        now = get_current_time_millis()
        self._log_batch(None, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def flush(self) -> None:
        for op in self._pending:
            op.wait()
        self._pending.clear()

    def log_dict(self, obj, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        import pandas as pd

        self.client.log_table(self.run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, local_dir, artifact_path)


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
    run_tags = {k: str(v) for k, v in standard_tags(tags).items()}  # the REST store (http:// URI) takes strings only
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    if run_id:
        client.update_run(run_id, status="RUNNING")
        if "failure_reason" in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, "failure_reason")
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in run_tags.items()], synchronous=True)
    else:
        run_id = client.create_run(experiment_id(client, experiment), run_name=run_name, tags=run_tags).info.run_id
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
        tracker.flush()
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


def create_run(experiment: str, run_name: str, tags: dict, uri: str | None = None) -> str:
    set_uri(uri)
    client = MlflowClient()
    tags = {k: str(v) for k, v in standard_tags(tags).items()}
    return client.create_run(experiment_id(client, experiment), run_name=run_name, tags=tags).info.run_id


def delete_run(run_id: str, uri: str | None = None) -> None:
    set_uri(uri)
    MlflowClient().delete_run(run_id)


def set_run_tags(run_id: str, tags: dict, uri: str | None = None) -> None:
    set_uri(uri)
    MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


def log_json_artifact(tracker: MlflowTracker, obj, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(obj, indent=2, default=str))
        tracker.client.log_artifact(tracker.run_id, str(path))
