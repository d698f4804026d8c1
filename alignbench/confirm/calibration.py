"""How often the verdict's test is wrong at a comparison's own design, from its own confirmation tables
(no extra training): each method's variance components, the test simulated under the null (A/A: a
method against itself) and under shifts, the smallest difference it detects with 80% power, and for a
pair it leaves unresolved how many seeds would resolve it.

The model of a (K seeds, P prompts) table: value[s, p] = mean + seed[s] + prompt[p] + within[s, p],
three independent normal parts. `variance_components` estimates their variances from one table by the
two-way random-effects ANOVA (expected mean squares; a negative estimate is set to 0).

The simulated test is the report's (`stats.paired_difference` with its seed t test): p = max(the
two-level bootstrap's p, the per-seed t test's p), a difference at p <= alpha (one pair, before Holm,
which only lowers the rate). To run thousands of tests in a report, the bootstrap's inner prompt
resampling is drawn from its normal limit (a resampled seed's prompt mean ~ N(row mean, row variance
/ P), exact as P grows); the seed resampling and the t test are exact. `alignbench.bench.calibration`
measures the exact test on simulated win tables. Pure functions of arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from alignbench.evaluation.stats import win_rate_ci

POWER = 0.8


@dataclass(frozen=True)
class Components:
    """Standard deviations of the table model's parts: seed to seed, prompt to prompt, within (a seed x
    prompt cell's own noise: the judge's sampling and the seed x prompt interaction)."""
    seed: float
    prompt: float
    within: float

    def as_dict(self) -> dict:
        return {"seed_sd": self.seed, "prompt_sd": self.prompt, "within_sd": self.within}


def variance_components(table) -> Components:
    """Two-way random-effects ANOVA of a (K >= 2, P >= 2) table, one value per cell:
    MS_seed = P sum(row mean - grand)^2 / (K - 1), MS_prompt = K sum(column mean - grand)^2 / (P - 1),
    MS_within = the residual sum of squares / ((K - 1)(P - 1)); then within^2 = MS_within,
    seed^2 = (MS_seed - MS_within) / P, prompt^2 = (MS_prompt - MS_within) / K, each at least 0."""
    t = np.asarray(table, dtype=float)
    k, p = t.shape
    if k < 2 or p < 2:
        raise ValueError(f"variance components need at least 2 seeds and 2 prompts, got {k} x {p}")
    grand, rows, cols = t.mean(), t.mean(axis=1), t.mean(axis=0)
    ms_seed = p * float(((rows - grand) ** 2).sum()) / (k - 1)
    ms_prompt = k * float(((cols - grand) ** 2).sum()) / (p - 1)
    resid = t - rows[:, None] - cols[None, :] + grand
    ms_within = float((resid ** 2).sum()) / ((k - 1) * (p - 1))
    return Components(seed=math.sqrt(max(0.0, (ms_seed - ms_within) / p)),
                      prompt=math.sqrt(max(0.0, (ms_prompt - ms_within) / k)), within=math.sqrt(ms_within))


def difference_components(a: Components, b: Components) -> Components:
    """Components of the difference of two methods' tables on the same prompts, their parts independent
    except the prompts: a method against itself (A/A) has no prompt part left (each prompt's effect
    cancels), seed and within variances add. For two different methods, estimate the difference table's
    own components instead (`variance_components(a - b)`): it keeps their prompt x method part."""
    return Components(seed=math.hypot(a.seed, b.seed), prompt=0.0, within=math.hypot(a.within, b.within))


@dataclass(frozen=True)
class NullDraws:
    """The test's statistics on n_sim difference tables simulated with mean 0: per table the bootstrap
    replicates of the mean (n_sim, n_boot) and the per-seed means (n_sim, K). Adding a shift to both
    gives the same tables shifted (the mean is linear), so one set of draws serves every shift."""
    boot: np.ndarray
    seed_means: np.ndarray


def simulate_null(components: Components, n_seeds: int, n_prompts: int, n_sim: int = 1000, n_boot: int = 1000,
                  rng_seed: int = 0, chunk: int = 250) -> NullDraws:
    """The report's test's statistics on `n_sim` simulated (n_seeds, n_prompts) difference tables with
    the given components and mean 0 (see the module docstring for the inner bootstrap's normal limit)."""
    rng = np.random.default_rng(rng_seed)
    boots, means = [], []
    for start in range(0, n_sim, chunk):
        n = min(chunk, n_sim - start)
        cells = (components.seed * rng.standard_normal((n, n_seeds, 1))
                 + components.prompt * rng.standard_normal((n, 1, n_prompts))
                 + components.within * rng.standard_normal((n, n_seeds, n_prompts)))
        row_mean, row_sd = cells.mean(axis=2), cells.std(axis=2)
        if n_seeds > 1:
            picks = rng.integers(0, n_seeds, size=(n, n_boot, n_seeds))
        else:
            picks = np.zeros((n, n_boot, 1), dtype=np.int64)
        at = np.arange(n)[:, None, None]
        inner = rng.standard_normal((n, n_boot, n_seeds)) * row_sd[at, picks] / math.sqrt(n_prompts)
        boots.append((row_mean[at, picks] + inner).mean(axis=2))
        means.append(row_mean)
    return NullDraws(boot=np.concatenate(boots), seed_means=np.concatenate(means))


def p_values(draws: NullDraws, shift: float = 0.0, seed_t: bool = True) -> np.ndarray:
    """The report's p-value of every simulated table moved by `shift`: the bootstrap's
    2 min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (n_boot + 1) and, with `seed_t` and K >= 2, the larger of it
    and the t test's on the per-seed means (K - 1 degrees of freedom)."""
    from scipy.stats import t as student_t

    boot = draws.boot + shift
    n_boot = boot.shape[1]
    tail = np.minimum(1 + (boot <= 0).sum(axis=1), 1 + (boot >= 0).sum(axis=1))
    p = np.minimum(1.0, 2 * tail / (n_boot + 1))
    k = draws.seed_means.shape[1]
    if seed_t and k > 1:
        means = draws.seed_means + shift
        se = means.std(axis=1, ddof=1) / math.sqrt(k)
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = np.abs(means.mean(axis=1)) / se
        p_t = np.where(se > 0, 2 * student_t.sf(stat, k - 1), np.where(means.mean(axis=1) == 0, 1.0, 0.0))
        p = np.maximum(p, p_t)
    return p


def rejection_rate(draws: NullDraws, alpha: float, shift: float = 0.0, seed_t: bool = True) -> dict:
    """{"rate", "low", "high", "n_sim"}: the share of simulated tables the test calls different at
    `alpha`, with its 95% Wilson interval over the simulations."""
    rejected = int((p_values(draws, shift, seed_t) <= alpha).sum())
    n = len(draws.boot)
    rate, low, high = win_rate_ci(rejected, 0, n)
    return {"rate": rate, "low": low, "high": high, "n_sim": n}


def min_detectable(draws: NullDraws, alpha: float, power: float = POWER, steps: int = 30) -> float:
    """The smallest shift the test calls different in at least `power` of the simulated tables
    (bisection on the shift; the rejection rate grows with it). NaN when no shift up to 2^60 times the
    draws' spread reaches it (p cannot fall below the bootstrap's floor 2 / (n_boot + 1) <= alpha
    otherwise, so only an n_boot too small for alpha gets there)."""
    spread = float(np.abs(draws.boot).max() + np.abs(draws.seed_means).max())
    low, high = 0.0, max(spread, 1e-9)
    for _ in range(60):  # make sure `high` is enough
        if (p_values(draws, high) <= alpha).mean() >= power:
            break
        high *= 2
    else:
        return float("nan")
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (low, mid) if (p_values(draws, mid) <= alpha).mean() >= power else (mid, high)
    return high


def seeds_needed(components: Components, n_prompts: int, diff: float, alpha: float, from_seeds: int,
                 max_seeds: int = 20, power: float = POWER, n_sim: int = 400, n_boot: int = 500,
                 rng_seed: int = 0) -> int | None:
    """The fewest seeds (from_seeds .. max_seeds) at which the test calls a true difference of |diff|
    different with `power` (before Holm), on the same prompts; None when even max_seeds does not. By
    bisection (power grows with the seeds): max_seeds first, then halving."""
    def enough(k: int) -> bool:
        draws = simulate_null(components, k, n_prompts, n_sim=n_sim, n_boot=n_boot, rng_seed=rng_seed + k)
        return (p_values(draws, abs(diff)) <= alpha).mean() >= power

    low, high = max(2, from_seeds), max_seeds
    if low > high or not enough(high):
        return None
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid + 1, high)
    return high


