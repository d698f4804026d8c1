"""What many test modules share, in one place: run sizes, the CLI runner, a tracked train, and
small spies. Test modules import from here, never from each other; `conftest.py` holds fixtures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from alignbench.bench.sizes import QUICK_RUN

# --- Run sizes ------------------------------------------------------------------------------------

# One `train` small enough for the default test suite (seconds, not minutes) on the built-in task.
FAST = list(QUICK_RUN)
# PPO and RLOO at that size, with a reward model trained for a few steps.
PPO_FAST = ["method=ppo", *FAST, "method.reward_model.steps=10", "method.rollout_batch_size=8"]
RLOO_FAST = ["method=rloo", *FAST, "method.reward_model.steps=10", "method.rollout_batch_size=8", "method.rloo_k=2"]
# A sweep trial: a few steps, a mid-run evaluation (pruning has something to read), few prompts.
TINY = ["train.max_steps=4", "eval.every_n_steps=2", "eval.n_prompts=12", "eval.max_new_tokens=12"]
# The same without the mid-run evaluation (confirmation runs only need the final one).
TINY_NO_EVAL = ["train.max_steps=4", "eval.every_n_steps=0", "eval.n_prompts=12", "eval.max_new_tokens=12"]

# Sentences the tiny test tokenizer is trained on.
SENTENCES = [
    "Human: What is a good book to read?",
    "Assistant: I liked the film, the acting was great and the story was fun.",
    "The food was bad and the service was slow, but the music was lovely.",
    "User: Tell me about the weather today. Assistant: It is sunny and warm.",
    "A short review of a long movie with a happy ending and a sad middle.",
]


def make_tiny_tokenizer(vocab_size: int = 400):
    """The project's byte-level BPE tokenizer trained on a few sentences (no download)."""
    from alignbench.models.builtin import train_tokenizer

    return train_tokenizer(SENTENCES * 4, vocab_size)


def local_source(path, **fields):
    """data=local's `DataSource` for the file at `path`: conf/data/local.yaml's values, `fields` replacing some."""
    import dataclasses

    from omegaconf import OmegaConf

    from alignbench.config import CONF_DIR
    from alignbench.training.settings import data_source

    node = OmegaConf.load(CONF_DIR / "data" / "local.yaml")
    node.path = str(path)
    return dataclasses.replace(data_source(node), **fields)


# --- The command line -----------------------------------------------------------------------------


def alignbench_cmd(*args: str) -> list[str]:
    """`alignbench <args>` from this environment (the console script next to the interpreter)."""
    exe = Path(sys.executable).with_name("alignbench")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "alignbench.cli", *args]


def cli_env(cache=None, **extra: str) -> dict:
    """The environment of a CLI child: offline, no inherited MLflow URI (each test's own mlflow.db)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    if cache is not None:
        env["ALIGNBENCH_CACHE"] = str(cache)
    return env


def run_cli(*args: str, cwd=None, cache=None, timeout: float = 600, check: bool = False,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m alignbench.cli <args>` to its end, output captured as text; with `check`, a non-zero
    exit fails the test with the tail of both streams."""
    out = subprocess.run([sys.executable, "-m", "alignbench.cli", *args], cwd=cwd,
                         env=env if env is not None else cli_env(cache), capture_output=True, text=True,
                         timeout=timeout)
    if check:
        assert out.returncode == 0, f"alignbench {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


# --- In-process runs ------------------------------------------------------------------------------


def tracked_train(overrides, run_id=None, experiment="test"):
    """`train` of the composed `overrides` inside a tracked MLflow run: (result, run id)."""
    from alignbench.config import compose
    from alignbench.tracking import mlflow_runs as tracking
    from alignbench.training.run import train

    cfg = compose(list(overrides))
    with tracking.tracked_run(experiment, tags={"method": cfg.method.name}, run_id=run_id) as tracker:
        result = train(cfg, tracker)
    return result, tracker.run_id


def count_calls(monkeypatch, module, name: str) -> list:
    """Wrap `module.name` so every call is recorded (its args) and still runs: a test asserts how
    often a stage really ran, e.g. that a cache hit trains or computes nothing."""
    calls = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


