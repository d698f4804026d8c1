"""`alignbench sweep sweep=<name> [overrides]` → `run_sweep(cfg)`: Optuna sweeps across methods,
one study per method, every trial a nested MLflow run.

1. `plan.plan_sweep` — read `cfg.sweep` (a file of `sweeps/`), the search spaces
   (`conf/search_space/<method>.yaml`) and the user's command-line overrides; compose and
   validate every method's trial config. Any error is a one-line `ConfigError` before any trial.
2. `parent.open_parent_run` — the parent MLflow run of the sweep (experiment `sweep.experiment`,
   default `sweep-<name>`, tag `alignbench.role=sweep`) is found by tag and reopened, or created on
   the first invocation. It records the sweep as params (and tags): `sweep.name`, `sweep.methods`,
   `sweep.n_trials`, `sweep.objective`, `sweep.seed`, `sweep.pruner`, `sweep.study_names`, and
   `sweep.storage`, the resolved storage URL (`journal:///abs/path` or the RDB URL) from which the
   report reopens the studies.
3. `workers.run_method` — for each method, study `<experiment>/<method>` in that storage (default:
   the journal file `./sweeps.journal`, safe for several processes on one machine; an RDB URL such
   as `postgresql://...` for many machines). Trials left RUNNING by a dead process are failed
   (Optuna FAIL, MLflow KILLED) first (`liveness`). Then, until the method has `n_trials`
   COMPLETE+PRUNED trials in total (across invocations: re-running the same command resumes): ask a
   trial (seeded sampler) → compose its config (`method=<m>`, the sweep's overrides, the user's
   overrides, the sampled params as dotted keys) → `training.run.train` inside a child MLflow run,
   reporting `eval/win_rate` at each eval step to the median pruner → tell Optuna (`trials`).
4. `confirmation.run_confirmation` — once a method's search budget is complete, its selected trial
   (chosen on the validation prompts) is retrained on `sweep.confirm_seeds` fresh seeds and
   evaluated on the test prompts: trials of the study `<experiment>/<method>/confirm`, child runs
   tagged `alignbench.role=confirmation` (parent param `sweep.confirm_seeds`).
5. `progress.summarize` — a summary (best trial per method, by `selection`, and its confirmation)
   printed, returned and logged as `sweep_summary.json`. A method stopped by failures makes the
   sweep raise `SweepFailed` after the summary (the CLI exits 1).

Counting is race-free for several workers on one machine: asking for a trial happens under a
file lock next to the storage, after counting COMPLETE+PRUNED+RUNNING trials (`budget`). Without a
shared file system (an RDB URL), a worker that asked one trial too many (another worker took the
last slot in the meantime) discards it before training: it is told FAIL with user attr
`alignbench.discarded` and has no MLflow run. Liveness of RUNNING trials: the worker's host, pid
and process start time are a user attr; a trial whose process is gone on this host is stale. RDB
storages also use Optuna's heartbeat (`sweep.heartbeat_interval`) for workers on other machines.

Browse the studies with `optuna-dashboard sweeps.journal` (or the RDB URL) and the runs with
`mlflow ui`.
"""

from __future__ import annotations

import logging
import sys
import time

import optuna
from alignbench.sweep.budget import count
from alignbench.sweep.confirmation import confirmation_of
from alignbench.sweep.description import sweep_note
from alignbench.sweep.liveness import heartbeat_stale
from alignbench.sweep.parent import open_parent_run
from alignbench.sweep.plan import Plan, plan_sweep
from alignbench.sweep.race import race_outcome
from alignbench.sweep.progress import Progress, print_summary, shortfall, summarize, unfinished
from alignbench.sweep.storage import make_storage
from alignbench.sweep.studies import load_study
from alignbench.sweep.workers import run_worker, run_workers, warm_caches

log = logging.getLogger(__name__)


