"""Nothing a user can type as an override ends in a traceback: every `key=value` override the
README and docs/ document, given a bad value (wrong type, negative, unknown choice, missing file,
bad syntax), stops `alignbench <command>` before any work with exit status 2 and one line
`alignbench: error: ...` naming the key.

The keys come from the documents themselves, so a newly documented override is walked too; the
bad values come from the kind of each key's default. Runs the CLI in-process (no training starts:
a guard fails the test if one would)."""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from alignbench import cli
from alignbench.config import GROUPS, compose

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Where a key exists: the base overrides of the config that has it (first match wins).
LOCAL = ["data=local", f"data.path={ROOT / 'README.md'}", "judge=reward_model", "judge.path=trained"]
CONTEXTS = [[], ["method=ipo"], ["method=ppo"], ["method=rloo"], ["method=kto"], ["method=simpo"],
            ["sweep=smoke"], LOCAL, ["model=qwen2.5-0.5b-instruct"]]
CHOICE_KEYS = {"eval.split", "method.reward", "sweep.objective", "sweep.pruner.type", "precision", "device",
               "model.source", "data.source", "method.gamma_convention"}
PATH_KEYS = {"data.path", "judge.path"}
URI_KEYS = {"tracking.uri", "sweep.storage"}
# Bad syntax and keys that do not exist: Hydra's own errors, one line too.
SYNTAX = [("train", "train.max_steps=[", "train.max_steps=["), ("train", "train.max_step=5", "train.max_step"),
          ("train", "seed='a", "seed"), ("train", "method.beta=${nowhere}", "nowhere"),
          ("sweep", "sweep.n_trialz=2", "sweep.n_trialz")]


def documented_keys() -> set[str]:
    text = "\n".join(p.read_text() for p in DOCS)
    assigned = re.findall(r"(?<![\w./+~-])([a-z_]+(?:\.[a-z_0-9]+)*)=(?!=)", text)
    quoted = re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)+)`", text)
    return set(assigned) | set(quoted)


@functools.lru_cache(maxsize=None)
def _contexts():
    return [(base, compose(base)) for base in CONTEXTS]


def bad_values(key: str, default) -> list[str]:
    """Values that must be refused for `key`, from the kind of its default."""
    if key in GROUPS:
        return ["nonsense"]
    if key in PATH_KEYS:
        return ["/nonexistent/pairs.jsonl" if key == "data.path" else "/nonexistent/reward_model"]
    if key in URI_KEYS:
        return ["nonsense://nowhere", "[1,2]"]
    if key in CHOICE_KEYS:
        return ["nonsense", "[1,2]"]
    if key == "report.sweep":
        return ["nonsense"]
    if isinstance(default, bool):
        return ["maybe"]
    if isinstance(default, (int, float)) or key in ("threads", "sweep.grace_period"):
        return ["abc", "-1"]
    if OmegaConf.is_list(default):
        return ["5", "[nonsense]"] if key == "sweep.methods" else ["5"]
    if OmegaConf.is_dict(default):
        return ["5"]
    return ["[1,2]"]


@functools.lru_cache(maxsize=None)
def cases(every_value: bool = False) -> list:
    """(command, overrides, key) per documented key: one bad value each (the kinds of bad value
    taken in turn across keys), or every bad value of every key."""
    out = []
    contexts = _contexts()
    for n, key in enumerate(sorted(documented_keys())):
        if key in GROUPS:
            base, default = [], None
        else:
            found = [(base, OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False))
                     for base, cfg in contexts if OmegaConf.select(cfg, key, default="<absent>",
                                                                   throw_on_resolution_failure=False) != "<absent>"]
            if not found:
                continue  # a tag, a metric, a Hydra setting: not a config key
            base, default = next(((b, d) for b, d in found if d is not None), found[0])  # where it is set
        command = ("sweep" if key.startswith("sweep") else "report" if key.startswith("report.")
                   else "ui" if key.startswith("ui.") else "train")
        if command == "sweep":
            base = ["sweep=smoke", "sweep.methods=[dpo]"] if key != "sweep" else []
        values = bad_values(key, default)
        for value in values if every_value else [values[n % len(values)]]:
            out.append(pytest.param(command, [*base, f"{key}={value}"], key, id=f"{key}={value}"))
    out += [pytest.param(c, [o], k, id=o) for c, o, k in SYNTAX]
    return out


class LetThrough(BaseException):
    """Raised where work would start: the bad value was not caught."""


@pytest.fixture
def guarded(monkeypatch, workdir):
    """No training, sweep trial or UI can start; SIGTERM and argv are left as they were."""
    import os

    from alignbench.sweep import run as sweep_run
    from alignbench.training import run as training_run

    def refuse(*args, **kwargs):
        raise LetThrough("work started: the bad value was not refused")

    monkeypatch.setattr(training_run, "train", refuse)
    monkeypatch.setattr(training_run, "train_validated", refuse)  # what `alignbench train` calls
    monkeypatch.setattr(sweep_run, "_run_trials", refuse)
    monkeypatch.setattr(os, "execv", refuse)
    monkeypatch.setattr(cli, "interrupt_on_sigterm", lambda: None)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    return workdir


def test_the_documents_name_the_overrides_we_walk():
    keys = documented_keys()
    for key in ("method.tau", "sweep.n_workers", "report.sweep", "data.path", "judge.path", "tracking.uri",
                "eval.split", "seed", "method", "sweep"):
        assert key in keys, key
    assert len(cases()) > 40 and len(cases(every_value=True)) > 70


@pytest.mark.parametrize("command, overrides, key", cases())
def test_a_bad_override_is_one_line_and_exit_2(guarded, capsys, command, overrides, key):
    check_refused(capsys, command, overrides, key)


@pytest.mark.slow
@pytest.mark.parametrize("command, overrides, key", cases(every_value=True))
def test_every_bad_value_of_every_documented_override(guarded, capsys, command, overrides, key):
    check_refused(capsys, command, overrides, key)


def check_refused(capsys, command: str, overrides: list[str], key: str) -> None:
    try:  # the command on the composed config, as Hydra calls it (composed once here, twice by Hydra's app)
        cfg = compose(overrides)
    except Exception:  # refused while composing: the whole command line, Hydra included
        cfg = None
    with pytest.raises(SystemExit) as stop:
        if cfg is None:
            cli.main([command, *overrides])
        else:
            cli.COMMANDS[command](cfg)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert stop.value.code == 2, out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("alignbench: error: ") and key in lines[0], lines[0]


def test_report_of_an_unknown_sweep_names_it_and_lists_the_sweeps_there(workdir, capsys):
    import mlflow

    from alignbench.tracking.mlflow_runs import set_uri

    set_uri(None)  # MLflow's default store in this directory, created here
    client = mlflow.MlflowClient()
    for name in ("smoke", "dpo_beta"):
        experiment = client.create_experiment(f"sweep-{name}")
        client.create_run(experiment, tags={"alignbench.role": "sweep", "sweep.name": name})
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.report_command(compose(["report.sweep=nope"]))
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"alignbench: error: report.sweep=nope: no such sweep in MLflow at {mlflow.get_tracking_uri()}; "
        "the sweeps there: dpo_beta, smoke"]
