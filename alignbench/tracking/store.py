"""What alignbench keeps in an MLflow store besides its runs' own records.

- A SQLite store is created under a file lock (MLflow's own first use races between workers), and
  written in write-ahead-log mode with `synchronous=NORMAL` (`_write_ahead`): a commit then waits
  for no disk flush.
- Experiments are tagged for the MLflow 3 UI: `mlflow.experimentKind` (without it the UI may open
  an experiment on its GenAI traces page, which reads "0 traces", instead of the runs table), the
  primary metric, and a saved view `alignbench` (`mlflow.sharedViewState.alignbench`) whose runs
  table shows the columns a reader compares. Set when an experiment is created, and added to one
  that lacks them whenever alignbench opens it again.
- Liveness of `alignbench train` runs: each run records the process that writes it (host, pid,
  process start time) as tags; when alignbench opens a store, `train` runs left RUNNING by a
  process that is provably gone on this host (SIGKILL, a crash of the machine's power) are ended
  KILLED. Runs of other hosts, and of a process that still lives, are left alone. A sweep's trial
  runs are reaped by the sweep itself (`sweep.liveness`), which also fails their Optuna trials.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
from pathlib import Path

import mlflow
from mlflow.entities import ViewType
from mlflow.utils.time import get_current_time_millis
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

HOST = socket.gethostname()
KIND_TAG = "mlflow.experimentKind"
KIND = "custom_model_development"  # the UI's "machine learning" kind: the experiment opens on its runs
MACHINE_LEARNING_KINDS = {KIND, "finetuning", "regression", "classification", "forecasting", "automl"}
PRIMARY_METRIC_TAG = "mlflow.experiment.primaryMetric.name"
VIEW_KEY = "alignbench"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
# The runs table's columns that compare runs; a sweep adds the hyperparameters it searched.
COMPARE_METRICS = ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl", "eval/gold_reward")
COMPARE_TAGS = ("method", "alignbench.role", "optuna.trial_state")
PROCESS_TAGS = ("alignbench.host", "alignbench.pid", "alignbench.process_start")
RUN_NAME = "attributes.`Run Name`"  # the UI's runs-table columns before the selected ones: name, created, duration


# ---- the store itself

_READY_STORES: set = set()


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?")[0]).resolve()  # a relative URI means another file in another cwd


def create_sqlite_store_once(uri: str) -> None:
    """Create a SQLite tracking store under a file lock.

    MLflow creates its tables on first use without a lock, so workers started at the same
    instant in a fresh directory (by hand, or Hydra's joblib launcher) race and one fails with
    "table ... already exists". The first one here creates the store while the others wait.
    """
    db = sqlite_path(uri)
    if db is None or db in _READY_STORES:
        return
    import fcntl

    if os.environ.get("ALIGNBENCH_SQLITE_WAL", "1") != "0":
        _WAL_STORES.add(str(db))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _check_sqlite_file(uri, db)
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates the tables if missing
        except DBAPIError as exc:
            raise _unusable(uri, db, exc.orig) from None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _READY_STORES.add(db)


def check_store_file(uri: str | None) -> None:
    """Raise `StoreError` if `uri` (None: MLflow's current one) is a SQLite file that SQLite cannot
    read; creates nothing (a sweep checks before it writes its journal)."""
    uri = uri or mlflow.get_tracking_uri()
    db = sqlite_path(uri)
    if db is not None:
        _check_sqlite_file(uri, db)


def _check_sqlite_file(uri: str, db: Path) -> None:
    """Fail at once on a file that SQLite cannot read (overwritten, truncated: MLflow would retry creating
    its engine for about 100 s before giving up), or one that holds another database's tables."""
    if not db.exists():
        return
    connection = sqlite3.connect(db, timeout=30)
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        if "locked" not in str(exc):  # busy beyond the timeout is not a broken file: MLflow waits its own way
            raise _unusable(uri, db, exc) from None
        return
    finally:
        connection.close()
    if tables and "experiments" not in tables:
        # Another database: most often a new mlflow.db beside the -wal of a deleted store, which SQLite
        # replays onto it. MLflow would add its tables to it (or fail on a cached engine): runs lost.
        raise _unusable(uri, db, f"SQLite tables, but not MLflow's: {', '.join(sorted(tables)[:3])}; "
                                 f"a stale {db.name}-wal replayed onto a new file looks like this")


def _unusable(uri: str, db: Path, why) -> "StoreError":
    return StoreError(f"tracking.uri={uri}: {db} is not a usable MLflow store ({why}); move it aside, "
                      f"with any {db.name}-wal and {db.name}-shm beside it, or set tracking.uri")


class StoreError(Exception):
    """A tracking store that cannot be opened: one line for the user, no traceback."""


_WAL_STORES: set = set()  # the SQLite files (resolved paths) whose connections `_write_ahead` sets up


@event.listens_for(Engine, "connect")
def _write_ahead(dbapi_connection, _record) -> None:
    """Each new connection to an alignbench SQLite store: write-ahead log, `synchronous=NORMAL`.

    With SQLite's default rollback journal every commit waits for 2-3 disk flushes, and a trial
    commits 3 times (run created, its record, run ended): 30-90 ms a trial on a VM's disk, more
    than MLflow's own CPU time. In WAL mode with NORMAL sync a commit writes the log and flushes
    only at checkpoints; a process killed at any point (kill -9) loses nothing committed, the
    store stays consistent on a power loss (the last commits may be lost then). The mode stays
    with the file; readers (`alignbench ui`) and writers no longer block each other. WAL needs
    every process on one machine: `ALIGNBENCH_SQLITE_WAL=0` keeps SQLite's defaults for a store
    on a network file system. Other SQLite databases (an Optuna study's) are left alone.
    """
    if not isinstance(dbapi_connection, sqlite3.Connection) or not _WAL_STORES:
        return
    files = {os.path.realpath(row[2]) for row in dbapi_connection.execute("PRAGMA database_list")
             if row[1] == "main" and row[2]}
    if not files & _WAL_STORES:
        return
    try:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # a no-op once the file is in WAL mode
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.OperationalError as exc:  # locked by another process switching it: it stays as it is
        log.warning("SQLite store %s: no write-ahead log (%s)", next(iter(files)), exc)


# ---- experiments


def column(kind: str, name: str) -> str:
    """The UI's key of a runs-table column: kind `metrics`, `params` or `tags`."""
    return f"{kind}.`{name}`"


def view_tag(params: list[str] | tuple = ()) -> str:
    """The saved view's tag value: the envelope MLflow's UI reads, its state the selected columns,
    each wide enough for its whole name (at the UI's 100 px, "eval/win_rate_ci_low" and
    "eval/win_rate_ci_high" both read "eval/win_rate_c"), and the runs grouped by their `method` tag:
    every trial and confirmation run shows without a click (a shared view cannot expand a parent
    run: MLflow drops `runsExpanded` from it), each group's row carrying its runs' maxima."""
    columns = ([column("metrics", m) for m in COMPARE_METRICS] + [column("params", p) for p in params]
               + [column("tags", t) for t in COMPARE_TAGS] + [column("tags", "mlflow.note.content")])
    widths = {c: max(100, 8 * len(c.split("`")[1]) + 40) for c in columns[:-1]}
    state = {"selectedColumns": columns, "searchFilter": "", "orderByKey": "attributes.start_time",
             "orderByAsc": False, "columnOrder": [RUN_NAME, "runDateAndNestInfo", "duration", *columns], "columnWidths": widths,
             "groupBy": {"groupByKeys": [{"mode": "tag", "groupByData": "method"}], "aggregateFunction": "max"},
             "groupsExpanded": {"tag.method": True}}  # the runs without a method tag (a sweep's parent), open
    now = get_current_time_millis()
    return json.dumps({"name": "alignbench: comparison columns", "createdAt": now, "updatedAt": now,
                       "state": json.dumps(state)})


def experiment_id(client: mlflow.MlflowClient, name: str) -> str:
    """The experiment's id, created with the MLflow UI's tags (`experiment_tags`), which an existing one gets
    too when it lacks them. Looked up once per store and process (`new_run` looks again when a run
    cannot be created in it: the experiment was deleted meanwhile)."""
    key = (_store_identity(client.tracking_uri), name)
    if key not in _EXPERIMENT_IDS:
        _EXPERIMENT_IDS[key] = _find_or_create_experiment(client, name)
    return _EXPERIMENT_IDS[key]


_EXPERIMENT_IDS: dict = {}  # (store, experiment name) -> id


def _store_identity(uri: str):
    """A SQLite store's file (absolute path and inode: a relative URI in another directory, or a
    file deleted and made again, is another store), else the URI."""
    db = sqlite_path(uri)
    if db is None:
        return uri
    try:
        return db, db.stat().st_ino
    except OSError:
        return db, None


def _find_or_create_experiment(client: mlflow.MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags=experiment_tags())
        except mlflow.exceptions.MlflowException:  # another worker created it first
            exp = client.get_experiment_by_name(name)
    tag_experiment(client, exp)
    return exp.experiment_id


def forget_experiment_id(client: mlflow.MlflowClient, name: str) -> bool:
    """Drop the remembered id of experiment `name` (True if one was remembered)."""
    return _EXPERIMENT_IDS.pop((_store_identity(client.tracking_uri), name), None) is not None


def experiment_tags() -> dict:
    return {KIND_TAG: KIND, PRIMARY_METRIC_TAG: "eval/win_rate", VIEW_TAG: view_tag()}


def tag_experiment(client, experiment) -> None:
    """Add the UI tags `experiment` lacks (a user's own machine-learning kind and view are kept)."""
    tags = experiment.tags or {}
    if tags.get(KIND_TAG) not in MACHINE_LEARNING_KINDS:
        client.set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND)
    for key, value in experiment_tags().items():
        if key != KIND_TAG and key not in tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)


