"""The sweep's plan: `cfg.sweep`, the search spaces (`conf/search_space/<method>.yaml`) and the
user's command-line overrides, read and checked into a `Plan` before any trial runs; every error
is a one-line `ConfigError`. Also composes a trial's config from its overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import yaml
from omegaconf import OmegaConf

from alignbench.config import CONF_DIR, METHODS, ConfigError, compose, validate
from alignbench.confirm.settings import CONFIRM_MODES, ConfirmSettings
from alignbench.sweep.recorder import Recorder
from alignbench.sweep.storage import storage_url

OBJECTIVES = ("win_rate", "pareto")
# Confirmation runs are judged on prompts no trial was selected on, once, at the end: nothing is
# pruned or selected on their intermediate evaluations.
CONFIRM_OVERRIDES = ["eval.split=test", "eval.every_n_steps=0"]
PRUNERS = ("median", "none")
KEEP_POLICIES = ("best", "all", "none")


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
    batch_trials: int            # trials proposed together from one frozen view (`studies.batch_start`)
    max_failures: int
    spaces: dict                 # method -> {key: {low, high, log, type}}
    trial_overrides: dict        # method -> overrides before the sampled params
    tracking: dict               # uri, async_logging
    max_steps: dict = field(default_factory=dict)  # method -> train.max_steps (no pruning at the last eval)
    started: float = 0.0         # this invocation's start (failures are counted per invocation)
    train_seeds: dict = field(default_factory=dict)  # method -> the search trials' `seed`
    keep_policies: str = "best"  # whose policy/ artifacts stay: the selected + confirmed runs', all, or none
    confirm_overrides: list = field(default_factory=list)  # the confirmation runs' overrides: CONFIRM_OVERRIDES + the sweep's
    confirmation: ConfirmSettings = ConfirmSettings()  # full or raced, K seeds (0 = none), the race's rule

    @property
    def recorder(self) -> Recorder:
        """The sweep's MLflow recorder, bound to `tracking`."""
        return Recorder(self.tracking.get("uri"), bool(self.tracking.get("async_logging", True)))

    def study_name(self, method: str) -> str:
        return f"{self.experiment}/{method}"

    def confirm_study_name(self, method: str) -> str:
        return f"{self.experiment}/{method}/confirm"


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
        _check_dimension(method, key, spec)
    return space


def _check_dimension(method: str, key: str, spec) -> None:
    if isinstance(spec, dict) and isinstance(spec.get("choices"), list) and spec["choices"]:
        return  # a categorical / grid dimension
    if not isinstance(spec, dict) or "low" not in spec or "high" not in spec:
        raise ConfigError(f"search_space/{method}.yaml: {key} needs low and high (or a list of choices)")
    if not spec["low"] < spec["high"]:
        raise ConfigError(f"search_space/{method}.yaml: {key} low={spec['low']} must be < high={spec['high']}")
    if spec.get("log") and spec["low"] <= 0:
        raise ConfigError(f"search_space/{method}.yaml: {key} low={spec['low']} must be > 0 on a log scale")
    if spec.get("type", "float") not in ("float", "int"):
        raise ConfigError(f"search_space/{method}.yaml: {key} type={spec['type']} must be float or int")


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
    methods = _check_methods(list(get("methods") or []))
    objective = _check_objective_and_counts(get)
    pruner = _pruner(get, objective)
    search_keys, method_overrides = _container(get("search_space")), _container(get("method_overrides"))
    for m in list(search_keys) + list(method_overrides):
        if m not in METHODS:
            raise ConfigError(f"sweep.search_space / method_overrides: {m}: unknown method")
    base = list(_container(get("overrides"), []))
    seed = int(get("seed", cfg.seed))
    confirmation = _check_confirm(get, seed)
    confirm_overrides = [*CONFIRM_OVERRIDES, *_container(get("confirm_overrides"), [])]
    keep_policies = get("keep_policies", "best")
    if keep_policies not in KEEP_POLICIES:
        raise ConfigError(f"sweep.keep_policies={keep_policies}: must be best, all or none")
    no_policy = ["train.save_policy=false"] if keep_policies == "none" else []
    n_workers, worker_threads = workers_for_confirm(confirmation.mode, get("n_workers", 1), user)
    batch_trials = _check_batch_trials(get("batch_trials"), n_workers)
    spaces, trial_overrides, max_steps, train_seeds = {}, {}, {}, {}
    for m in methods:
        spaces[m] = load_space(m, search_keys.get(m))
        trial_overrides[m] = [f"method={m}", *base, *method_overrides.get(m, []), *user, *no_policy, *worker_threads]
        max_steps[m], train_seeds[m] = _check_trial_configs(m, spaces[m], trial_overrides[m], confirmation.seeds,
                                                             confirm_overrides)
    track = cfg.tracking
    return Plan(name=name, experiment=get("experiment") or f"sweep-{name}", methods=methods,
                n_trials=int(get("n_trials")), objective=objective, seed=seed,
                sampler=_container(get("sampler")), pruner=pruner, storage=storage_url(get("storage")),
                heartbeat_interval=get("heartbeat_interval"), grace_period=get("grace_period"),
                n_workers=n_workers, batch_trials=batch_trials, max_failures=int(get("max_failures", 3)), spaces=spaces,
                trial_overrides=trial_overrides,
                tracking={"uri": track.uri, "async_logging": bool(track.async_logging)}, max_steps=max_steps,
                train_seeds=train_seeds, keep_policies=keep_policies, confirm_overrides=confirm_overrides,
                confirmation=confirmation)


