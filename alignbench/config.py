"""Config composition (Hydra's compose API) and validation with one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
METHODS = ("ppo", "dpo", "ipo", "kto", "simpo", "rloo")
GROUPS = ("method", "model", "data", "judge", "sweep")


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
    return cfg


def _positive(cfg, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key}={value}: must be > 0")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError on the first bad value."""
    name = OmegaConf.select(cfg, "method.name")
    if name not in METHODS:
        raise ConfigError(f"method.name={name}: unknown method (choose from {', '.join(METHODS)})")
    _positive(cfg, "method.lr")
    check_method(cfg)
    check_budget(cfg)
    check_data(cfg)
    check_model_and_judge(cfg)
    check_device(cfg)


def check_method(cfg: DictConfig) -> None:
    """The chosen method's own settings (the one place a method's config rules live)."""
    name, m = cfg.method.name, cfg.method
    if name == "dpo":
        _positive(cfg, "method.beta")
        if not 0 <= m.label_smoothing < 0.5:
            raise ConfigError(f"method.label_smoothing={m.label_smoothing}: must be in [0, 0.5)")
    elif name == "ipo":
        _positive(cfg, "method.tau")
    elif name == "simpo":
        _positive(cfg, "method.beta")
        if m.gamma_beta_ratio < 0:
            raise ConfigError(f"method.gamma_beta_ratio={m.gamma_beta_ratio}: must be >= 0")
        if m.gamma_convention not in ("ratio", "absolute"):
            raise ConfigError(f"method.gamma_convention={m.gamma_convention}: must be ratio or absolute")
    elif name == "kto":
        _positive(cfg, "method.beta")
        _positive(cfg, "method.desirable_weight")
        _positive(cfg, "method.undesirable_weight")
    elif name == "ppo":
        _check_online(cfg)
    elif name == "rloo":
        _check_online(cfg)
        k = m.rloo_k
        if not isinstance(k, int) or k < 2:
            raise ConfigError(f"method.rloo_k={k}: must be an integer >= 2 (the leave-one-out baseline needs 2 samples)")
        if m.rollout_batch_size % k:
            raise ConfigError(f"method.rollout_batch_size={m.rollout_batch_size}: must be a multiple of "
                              f"method.rloo_k={k}")


def _check_online(cfg: DictConfig) -> None:
    """What PPO and RLOO share: the clipped surrogate, the KL penalty, the reward, the rollout sizes."""
    m = cfg.method
    if not 0 < m.clip_ratio < 1:
        raise ConfigError(f"method.clip_ratio={m.clip_ratio}: must be in (0, 1)")
    if m.kl_coef < 0:
        raise ConfigError(f"method.kl_coef={m.kl_coef}: must be >= 0")
    if m.reward not in ("model", "gold"):
        raise ConfigError(f"method.reward={m.reward}: must be model or gold")
    if m.reward == "gold" and cfg.data.source != "builtin":
        raise ConfigError("method.reward=gold: the gold reward exists only on data=builtin")
    for key in ("rollout_batch_size", "ppo_epochs", "n_minibatches"):
        _positive(cfg, f"method.{key}")


def check_budget(cfg: DictConfig) -> None:
    """The shared training and evaluation budget."""
    for key in ("train.batch_size", "train.max_steps", "train.max_length", "train.max_prompt_length",
                "eval.n_prompts", "eval.max_new_tokens", "eval.batch_size"):
        _positive(cfg, key)
    if cfg.train.max_prompt_length >= cfg.train.max_length:
        raise ConfigError(f"train.max_prompt_length={cfg.train.max_prompt_length}: must be < train.max_length={cfg.train.max_length}")
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
    if cfg.data.source != "builtin":
        for key in ("validation_fraction", "test_fraction"):
            value = cfg.data.get(key, 0.1)
            if not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(f"data.{key}={value}: must be in (0, 1)")
        if cfg.data.get("validation_fraction", 0.1) + cfg.data.get("test_fraction", 0.1) >= 1:
            raise ConfigError("data.validation_fraction + data.test_fraction: must be < 1 (training needs prompts)")


def check_model_and_judge(cfg: DictConfig) -> None:
    if cfg.model.source not in ("builtin", "hub"):
        raise ConfigError(f"model.source={cfg.model.source}: must be builtin or hub")
    if cfg.judge.name == "gold" and cfg.data.source != "builtin":
        raise ConfigError(f"judge=gold: the gold reward exists only on data=builtin (data={cfg.data.name}); use judge=reward_model")
    if cfg.judge.name == "reward_model":
        path = str(cfg.judge.path)
        if path != "trained" and path.startswith(("/", ".", "~")) and not Path(path).expanduser().exists():
            raise ConfigError(f"judge.path={path}: not found")


def check_device(cfg: DictConfig) -> None:
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={cfg.device}: must be auto, cpu or cuda")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision={cfg.precision}: must be auto, fp32 or bf16")
