"""Confirmation of each method's selected trial: K fresh seeds on the test split, as trials of the
study `<experiment>/<method>/confirm` and child runs of the sweep's parent; resume without
duplicates, and a changed selection confirmed from scratch.

Tiny budgets as in tests/test_sweep.py (one search trial per method, 4 steps)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from alignbench.config import compose
from alignbench.sweep import confirm_runs, confirmation, progress
from alignbench.sweep import plan as plan_mod
from alignbench.sweep import run as run_mod
from alignbench.sweep import storage as storage_mod
from alignbench.sweep import studies as studies_mod
from alignbench.training import loop as train_mod
from helpers import interrupt_at
from helpers import TINY_NO_EVAL as TINY

KEYS = ("sweep.n_trials=1", "sweep.confirm_seeds=2", "sweep.pruner.type=none")


def sweep(*sweep_overrides: str):
    cfg = compose(["sweep=smoke", *KEYS, *sweep_overrides, *TINY])
    return run_mod.run_sweep(cfg, overrides=list(TINY), live=False)


def runs(role: str, experiment="sweep-smoke"):
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("alignbench.role") == role]


def confirm_study(method: str):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(Path("sweeps.journal").resolve())))
    return optuna.load_study(study_name=f"sweep-smoke/{method}/confirm", storage=storage)


def finished_confirmations(method: str) -> list:
    return [r for r in runs("confirmation") if r.data.tags["method"] == method and r.info.status == "FINISHED"]


def test_confirmation_runs_are_tagged_parented_and_resume_without_duplicates(workdir, monkeypatch):
    # 1st invocation, killed (Ctrl-C) during ipo's second confirmation run.
    real = interrupt_at(monkeypatch, 2, when=lambda run: run.method.name == "ipo" and run.train.seed == 2)
    with pytest.raises(SystemExit) as exc:
        sweep("sweep.methods=[dpo,ipo]")
    assert exc.value.code == 130
    assert len(finished_confirmations("dpo")) == 2 and len(finished_confirmations("ipo")) == 1
    monkeypatch.setattr(train_mod, "inject_faults", real)

    # 2nd: resumes: only ipo's interrupted seed runs again.
    summary = sweep("sweep.methods=[dpo,ipo]")
    (parent,) = runs("sweep")
    assert parent.data.params["sweep.confirm_seeds"] == "2"
    for method in ("dpo", "ipo"):
        done = finished_confirmations(method)
        assert sorted(int(r.data.tags["confirmation.seed"]) for r in done) == [1, 2]  # seed 0 + 1..K
        search = [r for r in runs("trial") if r.data.tags["method"] == method]
        assert [r.data.params["eval.split"] for r in search] == ["validation"]
        for r in done:
            seed = r.data.tags["confirmation.seed"]
            assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert r.data.tags["optuna.study"] == f"sweep-smoke/{method}/confirm"
            assert r.data.tags["confirmation.selected_trial"] == "0"
            assert r.data.params["seed"] == seed and r.data.params["eval.split"] == "test"
            for k, v in search[0].data.params.items():  # the selected trial's params, fixed
                if k.startswith("method."):
                    assert r.data.params[k] == v, k
        e = summary["methods"][method]
        conf = e["confirmation"]
        assert e["best"]["split"] == "validation" and conf["split"] == "test"
        assert conf["status"] == "done" and conf["n_seeds"] == 2 and conf["seeds"] == [1, 2]
        assert conf["mean_win_rate"] == pytest.approx(sum(conf["win_rates"].values()) / 2)
        states = [t.state for t in confirm_study(method).trials]
        assert states.count(TrialState.COMPLETE) == 2
    (killed,) = [r for r in runs("confirmation") if r.info.status != "FINISHED"]
    assert killed.info.status == "KILLED" and killed.data.tags["method"] == "ipo"

    # 3rd: the same command: nothing new runs.
    n_runs = len(runs("confirmation")) + len(runs("trial"))
    sweep("sweep.methods=[dpo,ipo]")
    assert len(runs("confirmation")) + len(runs("trial")) == n_runs


def test_a_changed_selection_is_confirmed_from_scratch(workdir):
    """Recorded state (no training): search trial 0 was confirmed on both seeds; then search
    trial 1, better, completed. The re-run confirms trial 1 on both seeds and ignores trial 0's runs."""
    p = plan_mod.plan_sweep(compose(["sweep=smoke", *KEYS, "sweep.methods=[dpo]", *TINY]), overrides=list(TINY))
    storage = storage_mod.make_storage(p)
    search = studies_mod.load_study(p, "dpo", storage)
    space = {"method.beta": optuna.distributions.FloatDistribution(0.01, 0.5, log=True),
             "method.lr": optuna.distributions.FloatDistribution(1.7e-4, 1.5e-3, log=True)}
    for params, value in (({"method.beta": 0.1, "method.lr": 5e-4}, 0.5), ({"method.beta": 0.3, "method.lr": 1e-3}, 0.75)):
        search.add_trial(optuna.trial.create_trial(params=params, value=value, distributions=space,
                                                   user_attrs={"eval/win_rate": value}))
    old = confirm_runs.selection_attrs(search.trials[0])
    confirm = studies_mod.load_confirm_study(p, "dpo", storage)
    for seed in (1, 2):  # trial 0's confirmation, win rate 0 (no real run can be told apart by it)
        confirm.add_trial(optuna.trial.create_trial(
            params={**search.trials[0].params, "seed": seed}, value=0.0, user_attrs=old,
            distributions={**space, "seed": optuna.distributions.IntDistribution(1, 2)}))

    summary = sweep("sweep.methods=[dpo]", "sweep.n_trials=2")
    conf = summary["methods"]["dpo"]["confirmation"]
    assert conf["selected_trial"] == 1 and conf["n_seeds"] == 2 and conf["status"] == "done"
    new = finished_confirmations("dpo")
    assert sorted(int(r.data.tags["confirmation.seed"]) for r in new) == [1, 2]
    for r in new:
        assert r.data.tags["confirmation.selected_trial"] == "1"
        assert float(r.data.params["method.beta"]) == 0.3 and float(r.data.params["method.lr"]) == 1e-3
    assert sorted(conf["win_rates"].values()) == sorted(r.data.metrics["eval/win_rate"] for r in new)
    assert [t.user_attrs["confirmation.selected_trial"] for t in confirm_study("dpo").trials] == [0, 0, 1, 1]


