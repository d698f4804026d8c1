"""Aggregates over seeds that one odd seed cannot carry, as rliable recommends (Agarwal et al. 2021,
"Deep RL at the edge of the statistical precipice"): the interquartile mean (IQM) of the per-seed
scores and the probability of improvement P(X > Y) of one method's seed over another's, each with a
percentile bootstrap interval over seeds (rliable's stratified bootstrap; here one task, so one
stratum). They sit beside the mean and its two-level interval, not in place of them: with seeds
that disagree (a collapsed one among good ones) the mean moves with the odd seed and the IQM does
not, and the probability of improvement says how often a seed of one method beats a seed of the
other rather than by how much on average. Pure functions of arrays."""

from __future__ import annotations

import numpy as np
from scipy.stats import trim_mean

IQM_CUT = 0.25  # the interquartile mean: the top and bottom quarter of the seeds cut


def iqm(scores) -> float:
    """The interquartile mean of `scores` (rliable's `aggregate_iqm`: scipy's trim_mean at 0.25).
    It cuts int(0.25 n) scores at each end, so below 4 seeds it is the plain mean."""
    return float(trim_mean(np.asarray(scores, dtype=float), IQM_CUT))


def iqm_interval(scores, n_boot: int = 2000, alpha: float = 0.05, rng_seed: int = 0) -> tuple[float, float, float]:
    """(IQM, low, high): the IQM of the per-seed scores and its percentile bootstrap interval,
    seeds resampled with replacement."""
    x = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(rng_seed)
    draws = x[rng.integers(0, len(x), size=(n_boot, len(x)))]
    boot = trim_mean(draws, IQM_CUT, axis=1)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return iqm(x), float(low), float(high)


def probability_of_improvement(x, y) -> float:
    """P(X > Y) over every pair of a seed of x and a seed of y, ties counted 1/2 (the Mann-Whitney
    U statistic over n m, rliable's `probability_of_improvement` on one task)."""
    x, y = np.asarray(x, dtype=float)[:, None], np.asarray(y, dtype=float)[None, :]
    return float(((x > y) + 0.5 * (x == y)).mean())


def improvement_interval(x, y, n_boot: int = 2000, alpha: float = 0.05,
                         rng_seed: int = 0) -> tuple[float, float, float]:
    """(P(X > Y), low, high): the probability of improvement and its percentile bootstrap interval,
    the seeds of each method resampled independently (rliable's)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(rng_seed)
    bx = x[rng.integers(0, len(x), size=(n_boot, len(x)))][:, :, None]
    by = y[rng.integers(0, len(y), size=(n_boot, len(y)))][:, None, :]
    boot = ((bx > by) + 0.5 * (bx == by)).mean(axis=(1, 2))
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return probability_of_improvement(x, y), float(low), float(high)
