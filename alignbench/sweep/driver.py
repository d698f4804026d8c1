"""Optuna sweeps across methods: one study per method, every trial a nested MLflow run.

`alignbench sweep sweep=<name> [overrides]` → `run_sweep(cfg)`:

1. `plan_sweep` — read `cfg.sweep` (a file of `sweeps/`), the search spaces
   (`conf/search_space/<method>.yaml`) and the user's command-line overrides; compose and
   validate every method's trial config. Any error is a one-line `ConfigError` before any trial.
2. The parent MLflow run of the sweep (experiment `sweep.experiment`, default `sweep-<name>`,
   tag `alignbench.role=sweep`) is found by tag and reopened, or created on the first invocation.
3. For each method, study `<experiment>/<method>` in `sweep.storage` (default: the journal file
   `./sweeps.journal`, safe for several processes on one machine; an RDB URL such as
   `postgresql://...` for many machines). Trials left RUNNING by a dead process are failed
   (Optuna FAIL, MLflow KILLED) first. Then, until the method has `n_trials` COMPLETE+PRUNED
   trials in total (across invocations: re-running the same command resumes):
   ask a trial (seeded sampler) → compose its config (`method=<m>`, the sweep's overrides, the
   user's overrides, the sampled params as dotted keys) → `train.train` inside a child MLflow
   run, reporting `eval/win_rate` at each eval step to the median pruner → tell Optuna.
4. A summary (best trial per method) printed, returned and logged as `sweep_summary.json`.

Counting is race-free for several workers on one machine: asking for a trial happens under a
file lock next to the storage, after counting COMPLETE+PRUNED+RUNNING trials. Without a shared
file system (an RDB URL), a worker that asked one trial too many (another worker took the last
slot in the meantime) discards it before training: it is told FAIL with user attr
`alignbench.discarded` and has no MLflow run. Liveness of RUNNING trials: the worker's host,
pid and process start time are a user attr; a trial whose process is gone on this host is stale.
RDB storages also use Optuna's heartbeat (`sweep.heartbeat_interval`) for workers on other
machines.

Browse the studies with `optuna-dashboard sweeps.journal` (or the RDB URL) and the runs with
`mlflow ui`.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import importlib.util
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import yaml
from omegaconf import OmegaConf
from optuna.trial import TrialState

from alignbench.tracking import mlflow_runs as tracking
from alignbench.config import CONF_DIR, METHODS, ConfigError, compose, validate

# We ask and tell trials ourselves (no Study.optimize) and run the stale-trial check ourselves.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
log = logging.getLogger(__name__)

DEFAULT_JOURNAL = "sweeps.journal"
OBJECTIVES = ("win_rate", "pareto")
PRUNERS = ("median", "none")
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialPruned(optuna.TrialPruned):
    """Raised from `on_eval` when the pruner says stop: the MLflow run ends KILLED (tagged PRUNED)."""

    alignbench_status = "KILLED"


# --------------------------------------------------------------------------- plan

@dataclass
class Plan:
    """Everything a worker needs (picklable: sent to spawned workers)."""

    name: str
    experiment: str
    methods: list
    n_trials: int
    objective: str
    seed: int
    sampler: dict
    pruner: dict
    storage: str                 # journal:///abs/path or an RDB URL
    heartbeat_interval: int | None
    grace_period: int | None
    n_workers: int
    max_failures: int
    spaces: dict                 # method -> {key: {low, high, log, type}}
    trial_overrides: dict        # method -> overrides before the sampled params
    tracking: dict               # uri, async_logging
    max_steps: dict = field(default_factory=dict)  # method -> train.max_steps (no pruning at the last eval)
    started: float = 0.0         # this invocation's start (failures are counted per invocation)

    def study_name(self, method: str) -> str:
        return f"{self.experiment}/{method}"


def user_overrides(overrides: list[str] | None = None) -> list[str]:
    """The command line's Hydra overrides that apply to trials (not `sweep=`/`sweep.*`)."""
    if overrides is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            overrides = list(HydraConfig.get().overrides.task)
        except (ImportError, ValueError):
            overrides = []
    keep = []
    for item in overrides:
        key = item.lstrip("+~").partition("=")[0]
        if key == "sweep" or key.startswith("sweep.") or key == "method":
            continue
        keep.append(item)
    return keep


def storage_url(storage: str | None) -> str:
    """null → journal file in the working directory; `journal://path`; a bare *.journal path; or an RDB URL."""
    if not storage:
        return f"journal://{Path(DEFAULT_JOURNAL).resolve()}"
    storage = str(storage)
    if storage.startswith("journal://"):
        return f"journal://{Path(storage[len('journal://'):]).expanduser().resolve()}"
    if "://" not in storage:
        return f"journal://{Path(storage).expanduser().resolve()}"
    if storage.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        # SQLAlchemy 2.x reads a bare postgresql:// as psycopg 3; the [postgres] extra installs psycopg2.
        return "postgresql+psycopg2://" + storage[len("postgresql://"):]
    return storage


