"""Confirmation of each method's selected trial. Search trials are evaluated on the validation
prompts, and the best of them is selected there, so its validation win rate is biased upwards.
Once a method's search has its budget complete, its selected trial (`studies.best_trial`) is
retrained with the same params on K fresh seeds, `seed+1 .. seed+K` (K = `sweep.confirm_seeds`;
the search trials use `seed`), and evaluated on the test prompts (`eval.split=test`).

Confirmation runs are trials of a second study per method, `<experiment>/<method>/confirm`, asked
under the budget lock and run by `trials.run_trial` like search trials, so a re-run resumes, no
seed is run twice and the reaper fails the runs of killed workers. The study walks a grid over the
seeds, in order: each trial has the params `seed` and the selected trial's params (fixed).

Which selection a confirmation trial belongs to is recorded on it (`confirm_runs.selection_attrs`);
only the current selection's trials count. If more search trials
change the selection, the new one is confirmed from scratch; the older runs stay in the study
(and in MLflow) but are never mixed into the new one's numbers. The study name stays fixed so
that tools can find it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from alignbench.sweep.budget import count, too_many_failures
from alignbench.sweep.confirm_runs import ask_seed, confirm_seeds, of_selection, run_seed, seeds_in, selection_attrs
from alignbench.sweep.liveness import reap_stale
from alignbench.sweep.plan import Plan
from alignbench.sweep.storage import budget_lock
from alignbench.sweep.studies import best_trial, load_confirm_study, load_study


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
        if not of_selection(t, conf.selection) or t.params.get("seed") not in conf.seeds:
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
    if plan.confirmation.seeds < 1:
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
            complete = seeds_in(study, selection, TrialState.COMPLETE)
            running = seeds_in(study, selection, TrialState.RUNNING)
            left = [s for s in seeds if s not in complete and s not in running]
            if all(s in complete for s in seeds):
                return "done"
            if too_many_failures(plan, study, count(plan, study)):
                return "failures"
            if not left:
                return "done"  # the rest is running in other workers; their own loops refill on failure
            trial = ask_seed(study, selected, left[0], seeds)
        run_seed(plan, method, study, trial, selection, parent_run_id, progress)
