"""One Optuna study per method (`<experiment>/<method>`): creating or reopening it with the sweep's
directions and pruner, and the seeded sampler made fresh for every ask."""

from __future__ import annotations

import zlib

import optuna

from alignbench.config import ConfigError
from alignbench.sweep.plan import Plan


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


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler whose after_trial does not call Study.stop() when the grid is used up: that only
    works inside study.optimize(), and the sweep's own budget (n_trials = grid size) stops it."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(plan: Plan, method: str, worker: int, n_existing: int):
    """A fresh seeded sampler per ask: the params of trial k depend only on (seed, method, worker, k)."""
    seed = zlib.crc32(f"{plan.seed}/{method}/{worker}/{n_existing}".encode())
    if plan.sampler.get("type") == "grid":  # every combination of the `choices` once (e.g. a beta grid)
        grid = {k: spec["choices"] for k, spec in plan.spaces[method].items()}
        # One seed per method, not per ask: the seed shuffles the grid, and grid ids must mean
        # the same point for every sampler instance.
        return _GridSampler(grid, seed=zlib.crc32(f"{plan.seed}/{method}".encode()))
    if plan.objective == "pareto":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=int(plan.sampler.get("population_size", 8)))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(plan.sampler.get("n_startup_trials", 4)),
                                      constant_liar=plan.n_workers > 1)
