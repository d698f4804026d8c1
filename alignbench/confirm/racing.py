"""Racing the confirmation seeds: the stopping rule of `sweep.confirm=race`, as a pure function of the
methods' per-seed confirmation tables (seeds x prompts, seeds in confirmation order).

Confirmation runs go in rounds: round k trains confirmation seed k of every method still racing.
After round k (k >= min_seeds) comes look k: the report's statistics (`stats.paired_difference`,
the two-level bootstrap paired by seed and prompt, and `stats.holm` over every pair of methods)
are computed for every pair on the seeds the two methods share. A pair that is still open is

- settled ("ordered") when its Holm-adjusted p-value is <= the look's level alpha_k;
- settled ("equivalent") when its (1 - 2 alpha_k) interval lies inside (-min_effect, +min_effect):
  a two one-sided tests (TOST) equivalence test at alpha_k;

and a method stops getting seeds once every pair it is in is settled. At every look, as in the
report, a pair's p-value is the larger of the bootstrap's and a t test's on its per-seed mean
differences, and its interval the hull of both (`_look`: with few seeds the bootstrap takes the
seeds it has for the seed variance). At look max_seeds everything stops: pairs still open are
"ordered" if significant there, else "undecided".

Alpha spending. The race looks at the data up to max_seeds - min_seeds + 1 times; testing each look
at alpha would inflate the chance of a false "A is ahead of B" with every look. The looks' levels
alpha_k are instead the increments of a Lan-DeMets spending function alpha(t) of the information
fraction t = k / max_seeds (look min_seeds gets alpha(min_seeds / max_seeds), the first increment),
and they add up to alpha: by the union bound the chance of any false "ahead" over all looks is at
most alpha (conservative: it ignores that the looks share seeds).

- `obrien_fleming` (default): alpha(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t)). Early looks get very
  little alpha, so only a clear order stops a pair early, and the last look keeps most of alpha
  (0.0216 of 0.05 for looks 2..5 of 5): a race that runs to the maximum reaches nearly the verdict
  of full confirmation, which is what racing must not change.
- `bonferroni`: alpha split evenly over the looks (Pocock-like): stops earlier, weaker at the end.

Equivalence stops are not Holm-corrected: a wrong "equivalent" only makes the verdict say
"no difference" where more seeds might have found one smaller than about min_effect; it never makes
a false "ahead" claim."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from alignbench.confirm.settings import ConfirmSettings
from alignbench.evaluation.stats import holm, paired_difference

SPENDING = ("obrien_fleming", "bonferroni")
REPORT_N_BOOT = 2000  # the report's replicates; a look at a small level gets more (`look_n_boot`)


def spent(t: float, alpha: float, spending: str) -> float:
    """alpha spent up to information fraction t in [0, 1] (Lan & DeMets 1983)."""
    from scipy.stats import norm

    if t <= 0:
        return 0.0
    if spending == "obrien_fleming":
        return float(min(alpha, 2 - 2 * norm.cdf(norm.ppf(1 - alpha / 2) / math.sqrt(min(t, 1.0)))))
    if spending == "bonferroni":
        return alpha * min(t, 1.0)
    raise ValueError(f"unknown alpha spending {spending!r} (choose from {', '.join(SPENDING)})")


def look_levels(alpha: float, min_seeds: int, max_seeds: int, spending: str = "obrien_fleming") -> dict[int, float]:
    """{k: alpha_k} for the looks k = min_seeds .. max_seeds; the levels add up to alpha."""
    if not 1 <= min_seeds <= max_seeds:
        raise ValueError(f"racing needs 1 <= min_seeds ({min_seeds}) <= max_seeds ({max_seeds})")
    if spending == "bonferroni":  # evenly over the looks, not over the seeds
        n_looks = max_seeds - min_seeds + 1
        return {k: alpha / n_looks for k in range(min_seeds, max_seeds + 1)}
    levels, before = {}, 0.0
    for k in range(min_seeds, max_seeds + 1):
        now = alpha if k == max_seeds else spent(k / max_seeds, alpha, spending)
        levels[k], before = now - before, now
    return levels


def look_n_boot(level: float, n_pairs: int) -> int:
    """Bootstrap replicates for a look: the report's 2000, or more when the look's smallest Holm
    threshold level / n_pairs is below what 2000 replicates can show (the bootstrap p-value is
    at least 2 / (n_boot + 1)): enough that it can be reached with a replicate to spare."""
    return max(REPORT_N_BOOT, math.ceil(4 * max(1, n_pairs) / level))


@dataclass
class Race:
    """Where a race stands. `needs`: {method: seeds it must have before the next look} (empty once
    finished); `stops`: {method: (its number of seeds, why it stopped)} for the stopped methods;
    `pairs`: every pair's last statistics and status; `looks`: the looks made, in order."""

    needs: dict = field(default_factory=dict)
    stops: dict = field(default_factory=dict)
    pairs: list = field(default_factory=list)
    looks: list = field(default_factory=list)
    levels: dict = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return not self.needs