def set_view(client, experiment_id: str, params: list[str]) -> None:
    """The saved view `alignbench` of an experiment, with the hyperparameters in `params` as columns."""
    client.set_experiment_tag(experiment_id, VIEW_TAG, view_tag(sorted(params)))


def view_path(experiment_id: str) -> str:
    """The UI's route to the experiment's runs table with the saved view's columns. MLflow 3.17's UI
    takes an experiment's kind from its own "GenAI / Model training" switch (default GenAI, kept in
    the browser), not from the tag: the route names the workflow too."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def view_url(base: str, experiment_id: str) -> str:
    return f"{base.rstrip('/')}/{view_path(experiment_id)}"


def alignbench_experiments(client) -> list:
    """The store's active experiments that hold alignbench runs, each given the UI tags it lacks
    (a store written before alignbench set them gets them here)."""
    found = []
    for exp in client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=50000):
        if client.search_runs([exp.experiment_id], "tags.`alignbench.version` LIKE '%'", max_results=1):
            tag_experiment(client, exp)
            found.append(exp)
    return found


# ---- liveness of train runs


def process_start(pid: int) -> float | None:
    """The process's start time (seconds, rounded as `sweep.liveness` records it), None if it is gone."""
    try:
        import psutil

        return round(psutil.Process(pid).create_time(), 2)
    except Exception:
        return None


