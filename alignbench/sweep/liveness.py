"""Liveness of a sweep's RUNNING trials. Each trial records its worker (host, pid, process start
time); a trial whose process is gone on this host is stale, and RDB storages also use Optuna's
heartbeat for workers on other machines. Stale trials are reaped (Optuna FAIL, MLflow KILLED)
before counting, and so are MLflow runs left RUNNING after their trial ended (orphaned)."""

from __future__ import annotations

import datetime
import logging
import os
import warnings

import optuna
from optuna.trial import TrialState

from alignbench.sweep.plan import Plan
from alignbench.sweep.storage import lock_path
from alignbench.tracking.store import HOST, process_start  # one notion of "this process" for runs and trials

log = logging.getLogger(__name__)

ACTIVE: set = set()  # (study name, trial number) run by this process right now
ATTEMPT_TAG = "optuna.attempt"  # an MLflow run's Optuna trial now (optuna.trial_number stays its first one's)
ORPHAN_AFTER_SECONDS = 60  # another host's worker ends a trial's run right after telling Optuna
UNTAGGED_STALE_SECONDS = 120  # a trial without a worker record, on storage without a local lock


def worker_tag() -> dict:
    """This process as a trial's `alignbench.worker` user attr."""
    return {"host": HOST, "pid": os.getpid(), "start": process_start(os.getpid())}


def is_stale(plan: Plan, study, trial) -> bool:
    """A RUNNING trial whose worker process is gone (checkable only on this host; RDB: heartbeat)."""
    w = trial.user_attrs.get("alignbench.worker")
    if w is None:
        # Attributes are set right after ask, under the lock: none means killed in between.
        age = (datetime.datetime.now() - trial.datetime_start).total_seconds() if trial.datetime_start else 1e9
        return lock_path(plan) is not None or age > UNTAGGED_STALE_SECONDS
    if w.get("host") != HOST:
        return False  # another machine's worker: Optuna's heartbeat (RDB storage) judges it
    if w.get("pid") == os.getpid() and w.get("start") == process_start(os.getpid()):
        return (study.study_name, trial.number) not in ACTIVE
    return bool(_worker_gone(w))


def _worker_gone(w: dict | None) -> bool | None:
    """Whether the worker process recorded on a trial is gone: True/False on this host, None
    where it cannot be told (another host, or no record)."""
    if w is None or w.get("host") != HOST:
        return None
    start = process_start(int(w["pid"]))
    return start is None or (w.get("start") is not None and start != w["start"])


def run_orphaned(trial) -> bool:
    """An MLflow run still RUNNING although its trial has ended: orphaned once its worker is gone
    (this host) or, where that cannot be told, a minute after the trial ended. A live worker is
    between telling Optuna and ending the run: its run is left alone."""
    gone = _worker_gone(trial.user_attrs.get("alignbench.worker"))
    if gone is not None:
        return gone
    end = trial.datetime_complete
    return end is None or (datetime.datetime.now() - end).total_seconds() > ORPHAN_AFTER_SECONDS


def kill_trial_run(plan: Plan, study, trial, reason: str) -> None:
    """End the trial's MLflow run KILLED (tagged FAIL), found by id or, failing that, by its tags."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id is None:  # killed between creating the run and recording its id: find it by tags
        runs = plan.recorder.find_runs(plan.experiment, f"tags.`optuna.study` = '{study.study_name}' and "
                                                        f"tags.`{ATTEMPT_TAG}` = '{trial.number}'")
        run_id = runs[0].info.run_id if runs else None
    if run_id is not None:
        plan.recorder.set_tags(run_id, {"optuna.trial_state": "FAIL"})
        plan.recorder.mark_killed(run_id, reason)


def heartbeat_stale(plan: Plan):
    """Optuna's heartbeat_stale_trial_callback for RDB storage: kill the trial's MLflow run."""
    def callback(study, trial):
        kill_trial_run(plan, study, trial, "stale: no heartbeat from its worker (killed?)")
    return callback


def reap_stale(plan: Plan, study) -> int:
    """Trials left RUNNING by a dead process → Optuna FAIL (reason user attr) + MLflow KILLED;
    then orphaned MLflow runs are ended. Returns how many trials were failed."""
    with warnings.catch_warnings():  # fail_stale_trials is "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RDB heartbeat (no-op otherwise); its callback kills the MLflow run
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(plan, study, t):
            continue
        reason = "stale: left RUNNING by a process that is gone (killed?)"
        handle = optuna.Trial(study, t._trial_id)
        handle.set_user_attr("failure_reason", reason)
        handle.set_user_attr("failure_kind", "stale")
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        kill_trial_run(plan, study, t, reason)
        log.warning("%s: trial %d was left RUNNING by a dead process: marked FAIL (MLflow run KILLED); "
                    "it will be rerun", study.study_name, t.number)
        n += 1
    _end_orphaned_runs(plan, study)
    return n


def attempt_number(tags: dict) -> int:
    """The Optuna trial that runs (or last ran) an MLflow run: its attempt tag; the trial-number tag on
    runs recorded before the tag existed (they were never resumed under another number)."""
    return int(tags.get(ATTEMPT_TAG, tags.get("optuna.trial_number", -1)))


def _end_orphaned_runs(plan: Plan, study) -> None:
    """A run whose trial already ended but whose process died before ending the run."""
    runs = plan.recorder.find_runs(plan.experiment, f"tags.`optuna.study` = '{study.study_name}' and "
                                                    "attributes.status = 'RUNNING'")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for run in runs:
        t = trials.get(attempt_number(run.data.tags))
        if t is not None and t.state != TrialState.RUNNING and run_orphaned(t):
            plan.recorder.set_tags(run.info.run_id, {"optuna.trial_state": t.state.name})
            plan.recorder.mark_killed(run.info.run_id, "stale: its process died before ending the run")
