"""Confirmation of each method's selected trial. Search trials are evaluated on the validation
prompts, and the best of them is selected there, so its validation win rate is biased upwards.
Once a method's search has its budget complete, its selected trial (`studies.best_trial`) is
retrained with the same params on K fresh seeds, `seed+1 .. seed+K` (K = `sweep.confirm_seeds`;
the search trials use `seed`), and evaluated on the test prompts (`eval.split=test`).

Confirmation runs are trials of a second study per method, `<experiment>/<method>/confirm`, asked
under the budget lock and run by `trials.run_trial` like search trials, so a re-run resumes, no
seed is run twice and the reaper fails the runs of killed workers. The study walks a grid over the
seeds, in order: each trial has the params `seed` and the selected trial's params (fixed).

Which selection a confirmation trial belongs to is recorded on it (user attrs, also its run's
tags): `confirmation.selected_trial` (the search trial's number) and `confirmation.params_digest`
(a digest of its params). Only the current selection's trials count. If more search trials
change the selection, the new one is confirmed from scratch; the older runs stay in the study
(and in MLflow) but are never mixed into the new one's numbers. The study name stays fixed so
that tools can find it."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from alignbench.sweep.budget import count, discard, too_many_failures
from alignbench.sweep.liveness import reap_stale, worker_tag
from alignbench.sweep.plan import Plan
from alignbench.sweep.storage import budget_lock
from alignbench.sweep.studies import best_trial, load_confirm_study, load_study
from alignbench.sweep.trials import TrialJob, run_trial

ROLE = "confirmation"


@dataclass
class Confirmation:
    """A method's confirmation as it stands: the selection it confirms and its runs' results."""

    seeds: list                      # the seeds it needs, seed+1 .. seed+K
    selection: dict = field(default_factory=dict)  # the selection's user attrs; empty: nothing selected
    win_rates: dict = field(default_factory=dict)  # seed -> test win rate, COMPLETE runs only
    running: int = 0
    failed: int = 0

    @property
    def mean_win_rate(self) -> float | None:
        return sum(self.win_rates.values()) / len(self.win_rates) if self.win_rates else None


def confirm_seeds(plan: Plan, method: str) -> list[int]:
    base = plan.train_seeds[method]
    return [base + k for k in range(1, plan.confirm_seeds + 1)]


def selection_attrs(selected) -> dict:
    """What identifies a selection: the search trial's number and a digest of its params."""
    text = json.dumps(dict(selected.params), sort_keys=True, default=repr)
    return {"confirmation.selected_trial": selected.number,
            "confirmation.params_digest": hashlib.sha1(text.encode()).hexdigest()[:12]}


def _of_selection(trial, selection: dict) -> bool:
    return bool(selection) and all(trial.user_attrs.get(k) == v for k, v in selection.items())


def confirmation_of(plan: Plan, method: str, storage) -> Confirmation:
    """The method's confirmation (read only): for the progress display and the summary."""
    conf = Confirmation(seeds=confirm_seeds(plan, method))
    try:
        selected = best_trial(plan, optuna.load_study(study_name=plan.study_name(method), storage=storage))
        study = optuna.load_study(study_name=plan.confirm_study_name(method), storage=storage)
    except KeyError:  # no such study yet
        return conf
    if selected is None:
        return conf
    conf.selection = selection_attrs(selected)
    for t in study.get_trials(deepcopy=False):
        if not _of_selection(t, conf.selection) or t.params.get("seed") not in conf.seeds:
            continue
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
            conf.win_rates[int(t.params["seed"])] = float(t.value)
        elif t.state == TrialState.RUNNING:
            conf.running += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("alignbench.discarded"):
            conf.failed += 1
    return conf


def run_confirmation(plan: Plan, method: str, storage, parent_run_id: str, worker: int = 0, progress=None) -> str:
    """Run the method's selected trial on every confirmation seed not yet done (or running
    elsewhere). Returns why it stopped: "done", "failures", "off" (confirm_seeds=0), "waiting"
    (its search budget is not complete) or "nothing selected" (no search trial completed)."""
    if plan.confirm_seeds < 1:
        return "off"
    search = load_study(plan, method, storage)
    if count(plan, search).done < plan.n_trials:
        return "waiting"
    selected = best_trial(plan, search)
    if selected is None:
        return "nothing selected"
    study = load_confirm_study(plan, method, storage)
    selection, seeds = selection_attrs(selected), confirm_seeds(plan, method)
    while True:
        with budget_lock(plan):
            reap_stale(plan, study)
            complete = _seeds_in(study, selection, TrialState.COMPLETE)
            running = _seeds_in(study, selection, TrialState.RUNNING)
            left = [s for s in seeds if s not in complete and s not in running]
            if all(s in complete for s in seeds):
                return "done"
            if too_many_failures(plan, study, count(plan, study)):
                return "failures"
            if not left:
                return "done"  # the rest is running in other workers; their own loops refill on failure
            trial = _ask(study, selected, left[0], seeds)
            trial.set_user_attr("alignbench.worker", worker_tag())
            for key, value in selection.items():
                trial.set_user_attr(key, value)
        if _seed_taken(study, trial, selection):
            discard(study, trial, "over budget: another worker took this seed")
            continue
        job = confirmation_job(plan, method, trial, selection)
        if progress is not None:
            progress.running(job.label, 0, None)
        run_trial(plan, method, study, trial, parent_run_id, progress, job)


def confirmation_job(plan: Plan, method: str, trial, selection: dict) -> TrialJob:
    """A confirmation run: the selected params and the seed (Optuna params of the trial), the test
    split (`plan.confirm_overrides`)."""
    seed = int(trial.params["seed"])
    return TrialJob(params=dict(trial.params), tags={"alignbench.role": ROLE, "confirmation.seed": seed, **selection},
                    label=f"{method} confirmation seed {seed}", run_name=f"{method}-confirm-seed{seed}",
                    extra_overrides=list(plan.confirm_overrides))


def _seeds_in(study, selection: dict, state: TrialState) -> set:
    return {t.params.get("seed") for t in study.get_trials(deepcopy=False, states=(state,))
            if _of_selection(t, selection)}


def _seed_taken(study, trial, selection: dict) -> bool:
    """True if an earlier trial of the same selection has the same seed, COMPLETE or RUNNING:
    another worker (RDB storage, no shared lock) asked it at the same time."""
    seed = trial.params["seed"]
    return any(t.number < trial.number and t.params.get("seed") == seed and _of_selection(t, selection)
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


def _ask(study, selected, seed: int, seeds: list[int]):
    """A trial with the selected trial's params (its own distributions) and `seed` (an int
    distribution over the seeds: compatible across invocations that change K)."""
    study.sampler = _FixedSampler({**selected.params, "seed": seed})
    distributions = {**selected.distributions, "seed": IntDistribution(min(seeds), max(seeds))}
    return study.ask(fixed_distributions=distributions)