def process_tags() -> dict:
    """This process as a run's tags (the run's writer)."""
    return {"alignbench.host": HOST, "alignbench.pid": os.getpid(),
            "alignbench.process_start": process_start(os.getpid())}


def writer_gone(tags: dict) -> bool:
    """Whether the process recorded in a run's tags is provably gone: on this host only, and only
    when the pid is free or now belongs to a process started at another time."""
    if tags.get("alignbench.host") != HOST or not str(tags.get("alignbench.pid", "")).isdigit():
        return False
    started, recorded = process_start(int(tags["alignbench.pid"])), tags.get("alignbench.process_start")
    if started is None:
        return True  # no such process
    return recorded not in (None, "None") and str(started) != recorded  # the pid was reused


def reap_stale_train_runs(client) -> int:
    """End KILLED (with a `failure_reason`) every `train` run of this store left RUNNING by a process
    of this host that is gone; returns how many."""
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=50000)]
    if not ids:
        return 0
    runs = client.search_runs(ids, f"tags.`alignbench.role` = 'train' and attributes.status = 'RUNNING' and "
                                   f"tags.`alignbench.host` = '{HOST}'", max_results=50000)
    n = 0
    for run in runs:
        if writer_gone(run.data.tags):
            client.set_tag(run.info.run_id, "failure_reason",
                           f"stale: left RUNNING by process {run.data.tags['alignbench.pid']} on {HOST}, "
                           "which is gone (killed?)")
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("MLflow run %s (%s) was left RUNNING by a process that is gone: marked KILLED",
                        run.info.run_id, run.info.run_name)
            n += 1
    return n