def comparison_calibration(tables: dict, pairs: list[dict], alpha: float = 0.05, n_sim: int = 1000,
                           n_boot: int = 1000, max_seeds: int = 20, rng_seed: int = 0) -> dict:
    """The calibration of a comparison from its own (K, P) win tables ({method: array}) and its pairwise
    rows (`stats.pairwise_comparisons`): per method its components and the A/A false-positive rate of
    the test at (K, P) with its simulation interval; the design's rate (the largest of the methods')
    and the smallest difference detected with 80% power for two methods of the pooled components; per
    pair its difference table's components, the rate under the null and the power at the observed
    difference, its smallest detectable difference, and for a pair that does not differ the fewest
    seeds (up to max_seeds) at which its observed difference would with 80% power. All before Holm.
    {"available": False, "why"} with fewer than 2 seeds or 2 prompts."""
    k, p = next(iter(tables.values())).shape
    if k < 2 or p < 2:
        return {"available": False, "why": f"{k} seed(s) × {p} prompt(s): the seed variance cannot be "
                                           "estimated from fewer than 2 seeds (and 2 prompts)"}
    methods, variances = {}, []
    for i, (m, t) in enumerate(sorted(tables.items())):
        c = variance_components(t)
        variances.append((c.seed ** 2, c.prompt ** 2, c.within ** 2))
        draws = simulate_null(difference_components(c, c), k, p, n_sim, n_boot, rng_seed + 1000 * i)
        methods[m] = c.as_dict() | {"aa_false_positive": rejection_rate(draws, alpha)}
    pooled = Components(*(math.sqrt(v) for v in np.mean(variances, axis=0)))
    design = simulate_null(difference_components(pooled, pooled), k, p, n_sim, n_boot, rng_seed + 1)
    worst = max(methods.values(), key=lambda r: r["aa_false_positive"]["rate"])["aa_false_positive"]
    out_pairs = []
    for j, row in enumerate(pairs):
        c = variance_components(np.asarray(tables[row["a"]], float) - np.asarray(tables[row["b"]], float))
        draws = simulate_null(c, k, p, n_sim, n_boot, rng_seed + 2000 + j)
        entry = {"a": row["a"], "b": row["b"], "diff": row["diff"], **c.as_dict(),
                 "false_positive": rejection_rate(draws, alpha),
                 "power_at_diff": rejection_rate(draws, alpha, shift=abs(row["diff"]))["rate"],
                 "min_detectable": min_detectable(draws, alpha), "resolved": bool(row.get("significant")),
                 "seeds_needed": None}
        if not entry["resolved"] and row["diff"] != 0:  # no seed count finds a difference of 0
            entry["seeds_needed"] = seeds_needed(c, p, row["diff"], alpha, k + 1, max_seeds, n_sim=min(n_sim, 200),
                                                 n_boot=min(n_boot, 200), rng_seed=rng_seed + 3000 + j)
        out_pairs.append(entry)
    return {"available": True, "n_seeds": k, "n_prompts": p, "alpha": alpha, "n_sim": n_sim, "n_boot": n_boot,
            "max_seeds": max_seeds, "power": POWER, "false_positive": worst,
            "min_detectable": min_detectable(design, alpha), "methods": methods, "pairs": out_pairs}


