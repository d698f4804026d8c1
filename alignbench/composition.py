"""The run config, composed: Hydra's compose API over conf/ with the schemas registered
(`alignbench.schemas`; a model's CPU budget is a group of conf/ too, `budget`), Hydra's and
OmegaConf's errors as one line, and what every command needs of the result (`check_composed`).
`alignbench.config` validates the values."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alignbench.schemas import register

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("method", "model", "data", "judge", "sweep", "budget")


class ConfigError(ValueError):
    """A bad config value, reported as one line naming the key before any work starts."""


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_overrides(overrides: list[str]) -> None:
    """Catch `group=unknown` before Hydra does, so the user gets one line, not a traceback."""
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key in GROUPS and value == "null" and not item.startswith("~"):  # Hydra: a ValueError traceback
            off = "; budget=none turns the model's budget off" if key == "budget" else ""
            raise ConfigError(f"{key}=null: a {key} is chosen by name (choose from "
                              f"{', '.join(group_options(key))}){off}")
        if key in GROUPS and value and value != "null" and value not in group_options(key):
            what = {"method": "method", "budget": "budget"}.get(key, f"{key} preset")
            raise ConfigError(f"{key}={value}: unknown {what} (choose from {', '.join(group_options(key))})")


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The resolved run config for `overrides`, exactly as the CLI would build it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides or [])
    check_overrides(overrides)
    register()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        try:
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
        except Exception as exc:  # noqa: BLE001 — a value of the wrong type is a ConfigError, the rest Hydra's
            if type_problem(exc) is None:
                raise
            raise ConfigError(type_problem(exc)) from None
    return cfg


# OmegaConf's words for a value of the wrong type, and ours.
_KINDS = (("converted to Integer", "must be an integer"), ("converted to Float", "must be a number"),
          ("is not a valid bool", "must be true or false"), ("is not Optional", "must be set"),
          ("cannot be assigned None", "must be set"), ("is not a ListConfig", "must be a list"),
          ("to string", "must be one value, not a list or group"),
          ("is not a subclass of", "must be a group of settings, not one value"),
          ("Cannot assign", "must be a group of settings, not one value"))


def type_problem(exc: BaseException) -> str | None:
    """One line for a value the schemas refuse while Hydra composes: `key=value: must be ...`, or None
    when `exc` is another error."""
    import re

    cause = exc.__cause__ or exc
    words = next((ours for theirs, ours in _KINDS if theirs in str(cause)), None)
    key = getattr(cause, "full_key", None)
    if words is None or not key:
        return None
    given = re.match(r"Error merging override (\S+)", str(exc))
    return f"{given.group(1) if given else key}: {words}"


def one_line(exc: Exception) -> str:
    """A Hydra or OmegaConf error (a value of the wrong type, bad override syntax, unknown key, broken
    interpolation, a key a config file sets that its schema does not have) as one line."""
    problem = type_problem(exc)
    if problem:
        return problem
    skip = ("See http", "full_key:", "object_type", "reference_type", "^")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith(skip)]
    text = "; ".join(lines) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__  # Hydra's error merging a config file holds OmegaConf's, with its key
    key = getattr(exc, "full_key", None) or getattr(cause, "full_key", None)
    return f"{key}: {text}" if key else text


URI_SCHEMES = ("file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")  # MLflow's stores


def check_composed(cfg: DictConfig) -> dict:
    """The composed config, resolved (a broken interpolation is one line), once its tracking and
    storage URLs are known to name a store: what every command needs before it reads the config."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(one_line(exc)) from None
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
    return resolved


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
