"""Config validation: what a schema cannot say (ranges, choices, rules across keys, files that must
exist), each bad value as one line naming the key. The config is composed by `alignbench.composition`
(re-exported here: callers import `compose` and `ConfigError` from this module) and typed by
`alignbench.schemas`."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alignbench.composition import (CONF_DIR, GROUPS, ConfigError, check_composed,  # noqa: F401
                                    check_overrides, compose, gguf_path, group_options, one_line)
from alignbench.methods import METHODS
from alignbench.schemas import shown

JUDGES = ("gold", "reward_model", "llm_pairwise")


def check_settings(cfg: DictConfig, signs: bool = True) -> None:
    """What every command checks before work: the composed config resolves and names known stores
    (`composition.check_composed`), and no number is negative (`signs=False` leaves negative numbers
    to the more specific checks of `validate`)."""
    resolved = check_composed(cfg)
    for key, value in _numbers(resolved) if signs else ():
        if value < 0:
            raise ConfigError(f"{key}={shown(value)}: must be >= 0")


def _numbers(node: dict, prefix: str = ""):
    """(key, number) of every setting; a search space's dotted keys are data, not settings."""
    for name, value in ((n, v) for n, v in node.items() if "." not in str(n)):
        if isinstance(value, dict):
            yield from _numbers(value, f"{prefix}{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{name}", value


def _positive(cfg, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key}={shown(value)}{source_of(cfg, key)}: must be > 0")


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
    check_settings(cfg, signs=False)  # first: the checks below read resolved values
    name = OmegaConf.select(cfg, "method.name")
    if name not in METHODS:
        raise ConfigError(f"method.name={name}: unknown method (choose from {', '.join(METHODS)})")
    _positive(cfg, "method.lr")
    if problem := METHODS[name].check(cfg):  # the method's own settings: its row's check
        raise ConfigError(problem)
    check_choices(cfg)
    check_budget(cfg)
    check_data(cfg)
    check_model_and_judge(cfg)
    check_settings(cfg)  # any negative number the specific checks above did not name
    check_checkpointing(cfg)


def check_budget(cfg: DictConfig) -> None:
    """The shared training and evaluation budget; a valid KL estimate."""
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
        raise ConfigError(f"eval.temperature={shown(e.temperature)}: must be 1.0 (the sampled KL estimate is only valid "
                          "at temperature 1)")
    if e.samples_per_prompt < 1:  # its kind is the schema's
        raise ConfigError(f"eval.samples_per_prompt={e.samples_per_prompt}: must be an integer >= 1")
    _positive(cfg, "eval.diverged_kl")  # nats/seq above which a run is tagged diverged


def check_data(cfg: DictConfig) -> None:
    if cfg.data.source == "local":
        path = OmegaConf.select(cfg, "data.path", throw_on_missing=False, default=None)
        if path is None or OmegaConf.is_missing(cfg.data, "path"):
            raise ConfigError("data.path: required for data=local (data.path=/path/to/file.jsonl)")
        if not Path(path).exists():
            raise ConfigError(f"data.path={path}: file not found")
    if cfg.data.source == "builtin":
        check_builtin_task(cfg.data)
    if cfg.data.source != "builtin":
        for key in ("validation_fraction", "test_fraction"):
            value = cfg.data[key]
            if not 0 < value < 1:
                raise ConfigError(f"data.{key}={shown(value)}: must be in (0, 1)")
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
    lora = cfg.model.get("lora")
    if lora is not None and not OmegaConf.is_dict(lora):
        raise ConfigError(f"model.lora={lora}: must be a group of settings (r, alpha, dropout, target_modules) or null")
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
        if value < 1:
            raise ConfigError(f"judge.{key}={value}: must be an integer >= 1")


CHOICES = {"device": ("auto", "cpu", "cuda"), "precision": ("auto", "fp32", "bf16"), "eval.split": ("validation", "test"),
           "data.source": ("builtin", "hub", "local"), "data.long_prompts": ("truncate_left", "drop"),
           "model.source": ("builtin", "hub")}


def check_choices(cfg: DictConfig) -> None:
    """Settings that take one of a few words (`CHOICES`), and the torch threads."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value}: must be {', '.join(allowed[:-1])} or {allowed[-1]}")
    threads = OmegaConf.select(cfg, "threads", default=None)
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}: must be >= 1 (null = torch's default)")


def check_checkpointing(cfg: DictConfig) -> None:
    """train.checkpoint_every and resume: offline methods only (the online loop's rollout is not checkpointed)."""
    every = OmegaConf.select(cfg, "train.checkpoint_every", default=0)
    if every < 0:
        raise ConfigError(f"train.checkpoint_every={every}: must be an integer >= 0 (0 = no checkpoints)")
    resume = OmegaConf.select(cfg, "resume", default=None)
    if METHODS[cfg.method.name].loop == "online" and (every or resume):
        key = f"resume={resume}" if resume else f"train.checkpoint_every={every}"
        offline = ", ".join(name for name, method in METHODS.items() if method.loop == "offline")
        raise ConfigError(f"{key}: method={cfg.method.name} cannot be checkpointed or resumed (offline methods only: "
                          f"{offline}); rerun it from the start")
    if resume and not cfg.tracking.enabled:
        raise ConfigError(f"resume={resume}: needs tracking.enabled=true (checkpoints are artifacts of the MLflow run)")