def load_space(method: str, keys=None) -> dict:
    """The method's search space: conf/search_space/<method>.yaml, narrowed to `keys` (a list), or
    replaced by an inline space (a dict, e.g. a grid of `choices` in a sweep file)."""
    path = CONF_DIR / "search_space" / f"{method}.yaml"
    if not path.exists():
        raise ConfigError(f"search_space/{method}.yaml: not found (every swept method needs one)")
    space = yaml.safe_load(path.read_text()) or {}
    if isinstance(keys, dict):
        space, keys = keys, None
    if keys is not None:
        unknown = [k for k in keys if k not in space]
        if unknown:
            raise ConfigError(f"sweep.search_space.{method}: {unknown[0]} is not in search_space/{method}.yaml "
                              f"(choose from {', '.join(space)})")
        space = {k: space[k] for k in keys}
    for key, spec in space.items():
        if isinstance(spec, dict) and isinstance(spec.get("choices"), list) and spec["choices"]:
            continue  # a categorical / grid dimension
        if not isinstance(spec, dict) or "low" not in spec or "high" not in spec:
            raise ConfigError(f"search_space/{method}.yaml: {key} needs low and high (or a list of choices)")
        if not spec["low"] < spec["high"]:
            raise ConfigError(f"search_space/{method}.yaml: {key} low={spec['low']} must be < high={spec['high']}")
        if spec.get("log") and spec["low"] <= 0:
            raise ConfigError(f"search_space/{method}.yaml: {key} low={spec['low']} must be > 0 on a log scale")
        if spec.get("type", "float") not in ("float", "int"):
            raise ConfigError(f"search_space/{method}.yaml: {key} type={spec['type']} must be float or int")
    return space


def plan_sweep(cfg, overrides: list[str] | None = None) -> Plan:
    """Read and check the sweep; compose + validate each method's trial config. ConfigError on any problem."""
    s = OmegaConf.select(cfg, "sweep")
    if s is None:
        raise ConfigError("sweep: no sweep chosen (sweep=smoke, sweep=default, ...)")
    user = user_overrides(overrides)

    def get(key, default=None):
        return OmegaConf.select(s, key, default=default)

    name = get("name")
    if not name:
        raise ConfigError("sweep.name: required")
    methods = list(get("methods") or [])
    if not methods:
        raise ConfigError("sweep.methods: empty (choose from " + ", ".join(METHODS) + ")")
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"sweep.methods: {m}: unknown method (choose from {', '.join(METHODS)})")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"sweep.methods: {methods}: a method is listed twice")
    objective = get("objective", "win_rate")
    if objective not in OBJECTIVES:
        raise ConfigError(f"sweep.objective={objective}: must be win_rate or pareto")
    for key in ("n_trials", "n_workers", "max_failures"):
        value = get(key, 1)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"sweep.{key}={value}: must be an integer >= 1")
    pruner = _container(get("pruner"))
    pruner.setdefault("type", "median")
    if pruner["type"] not in PRUNERS:
        raise ConfigError(f"sweep.pruner.type={pruner['type']}: must be median or none")
    if objective == "pareto":
        pruner["type"] = "none"  # Optuna cannot prune multi-objective studies
    sampler = _container(get("sampler"))
    search_keys = _container(get("search_space"))
    method_overrides = _container(get("method_overrides"))
    for m in list(search_keys) + list(method_overrides):
        if m not in METHODS:
            raise ConfigError(f"sweep.search_space / method_overrides: {m}: unknown method")
    base = list(_container(get("overrides"), []))
    experiment = get("experiment") or f"sweep-{name}"

    spaces, trial_overrides, max_steps = {}, {}, {}
    for m in methods:
        spaces[m] = load_space(m, search_keys.get(m))
        trial_overrides[m] = [f"method={m}", *base, *method_overrides.get(m, []), *user]
        trial_cfg = _compose(trial_overrides[m])
        for key in spaces[m]:
            if OmegaConf.select(trial_cfg, key, default=None) is None:
                raise ConfigError(f"search_space/{m}.yaml: {key} is not a key of the method={m} config")
        validate(trial_cfg)
        # The sampled extremes must be valid configs too (e.g. a range reaching beta <= 0).
        for corner in (0, -1):
            values = {k: v["choices"][corner] if "choices" in v else v["low" if corner == 0 else "high"]
                      for k, v in spaces[m].items()}
            validate(_compose(trial_overrides[m] + [f"{k}={_fmt(x)}" for k, x in values.items()]))
        max_steps[m] = int(trial_cfg.train.max_steps)
    track = cfg.tracking
    return Plan(name=name, experiment=experiment, methods=methods, n_trials=int(get("n_trials")),
                objective=objective, seed=int(get("seed", cfg.seed)), sampler=sampler, pruner=pruner,
                storage=storage_url(get("storage")), heartbeat_interval=get("heartbeat_interval"),
                grace_period=get("grace_period"), n_workers=int(get("n_workers", 1)),
                max_failures=int(get("max_failures", 3)), spaces=spaces, trial_overrides=trial_overrides,
                tracking={"uri": track.uri, "async_logging": bool(track.async_logging)}, max_steps=max_steps)


