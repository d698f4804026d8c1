"""Statistics shared by evaluation and reports: win-rate intervals, paired tests, Holm correction,
length control, and the seed x prompt method comparison (two-level bootstrap, pairwise tests, verdict)."""

from __future__ import annotations

import math

import numpy as np


def win_rate_ci(wins: float, ties: float, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """(win rate, low, high): ties count 1/2; Wilson score interval at ~95% (z = 1.96).

    Wilson rather than the normal approximation because it stays inside [0, 1] and behaves
    near 0 and 1 and for small n (Brown, Cai & DasGupta 2001).
    """
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    p = (wins + 0.5 * ties) / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, center - half), min(1.0, center + half)


# --- Comparison statistics for reports (pure functions of numbers) -------------------------


def pareto_front(win_rates, kls) -> list[int]:
    """Indices of the non-dominated points (maximise win rate, minimise KL), sorted by KL.

    A point is dominated when another has win rate >= and KL <= with at least one strict.
    NaNs are never on the front. Exact duplicates are all kept.
    """
    pts = [(i, float(w), float(k)) for i, (w, k) in enumerate(zip(win_rates, kls))
           if not (math.isnan(float(w)) or math.isnan(float(k)))]
    front = []
    for i, w, k in pts:
        dominated = any((w2 >= w and k2 <= k) and (w2 > w or k2 < k) for _, w2, k2 in pts)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (float(kls[i]), -float(win_rates[i])))