def workers_and_threads(n_workers, user: list[str]) -> tuple[int, list[str]]:
    """`sweep.n_workers` as a number, and the `threads=` override its workers get.

    `auto`: on a CUDA machine one worker (processes on one GPU only contend); on a CPU machine one
    single-threaded worker per available core. A small model's matrices are too small for torch's
    intra-op threads to pay: on 2 cores, 2 workers x 1 thread finish a sweep sooner than 1 x 2
    (measured: docs/performance.md). A user's own `threads=` is kept. Under torchrun / accelerate
    launch: one worker, its trials on all the processes (`threads` is then split across them)."""
    from alignbench.training.distributed import launched_processes

    if launched_processes() > 1:  # under a launcher: one worker, each trial on all its processes
        if n_workers != "auto" and int(n_workers) > 1:
            raise ConfigError(f"sweep.n_workers={n_workers}: under torchrun / accelerate launch a sweep is one "
                              f"worker whose trials run on all {launched_processes()} processes; use 1 or auto")
        return 1, []
    if n_workers != "auto":
        return int(n_workers), []
    import torch

    if torch.cuda.is_available():
        return 1, []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    user_threads = any(o.split("=", 1)[0].lstrip("+~") == "threads" for o in user)
    return max(1, cores), ([] if user_threads or cores == 1 else ["threads=1"])


def workers_for_confirm(confirm: str, n_workers, user: list[str]) -> tuple[int, list[str]]:
    """`workers_and_threads`, except that a race runs in one worker process: with several, a 2-worker
    smoke race finished but one worker never exited (it hung in Python's thread shutdown). `auto`
    gives one worker then; an explicit number above one is refused in one line."""
    if confirm != "race":
        return workers_and_threads(n_workers, user)
    if n_workers != "auto" and int(n_workers) > 1:
        raise ConfigError(f"sweep.n_workers={n_workers}: sweep.confirm=race runs in one worker process "
                          f"(several can hang at exit); use sweep.n_workers=1 or auto")
    return 1, []


def _check_batch_trials(value, n_workers: int) -> int:
    """`sweep.batch_trials`; null: this command's `n_workers`. Workers started outside alignbench
    (a Hydra launcher, other machines) each have n_workers=1 and must name their total here, or
    each batch holds one trial and they take turns."""
    if value is None:
        return n_workers
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"sweep.batch_trials={value}: must be an integer >= 1 (null: sweep.n_workers)")
    return value


def _check_confirm_seeds(value, key: str = "confirm_seeds") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"sweep.{key}={value}: must be an integer >= 0 (0 = no confirmation)")
    return value