def _container(node, default=None):
    if node is None:
        return {} if default is None else default
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _fmt(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _compose(overrides: list[str]):
    try:
        return compose(overrides)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's override / missing key errors, as one line
        raise ConfigError(" ".join(str(exc).split()) or type(exc).__name__) from None


# --------------------------------------------------------------------------- storage, studies

def make_storage(plan: Plan):
    if plan.storage.startswith("journal://"):
        path = plan.storage[len("journal://"):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        repair_journal(path)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    kwargs = {}
    if plan.heartbeat_interval:
        kwargs = dict(heartbeat_interval=int(plan.heartbeat_interval), grace_period=plan.grace_period,
                      heartbeat_stale_trial_callback=_heartbeat_stale(plan))
    import random

    import sqlalchemy.exc

    for attempt in range(6):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(plan.storage, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers started together on a fresh database race to create Optuna's tables (and its
            # alembic_version): one wins, the others see a duplicate; after a pause the schema exists.
            if attempt == 5:
                raise
            time.sleep(0.5 + random.random())


def repair_journal(path: str) -> bool:
    """Cut a torn last line (a process killed mid-write) off the journal file; True if one was cut.

    Optuna skips a last line without a newline when reading, but the next record it appends is glued
    onto it and from then on the journal no longer loads. Done under Optuna's own journal lock, so a
    write in progress in another process is never mistaken for a torn one.
    """
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return False
    with optuna.storages.journal._file.get_lock_file(optuna.storages.journal.JournalFileSymlinkLock(path)):
        with open(p, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return False
            pos, chunk = size, 1 << 16
            while pos > 0:  # find the last newline, reading backwards
                start = max(0, pos - chunk)
                fh.seek(start)
                i = fh.read(pos - start).rfind(b"\n")
                if i >= 0:
                    pos = start + i + 1
                    break
                pos = start
            fh.truncate(pos)
    log.warning("%s: cut a torn last record (%d bytes) left by a process killed mid-write", path, size - pos)
    return True


def _heartbeat_stale(plan: Plan):
    def callback(study, trial):
        _kill_mlflow_run(plan, study, trial, "stale: no heartbeat from its worker (killed?)")
    return callback


def lock_path(plan: Plan) -> Path | None:
    if plan.storage.startswith("journal://"):
        return Path(plan.storage[len("journal://"):] + ".alignbench.lock")
    if plan.storage.startswith("sqlite:///"):
        return Path(plan.storage[len("sqlite:///"):] + ".alignbench.lock")
    return None


@contextlib.contextmanager
def budget_lock(plan: Plan):
    """Serialises count-then-ask among processes on this machine (nothing for remote RDB storage)."""
    path = lock_path(plan)
    if path is None:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_study(plan: Plan, method: str, storage) -> optuna.Study:
    directions = ["maximize", "minimize"] if plan.objective == "pareto" else ["maximize"]
    if plan.pruner.get("type") == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=int(plan.pruner.get("n_startup_trials", 2)),
                                             n_warmup_steps=int(plan.pruner.get("n_warmup_steps", 0)))
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(storage=storage, study_name=plan.study_name(method), directions=directions,
                                pruner=pruner, load_if_exists=True)
    if [d.name for d in study.directions] != [d.upper() for d in directions]:
        raise ConfigError(f"sweep.objective={plan.objective}: study {study.study_name} in {plan.storage} was "
                          f"created with another objective (use a new sweep.experiment or storage)")
    return study


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler whose after_trial does not call Study.stop() when the grid is used up: that only
    works inside study.optimize(), and the sweep's own budget (n_trials = grid size) stops it."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(plan: Plan, method: str, worker: int, n_existing: int):
    """A fresh seeded sampler per ask: the params of trial k depend only on (seed, method, worker, k)."""
    seed = zlib.crc32(f"{plan.seed}/{method}/{worker}/{n_existing}".encode())
    if plan.sampler.get("type") == "grid":  # every combination of the `choices` once (e.g. a beta grid)
        grid = {k: spec["choices"] for k, spec in plan.spaces[method].items()}
        # One seed per method, not per ask: the seed shuffles the grid, and grid ids must mean
        # the same point for every sampler instance.
        return _GridSampler(grid, seed=zlib.crc32(f"{plan.seed}/{method}".encode()))
    if plan.objective == "pareto":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(plan.sampler.get("population_size", 8)))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(plan.sampler.get("n_startup_trials", 4)),
                                      constant_liar=plan.n_workers > 1)


# --------------------------------------------------------------------------- liveness

def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return round(psutil.Process(pid).create_time(), 2)
    except Exception:
        return None


HOST = socket.gethostname()
ACTIVE: set = set()  # (study name, trial number) run by this process right now


def worker_tag() -> dict:
    return {"host": HOST, "pid": os.getpid(), "start": _process_start(os.getpid())}


def is_stale(plan: Plan, study, trial) -> bool:
    """A RUNNING trial whose worker process is gone (checkable only on this host; RDB: heartbeat)."""
    w = trial.user_attrs.get("alignbench.worker")
    if w is None:
        # Attributes are set right after ask, under the lock: none means killed in between.
        age = (datetime.datetime.now() - trial.datetime_start).total_seconds() if trial.datetime_start else 1e9
        return lock_path(plan) is not None or age > 120
    if w.get("host") != HOST:
        return False  # another machine's worker: Optuna's heartbeat (RDB storage) judges it
    if w.get("pid") == os.getpid() and w.get("start") == _process_start(os.getpid()):
        return (study.study_name, trial.number) not in ACTIVE
    return bool(_worker_gone(w))


def _worker_gone(w: dict | None) -> bool | None:
    """Whether the worker process recorded on a trial is gone: True/False on this host, None
    where it cannot be told (another host, or no record)."""
    if w is None or w.get("host") != HOST:
        return None
    start = _process_start(int(w["pid"]))
    return start is None or (w.get("start") is not None and start != w["start"])


ORPHAN_AFTER_SECONDS = 60  # another host's worker ends a trial's run right after telling Optuna


def run_orphaned(trial) -> bool:
    """An MLflow run still RUNNING although its trial has ended: orphaned once its worker is gone
    (this host) or, where that cannot be told, a minute after the trial ended. A live worker is
    between telling Optuna and ending the run: its run is left alone."""
    gone = _worker_gone(trial.user_attrs.get("alignbench.worker"))
    if gone is not None:
        return gone
    end = trial.datetime_complete
    return end is None or (datetime.datetime.now() - end).total_seconds() > ORPHAN_AFTER_SECONDS


def _kill_mlflow_run(plan: Plan, study, trial, reason: str) -> None:
    run_id = trial.user_attrs.get("mlflow_run_id")
    if run_id is None:  # killed between creating the run and recording its id: find it by tags
        runs = tracking.search_runs(plan.experiment, f"tags.`optuna.study` = '{study.study_name}' and "
                                    f"tags.`optuna.trial_number` = '{trial.number}'", plan.tracking["uri"])
        run_id = runs[0].info.run_id if runs else None
    if run_id is not None:
        tracking.set_run_tags(run_id, {"optuna.trial_state": "FAIL"}, plan.tracking["uri"])
        tracking.mark_killed(run_id, reason, plan.tracking["uri"])


def reap_stale(plan: Plan, study) -> int:
    """Trials left RUNNING by a dead process → Optuna FAIL (reason user attr) + MLflow KILLED."""
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
        _kill_mlflow_run(plan, study, t, reason)
        log.warning("%s: trial %d was left RUNNING by a dead process: marked FAIL (MLflow run KILLED); "
                    "it will be rerun", study.study_name, t.number)
        n += 1
    # A run whose trial already ended but whose process died before ending the run.
    runs = tracking.search_runs(plan.experiment, f"tags.`optuna.study` = '{study.study_name}' and "
                                "attributes.status = 'RUNNING'", plan.tracking["uri"])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for run in runs:
        t = trials.get(int(run.data.tags.get("optuna.trial_number", -1)))
        if t is not None and t.state != TrialState.RUNNING and run_orphaned(t):
            tracking.set_run_tags(run.info.run_id, {"optuna.trial_state": t.state.name}, plan.tracking["uri"])
            tracking.mark_killed(run.info.run_id, "stale: its process died before ending the run",
                                 plan.tracking["uri"])
    return n


# --------------------------------------------------------------------------- counting

@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    errors_now: int = 0    # failures from errors in this invocation (toward max_failures)
    running: int = 0

    @property
    def done(self) -> int:
        return self.complete + self.pruned


def count(plan: Plan, study) -> Counts:
    c = Counts()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            c.complete += 1
        elif t.state == TrialState.PRUNED:
            c.pruned += 1
        elif t.state == TrialState.RUNNING:
            c.running += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("alignbench.discarded"):
            c.failed += 1
            if (t.user_attrs.get("failure_kind") == "error" and t.datetime_start is not None
                    and t.datetime_start.timestamp() >= plan.started):
                c.errors_now += 1
    return c


def over_budget(plan: Plan, study, trial) -> bool:
    """True if earlier trials (COMPLETE, PRUNED or RUNNING) already fill the budget: another worker won."""
    taken = sum(1 for t in study.get_trials(deepcopy=False)
                if t.number < trial.number and (t.state in DONE or t.state == TrialState.RUNNING))
    return taken >= plan.n_trials


# --------------------------------------------------------------------------- one trial

def sample_params(trial, space: dict) -> dict:
    params = {}
    for key, spec in space.items():
        if "choices" in spec:
            params[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif spec.get("type", "float") == "int":
            params[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return params


def run_trial(plan: Plan, method: str, study, trial, parent_run_id: str, progress=None) -> TrialState:
    from alignbench.training.run import NonFiniteLoss, train

    params = sample_params(trial, plan.spaces[method])
    tags = {"alignbench.role": "trial", "sweep.name": plan.name, "method": method,
            "optuna.study": study.study_name, "optuna.trial_number": trial.number}
    key = (study.study_name, trial.number)
    ACTIVE.add(key)
    pareto = plan.objective == "pareto"
    last_step = plan.max_steps[method]

    def on_eval(step, metrics):
        if progress is not None:
            progress.running(method, trial.number, step, metrics.get("eval/win_rate"))
        if pareto:
            return
        trial.report(float(metrics["eval/win_rate"]), step)
        if step < last_step and trial.should_prune():
            raise TrialPruned(f"pruned at step {step}: win rate {metrics['eval/win_rate']:.3f} below the median")

    state, reason, kind = TrialState.FAIL, None, None
    try:
        trial_cfg = None
        with tracking.tracked_run(plan.experiment, run_name=f"{method}-{trial.number}", parent_run_id=parent_run_id,
                                  tags=tags, async_logging=plan.tracking["async_logging"],
                                  uri=plan.tracking["uri"]) as tracker:
            trial.set_user_attr("mlflow_run_id", tracker.run_id)
            tracker.log_params(params, synchronous=True)  # now, so a run killed during set-up still shows its params
            try:
                trial_cfg = _compose(plan.trial_overrides[method] + [f"{k}={_fmt(v)}" for k, v in params.items()])
                result = train(trial_cfg, tracker, on_eval)
            except TrialPruned:
                tracker.set_tags({"optuna.trial_state": "PRUNED"})
                raise
            except BaseException:
                tracker.set_tags({"optuna.trial_state": "FAIL"})
                raise
            tracker.set_tags({"optuna.trial_state": "COMPLETE"})
        m = result.metrics
        for k in ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl", "eval/kl_per_token",
                  "eval/gold_reward", "eval/reference_gold_reward"):
            if k in m:
                trial.set_user_attr(k, float(m[k]))
        values = [float(m["eval/win_rate"]), float(m["eval/kl"])] if pareto else float(m["eval/win_rate"])
        if any(not math.isfinite(v) for v in (values if pareto else [values])):
            raise NonFiniteLoss(f"non-finite objective {values}")
        study.tell(trial, values)
        state = TrialState.COMPLETE
    except TrialPruned as exc:
        trial.set_user_attr("pruned_reason", str(exc))
        study.tell(trial, state=TrialState.PRUNED)
        state = TrialState.PRUNED
    except (KeyboardInterrupt, SystemExit) as exc:
        reason, kind = f"interrupted: {type(exc).__name__} {exc}".strip(), "interrupted"
        _fail(study, trial, reason, kind)
        raise
    except Exception as exc:
        reason, kind = f"{type(exc).__name__}: {exc}", "error"
        _fail(study, trial, reason, kind)
        log.warning("%s trial %d FAILED: %s", study.study_name, trial.number, reason)
    finally:
        ACTIVE.discard(key)
    if progress is not None:
        progress.finished(method, trial.number, state, reason)
    return state


def _fail(study, trial, reason: str, kind: str) -> None:
    trial.set_user_attr("failure_reason", reason[:2000])
    trial.set_user_attr("failure_kind", kind)
    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


# --------------------------------------------------------------------------- the worker loop

def run_method(plan: Plan, method: str, storage, parent_run_id: str, worker: int = 0, progress=None) -> str:
    """Trials of one method until its budget is reached (or too many failures). Returns why it stopped."""
    study = load_study(plan, method, storage)
    while True:
        with budget_lock(plan):
            reap_stale(plan, study)
            c = count(plan, study)
            if c.done >= plan.n_trials:
                return "done"
            if c.errors_now >= plan.max_failures:
                msg = (f"{study.study_name}: stopped after {c.errors_now} failed trials in this run "
                       f"(sweep.max_failures={plan.max_failures}); see the trials' failure_reason")
                log.error(msg)
                return "failures"
            if c.done + c.running >= plan.n_trials:
                return "done"  # the rest is running in other workers; their own loops refill on failure
            study.sampler = make_sampler(plan, method, worker, len(study.get_trials(deepcopy=False)))
            trial = study.ask()
            trial.set_user_attr("alignbench.worker", worker_tag())
        if over_budget(plan, study, trial):
            trial.set_user_attr("alignbench.discarded", "over budget: another worker took the last slot")
            study.tell(trial, state=TrialState.FAIL)
            continue
        if progress is not None:
            progress.running(method, trial.number, 0, None)
        run_trial(plan, method, study, trial, parent_run_id, progress)


def run_worker(plan: Plan, parent_run_id: str, worker: int = 0, progress=None) -> dict:
    storage = make_storage(plan)
    return {m: run_method(plan, m, storage, parent_run_id, worker, progress) for m in plan.methods}


def _worker_main(plan: Plan, parent_run_id: str, worker: int) -> None:
    """Entry point of a spawned worker process."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s w{worker} %(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    try:
        from alignbench.process import quiet_libraries

        quiet_libraries()
    except Exception:
        pass
    try:
        run_worker(plan, parent_run_id, worker)
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(plan: Plan, parent_run_id: str, progress) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(plan, parent_run_id, i), name=f"alignbench-sweep-w{i}")
             for i in range(plan.n_workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=2.0 / len(procs))
            progress.poll()
    except BaseException:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
        raise
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        log.warning("%d worker(s) exited with an error (exit codes %s); re-run the same command to resume",
                    len(bad), bad)


# --------------------------------------------------------------------------- progress and summary

class Progress:
    """Trials done / pruned / failed per method and the best so far: a live table on a terminal,
    plain log lines otherwise."""

    def __init__(self, plan: Plan, storage, live: bool | None = None):
        self.plan, self.storage = plan, storage
        self.live_mode = sys.stdout.isatty() if live is None else live
        self.current = ""
        self._live = None
        self._last_line = None

    def __enter__(self):
        if self.live_mode:
            from rich.live import Live

            self._live = Live(self.table(), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self.table())
            self._live.__exit__(*exc)
        return False

    def rows(self):
        for m in self.plan.methods:
            try:
                study = optuna.load_study(study_name=self.plan.study_name(m), storage=self.storage)
            except KeyError:
                yield m, Counts(), None
                continue
            best = best_trial(self.plan, study)
            yield m, count(self.plan, study), best

    def table(self):
        from rich.table import Table

        t = Table(title=f"sweep {self.plan.name} — {self.plan.n_trials} trials per method"
                  + (f" — {self.current}" if self.current else ""))
        for col in ("method", "done", "pruned", "failed", "running", "best win rate", "KL", "best params"):
            t.add_column(col)
        for m, c, best in self.rows():
            t.add_row(m, f"{c.done}/{self.plan.n_trials}", str(c.pruned), str(c.failed), str(c.running),
                      _fmt_wr(best), _fmt_kl(best), _fmt_params(best))
        return t

    def line(self) -> str:
        parts = []
        for m, c, best in self.rows():
            parts.append(f"{m} {c.done}/{self.plan.n_trials} (pruned {c.pruned}, failed {c.failed}"
                         + (f", running {c.running}" if c.running else "") + f") best {_fmt_wr(best)}")
        return "sweep progress: " + " | ".join(parts)

    def refresh(self):
        if self._live is not None:
            self._live.update(self.table())
        else:
            line = self.line()
            if line != self._last_line:
                print(line, flush=True)
                self._last_line = line

    def running(self, method, number, step, win_rate):
        self.current = f"running {method} trial {number}" + (f", step {step}: win rate {win_rate:.3f}"
                                                              if win_rate is not None else "")
        if self._live is not None:
            self._live.update(self.table())

    def finished(self, method, number, state, reason):
        self.current = ""
        if self._live is None:
            print(f"sweep: {method} trial {number} {state.name}" + (f" ({reason})" if reason else ""), flush=True)
        self.refresh()

    def poll(self):
        self.refresh()


def best_trial(plan: Plan, study):
    """The best COMPLETE trial (pareto: the highest win rate on the Pareto front)."""
    try:
        if plan.objective == "pareto":
            front = study.best_trials
            return max(front, key=lambda t: t.values[0]) if front else None
        return study.best_trial
    except ValueError:
        return None


def _fmt_wr(t) -> str:
    if t is None:
        return "-"
    a = t.user_attrs
    wr = a.get("eval/win_rate", t.values[0] if t.values else float("nan"))
    if "eval/win_rate_ci_low" in a:
        return f"{wr:.3f} [{a['eval/win_rate_ci_low']:.3f}, {a['eval/win_rate_ci_high']:.3f}]"
    return f"{wr:.3f}"


def _fmt_kl(t) -> str:
    return "-" if t is None or "eval/kl" not in t.user_attrs else f"{t.user_attrs['eval/kl']:.2f}"


def _fmt_params(t) -> str:
    if t is None:
        return "-"
    return " ".join(f"{k.removeprefix('method.')}={v:.3g}" if isinstance(v, float) else f"{k.removeprefix('method.')}={v}"
                    for k, v in t.params.items())


def summarize(plan: Plan, storage, stopped: dict, parent_run_id: str | None) -> dict:
    methods = {}
    for m in plan.methods:
        study = optuna.load_study(study_name=plan.study_name(m), storage=storage)
        c = count(plan, study)
        best = best_trial(plan, study)
        entry = {"study": study.study_name, "complete": c.complete, "pruned": c.pruned, "failed": c.failed,
                 "running": c.running, "budget": plan.n_trials, "status": stopped.get(m, "not run")}
        if best is not None:
            a = best.user_attrs
            entry["best"] = {"trial": best.number, "win_rate": a.get("eval/win_rate"),
                             "win_rate_ci": [a.get("eval/win_rate_ci_low"), a.get("eval/win_rate_ci_high")],
                             "kl": a.get("eval/kl"), "gold_reward": a.get("eval/gold_reward"),
                             "params": dict(best.params), "mlflow_run_id": a.get("mlflow_run_id")}
        if plan.objective == "pareto":
            entry["pareto_front"] = [{"trial": t.number, "win_rate": t.values[0], "kl": t.values[1],
                                      "params": dict(t.params)} for t in study.best_trials]
        methods[m] = entry
    return {"sweep": plan.name, "experiment": plan.experiment, "objective": plan.objective,
            "storage": plan.storage, "parent_run_id": parent_run_id, "n_trials": plan.n_trials,
            "methods": methods}


def print_summary(plan: Plan, storage, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"sweep {plan.name}: best trial per method ({plan.objective})")
    for col in ("method", "complete", "pruned", "failed", "best trial", "win rate [95% CI]", "KL (nats/seq)",
                "params"):
        t.add_column(col)
    for m in plan.methods:
        study = optuna.load_study(study_name=plan.study_name(m), storage=storage)
        best = best_trial(plan, study)
        e = summary["methods"][m]
        t.add_row(m, str(e["complete"]), str(e["pruned"]), str(e["failed"]), "-" if best is None else str(best.number),
                  _fmt_wr(best), _fmt_kl(best), _fmt_params(best))
    console = Console(width=max(120, Console().width))
    console.print(t)
    if plan.sampler.get("type") == "grid":  # a grid is read point by point (e.g. KL against beta)
        g = Table(title=f"sweep {plan.name}: every grid point")
        for col in ("method", "params", "win rate [95% CI]", "KL (nats/seq)", "state"):
            g.add_column(col)
        for m in plan.methods:
            study = optuna.load_study(study_name=plan.study_name(m), storage=storage)
            for trial in sorted(study.get_trials(deepcopy=False), key=lambda tr: sorted(tr.params.items())):
                g.add_row(m, _fmt_params(trial), _fmt_wr(trial), _fmt_kl(trial), trial.state.name)
        console.print(g)
    stopped = [m for m, e in summary["methods"].items() if e["status"] == "failures"]
    if stopped:
        console.print(f"[bold red]stopped by failures:[/] {', '.join(stopped)} (re-run to retry)")
    storage_arg = plan.storage[len("journal://"):] if plan.storage.startswith("journal://") else plan.storage
    console.print(f"studies: optuna-dashboard {storage_arg}    runs: alignbench ui"
                  + (f" tracking.uri={plan.tracking['uri']}" if plan.tracking["uri"] else "")
                  + f"  (experiment {plan.experiment})")


# --------------------------------------------------------------------------- entry point

PARENT_SETTLE_SECONDS = 1.0  # paid once per new sweep, by the workers that create its parent run


def parent_runs(plan: Plan) -> list:
    """The sweep's parent runs (normally one), oldest first; ties broken by run id so every worker
    orders them the same way."""
    runs = tracking.search_runs(plan.experiment, f"tags.`alignbench.role` = 'sweep' and "
                                f"tags.`sweep.name` = '{plan.name}'", plan.tracking["uri"])
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def open_parent_run(plan: Plan, tags: dict) -> tuple[str, bool]:
    """The sweep's parent run id, and whether this call created it.

    Workers that start at the same instant on a new sweep can each find no parent and create one.
    Each creator therefore looks again after creating, `PARENT_SETTLE_SECONDS` later so that every
    creator of the same instant sees every other's run: all of them adopt the oldest (start time,
    then run id: the same choice everywhere, even for runs created in the same millisecond) and
    delete their own, before any child run points at it. A worker that looks later finds the
    survivor. (Across machines "oldest" uses the clients' clocks: keep them NTP-synced.)
    """
    runs = parent_runs(plan)
    if runs:
        return runs[0].info.run_id, False
    mine = tracking.create_run(plan.experiment, f"sweep-{plan.name}", tags, plan.tracking["uri"])
    time.sleep(PARENT_SETTLE_SECONDS)
    oldest = parent_runs(plan)[0].info.run_id
    if oldest != mine:
        tracking.delete_run(mine, plan.tracking["uri"])
        log.info("sweep %s: another worker created the parent run at the same time; adopted %s",
                 plan.name, oldest)
        return oldest, False
    return mine, True


def run_sweep(cfg, overrides: list[str] | None = None, live: bool | None = None) -> dict:
    """Run (or resume) the sweep `cfg.sweep`; returns the summary (also logged as sweep_summary.json).

    `overrides`: the user's Hydra overrides to apply to every trial; None reads them from the
    running Hydra app (the CLI), or none outside one.
    """
    plan = plan_sweep(cfg, overrides)
    plan.started = time.time()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(plan)
    for m in plan.methods:  # creates the studies; a study with another objective is a config error
        load_study(plan, m, storage)
    log.info("sweep %s: %d methods x %d trials, storage %s, MLflow experiment %s", plan.name, len(plan.methods),
             plan.n_trials, plan.storage, plan.experiment)
    tags = {"alignbench.role": "sweep", "sweep.name": plan.name, "sweep.storage": plan.storage,
            "sweep.objective": plan.objective}
    parent, created = open_parent_run(plan, tags)
    stopped: dict = {}
    try:
        with tracking.tracked_run(plan.experiment, run_name=f"sweep-{plan.name}", run_id=parent, tags=tags,
                                  async_logging=False, uri=plan.tracking["uri"]) as tracker:
            info = {"sweep.name": plan.name, "sweep.methods": ",".join(plan.methods), "sweep.n_trials": plan.n_trials,
                    "sweep.objective": plan.objective, "sweep.seed": plan.seed, "sweep.pruner": plan.pruner,
                    "sweep.storage": plan.storage,
                    "sweep.study_names": ",".join(plan.study_name(m) for m in plan.methods)}
            if created or not tracker.client.get_run(parent).data.params:
                tracker.log_params(info)  # params are immutable: logged once; the tags follow the last invocation
            tracker.set_tags({k: v for k, v in info.items() if k != "sweep.pruner"})
            parent = tracker.run_id
            with Progress(plan, storage, live) as progress:
                if plan.n_workers == 1:
                    for m in plan.methods:
                        stopped[m] = run_method(plan, m, storage, parent, 0, progress)
                else:
                    _warm_caches(plan)
                    run_workers(plan, parent, progress)
                    stopped = {m: ("done" if count(plan, load_study(plan, m, storage)).done >= plan.n_trials
                                   else "incomplete") for m in plan.methods}
            summary = summarize(plan, storage, stopped, parent)
            tracker.log_files(documents={"sweep_summary.json": summary})
            for m, e in summary["methods"].items():
                if "best" in e and e["best"]["win_rate"] is not None:
                    tracker.log_metrics({f"best/{m}/win_rate": e["best"]["win_rate"]}, 0)
    except KeyboardInterrupt:
        print(f"alignbench: sweep {plan.name} interrupted; records finalised (trial FAIL 'interrupted', "
              f"MLflow runs KILLED). Re-run the same command to resume.", file=sys.stderr)
        raise SystemExit(130) from None
    print_summary(plan, storage, summary)
    return summary


def _warm_caches(plan: Plan) -> None:
    """Before spawning workers: build the shared SFT model and pairs once, not once per worker."""
    from alignbench.training.run import prepare

    try:
        prepare(_compose(plan.trial_overrides[plan.methods[0]]))
    except Exception as exc:  # the trials will report it
        log.warning("cache warm-up failed: %s", exc)