class SweepFailed(Exception):
    """The sweep ended with methods stopped by failures (its records are complete; re-running the
    same command retries them). Carries the summary."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def run_sweep(cfg, overrides: list[str] | None = None, live: bool | None = None) -> dict:
    """Run (or resume) the sweep `cfg.sweep`; returns the summary (also logged as sweep_summary.json).
    Raises `SweepFailed` (after the summary) when a method's search or confirmation stopped on failures.

    `overrides`: the user's Hydra overrides to apply to every trial; None reads them from the
    running Hydra app (the CLI), or none outside one.
    """
    plan = plan_sweep(cfg, overrides)
    plan.started = time.time()
    plan.recorder.check_store()  # before the journal is written
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(plan, heartbeat_stale(plan))
    for m in plan.methods:  # creates the studies; a study with another objective is a config error
        load_study(plan, m, storage)
    log.info("sweep %s: %d methods x %d trials, storage %s, MLflow experiment %s", plan.name, len(plan.methods),
             plan.n_trials, plan.storage, plan.experiment)
    tags = {"alignbench.role": "sweep", "sweep.name": plan.name, "sweep.storage": plan.storage,
            "sweep.objective": plan.objective}
    parent, created = open_parent_run(plan, tags)
    try:
        with plan.recorder.tracked_run(plan.experiment, f"sweep-{plan.name}", run_id=parent, tags=tags,
                                       async_logging=False) as tracker:
            parent = _record_sweep(plan, tracker, parent, created)
            stopped = _run_trials(plan, storage, parent, live)
            summary = summarize(plan, storage, stopped, parent)
            _log_summary(plan, tracker, summary)
    except KeyboardInterrupt:
        print(f"alignbench: sweep {plan.name} interrupted; records finalised (trial FAIL 'interrupted', "
              f"MLflow runs KILLED). Re-run the same command to resume.", file=sys.stderr)
        raise SystemExit(130) from None
    print_summary(plan, storage, summary)
    failed = unfinished(summary)
    if failed:
        raise SweepFailed(f"sweep {plan.name}: {len(failed)} of {len(plan.methods)} methods ended short of their "
                          f"budget: {shortfall(summary)}. Re-run the same command to retry them", summary)
    return summary


def _record_sweep(plan: Plan, tracker, parent: str, created: bool) -> str:
    """Log the sweep's description on its parent run; returns the parent run's id."""
    info = {"sweep.name": plan.name, "sweep.methods": ",".join(plan.methods), "sweep.n_trials": plan.n_trials,
            "sweep.objective": plan.objective, "sweep.seed": plan.seed, "sweep.pruner": plan.pruner,
            "sweep.storage": plan.storage, "sweep.study_names": ",".join(plan.study_name(m) for m in plan.methods),
            **plan.confirmation.logged_params()}
    plan.recorder.log_params_once(tracker, info, created)  # the tags follow the last invocation
    tracker.set_tags({k: v for k, v in info.items() if k != "sweep.pruner"})
    return tracker.run_id


def _run_trials(plan: Plan, storage, parent: str, live: bool | None) -> dict:
    """Every method's trials and confirmation runs, in this process or in `plan.n_workers` spawned
    ones; returns {method: (why its search stopped, why its confirmation stopped)}: "done",
    "failures", or "incomplete" when a worker did not finish it (see `run_confirmation` for the rest)."""
    with Progress(plan, storage, live) as progress:
        if plan.n_workers == 1:
            return run_worker(plan, parent, 0, progress, storage)
        warm_caches(plan)
        run_workers(plan, parent, progress)
    stopped = {}
    raced = race_outcome(plan, storage)[1] if plan.confirmation.raced and plan.confirmation.seeds else None
    for m in plan.methods:
        search = "done" if count(plan, load_study(plan, m, storage)).done >= plan.n_trials else "incomplete"
        conf = confirmation_of(plan, m, storage)
        full = len(conf.win_rates) == len(conf.seeds)
        confirmed = ("off" if not plan.confirmation.seeds else "done" if (raced if raced is not None else full)
                     else "incomplete")
        stopped[m] = (search, confirmed)
    return stopped


def _log_summary(plan: Plan, tracker, summary: dict) -> None:
    """The summary on the parent run: `sweep_summary.json`, per-method metrics (`best/<method>/...`,
    `confirmation/<method>/...`: they sort by kind, then method), the run's description (the
    summary table, `sweep.description`) and the experiment's saved view, whose columns include
    the hyperparameters searched."""
    tracker.log_files(documents={"sweep_summary.json": summary})
    for m, e in summary["methods"].items():
        best = e.get("best") or {}
        values = {"win_rate": best.get("win_rate"), "win_rate_ci_low": (best.get("win_rate_ci") or [None])[0],
                  "win_rate_ci_high": (best.get("win_rate_ci") or [None, None])[1], "kl": best.get("kl")}
        tracker.log_metrics({f"best/{m}/{k}": v for k, v in values.items() if v is not None}, 0)
        if e.get("confirmation", {}).get("mean_win_rate") is not None:
            tracker.log_metrics({f"confirmation/{m}/win_rate": e["confirmation"]["mean_win_rate"]}, 0)
        if "race" in e.get("confirmation", {}):  # how many seeds the race gave the method, and why it stopped
            race = e["confirmation"]["race"]
            tracker.set_tags({f"race.{m}.n_seeds": race["n_seeds"], f"race.{m}.stop": race["stop"]})
    searched = {k for e in summary["methods"].values() for k in (e.get("best") or {}).get("params", {})}
    experiment_id = plan.recorder.show_columns(tracker, sorted(searched))
    tracker.set_tags({"mlflow.note.content": sweep_note(summary, experiment_id)})