def conditional_power(row: dict, n_seeds: int, max_seeds: int, final_level: float) -> float:
    """Chance that the pair's difference is significant at max_seeds (two-sided, at `final_level`,
    before Holm) if it keeps its current size: the conditional power under the current trend
    (Lan & Wittes 1988). z: the difference over its standard error, read off the look's interval
    (quantiles level .. 1 - level); the information fraction t = n_seeds / max_seeds."""
    from scipy.stats import norm

    t = n_seeds / max_seeds
    if t >= 1:
        return float(row.get("significant", False))
    se = (row["high_bootstrap"] - row["low_bootstrap"]) / (2 * norm.ppf(1 - row["level"]))
    if se <= 0:
        return 1.0 if row["diff"] != 0 else 0.0
    z = abs(row["diff"]) / se
    return float(1 - norm.cdf((norm.ppf(1 - final_level / 2) - z / math.sqrt(t)) / math.sqrt(1 - t)))


def race(tables: dict, *, max_seeds: int, min_seeds: int = 2, min_effect: float = 0.05, alpha: float = 0.05,
         spending: str = "obrien_fleming", futility: float = 0.0, rng_seed: int = 0) -> Race:
    """Replay the race on the confirmation tables there are ({method: array (seeds, prompts)}, seeds
    in confirmation order, all on the same prompts): look after look while every racing method has
    the look's seeds. Extra seeds beyond a method's stop are ignored, so a full confirmation's tables
    give exactly the race that would have run on them."""
    levels = look_levels(alpha, min_seeds, max_seeds, spending)
    tables = {m: np.asarray(t, dtype=float) for m, t in sorted(tables.items())}
    state = Race(levels=levels)
    racing = list(tables)
    decided: dict[frozenset, dict] = {}
    for k in range(min_seeds, max_seeds + 1):
        short = {m: k for m in racing if len(tables[m]) < k}
        if short:
            state.needs = short
            break
        seeds = {m: state.stops[m][0] if m in state.stops else k for m in tables}
        rows = _look(tables, seeds, decided, levels[k], min_effect, rng_seed)
        for row in rows:  # futility: an order out of reach by max_seeds
            if row["status"] == "open" and futility > 0 and row["n_seeds"] < max_seeds:
                row["conditional_power"] = conditional_power(row, row["n_seeds"], max_seeds, levels[max_seeds])
                if row["conditional_power"] < futility:
                    row["status"] = "futile"
        state.looks.append(k)
        last = k == max_seeds
        for row in rows:
            if row["status"] == "open" and last:
                row["status"] = "ordered" if row["significant"] else "undecided"
            if row["status"] != "open":
                decided.setdefault(frozenset((row["a"], row["b"])), row)
        for m in list(racing):
            mine = [r for r in rows if m in (r["a"], r["b"])]
            if last or all(r["status"] != "open" for r in mine):
                state.stops[m] = (k, stop_reason(m, mine, last))
                racing.remove(m)
        state.pairs = rows
        if not racing:
            break
    return state