def test_confirmation_is_off_with_zero_seeds_and_waits_for_the_search(tmp_path):
    storage = f"sweep.storage=journal://{tmp_path}/j.journal"
    p = plan_mod.plan_sweep(compose(["sweep=smoke", "sweep.confirm_seeds=0", storage, *TINY]), overrides=list(TINY))
    assert p.confirmation.seeds == 0 and confirmation.run_confirmation(p, "dpo", None, "parent") == "off"
    p = plan_mod.plan_sweep(compose(["sweep=smoke", "sweep.confirm_seeds=3", storage, "seed=5", *TINY]),
                            overrides=["seed=5", *TINY])
    assert confirm_runs.confirm_seeds(p, "dpo") == [6, 7, 8]
    assert p.confirm_study_name("dpo") == "sweep-smoke/dpo/confirm"
    assert confirmation.run_confirmation(p, "dpo", storage_mod.make_storage(p), "parent") == "waiting"


def test_failed_methods_are_named_for_the_exit_status():
    summary = {"methods": {"dpo": {"status": "done", "confirmation": {"status": "failures"}},
                           "ipo": {"status": "failures"}, "kto": {"status": "done"},
                           "simpo": {"status": "incomplete"}}}
    assert progress.unfinished(summary) == ["dpo (confirmation)", "ipo", "simpo"]