# --- Several sweep workers (PostgreSQL scale-out, faults) --------------------------------------------

STATUS = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "FINISHED"}  # pruned: name and tag say so


def warm_cache(*overrides: str) -> None:
    from alignbench.config import compose
    from alignbench.sweep import plan as plan_mod
    from alignbench.sweep.workers import warm_caches

    """Train the shared SFT model and the reference samples once, before workers start in parallel."""
    cfg = compose(["sweep=smoke", "sweep.methods=[dpo]", *overrides])
    warm_caches(plan_mod.plan_sweep(cfg, overrides=list(overrides)))


def start_workers(n: int, args: list[str], cwd: Path, tag: str) -> list[tuple[subprocess.Popen, Path]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = []
    for i in range(n):
        log = cwd / f"{tag}-worker{i}.log"
        with open(log, "wb") as fh:
            procs.append((subprocess.Popen(alignbench_cmd("sweep", *args), cwd=cwd, env=env, stdout=fh,
                                           stderr=subprocess.STDOUT), log))
    return procs


def wait_all(procs, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    for proc, log in procs:
        try:
            proc.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
            raise AssertionError(f"worker {proc.pid} did not finish: {log.read_text(errors='replace')[-3000:]}")
        assert proc.returncode == 0, f"worker exit {proc.returncode}: {log.read_text(errors='replace')[-3000:]}"


def mlflow_runs(uri: str, experiment: str) -> tuple[list, list]:
    """(parent runs, child runs) of a sweep's experiment, through an explicit client (no global URI)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return ([r for r in runs if r.data.tags.get("alignbench.role") == "sweep"],
            [r for r in runs if r.data.tags.get("alignbench.role") == "trial"])


def check_consistent(study, parents: list, children: list, budget: int) -> list:
    """Exactly `budget` COMPLETE+PRUNED trials; one child run per (non-discarded) trial, nothing duplicated;
    params equal between Optuna and MLflow; states agree; nothing RUNNING."""
    from optuna.trial import TrialState

    from alignbench.sweep.liveness import attempt_number

    trials = [t for t in study.trials if not t.user_attrs.get("alignbench.discarded")]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == budget
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    numbers = Counter(attempt_number(r.data.tags) for r in children)
    assert all(n == 1 for n in numbers.values()), f"duplicated child runs: {numbers}"
    assert len({t.number for t in study.trials}) == len(study.trials)
    by_number = {attempt_number(r.data.tags): r for r in children}
    assert set(by_number) == {t.number for t in trials}
    parent_ids = {p.info.run_id for p in parents}
    for t in trials:
        run = by_number[t.number]
        assert run.data.tags["optuna.study"] == study.study_name
        assert run.data.tags["mlflow.parentRunId"] in parent_ids
        assert run.info.status != "RUNNING"
        assert run.data.tags["optuna.trial_state"] == t.state.name
        if t.state == TrialState.FAIL and t.user_attrs.get("failure_kind") != "error":
            assert run.info.status == "KILLED", (t.number, t.user_attrs)
        else:
            assert run.info.status == STATUS[t.state.name], (t.number, t.state, run.info.status)
        assert t.params and set(t.params) <= set(run.data.params)
        for k, v in t.params.items():
            assert run.data.params[k] == repr(v), k
        assert t.user_attrs.get("mlflow_run_id") in (None, run.info.run_id)
    for p in parents:
        assert p.info.status != "RUNNING"
    return trials


# --- One sweep in this process (the smoke sweep at TINY size) ------------------------------------

NO_CONFIRM = "sweep.confirm_seeds=0"  # tests about the search; tests/test_sweep_confirmation.py covers the rest


def sweep(*sweep_overrides: str, user: tuple[str, ...] = (), live=False):
    """Run the smoke sweep with `sweep.*` overrides and the user's trial overrides (as the CLI would)."""
    from alignbench.config import compose
    from alignbench.sweep import run as run_mod

    cfg = compose(["sweep=smoke", NO_CONFIRM, *sweep_overrides, *TINY, *user])
    return run_mod.run_sweep(cfg, overrides=[*TINY, *user], live=live)


def plan(*sweep_overrides: str):
    """The smoke sweep's plan at TINY size, with `sweep.*` overrides."""
    from alignbench.config import compose
    from alignbench.sweep import plan as plan_mod

    return plan_mod.plan_sweep(compose(["sweep=smoke", NO_CONFIRM, *sweep_overrides, *TINY]), overrides=list(TINY))


def sweep_cli(*args: str, cwd):
    """(argv, Popen keyword arguments) of `alignbench sweep <args>` in `cwd`, unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return [sys.executable, "-m", "alignbench.cli", "sweep", *args], dict(cwd=cwd, env=env)


def studies(experiment="sweep-smoke", journal="sweeps.journal"):
    """The sweep's Optuna studies in the journal, by method."""
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(Path(journal).resolve())))
    return {s.study_name.split("/")[-1]: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith(experiment + "/")}