def replay_race(tables: dict, settings: ConfirmSettings) -> Race:
    """`race` with a sweep's settings: the one place a race is assembled, for the sweep deciding
    which seed runs next and for the report and the replay bench reading its outcome."""
    return race(tables, max_seeds=settings.seeds, min_seeds=settings.min_seeds, min_effect=settings.min_effect,
                alpha=settings.alpha, spending=settings.spending, futility=settings.futility,
                rng_seed=settings.rng_seed)


def _look(tables: dict, seeds: dict, decided: dict, level: float, min_effect: float, rng_seed: int,
          seed_t: bool = True) -> list[dict]:
    """Look at level `level`: every pair on its shared seeds (a pair settled earlier keeps its
    row), Holm over all pairs, and the status of each pair still open.

    `seed_t` (the report's test, `stats.paired_difference`; off only to show the bootstrap alone): a
    pair's p-value is the larger of the bootstrap's and a t test's on its per-seed mean differences,
    and equivalence needs both intervals inside the margin (futility's conditional power still reads
    the bootstrap's interval: the t interval on 1-3 degrees of freedom is not a normal one). With 2-4
    seeds the bootstrap's seed level sees only the seeds drawn (two close per-seed differences look
    like a known, tiny seed variance), so alone it orders and settles pairs too early; the t test
    pays for an unknown seed variance with its degrees of freedom (the case that showed it:
    docs/measured_defaults.md). The last look is the report's test: a race run to the maximum reaches
    full confirmation's verdict there."""
    means = {m: float(t[:seeds[m]].mean(axis=1).mean()) for m, t in tables.items()}
    ranking = sorted(means, key=lambda m: (-means[m], m))
    pairs = [(a, b) for i, a in enumerate(ranking) for b in ranking[i + 1:]]
    n_boot = look_n_boot(level, len(pairs))
    rows = []
    for a, b in pairs:
        old = decided.get(frozenset((a, b)))
        if old is not None:
            rows.append(old)
            continue
        n = min(seeds[a], seeds[b])
        # alpha = 2 level: the interval from quantiles level .. 1 - level, the TOST interval at `level`.
        res = paired_difference(tables[a][:n], tables[b][:n], n_boot=n_boot, alpha=2 * level, rng_seed=rng_seed,
                                seed_t=seed_t)
        rows.append({"a": a, "b": b, "mean_a": float(tables[a][:n].mean()), "mean_b": float(tables[b][:n].mean()),
                     **res, "n_seeds": n, "level": level, "status": "open"})
    for row, p_holm in zip(rows, holm([r["p_value"] for r in rows])):
        if row["status"] != "open":
            continue
        row["p_holm"] = p_holm
        row["significant"] = p_holm <= level
        if row["significant"]:
            row["status"] = "ordered"
        elif -min_effect < row["low"] and row["high"] < min_effect:  # the hull of both intervals
            row["status"] = "equivalent"
    return rows


def stop_reason(method: str, rows: list[dict], at_max: bool) -> str:
    """Why a method stopped, e.g. "settled: ahead of kto; behind dpo; equivalent to ipo" or
    "max seeds: undecided vs dpo"."""
    parts: dict[str, list[str]] = {}
    for r in rows:
        other = r["b"] if r["a"] == method else r["a"]
        if r["status"] == "ordered":
            ahead = (r["a"] == method) == (r["diff"] > 0)
            parts.setdefault("ahead of" if ahead else "behind", []).append(other)
        else:
            label = {"equivalent": "equivalent to", "undecided": "undecided vs", "futile": "out of reach vs"}
            parts.setdefault(label.get(r["status"], "open vs"), []).append(other)
    order = ("ahead of", "behind", "equivalent to", "out of reach vs", "undecided vs", "open vs")
    detail = "; ".join(f"{k} {', '.join(parts[k])}" for k in order if k in parts) or "no other method"
    return ("max seeds: " if at_max else "settled: ") + detail
