"""Config composition (Hydra's compose API) and validation with one-line errors naming the key."""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alignbench.methods import METHODS

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("method", "model", "data", "judge", "sweep")
JUDGES = ("gold", "reward_model", "llm_pairwise")


class ConfigError(ValueError):
    """A bad config value, reported as one line naming the key before any work starts."""


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_overrides(overrides: list[str]) -> None:
    """Catch `group=unknown` before Hydra does, so the user gets one line, not a traceback."""
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key in GROUPS and value and value != "null" and value not in group_options(key):
            what = "method" if key == "method" else f"{key} preset"
            raise ConfigError(f"{key}={value}: unknown {what} (choose from {', '.join(group_options(key))})")


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The resolved run config for `overrides`, exactly as the CLI would build it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides or [])
    check_overrides(overrides)
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=overrides)
    return apply_model_budget(cfg, overrides)


def apply_model_budget(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A model's `budget` block over the shared defaults: settings sized for that model on 2 CPU cores,
    under `all` and under `method=<name>` / `data=<name>` for one method's or one data set's own
    settings. A key given as an override (command line, a sweep's overrides) keeps the given value;
    `model.budget=null` keeps the shared defaults. Applied here and by the CLI, the two places a run
    config is composed."""
    budget = OmegaConf.select(cfg, "model.budget", default=None)
    if not budget:
        return cfg
    given = {item.lstrip("+~").partition("=")[0] for item in overrides}
    sections = ("all", f"method={OmegaConf.select(cfg, 'method.name')}", f"data={OmegaConf.select(cfg, 'data.name')}")
    for key, value in ((k, v) for name in sections for k, v in budget.get(name, {}).items()):
        if key in given:
            continue
        if OmegaConf.select(cfg, key, default="???") == "???":  # absent: a typo in the model's budget
            raise ConfigError(f"model.budget: {key} is not a setting")
        OmegaConf.update(cfg, key, value)
    return cfg


def one_line(exc: Exception) -> str:
    """A Hydra or OmegaConf error (bad override syntax, unknown key, broken interpolation) as one line."""
    skip = ("See http", "full_key:", "object_type", "reference_type", "^")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith(skip)]
    text = "; ".join(lines) or type(exc).__name__
    key = getattr(exc, "full_key", None)
    return f"{key}: {text}" if key else text


@functools.lru_cache(maxsize=None)
def _defaults_of(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _leaves(node, prefix: str = ""):
    for name, value in node.items():
        if name in ("defaults", "hydra") or "." in str(name):  # a search space's dotted keys are data, not settings
            continue
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{name}.")
        elif value is not None and not (isinstance(value, str) and ("${" in value or value == "???")):
            yield f"{prefix}{name}", value


WHOLE_OR_FRACTION = ("model.lora.alpha",)  # whole-number defaults that may take any number
# Settings whose default is null, by the kind of value they take when set.
TEXT_OR_NULL = ("tracking.uri", "tracking.run_name", "sweep.storage", "sweep.experiment", "report.sweep", "resume")
NUMBER_OR_NULL = {"threads": 1, "sweep.grace_period": 1.0, "method.target_kl": 1.0, "sweep.confirm_seeds_max": 1}  # key: a default of its kind
CHECKED_ELSEWHERE = ("cache_dir", "sweep.n_workers")  # an interpolation; a number or "auto" (sweep/plan.py)
NULL_MEANS_NONE = ("data.max_row_chars",)  # settings with a default where null means "no limit"
URI_SCHEMES = ("file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")  # MLflow's stores


def check_types(cfg: DictConfig, signs: bool = True) -> None:
    """Every setting keeps the kind of its default in conf/: numbers stay numbers (whole where the
    default is whole, never negative), flags stay true/false, lists stay lists, text stays one value.
    The defaults are the files of conf/ and of the chosen method, model, data, judge and sweep.
    Interpolations must resolve and the tracking and storage URLs must name a known store.
    `signs=False` leaves negative numbers to the later, more specific checks of `validate`."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(one_line(exc)) from None
    files = [("", CONF_DIR / "config.yaml")]
    for group in GROUPS:
        name = OmegaConf.select(cfg, f"{group}.name", default=None)
        if OmegaConf.is_config(name):
            raise ConfigError(f"{group}.name={_shown(name)}: must be one value, not a list or group")
        if name is not None and (CONF_DIR / group / f"{name}.yaml").exists():
            files.append((f"{group}.", CONF_DIR / group / f"{name}.yaml"))
    checks = [(key, default) for prefix, path in files for key, default in _leaves(_defaults_of(path), prefix)]
    checks += [(key, "") for key in TEXT_OR_NULL] + list(NUMBER_OR_NULL.items()) + [("model.lora", {"r": 16})]
    for key, default in checks:
        value = _lookup(resolved, key)  # plain dicts: ~10x faster than OmegaConf.select, run before every trial
        if key in CHECKED_ELSEWHERE or (value is None and (key in TEXT_OR_NULL or key in NUMBER_OR_NULL
                                                           or key in NULL_MEANS_NONE)):  # null: unset
            continue
        problem = _kind_problem(key, default, value, signs)
        if problem:
            raise ConfigError(f"{key}={_shown(value)}: {problem}")
    _check_uris(cfg)


def _check_uris(cfg: DictConfig) -> None:
    uri = OmegaConf.select(cfg, "tracking.uri", default=None)
    if uri is not None and "://" in str(uri) and str(uri).split("://")[0].split("+")[0] not in URI_SCHEMES:
        raise ConfigError(f"tracking.uri={uri}: not an MLflow store (a path, or a URL starting "
                          f"{', '.join(s + '://' for s in URI_SCHEMES)})")
    storage = OmegaConf.select(cfg, "sweep.storage", default=None)
    if storage is not None and "://" in str(storage) and not str(storage).startswith("journal://"):
        from sqlalchemy.engine import make_url

        try:
            make_url(str(storage)).get_dialect()
        except Exception as exc:  # noqa: BLE001 — SQLAlchemy's URL parse / dialect lookup errors
            raise ConfigError(f"sweep.storage={storage}: not a journal path or a database URL SQLAlchemy "
                              f"knows ({one_line(exc)})") from None


def _lookup(resolved: dict, key: str):
    """`key`'s value in a resolved config (None when absent or "???"), as OmegaConf.select(default=None)."""
    node = resolved
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return None if node == "???" else node


def _shown(value) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return "null" if value is None else str(value)


def _kind_problem(key: str, default, value, signs: bool = True) -> str | None:
    """Why `value` cannot stand where conf/ has `default`, or None."""
    if isinstance(default, dict):
        return None if value is None or isinstance(value, dict) else "must be a group of settings, not one value"
    if value is None:
        return f"must be set (default {_shown(default)})"
    if isinstance(default, list):
        return None if isinstance(value, list) else f"must be a list, e.g. {_shown(default).replace(' ', '')}"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if isinstance(default, int) and not isinstance(value, int) and key not in WHOLE_OR_FRACTION:
            return "must be an integer"
        return "must be >= 0" if signs and value < 0 else None
    if isinstance(value, (dict, list)):
        return "must be one value, not a list or group"
    return None


def _positive(cfg, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key}={value}{source_of(cfg, key)}: must be > 0")


def source_of(cfg, key: str) -> str:
    """" (from data.max_length)" when `key`'s value is an interpolation of another key (what the user set), else ""."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    raw = OmegaConf.to_container(node, resolve=False).get(leaf) if OmegaConf.is_dict(node) else None
    if isinstance(raw, str) and raw.startswith("${") and raw.endswith("}") and ":" not in raw:
        return f" (from {raw[2:-1]})"
    return ""


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first bad value."""
    check_types(cfg, signs=False)  # kinds first: the checks below compare numbers
    name = OmegaConf.select(cfg, "method.name")
    if name not in METHODS:
        raise ConfigError(f"method.name={name}: unknown method (choose from {', '.join(METHODS)})")
    _positive(cfg, "method.lr")
    check_method(cfg)
    check_budget(cfg)
    check_data(cfg)
    check_model_and_judge(cfg)
    check_device(cfg)
    check_types(cfg)  # any negative number the specific checks above did not name
    check_checkpointing(cfg)


def check_method(cfg: DictConfig) -> None:
    """The chosen method's own settings: its row's check in `alignbench.methods.METHODS`."""
    problem = METHODS[cfg.method.name].check(cfg)
    if problem:
        raise ConfigError(problem)


def check_budget(cfg: DictConfig) -> None:
    """The shared training and evaluation budget."""
    for key in ("train.batch_size", "train.max_steps", "train.max_length", "train.max_prompt_length",
                "eval.n_prompts", "eval.max_new_tokens", "eval.batch_size"):
        _positive(cfg, key)
    if cfg.train.max_prompt_length >= cfg.train.max_length:
        raise ConfigError(f"train.max_prompt_length={cfg.train.max_prompt_length}"
                          f"{source_of(cfg, 'train.max_prompt_length')}: must be < "
                          f"train.max_length={cfg.train.max_length}{source_of(cfg, 'train.max_length')}")
    context = OmegaConf.select(cfg, "model.context_length", default=None)  # the built-in model's positions
    longest = max(cfg.train.max_length, cfg.train.max_prompt_length + cfg.eval.max_new_tokens)
    if context is not None and longest > context:
        raise ConfigError(f"train.max_length={cfg.train.max_length}: with train.max_prompt_length + eval.max_new_tokens, "
                          f"needs {longest} positions > model.context_length={context} (raise model.context_length)")
    check_eval(cfg)


def check_eval(cfg: DictConfig) -> None:
    """The evaluation's own settings: which held-out set, how many samples, valid KL."""
    e = cfg.eval
    if e.temperature != 1.0:
        raise ConfigError(f"eval.temperature={e.temperature}: must be 1.0 (the sampled KL estimate is only valid "
                          "at temperature 1)")
    if e.split not in ("validation", "test"):
        raise ConfigError(f"eval.split={e.split}: must be validation or test")
    spp = e.samples_per_prompt
    if not isinstance(spp, int) or isinstance(spp, bool) or spp < 1:
        raise ConfigError(f"eval.samples_per_prompt={spp}: must be an integer >= 1")
    seed = OmegaConf.select(cfg, "task_seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"task_seed={seed}: must be an integer")


def check_data(cfg: DictConfig) -> None:
    if cfg.data.source not in ("builtin", "hub", "local"):
        raise ConfigError(f"data.source={cfg.data.source}: must be builtin, hub or local")
    if cfg.data.source == "local":
        path = OmegaConf.select(cfg, "data.path", throw_on_missing=False, default=None)
        if path is None or OmegaConf.is_missing(cfg.data, "path"):
            raise ConfigError("data.path: required for data=local (data.path=/path/to/file.jsonl)")
        if not Path(path).exists():
            raise ConfigError(f"data.path={path}: file not found")
    if cfg.data.long_prompts not in ("truncate_left", "drop"):
        raise ConfigError(f"data.long_prompts={cfg.data.long_prompts}: must be truncate_left or drop")
    if cfg.data.source == "builtin":
        check_builtin_task(cfg.data)
    if cfg.data.source != "builtin":
        for key in ("validation_fraction", "test_fraction"):
            value = cfg.data[key]
            if not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(f"data.{key}={value}: must be in (0, 1)")
        if cfg.data.validation_fraction + cfg.data.test_fraction >= 1:
            raise ConfigError("data.validation_fraction + data.test_fraction: must be < 1 (training needs prompts)")


def check_builtin_task(data: DictConfig) -> None:
    """A built-in task's prompts and, for data=sentiment, its gap filter and lexicon package (before any work)."""
    import importlib.util

    task = data.get("task", "builtin")
    if task not in ("builtin", "sentiment"):
        raise ConfigError(f"data.task={task}: must be builtin or sentiment")
    for key in ("n_train_prompts", "n_eval_prompts"):
        if not isinstance(data[key], int) or data[key] < 1:
            raise ConfigError(f"data.{key}={data[key]}: no prompts to sample pairs on (must be an integer >= 1)")
    if task != "sentiment":
        return
    if not isinstance(data.min_gold_gap, (int, float)) or not 0 <= data.min_gold_gap < 2:
        raise ConfigError(f"data.min_gold_gap={data.min_gold_gap}: must be in [0, 2) (gold rewards lie in [-1, 1])")
    if importlib.util.find_spec("vaderSentiment") is None:
        raise ConfigError("data=sentiment: its gold reward needs the lexicon package vaderSentiment; install it with "
                          "`pip install vaderSentiment==3.3.2`")


def check_model_and_judge(cfg: DictConfig) -> None:
    if cfg.model.source not in ("builtin", "hub"):
        raise ConfigError(f"model.source={cfg.model.source}: must be builtin or hub")
    if cfg.model.get("gguf"):  # before any work: the package holding the file must be installed
        gguf_path(cfg.model.gguf)
    if cfg.judge.name == "gold" and cfg.data.source != "builtin":
        raise ConfigError(f"judge=gold: the gold reward exists only on data=builtin and data=sentiment "
                          f"(data={cfg.data.name}); use judge=reward_model")
    if cfg.judge.name not in JUDGES:
        raise ConfigError(f"judge.name={cfg.judge.name}: unknown judge (choose from {', '.join(JUDGES)})")
    if cfg.judge.name == "llm_pairwise":
        check_pairwise_judge(cfg.judge)
    if cfg.judge.name == "reward_model":
        path = str(cfg.judge.path)
        if path != "trained" and path.startswith(("/", ".", "~")) and not Path(path).expanduser().exists():
            raise ConfigError(f"judge.path={path}: not found")


def gguf_path(spec) -> Path:
    """The GGUF file named by a model config's `gguf` block, in its installed package (found with
    `find_spec`, never imported: such packages' `__init__` pulls in their own runtime, e.g. llama_cpp);
    ConfigError naming the install command when the package or the file is missing."""
    import importlib.util

    found = importlib.util.find_spec(spec.package)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        raise ConfigError(f"model.gguf.package={spec.package}: not installed; install it with {spec.install}")
    path = Path(locations[0]) / spec.file
    if not path.is_file():
        raise ConfigError(f"model.gguf.file={spec.file}: not found in {locations[0]}; reinstall with {spec.install}")
    return path


def check_pairwise_judge(judge: DictConfig) -> None:
    """judge=llm_pairwise names a causal LM (a local folder or hub id; a GGUF file in that folder)."""
    if judge.get("path") in (None, "", "trained"):
        raise ConfigError("judge=llm_pairwise: set judge.path to a causal LM (a local folder or hub id)")
    path = Path(str(judge.path)).expanduser()
    if str(judge.path).startswith(("/", ".", "~")) and not path.exists():
        raise ConfigError(f"judge.path={judge.path}: not found")
    gguf = judge.get("gguf_file")
    if gguf and path.is_dir() and not (path / str(gguf)).is_file():
        raise ConfigError(f"judge.gguf_file={gguf}: not found in {judge.path}")
    for key in ("batch_size", "max_prompt_tokens", "max_response_tokens"):
        value = judge.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"judge.{key}={value}: must be an integer >= 1")


def check_device(cfg: DictConfig) -> None:
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device}: must be auto, cpu or cuda")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision={cfg.precision}: must be auto, fp32 or bf16")
    threads = OmegaConf.select(cfg, "threads", default=None)
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}: must be >= 1 (null = torch's default)")


def check_checkpointing(cfg: DictConfig) -> None:
    """train.checkpoint_every and resume: offline methods only (the online loop's rollout is not checkpointed)."""
    every = OmegaConf.select(cfg, "train.checkpoint_every", default=0)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ConfigError(f"train.checkpoint_every={every}: must be an integer >= 0 (0 = no checkpoints)")
    resume = OmegaConf.select(cfg, "resume", default=None)
    if METHODS[cfg.method.name].loop == "online" and (every or resume):
        key = f"resume={resume}" if resume else f"train.checkpoint_every={every}"
        offline = ", ".join(name for name, method in METHODS.items() if method.loop == "offline")
        raise ConfigError(f"{key}: method={cfg.method.name} cannot be checkpointed or resumed (offline methods only: "
                          f"{offline}); rerun it from the start")
    if resume and not cfg.tracking.enabled:
        raise ConfigError(f"resume={resume}: needs tracking.enabled=true (checkpoints are artifacts of the MLflow run)")