def child_runs(experiment="sweep-smoke"):
    """The sweep's trial runs in MLflow's current store."""
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("alignbench.role") == "trial"]


def parent_runs(experiment="sweep-smoke"):
    """The sweep's parent runs in MLflow's current store."""
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("alignbench.role") == "sweep"]


def assert_consistent(experiment="sweep-smoke", journal="sweeps.journal"):
    """One MLflow child run per (non-discarded) Optuna trial; params equal; states agree; none RUNNING."""
    from optuna.trial import TrialState

    from alignbench.sweep.liveness import attempt_number

    by_key = {(r.data.tags["optuna.study"], attempt_number(r.data.tags)): r
              for r in child_runs(experiment)}
    assert len(by_key) == len(child_runs(experiment)), "duplicated child runs"
    trials = [(study, t) for study in studies(experiment, journal).values() for t in study.trials
              if not t.user_attrs.get("alignbench.discarded")]
    assert len(trials) == len(by_key)
    parent_id = parent_runs(experiment)[0].info.run_id
    for study, t in trials:
        run = by_key[(study.study_name, t.number)]
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["method"] == study.study_name.split("/")[-1]
        assert t.user_attrs.get("mlflow_run_id") in (None, run.info.run_id)
        assert run.info.status != "RUNNING"
        assert run.data.tags["optuna.trial_state"] == t.state.name
        if t.state == TrialState.FAIL and t.user_attrs.get("failure_kind") in ("interrupted", "stale"):
            assert run.info.status == "KILLED"
        else:
            assert run.info.status == STATUS[t.state.name], (t.number, t.state, run.info.status)
        if t.state == TrialState.FAIL:
            assert t.user_attrs["failure_reason"]
            assert run.data.tags["failure_reason"]
        for k, v in t.params.items():
            assert run.data.params[k] == repr(v), k
    return trials


def interrupt_at(monkeypatch, step: int, when=lambda settings: True):
    """A simulated Ctrl-C (KeyboardInterrupt) at optimiser step `step` of the runs `when(settings)`
    picks (the run's `RunSettings`, as `train` built them); returns the real `inject_faults`, to put back."""
    from alignbench.training import loop as train_mod
    from alignbench.training import run as run_mod

    real, real_settings, current = train_mod.inject_faults, run_mod.run_settings, []

    def recording_settings(cfg):
        current[:] = [real_settings(cfg)]
        return current[0]

    def interrupt(faults, loss, at):
        if at == step and when(current[0]):
            raise KeyboardInterrupt("simulated Ctrl-C")
        return real(faults, loss, at)

    monkeypatch.setattr(run_mod, "run_settings", recording_settings)
    monkeypatch.setattr(train_mod, "inject_faults", interrupt)
    return real

# data=sentiment on the built-in tiny model, seconds per run (tests/test_sentiment_task.py, test_gold_frontier.py)
TINY_SENTIMENT = ["data=sentiment", "model.sft.steps=20", "model.sft.n_examples=200", "data.n_train_prompts=64",
                  "data.n_eval_prompts=32", "train.batch_size=8", "train.max_steps=3", "eval.every_n_steps=0",
                  "eval.n_prompts=16", "eval.n_pref_pairs=16", "eval.max_new_tokens=16", "threads=1"]