def _check_confirm(get, seed: int) -> ConfirmSettings:
    """The confirmation settings: sweep.confirm, the number of confirmation seeds, the race's rule,
    the sweep's seed for the bootstrap draws. A race's seeds are seed+1 .. seed+confirm_seeds_max
    (null: confirm_seeds); it needs race.min_seeds of them at least."""
    from alignbench.confirm.racing import SPENDING

    mode = get("confirm", "full")
    if mode not in CONFIRM_MODES:
        raise ConfigError(f"sweep.confirm={mode}: must be full or race")
    seeds = _check_confirm_seeds(get("confirm_seeds", 0))
    if mode == "full":
        return ConfirmSettings(mode=mode, seeds=seeds, rng_seed=seed)
    if get("confirm_seeds_max") is not None:
        seeds = _check_confirm_seeds(get("confirm_seeds_max"), "confirm_seeds_max")
    race = {"min_seeds": get("race.min_seeds", 2), "min_effect": get("race.min_effect", 0.05),
            "spending": get("race.spending", "obrien_fleming"), "futility": get("race.futility", 0.1), "alpha": 0.05}
    min_seeds = race["min_seeds"]
    if isinstance(min_seeds, bool) or not isinstance(min_seeds, int) or min_seeds < 1:
        raise ConfigError(f"sweep.race.min_seeds={min_seeds}: must be an integer >= 1")
    if seeds and min_seeds > seeds:
        raise ConfigError(f"sweep.race.min_seeds={min_seeds}: more than the race's maximum of {seeds} seeds "
                          "(sweep.confirm_seeds_max, or confirm_seeds when that is null)")
    effect = race["min_effect"]
    if isinstance(effect, bool) or not isinstance(effect, (int, float)) or not 0 <= effect < 1:
        raise ConfigError(f"sweep.race.min_effect={effect}: must be a win-rate difference in [0, 1) (0 = no "
                          "equivalence stops)")
    futility = race["futility"]
    if isinstance(futility, bool) or not isinstance(futility, (int, float)) or not 0 <= futility < 1:
        raise ConfigError(f"sweep.race.futility={futility}: must be a conditional power in [0, 1) (0 = no "
                          "futility stops)")
    race["futility"] = float(futility)
    if race["spending"] not in SPENDING:
        raise ConfigError(f"sweep.race.spending={race['spending']}: must be {' or '.join(SPENDING)}")
    race["min_effect"] = float(effect)
    return ConfirmSettings(mode=mode, seeds=seeds, rng_seed=seed, **race)


def _check_methods(methods: list) -> list:
    if not methods:
        raise ConfigError("sweep.methods: empty (choose from " + ", ".join(METHODS) + ")")
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"sweep.methods: {m}: unknown method (choose from {', '.join(METHODS)})")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"sweep.methods: {methods}: a method is listed twice")
    return methods


def _check_objective_and_counts(get) -> str:
    objective = get("objective", "win_rate")
    if objective not in OBJECTIVES:
        raise ConfigError(f"sweep.objective={objective}: must be win_rate or pareto")
    for key in ("n_trials", "n_workers", "max_failures"):
        value = get(key, 1)
        if key == "n_workers" and value == "auto":
            continue
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"sweep.{key}={value}: must be an integer >= 1")
    return objective


def _pruner(get, objective: str) -> dict:
    pruner = _container(get("pruner"))
    pruner.setdefault("type", "median")
    if pruner["type"] not in PRUNERS:
        raise ConfigError(f"sweep.pruner.type={pruner['type']}: must be median or none")
    if objective == "pareto":
        pruner["type"] = "none"  # Optuna cannot prune multi-objective studies
    return pruner


def _check_trial_configs(method: str, space: dict, overrides: list[str], confirm_seeds: int,
                         confirm_overrides: list[str]) -> tuple[int, int]:
    """Validate the method's trial config, at both corners of its space too, and its confirmation
    config; returns its (train.max_steps, seed)."""
    trial_cfg = compose_trial(overrides)
    for key in space:
        if OmegaConf.select(trial_cfg, key, default=None) is None:
            raise ConfigError(f"search_space/{method}.yaml: {key} is not a key of the method={method} config")
    validate(trial_cfg)
    # The sampled extremes must be valid configs too (e.g. a range reaching beta <= 0).
    for corner in (0, -1):
        values = {k: v["choices"][corner] if "choices" in v else v["low" if corner == 0 else "high"]
                  for k, v in space.items()}
        validate(compose_trial(overrides + param_overrides(values)))
    if confirm_seeds:
        validate(compose_trial(overrides + [f"seed={int(trial_cfg.seed) + confirm_seeds}", *confirm_overrides]))
    return int(trial_cfg.train.max_steps), int(trial_cfg.seed)


def param_overrides(params: dict) -> list[str]:
    """Sampled params as dotted Hydra overrides (floats by repr, so they round-trip exactly)."""
    return [f"{k}={repr(v) if isinstance(v, float) else str(v)}" for k, v in params.items()]


def compose_trial(overrides: list[str]):
    """The trial config of these overrides; Hydra's errors become a one-line ConfigError."""
    try:
        return compose(overrides)
    except ConfigError:
        raise
    except Exception as exc:  # Hydra's override / missing key errors, as one line
        raise ConfigError(" ".join(str(exc).split()) or type(exc).__name__) from None


def _container(node, default=None):
    if node is None:
        return {} if default is None else default
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