def calibration_text(cal: dict) -> str:
    """One paragraph for the verdict: the test's A/A false-positive rate at this design with its
    simulation interval, the smallest difference it detects with 80% power, and the seeds each
    undecided pair would need."""
    if not cal.get("available"):
        return f"No calibration: {cal.get('why', 'not available')}."
    fp = cal["false_positive"]
    text = (f"Calibration at this design ({cal['n_seeds']} seeds × {cal['n_prompts']} prompts, simulated from "
            f"the methods' own seed, prompt and within-prompt variances, {cal['n_sim']} A/A comparisons per "
            f"method): the test calls a method different from itself in {fp['rate']:.3f} of them "
            f"(95% simulation interval [{fp['low']:.3f}, {fp['high']:.3f}], α = {cal['alpha']:g} per pair before "
            f"Holm; the largest of the methods'), and detects a true difference of {cal['min_detectable']:.3f} "
            f"in win rate with {cal['power']:.0%} power.")
    parts = [f"{p['a']} vs {p['b']} ({p['diff']:+.3f}): "
             + (f"{p['seeds_needed']} seeds" if p["seeds_needed"] is not None else f"more than {cal['max_seeds']}")
             for p in cal["pairs"] if not p["resolved"] and p["diff"] != 0]
    if parts:
        text += (f" Seeds per method at which an undecided pair's observed difference would be found with "
                 f"{cal['power']:.0%} power: " + "; ".join(parts) + ".")
    return text
