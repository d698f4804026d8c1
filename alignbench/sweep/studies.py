"""One Optuna study per method (`<experiment>/<method>`): creating or reopening it with the sweep's
directions and pruner, the seeded sampler made fresh for every ask, and its best trial (the one
that is confirmed). Also the method's confirmation study (`<experiment>/<method>/confirm`)."""

from __future__ import annotations

import zlib

import optuna
from optuna.trial import TrialState

from alignbench.config import ConfigError
from alignbench.sweep.plan import Plan
from alignbench.sweep.selection import best_index


def load_study(plan: Plan, method: str, storage) -> optuna.Study:
    """The method's study, created on first use; a study made with another objective is a ConfigError."""
    directions = ["maximize", "minimize"] if plan.objective == "pareto" else ["maximize"]
    if plan.pruner.get("type") == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=int(plan.pruner.get("n_startup_trials", 2)),
                                             n_warmup_steps=int(plan.pruner.get("n_warmup_steps", 0)))
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(storage=storage, study_name=plan.study_name(method), directions=directions,
                                pruner=pruner, load_if_exists=True)
    if [d.name for d in study.directions] != [d.upper() for d in directions]:
        raise ConfigError(f"sweep.objective={plan.objective}: study {study.study_name} in {plan.storage} was "
                          f"created with another objective (use a new sweep.experiment or storage)")
    return study


def load_confirm_study(plan: Plan, method: str, storage) -> optuna.Study:
    """The method's confirmation study, created on first use: maximise the (test) win rate, never prune."""
    return optuna.create_study(storage=storage, study_name=plan.confirm_study_name(method), direction="maximize",
                               pruner=optuna.pruners.NopPruner(), load_if_exists=True)


def best_trial(plan: Plan, study):
    """The best COMPLETE trial (pareto: the highest win rate on the Pareto front, the lower KL
    among equals), by `selection.best_index`; None before any trial completed."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pareto = plan.objective == "pareto"
    i = best_index([t.values[0] for t in trials], [t.values[1] if pareto else None for t in trials],
                   [t.number for t in trials], kl_tiebreak=pareto)
    return None if i is None else trials[i]


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler whose after_trial does not call Study.stop() when the grid is used up: that only
    works inside study.optimize(), and the sweep's own budget (n_trials = grid size) stops it."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(plan: Plan, method: str, number: int):
    """A fresh seeded sampler per ask: the params of trial k depend only on (seed, method, k) and
    the trials it is shown (`propose_params`), not on which worker asks it."""
    seed = zlib.crc32(f"{plan.seed}/{method}/{number}".encode())
    if plan.sampler.get("type") == "grid":  # every combination of the `choices` once (e.g. a beta grid)
        grid = {k: spec["choices"] for k, spec in plan.spaces[method].items()}
        # One seed per method, not per ask: the seed shuffles the grid, and grid ids must mean
        # the same point for every sampler instance.
        return _GridSampler(grid, seed=zlib.crc32(f"{plan.seed}/{method}".encode()))
    if plan.objective == "pareto":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(plan.sampler.get("population_size", 8)))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(plan.sampler.get("n_startup_trials", 4)))


def batch_start(plan: Plan, number: int) -> int:
    """The first trial number of trial `number`'s batch: trials are proposed in batches of
    `sweep.batch_trials` (default: `sweep.n_workers`), each batch from the trials before it only
    (all finished by then), so which worker finishes first cannot change what the next batch is shown."""
    return number - number % plan.batch_trials


def frozen_study(study, before: int, sampler=None) -> optuna.Study:
    """An in-memory copy of `study` holding only its finished trials numbered below `before`."""
    view = optuna.create_study(directions=[d.name.lower() for d in study.directions], sampler=sampler,
                               pruner=optuna.pruners.NopPruner())
    view.add_trials([t for t in study.get_trials(deepcopy=False) if t.number < before and t.state.is_finished()])
    return view


def propose_params(plan: Plan, method: str, study, number: int, sample) -> dict:
    """Trial `number`'s params: `sample(trial)` on a frozen view of the trials before its batch,
    with the sampler seeded by (seed, method, number)."""
    view = frozen_study(study, batch_start(plan, number), make_sampler(plan, method, number))
    return sample(view.ask())


def should_prune(study, trial) -> bool:
    """The study's pruner on a frozen view (the trials before this trial's batch, `BATCH_ATTR`, set
    when it is asked), not on whatever other workers finished meanwhile."""
    current = study._storage.get_trial(trial._trial_id)
    before = current.user_attrs.get(BATCH_ATTR, trial.number)
    return study.pruner.prune(frozen_study(study, before), current)


BATCH_ATTR = "alignbench.batch_start"
