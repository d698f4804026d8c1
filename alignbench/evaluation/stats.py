"""Small statistics shared by evaluation and reports."""

from __future__ import annotations

import math


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
    import numpy as np

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
    import numpy as np
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
    sig = lambda z: 1.0 / (1.0 + math.exp(-z))
    w = np.array([sig(a + b * xi) for xi in x])
    w = w * (1.0 - w)
    info = np.array([[w.sum(), (w * x).sum()], [(w * x).sum(), (w * x * x).sum() + l2]])
    try:
        se = math.sqrt(max(float(np.linalg.inv(info)[0, 0]), 0.0))
        ci = (sig(a - 1.959964 * se), sig(a + 1.959964 * se))
    except np.linalg.LinAlgError:  # all wins or all losses: no finite interval from the fit
        ci = (float("nan"), float("nan"))
    return {"lc_win_rate": sig(a), "lc_win_rate_ci": ci, "raw_win_rate": float(y.mean()),
            "intercept": a, "slope": b, "n": n}