def sign_test(diffs) -> tuple[int, int, float]:
    """Two-sided exact sign test of paired differences: (n positive, n negative, p-value).

    Zero differences (ties) are dropped, as usual; with no non-zero difference p = 1.
    """
    from scipy.stats import binomtest

    pos = sum(1 for d in diffs if d > 0)
    neg = sum(1 for d in diffs if d < 0)
    if pos + neg == 0:
        return 0, 0, 1.0
    return pos, neg, float(binomtest(pos, pos + neg, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap(a, b, n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Paired bootstrap of mean(a - b) over the same items (prompts).

    Returns mean difference, a percentile (1 - alpha) CI, and a two-sided p-value for
    H0: mean difference = 0 from the bootstrap distribution shifted to the null
    (p = (1 + #{|d*_b - d| >= |d|}) / (B + 1)).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("paired_bootstrap needs two equal-length, non-empty 1-D samples")
    d = a - b
    mean = float(d.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    boot = d[idx].mean(axis=1)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    extreme = np.abs(boot - mean) >= abs(mean) - 1e-12
    p = float((1 + extreme.sum()) / (n_boot + 1))
    return {"mean_diff": mean, "ci_low": float(low), "ci_high": float(high), "p_value": min(1.0, p), "n": len(d)}


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (step-down, monotone, capped at 1)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def _sigmoid(z: float) -> float:
    """1 / (1 + e^-z) without overflow: an all-loss run's interval reaches z of -1e3 and below."""
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def length_controlled_win_rate(preferences, length_diffs, l2: float = 1e-3) -> dict:
    """Length-controlled win rate, as AlpacaEval 2 does it (Dubois et al. 2024), simplified.

    Fits P(policy preferred) = sigmoid(a + b * x), x = tanh(length_diff / std(length_diff)),
    by maximum likelihood on soft labels (win 1, tie 1/2, loss 0) with an L2 penalty `l2`
    on b only, then reads the win rate at zero length difference: sigmoid(a).
    The 95% interval is a Wald interval on the intercept from the fit's observed information
    (X^T W X plus the penalty), mapped through the sigmoid: with no length spread it is the
    usual logit interval of a proportion.
    Returns {"lc_win_rate", "lc_win_rate_ci", "raw_win_rate", "intercept", "slope", "n"}.
    """
    from scipy.optimize import minimize

    y = np.asarray(preferences, dtype=float)
    diff = np.asarray(length_diffs, dtype=float)
    n = len(y)
    if n == 0 or len(diff) != n:
        return {"lc_win_rate": float("nan"), "lc_win_rate_ci": (float("nan"), float("nan")),
                "raw_win_rate": float("nan"), "intercept": float("nan"), "slope": float("nan"), "n": n}
    sd = diff.std()
    x = np.tanh(diff / sd) if sd > 0 else np.zeros(n)

    def loss(theta):
        a, b = theta
        z = a + b * x
        # -sum[y log s(z) + (1-y) log(1-s(z))] = sum[log(1+e^z) - y z]
        nll = np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * b * b
        s = 1.0 / (1.0 + np.exp(-z))
        g = s - y
        return nll, np.array([g.sum(), (g * x).sum() + l2 * b])

    res = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B", bounds=[(-30, 30), (-30, 30)],
                   options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 1000})
    a, b = (float(v) for v in res.x)
    w = np.array([_sigmoid(a + b * xi) for xi in x])
    w = w * (1.0 - w)
    info = np.array([[w.sum(), (w * x).sum()], [(w * x).sum(), (w * x * x).sum() + l2]])
    try:
        se = math.sqrt(max(float(np.linalg.inv(info)[0, 0]), 0.0))
        ci = (_sigmoid(a - 1.959964 * se), _sigmoid(a + 1.959964 * se))
    except np.linalg.LinAlgError:  # all wins or all losses: no finite interval from the fit
        ci = (float("nan"), float("nan"))
    return {"lc_win_rate": _sigmoid(a), "lc_win_rate_ci": ci, "raw_win_rate": float(y.mean()),
            "intercept": a, "slope": b, "n": n}


# --- Seed x prompt comparison of methods (Henderson et al. 2018; Agarwal et al. 2021) ---------
# Every method is retrained on the same K seeds and evaluated on the same P test prompts, so each
# method gives a table of per-prompt outcomes of shape (K seeds, P prompts): a win indicator in
# {0, 1/2, 1} or any per-prompt value (KL, gold reward). Comparisons are paired by seed and prompt.


def _as_table(table, name: str = "table") -> np.ndarray:
    """The table as a finite float array of shape (K seeds, P prompts), K, P >= 1."""
    t = np.asarray(table, dtype=float)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (seeds x prompts), got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return t


def _two_level_boot_means(table: np.ndarray, n_boot: int, rng_seed: int) -> np.ndarray:
    """n_boot bootstrap replicates of the mean of per-seed prompt means, shape (n_boot,).

    Draw order (fixed, so results are reproducible): first the seed indices, shape (n_boot, K),
    then the prompt indices, shape (n_boot, K, P), drawn independently for each resampled seed.
    With K = 1 no seed draw is made, so the prompt draws are exactly those of a one-level prompt
    bootstrap with the same rng_seed (`paired_bootstrap`).
    """
    n_seeds, n_prompts = table.shape
    rng = np.random.default_rng(rng_seed)
    if n_seeds > 1:
        seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    else:
        seeds = np.zeros((n_boot, 1), dtype=np.int64)
    prompts = rng.integers(0, n_prompts, size=(n_boot, n_seeds, n_prompts))
    # Equal prompt counts per seed: the mean over (seed, prompt) is the mean of per-seed means.
    return table[seeds[:, :, None], prompts].mean(axis=(1, 2))


def seed_t_test(diffs, level: float) -> tuple[float, float, float]:
    """(p, low, high) of a t test on per-seed means (n - 1 degrees of freedom): the two-sided p-value
    for a zero mean and the (level, 1 - level) interval. With no spread the mean is exact: p = 0 (or 1
    for a zero mean) and the interval is the point. Needs n >= 2."""
    from scipy.stats import t as student_t

    diffs = np.asarray(diffs, dtype=float)
    n, mean = len(diffs), float(diffs.mean())
    se = float(diffs.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return (1.0 if mean == 0 else 0.0), mean, mean
    half = float(student_t.ppf(1 - level, n - 1)) * se
    return float(2 * student_t.sf(abs(mean) / se, n - 1)), mean - half, mean + half


def two_level_bootstrap_ci(table, n_boot: int = 2000, alpha: float = 0.05, rng_seed: int = 0,
                           seed_t: bool = True) -> tuple[float, float, float]:
    """(mean, low, high) of a (K seeds, P prompts) table, from a two-level bootstrap.

    The estimate is the mean over seeds of the per-seed mean over prompts. The interval is the
    (alpha/2, 1 - alpha/2) percentile interval of a hierarchical bootstrap: resample the K seeds
    with replacement, then, within each resampled seed, resample its P prompts with replacement
    (prompt indices drawn independently per seed). The interval therefore includes both
    seed-to-seed (training) and prompt-to-prompt (test set) variance.
    `seed_t` (K >= 2): the interval is widened to also hold the t interval of the per-seed means
    (K - 1 degrees of freedom). With 2-5 seeds the bootstrap sees only the seeds drawn and its
    interval is too narrow (Agarwal et al. 2021); the t interval pays for the unknown seed variance.
    With K = 1 there is no seed variance to see: it degenerates to a plain prompt bootstrap,
    and the interval says nothing about how another training seed would do.
    """
    t = _as_table(table)
    boot = _two_level_boot_means(t, n_boot, rng_seed)
    low, high = (float(v) for v in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    if seed_t and t.shape[0] > 1:
        _, low_t, high_t = seed_t_test(t.mean(axis=1), alpha / 2)
        low, high = min(low, low_t), max(high, high_t)
    return float(t.mean(axis=1).mean()), low, high


def paired_difference(table_a, table_b, n_boot: int = 2000, alpha: float = 0.05, rng_seed: int = 0,
                      seed_t: bool = True) -> dict:
    """Mean of a - b over (K seeds, P prompts) tables, paired by seed and by prompt.

    Both tables get the SAME two-level resampling (same seed indices, same prompt indices), which
    is the two-level bootstrap of the difference table a - b (the mean is linear).
    Returns {"diff", "low", "high", "p_value", "p_bootstrap", "low_bootstrap", "high_bootstrap"}:
    the mean difference, its (1 - alpha) interval, and a two-sided p-value for H0: diff = 0. The
    bootstrap's p-value is
        p = min(1, 2 * min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (n_boot + 1)),
    i.e. twice the smaller tail mass of the bootstrap distribution on either side of 0, with
    the usual +1 correction so that p > 0 (smallest value 2 / (n_boot + 1)), and its interval the
    percentile one. A table compared with itself gives d* = 0 throughout and p = 1.
    `seed_t` (K >= 2 seeds): p_value is the larger of the bootstrap's and a t test's on the K
    per-seed mean differences (`seed_t_test`, K - 1 degrees of freedom; also "p_seed_t",
    "low_seed_t", "high_seed_t"), and the interval the hull of both. With 2-5 seeds the bootstrap's
    seed level sees only the seeds drawn and takes their spread for a known seed variance: when one
    seed in a few collapses its false-positive rate is far above alpha; the t test pays for the
    unknown seed variance with its degrees of freedom (docs/evaluation.md has the A/A tables). The
    bootstrap stays for the prompt-to-prompt variance, which the t test on these prompts cannot see.
    """
    a, b = _as_table(table_a, "table_a"), _as_table(table_b, "table_b")
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs tables of equal shape (same seeds and prompts), "
                         f"got {a.shape} and {b.shape}")
    d = a - b
    boot = _two_level_boot_means(d, n_boot, rng_seed)
    low, high = (float(v) for v in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    tail = min(1 + int((boot <= 0).sum()), 1 + int((boot >= 0).sum()))
    p = min(1.0, 2 * tail / (n_boot + 1))
    out = {"diff": float(d.mean(axis=1).mean()), "low": low, "high": high, "p_value": p,
           "p_bootstrap": p, "low_bootstrap": low, "high_bootstrap": high}
    if seed_t and d.shape[0] > 1:
        p_t, low_t, high_t = seed_t_test(d.mean(axis=1), alpha / 2)
        out |= {"p_value": max(p, p_t), "low": min(low, low_t), "high": max(high, high_t),
                "p_seed_t": p_t, "low_seed_t": low_t, "high_seed_t": high_t}
    return out


def _rank(means: dict, higher_is_better: bool) -> list[str]:
    """Method names best first; equal means in name order."""
    sign = -1.0 if higher_is_better else 1.0
    return sorted(means, key=lambda m: (sign * float(means[m]), m))


def pairwise_comparisons(tables: dict, n_boot: int = 2000, alpha: float = 0.05, rng_seed: int = 0,
                         higher_is_better: bool = True) -> list[dict]:
    """`paired_difference` for every pair of methods, with Holm-adjusted p-values.

    Methods are ranked by mean (best first, by `higher_is_better`; ties in name order) and pairs
    listed in ranking order with the better method as "a": for ranking A, B, C the pairs are
    (A, B), (A, C), (B, C). Every pair uses the same rng_seed, so the same resampled seeds and
    prompts. Holm corrects over all m(m-1)/2 pairs; "significant" is p_holm <= alpha.
    Each dict: {"a", "b", "mean_a", "mean_b", "diff", "low", "high", "p_value", "p_holm",
    "significant"}; diff = mean_a - mean_b.
    """
    means = {m: float(_as_table(t, m).mean(axis=1).mean()) for m, t in tables.items()}
    ranking = _rank(means, higher_is_better)
    out = []
    for i, a in enumerate(ranking):
        for b in ranking[i + 1:]:
            res = paired_difference(tables[a], tables[b], n_boot=n_boot, alpha=alpha, rng_seed=rng_seed)
            out.append({"a": a, "b": b, "mean_a": means[a], "mean_b": means[b], **res})
    for row, p_holm in zip(out, holm([row["p_value"] for row in out])):
        row["p_holm"] = p_holm
        row["significant"] = p_holm <= alpha
    return out


def _join(names) -> str:
    """'A', 'A and B', 'A, B and C'."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def indistinguishable_groups(ranking: list[str], significant) -> list[list[str]]:
    """Groups of statistically indistinguishable methods, best first.

    Rule: a group is a maximal run of consecutive methods in the ranking in which no pair is
    significantly different (`significant(x, y)` is False for every pair in the run). Runs may
    overlap (as in a compact letter display): for A > B > C with only A-C significant the groups
    are [A, B] and [B, C]. A method different from both neighbours is a group of its own.
    """
    ends = []
    for i in range(len(ranking)):
        j = i
        while j + 1 < len(ranking) and not any(significant(ranking[k], ranking[j + 1]) for k in range(i, j + 1)):
            j += 1
        ends.append(j)
    # The run from i + 1 ends no earlier than the run from i; keep it only when it ends later.
    return [ranking[i:j + 1] for i, j in enumerate(ends) if i == 0 or j > ends[i - 1]]


def _ahead_clauses(ranking: list[str], significant) -> list[str]:
    """'A and B are ahead of C'-style clauses: consecutive methods that beat the same set are merged."""
    beaten = [tuple(y for y in ranking[i + 1:] if significant(x, y)) for i, x in enumerate(ranking)]
    clauses, i = [], 0
    while i < len(ranking):
        j = i
        while j + 1 < len(ranking) and beaten[j + 1] == beaten[i]:
            j += 1
        if beaten[i]:
            who = ranking[i:j + 1]
            clauses.append(f"{_join(who)} {'is' if len(who) == 1 else 'are'} ahead of {_join(beaten[i])}")
        i = j + 1
    return clauses


def _no_difference_clause(groups: list[list[str]]) -> str:
    """'no difference among A, B and C, or between D and E' over the groups of two or more."""
    parts = [("among " if len(g) > 2 else "between ") + _join(g) for g in groups if len(g) > 1]
    return "no difference " + ", or ".join(parts) if parts else ""


def verdict(means: dict, comparisons: list[dict], *, alpha: float = 0.05, n_seeds: int | str, n_prompts: int,
            higher_is_better: bool = True, decided: set | None = None) -> dict:
    """Plain-language verdict of a method comparison.

    Methods are ranked by mean (best first; ties in name order). A pair differs when its
    Holm-adjusted p-value ("p_holm" in `comparisons`, from `pairwise_comparisons`) is <= alpha.
    Groups follow `indistinguishable_groups`: maximal runs of consecutive ranked methods with no
    significant pair inside (runs may overlap). The statement lists who is ahead of whom (methods
    beating the same set are merged) and the groups, e.g. "A, B and C are ahead of D; no
    difference among A, B and C (α = 0.05, Holm-corrected, 3 seeds × 128 test prompts)."
    Returns {"text", "statement", "intervals", "groups", "ranking"}: text = statement + newline
    + intervals, the line saying what the (1 - alpha) intervals include.
    `decided` (a race, `racing.race`): the pairs (frozensets) that differ, each decided at its own
    look's level, instead of p_holm <= alpha; `n_seeds` may then be a range such as "2-5".
    """
    if not means:
        raise ValueError("verdict needs at least one method")
    ranking = _rank(means, higher_is_better)
    p_holm = {frozenset((c["a"], c["b"])): float(c["p_holm"]) for c in comparisons}

    def significant(x: str, y: str) -> bool:
        key = frozenset((x, y))
        if key not in p_holm:
            raise ValueError(f"verdict: no comparison given for the pair {x} vs {y}")
        return key in decided if decided is not None else p_holm[key] <= alpha

    groups = indistinguishable_groups(ranking, significant)
    design = f"{n_seeds} seed{'s' if n_seeds != 1 else ''} × {n_prompts} test prompts"
    held = f"α = {alpha:g} spent over the race's looks, Holm-corrected" if decided is not None else f"α = {alpha:g}, Holm-corrected"
    if len(ranking) == 1:
        statement = f"Only one method, {ranking[0]}: nothing to compare ({design})."
    elif len(groups) == 1:
        statement = f"No method is distinguishable from the others ({held}, {design})."
    else:
        clauses = _ahead_clauses(ranking, significant)
        body = "; ".join(clauses + [c for c in [_no_difference_clause(groups)] if c])
        statement = f"{body} ({held}, {design})."
    level = f"{100 * (1 - alpha):g}%"
    if n_seeds != 1:
        intervals = (f"{level} intervals from a two-level bootstrap over seeds and prompts, widened to the t interval "
                     "of the per-seed means; a pair differs only where a t test on its per-seed differences agrees.")
    else:
        intervals = f"{level} intervals from a bootstrap over prompts only (one seed: no seed-to-seed variance)."
    return {"text": statement + "\n" + intervals, "statement": statement, "intervals": intervals,
            "groups": groups, "ranking": ranking}
