"""Trained policies kept (artifact policy/, loadable with from_pretrained), checkpoints and resume
(in process, and after kill -9 of the CLI), a killed sweep trial resumed, sweep.keep_policies."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch
from optuna.trial import TrialState

from alignbench.config import ConfigError, compose, validate
from alignbench.models.pairs import pair_logps
from alignbench.tracking import mlflow_runs as tracking
from alignbench.training import checkpoint as checkpoint_mod
from alignbench.training import loop as loop_mod
from alignbench.training import run as run_mod
from helpers import FAST, alignbench_cmd, cli_env, run_cli, tracked_train

COMPARED = ("eval/win_rate", "eval/kl", "train/loss", "eval/win_rate_ci_low", "eval/pref_accuracy")
CHECKPOINTED = [*FAST, "train.checkpoint_every=2"]


def final_metrics(run_id) -> dict:
    return mlflow.MlflowClient().get_run(run_id).data.metrics


def artifacts(run_id, path=None) -> list[str]:
    return [f.path for f in mlflow.MlflowClient().list_artifacts(run_id, path)]


def test_saved_policy_loads_with_the_same_logps(workdir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prepared = []
    real_prepare = run_mod.prepare
    monkeypatch.setattr(run_mod, "prepare", lambda cfg: prepared.append(real_prepare(cfg)) or prepared[-1])
    _, run_id = tracked_train(FAST)
    models, (tokens, _) = prepared[0].models, prepared[0].evaluator.pref_eval
    assert {"policy/model.safetensors", "policy/config.json", "policy/tokenizer.json"} <= set(artifacts(run_id, "policy"))
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="policy")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert tokenizer("Human: a film review")["input_ids"] == models.tokenizer("Human: a film review")["input_ids"]
    models.policy.eval()
    trained = pair_logps(models.policy, tokens, 8, torch.device("cpu"), False)
    loaded = pair_logps(model.eval(), tokens, 8, torch.device("cpu"), False)
    assert torch.equal(trained["chosen"], loaded["chosen"]) and torch.equal(trained["rejected"], loaded["rejected"])
    with models.reference_model() as ref:  # the policy did train: it is not the reference
        assert not torch.equal(pair_logps(ref, tokens, 8, torch.device("cpu"), False)["chosen"], loaded["chosen"])


@pytest.mark.slow  # a LoRA block changes the SFT cache key: its own SFT stage
def test_lora_policy_is_an_adapter_loadable_with_peft(workdir):
    from peft import AutoPeftModelForCausalLM

    lora = "+model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}"
    _, run_id = tracked_train([*FAST, lora, "train.max_steps=2", "eval.every_n_steps=0"])
    files = {p.rsplit("/", 1)[-1] for p in artifacts(run_id, "policy")}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= files
    assert "model.safetensors" not in files  # the adapter only, not the base weights
    model = AutoPeftModelForCausalLM.from_pretrained(mlflow.artifacts.download_artifacts(run_id=run_id,
                                                                                         artifact_path="policy"))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_crashed_run_resumes_in_the_same_run_to_the_same_metrics(workdir):
    full, full_id = tracked_train(CHECKPOINTED)
    assert not artifacts(full_id, "checkpoint")  # a finished run keeps its policy, not its checkpoint
    with pytest.raises(RuntimeError, match="simulated"):
        tracked_train([*CHECKPOINTED, "fault.raise_at_step=5"])  # after the checkpoint of step 4
    crashed_id = mlflow.search_runs(experiment_names=["test"], filter_string="attributes.status = 'FAILED'").run_id[0]
    assert artifacts(crashed_id, "checkpoint") == ["checkpoint/step-00000004"]
    assert "checkpoint/step-00000004/COMPLETE" in artifacts(crashed_id, "checkpoint/step-00000004")

    resumed, run_id = tracked_train([*CHECKPOINTED, f"resume={crashed_id}"], run_id=crashed_id)
    assert run_id == crashed_id and mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"
    for key in COMPARED:
        assert final_metrics(run_id)[key] == final_metrics(full_id)[key], key
        assert resumed.metrics.get(key) == full.metrics.get(key), key
    assert [s for s, _ in resumed.history] == [3, 6]  # the eval history before the checkpoint is kept
    assert "policy/model.safetensors" in artifacts(run_id, "policy") and not artifacts(run_id, "checkpoint")


def test_resume_refuses_another_config_online_methods_and_finished_runs(workdir):
    with pytest.raises(RuntimeError):
        tracked_train([*CHECKPOINTED, "fault.raise_at_step=3"])
    run_id = mlflow.search_runs(experiment_names=["test"]).run_id[0]
    with pytest.raises(ConfigError, match=r"trained with method.beta=0.1, this command has method.beta=0.2"):
        tracked_train([*CHECKPOINTED, "method.beta=0.2", f"resume={run_id}"], run_id=run_id)
    for bad, message in [(["method=ppo", "resume=abc"], "resume=abc: method=ppo cannot be checkpointed"),
                         (["method=rloo", "train.checkpoint_every=2"], "train.checkpoint_every=2: method=rloo"),
                         (["train.checkpoint_every=-1"], "train.checkpoint_every=-1: must be"),
                         (["resume=abc", "tracking.enabled=false"], "needs tracking.enabled=true")]:
        with pytest.raises(ConfigError, match=message):
            validate(compose(bad))
    client = mlflow.MlflowClient()
    finished = client.create_run(client.get_experiment_by_name("test").experiment_id).info.run_id
    client.set_terminated(finished, "FINISHED")
    assert tracking.resume_problem(finished) == f"resume={finished}: the run is FINISHED; nothing to resume"
    assert tracking.resume_problem(run_id) is None  # the crashed one can be resumed
    assert "no such MLflow run" in tracking.resume_problem("0" * 32)


@pytest.mark.slow  # three processes; the in-process crash-and-resume test above runs by default
def test_kill_9_after_the_first_checkpoint_then_resume_matches_an_uninterrupted_run(workdir):
    killed = subprocess.Popen(alignbench_cmd("train", *CHECKPOINTED, "fault.sleep_per_step=1.5"), env=cli_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    markers = []
    while not markers and time.time() < deadline and killed.poll() is None:
        time.sleep(0.2)
        markers = list(Path("mlruns").glob("*/*/artifacts/checkpoint/step-*/COMPLETE"))
    assert markers, "no checkpoint before the run ended"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    run_id = markers[0].parents[3].name
    assert mlflow.MlflowClient().get_run(run_id).info.status == "RUNNING"  # kill -9: nothing ended the run

    out = run_cli("train", *CHECKPOINTED, f"resume={run_id}", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith(f"mlflow_run={run_id}")
    _, full_id = tracked_train(CHECKPOINTED)  # uninterrupted, same seed
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert len(mlflow.search_runs(search_all_experiments=True)) == 2  # the resumed run is the killed one
    for key in COMPARED:
        assert final_metrics(run_id)[key] == final_metrics(full_id)[key], key

    again = run_cli("train", *CHECKPOINTED, f"resume={run_id}", timeout=300)
    assert again.returncode == 2 and again.stderr.strip() == (f"alignbench: error: resume={run_id}: the run is "
                                                               "FINISHED; nothing to resume")


# --------------------------------------------------------------------------- sweeps

@pytest.mark.slow  # two sweeps, three trials
def test_killed_sweep_trial_resumes_from_its_checkpoint_and_only_the_best_policy_is_kept(workdir, monkeypatch):
    from helpers import child_runs, interrupt_at, studies, sweep

    user = ("train.checkpoint_every=2",)
    real = interrupt_at(monkeypatch, 3)
    with pytest.raises(SystemExit):
        sweep("sweep.methods=[dpo]", "sweep.n_trials=1", user=user)
    monkeypatch.setattr(loop_mod, "inject_faults", real)
    (killed,) = studies()["dpo"].trials
    killed_run = killed.user_attrs["mlflow_run_id"]
    assert artifacts(killed_run, "checkpoint") == ["checkpoint/step-00000002"]

    sweep("sweep.methods=[dpo]", "sweep.n_trials=2", user=user)
    t0, t1, t2 = studies()["dpo"].trials
    assert t1.params == t0.params and t1.user_attrs["alignbench.resumes_trial"] == 0
    assert t1.user_attrs["mlflow_run_id"] == killed_run and t1.state == TrialState.COMPLETE
    runs = {r.info.run_id: r for r in child_runs()}
    assert len(runs) == 2 and runs[killed_run].info.status == "FINISHED"
    # the trial keeps its identity across the resume: trial 0's run, name and number; Optuna's trial 1 ran it
    tags = runs[killed_run].data.tags
    assert (tags["optuna.trial_number"], tags["optuna.attempt"], tags["mlflow.runName"]) == ("0", "1", "dpo-000")
    assert t1.user_attrs["alignbench.trial_identity"] == 0 and t2.user_attrs["alignbench.trial_identity"] == 2
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(killed_run, "eval/win_rate")][-1] == 4
    best = max((t1, t2), key=lambda t: (t.value, -t.number))
    with_policy = {r for r in runs if "policy" in [p.rsplit("/", 1)[-1] for p in artifacts(r)]}
    assert with_policy == {best.user_attrs["mlflow_run_id"]}  # sweep.keep_policies=best (the default)


def test_keep_policies_setting():
    from helpers import plan

    assert plan().keep_policies == "best"
    assert "train.save_policy=false" in plan("sweep.keep_policies=none").trial_overrides["dpo"]
    assert "train.save_policy=false" not in plan("sweep.keep_policies=all").trial_overrides["dpo"]
    with pytest.raises(ConfigError, match="sweep.keep_policies=some: must be best, all or none"):
        plan("sweep.keep_policies=some")


def test_a_search_trial_that_cannot_be_selected_does_not_write_its_policy():
    """keep_policies=best: a trial below a finished trial's validation win rate skips its policy
    (it can never be selected); one at or above the best so far, the first trial, a confirmation
    run, and every trial under keep_policies=all write theirs."""
    import optuna

    from alignbench.sweep.trials import TrialJob, _policy_skipper, search_job
    from helpers import plan

    study = optuna.create_study(direction="maximize")
    best = plan()
    trial_job = search_job(best, "dpo", study.ask())
    skip = _policy_skipper(best, study, trial_job)
    assert skip({"eval/win_rate": 0.1}) is None  # nothing finished yet
    study.add_trial(optuna.trial.create_trial(value=0.5))
    study.add_trial(optuna.trial.create_trial(value=0.75))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    assert skip({"eval/win_rate": 0.75}) is None and skip({"eval/win_rate": 0.8}) is None
    assert skip({"eval/win_rate": 0.7}) == ("validation win rate 0.700 is below the best trial's so far (0.750), "
                                            "so this trial cannot be selected (sweep.keep_policies=best)")
    assert skip({"eval/win_rate": float("nan")}) is None  # not a number: not judged here (the trial fails)
    confirmation = TrialJob(params={}, tags={"alignbench.role": "confirmation"}, label="dpo seed 1")
    assert _policy_skipper(best, study, confirmation) is None
    assert _policy_skipper(plan("sweep.keep_policies=all"), study, trial_job) is None


def test_a_sweep_writes_only_the_policies_of_trials_that_may_be_selected(workdir):
    """A finished trial at win rate 1.0 is already in the study: each new trial below it tags its run
    instead of writing a policy, and pruning (the 1.0 trial, without a run, is selected) leaves none."""
    import optuna

    from alignbench.sweep import storage as storage_mod
    from alignbench.sweep import studies as studies_mod
    from helpers import child_runs, plan, studies, sweep

    over = ("sweep.methods=[dpo]", "sweep.n_trials=3", "sweep.pruner.type=none")
    p = plan(*over)
    studies_mod.load_study(p, "dpo", storage_mod.make_storage(p)).add_trial(optuna.trial.create_trial(
        params={"method.beta": 0.1, "method.lr": 5e-4}, value=1.0,
        distributions={"method.beta": optuna.distributions.FloatDistribution(0.01, 0.5, log=True),
                       "method.lr": optuna.distributions.FloatDistribution(1.7e-4, 1.5e-3, log=True)}))
    sweep(*over)
    fake, *trials = studies()["dpo"].trials
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    runs = {r.info.run_id: r for r in child_runs()}
    for t in trials:
        tags = runs[t.user_attrs["mlflow_run_id"]].data.tags
        assert ("alignbench.policy_not_saved" in tags) == (t.value < 1.0), (t.value, tags)
    assert not [r for r in runs if "policy" in [a.rsplit("/", 1)[-1] for a in artifacts(r)]]


def test_a_skipped_policy_is_not_written_and_the_run_says_why(workdir):
    from alignbench.tracking.null import NullTracker

    tracker = NullTracker()
    run_mod.train(compose(FAST), tracker, skip_policy=lambda metrics: f"below ({metrics['eval/win_rate']:.3f})")
    assert not [k for k in tracker.artifacts if k.startswith("policy/")]
    assert tracker.tags["alignbench.policy_not_saved"].startswith("below (")
    kept = NullTracker()
    run_mod.train(compose(FAST), kept, skip_policy=lambda metrics: None)
    assert "policy/model.safetensors" in kept.artifacts and "alignbench.policy_not_saved" not in kept.tags


def test_latest_checkpoint_ignores_an_incomplete_one():
    from alignbench.tracking.null import NullTracker

    tracker = NullTracker()
    tracker.artifacts.update({"checkpoint/step-00000002/COMPLETE": 1, "checkpoint/step-00000002/optimizer.pt": 9,
                              "checkpoint/step-00000004/optimizer.pt": 9})  # killed while uploading step 4
    assert checkpoint_mod.latest_checkpoint(tracker) == "checkpoint/step-00000002"
