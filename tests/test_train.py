"""End-to-end runs on the built-in task (FAST-sized): metrics reach MLflow, failures end FAILED."""

from __future__ import annotations

import json
import math

import mlflow
import pytest
import yaml

from alignbench.config import compose
from alignbench.tracking.null import NullTracker
from alignbench.training.loop import NonFiniteLoss, divergence
from alignbench.training.run import train
from helpers import FAST, run_cli, tracked_train

REQUIRED = ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl", "train/loss")


def test_dpo_run_lands_in_mlflow(workdir):
    result, run_id = tracked_train([*FAST, "method=dpo"])
    runs = mlflow.search_runs(experiment_names=["test"])
    assert len(runs) == 1 and runs.loc[0, "run_id"] == run_id
    assert runs.loc[0, "status"] == "FINISHED"
    assert runs.loc[0, "tags.method"] == "dpo"
    for key in REQUIRED:
        assert math.isfinite(runs.loc[0, f"metrics.{key}"])
    assert runs.loc[0, "metrics.eval/win_rate"] == pytest.approx(result.metrics["eval/win_rate"])
    assert runs.loc[0, "params.method.beta"] == "0.1"
    assert runs.loc[0, "params.eval.kl_estimator"].startswith("k1")
    # eval at steps 3 and 6 (every_n_steps=3, max_steps=6)
    history = mlflow.MlflowClient().get_metric_history(run_id, "eval/win_rate")
    assert [m.step for m in history] == [3, 6]
    assert len(mlflow.MlflowClient().get_metric_history(run_id, "train/loss")) == 4  # steps 1, 2, 4, 6
    table = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="eval_samples.json")).read())
    assert len(table["data"]) == 24
    assert {"prompt", "policy_response", "reference_response", "policy_score", "reference_score", "winner"} <= set(table["columns"])
    config = yaml.safe_load(open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml")))
    assert config["method"]["name"] == "dpo"
    # The key params are params; the whole resolved config, other commands' sections included, is config.yaml.
    params = mlflow.get_run(run_id).data.params
    assert {"method.beta", "method.lr", "seed", "train.max_steps", "eval.n_prompts", "data.n_train"} <= set(params)
    assert not [k for k in params if k.startswith(("report.", "ui.", "tracking.", "model.sft.", "fault."))]
    assert len(params) < 30 and config["tracking"]["experiment"] == "alignbench" and config["model"]["sft"]["steps"] == 60
    # A figure every evaluation shares is logged once (step 0), with the value the evaluations returned.
    for key in ("eval/judge_accuracy", "eval/judge_accuracy_ci_low", "eval/reference_gold_reward", "eval/n_prompts"):
        assert [(m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key)] == [
            (0, pytest.approx(result.metrics[key]))], key
    assert result.metrics["eval/n_prompts"] == 24


@pytest.mark.parametrize("method", ["ipo", "kto", "simpo"])
def test_other_offline_methods_run(workdir, method):
    tracker = NullTracker()
    result = train(compose([*FAST, f"method={method}"]), tracker)
    last_logged = {}  # each metric's last logged value, as MLflow shows a run's metrics
    for _, metrics in tracker.metrics:
        last_logged.update(metrics)
    for key in REQUIRED:
        assert math.isfinite(last_logged[key]), key
    assert all(math.isfinite(m["train/loss"]) for _, m in tracker.metrics if "train/loss" in m)
    assert last_logged["eval/win_rate"] == result.metrics["eval/win_rate"]
    assert 0.0 <= result.metrics["eval/win_rate_ci_low"] <= result.metrics["eval/win_rate"] <= result.metrics["eval/win_rate_ci_high"] <= 1.0
    assert result.metrics["train/tokens"] > 0
    if method == "kto":  # TRL's rewards/chosen and rewards/rejected, and its kl (z0), to compare runs with
        assert {"train/reward_desirable", "train/reward_undesirable", "train/kl_z0"} <= set(last_logged)
        assert last_logged["train/kl_z0"] >= 0.0


def test_ipo_convention_and_simpo_gamma_are_logged(workdir):
    tracker = NullTracker()
    train(compose([*FAST, "method=ipo", "method.length_normalize=false"]), tracker)
    assert tracker.params["method.convention"] == "sum over tokens (IPO paper)"
    tracker = NullTracker()
    train(compose([*FAST, "method=simpo", "method.beta=4", "method.gamma_beta_ratio=0.25"]), tracker)
    assert tracker.params["method.gamma"] == 1.0


def test_a_crash_ends_failed_with_the_reason(workdir):
    with pytest.raises(RuntimeError, match="simulated"):
        tracked_train([*FAST, "fault.raise_at_step=2"])
    run = mlflow.search_runs(experiment_names=["test"]).iloc[0]
    assert run["status"] == "FAILED"
    assert "out of memory" in run["tags.failure_reason"]


def test_nan_loss_fails_instead_of_training_on_garbage(workdir):
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 2"):
        tracked_train([*FAST, "fault.nan_loss_at_step=2"])
    run = mlflow.search_runs(experiment_names=["test"]).iloc[0]
    assert run["status"] == "FAILED"
    # not silently: tagged diverged at that step, so a report counts the seed
    assert (run["tags.diverged"], run["tags.diverged.step"]) == ("true", "2")
    assert "loss is nan" in run["tags.diverged.reason"]


def test_divergence_is_a_kl_above_the_limit_or_not_finite():
    assert divergence({"eval/kl": 59.9}, 60.0) is None
    assert divergence({"eval/kl": -3.0}, 60.0) is None
    assert "134.6 nats/seq is above eval.diverged_kl=60" in divergence({"eval/kl": 134.6}, 60.0)
    assert divergence({"eval/kl": float("nan")}, 60.0) == "sampled KL is nan"
    assert divergence({"eval/kl": float("inf")}, 60.0) == "sampled KL is inf"


def test_a_run_past_the_kl_limit_is_tagged_diverged_and_finishes(workdir):
    """The first evaluation above eval.diverged_kl tags the run with its step; the run goes on."""
    tracker = NullTracker()
    result = train(compose([*FAST, "method.lr=0.02", "eval.diverged_kl=1e-3"]), tracker)
    kls = [(step, m["eval/kl"]) for step, m in tracker.metrics if "eval/kl" in m]
    assert [s for s, _ in kls] == [3, 6] and all(kl > 1e-3 for _, kl in kls), kls
    assert tracker.tags["diverged"] == "true" and tracker.tags["diverged.step"] == "3"
    assert "above eval.diverged_kl=0.001" in tracker.tags["diverged.reason"]
    assert result.metrics["train/diverged"] == 1.0 and result.metrics["train/diverged_step"] == 3.0
    assert math.isfinite(result.metrics["eval/win_rate"])  # evaluated to the end, not failed
    quiet = NullTracker()
    result = train(compose(FAST), quiet)  # the default limit: nothing to say
    assert "diverged" not in quiet.tags and result.metrics["train/diverged"] == 0.0


def test_cli_train_prints_win_rate_and_is_searchable(workdir):
    out = run_cli("train", *FAST, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("method=dpo win_rate=")]
    assert line and "95% CI [" in line[0] and "KL=" in line[0]
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1 and runs.loc[0, "status"] == "FINISHED"
    assert line[0].endswith(runs.loc[0, "run_id"])


def test_a_run_reads_its_config_once_into_frozen_settings(workdir, monkeypatch):
    """`train` turns the config into one `RunSettings` and hands it down: the length limits and the reward
    model's settings (PPO's, which a trained judge shares) are built once, and the settings are frozen."""
    import dataclasses

    from alignbench.training import run as run_mod
    from alignbench.training import settings as settings_mod
    from helpers import PPO_FAST

    built = {"length_limits": 0, "reward_model_settings": 0}
    for name in built:
        real = getattr(settings_mod, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            built[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(settings_mod, name, counted)
    handed_down, real_loop = [], run_mod.online_loop
    monkeypatch.setattr(run_mod, "online_loop", lambda settings, *a, **kw: handed_down.append(settings) or real_loop(
        settings, *a, **kw))
    result = train(compose([*PPO_FAST, "judge=reward_model", "judge.path=trained", "train.max_length=100"]))
    assert math.isfinite(result.metrics["eval/win_rate"])
    assert built == {"length_limits": 1, "reward_model_settings": 1}  # the judge and PPO share one reward model
    [settings] = handed_down
    assert (settings.method.name, settings.method.online.rollout_batch_size, settings.reward_model.steps) == ("ppo", 8, 10)
    assert settings.limits.max_length == settings.load.max_length == settings.reward_model.max_length == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.train.max_steps = 1
