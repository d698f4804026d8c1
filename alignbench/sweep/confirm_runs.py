"""Confirmation runs as Optuna trials, shared by full confirmation (`confirmation`) and the race
(`race`): what identifies a selection, a method's confirmation seeds, asking the trial of one seed
with the selected params, and running it.

Which selection a confirmation trial belongs to is recorded on it (user attrs, also its run's tags):
`confirmation.selected_trial` (the search trial's number) and `confirmation.params_digest` (a digest
of its params). Only the current selection's trials count."""

from __future__ import annotations

import hashlib
import json

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from alignbench.sweep.budget import discard
from alignbench.sweep.liveness import worker_tag
from alignbench.sweep.plan import Plan
from alignbench.sweep.trials import TrialJob, run_trial

ROLE = "confirmation"


def confirm_seeds(plan: Plan, method: str) -> list[int]:
    """The method's confirmation seeds in order: its search trials' seed + 1 .. + K."""
    base = plan.train_seeds[method]
    return [base + k for k in range(1, plan.confirmation.seeds + 1)]


def selection_attrs(selected) -> dict:
    """What identifies a selection: the search trial's number and a digest of its params."""
    text = json.dumps(dict(selected.params), sort_keys=True, default=repr)
    return {"confirmation.selected_trial": selected.number,
            "confirmation.params_digest": hashlib.sha1(text.encode()).hexdigest()[:12]}


def of_selection(trial, selection: dict) -> bool:
    """Whether the confirmation trial belongs to this selection."""
    return bool(selection) and all(trial.user_attrs.get(k) == v for k, v in selection.items())


def seeds_in(study, selection: dict, state: TrialState) -> set:
    """The seeds of the selection's trials in `state`."""
    return {t.params.get("seed") for t in study.get_trials(deepcopy=False, states=(state,))
            if of_selection(t, selection)}


def ask_seed(study, selected, seed: int, seeds: list[int]):
    """(Under the budget lock.) The trial of `seed` with the selected trial's params (their own
    distributions; `seed` an int distribution over the seeds, compatible across invocations that
    change K), tagged with this worker and the selection."""
    study.sampler = _FixedSampler({**selected.params, "seed": seed})
    distributions = {**selected.distributions, "seed": IntDistribution(min(seeds), max(seeds))}
    trial = study.ask(fixed_distributions=distributions)
    trial.set_user_attr("alignbench.worker", worker_tag())
    for key, value in selection_attrs(selected).items():
        trial.set_user_attr(key, value)
    return trial


def run_seed(plan: Plan, method: str, study, trial, selection: dict, parent_run_id: str, progress=None) -> None:
    """Run the asked confirmation trial, unless another worker (RDB storage, no shared lock) asked the
    same seed of the same selection at the same time: then it is discarded."""
    if seed_taken(study, trial, selection):
        discard(study, trial, "over budget: another worker took this seed")
        return
    job = confirmation_job(method, trial, selection, plan.confirm_overrides)
    if progress is not None:
        progress.running(job.label, 0, None)
    run_trial(plan, method, study, trial, parent_run_id, progress, job)


def confirmation_job(method: str, trial, selection: dict, confirm_overrides: list[str]) -> TrialJob:
    """A confirmation run: the selected params and the seed (Optuna params of the trial), the test
    split (`plan.confirm_overrides`)."""
    seed = int(trial.params["seed"])
    return TrialJob(params=dict(trial.params), tags={"alignbench.role": ROLE, "confirmation.seed": seed, **selection},
                    label=f"{method} confirmation seed {seed}", run_name=f"{method}-confirm-seed{seed}",
                    extra_overrides=list(confirm_overrides))


def seed_taken(study, trial, selection: dict) -> bool:
    """True if an earlier trial of the same selection has the same seed, COMPLETE or RUNNING."""
    seed = trial.params["seed"]
    return any(t.number < trial.number and t.params.get("seed") == seed and of_selection(t, selection)
               for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)))


class _FixedSampler(optuna.samplers.BaseSampler):
    """Gives every param the value chosen for it: the selected trial's params and the next seed."""

    def __init__(self, values: dict):
        self.values = values

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.values[param_name]
