"""The confirmation comparison: each method retrained with its selected hyperparameters on K fresh
seeds and evaluated on the test prompts. Turns the confirmation runs' eval samples into one
[K seeds x P prompts] table per method and quantity (win indicator, KL, gold reward), keeps the
methods that share one seed set and one prompt set, and computes the per-method means with
two-level (seed, prompt) bootstrap intervals, the Holm-corrected pairwise differences, the
verdict (`alignbench.evaluation.stats`) and the test's calibration at this design
(`alignbench.evaluation.calibration`). Pure functions of tables; no MLflow calls, no files."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from alignbench.evaluation.calibration import calibration_text, comparison_calibration
from alignbench.evaluation.robust import improvement_interval, iqm_interval
from alignbench.evaluation.stats import pairwise_comparisons, two_level_bootstrap_ci, verdict

QUANTITIES = ("win", "kl", "gold")  # win: 1 policy preferred, 1/2 tie, 0 reference preferred


@dataclass
class MethodTables:
    """One method's confirmation outcomes: per quantity a DataFrame (index: seeds, columns: prompts);
    `diverged`: {seed: (step, why)} of its confirmation runs tagged diverged (those that failed, with no
    row in the tables, included)."""
    method: str
    tables: dict[str, pd.DataFrame]
    run_ids: dict[int, str]
    diverged: dict[int, tuple[int, str]] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return list(self.tables["win"].index)

    @property
    def prompts(self) -> list:
        return list(self.tables["win"].columns)

    def first_seeds(self, k: int) -> "MethodTables":
        """The same outcomes on the first k confirmation seeds only (what a race had at look k)."""
        kept = self.seeds[:k]
        return MethodTables(self.method, {q: table.loc[kept] for q, table in self.tables.items()}, self.run_ids,
                            {s: d for s, d in self.diverged.items() if s in kept})


def win_indicator(samples: pd.DataFrame) -> np.ndarray:
    """Per prompt: 1 policy preferred, 1/2 tie, 0 reference preferred (as the win rate counts them)."""
    return samples["winner"].map({"policy": 1.0, "tie": 0.5, "reference": 0.0}).to_numpy(dtype=float)


def prompt_means(samples: pd.DataFrame, by_index: bool) -> pd.DataFrame:
    """One run's samples as one row per distinct prompt: the mean over its samples (several when
    `sample_index` goes above 0) of win, kl and gold (when the run logged policy_gold). Keyed by
    `prompt_index` when `by_index`, else by the prompt text."""
    kl = pd.to_numeric(samples["kl"], errors="coerce").to_numpy() if "kl" in samples else np.nan
    values = pd.DataFrame({"win": win_indicator(samples), "kl": kl})
    if "policy_gold" in samples:
        values["gold"] = pd.to_numeric(samples["policy_gold"], errors="coerce").to_numpy()
    values["key"] = (samples["prompt_index"].astype(int) if by_index else samples["prompt"].astype(str)).to_numpy()
    return values.groupby("key", sort=True).mean()


def method_tables(method: str, samples_by_seed: dict[int, pd.DataFrame], run_ids: dict[int, str],
                  diverged: dict[int, tuple[int, str]] | None = None) -> tuple[MethodTables | None, str | None]:
    """The method's [seeds x prompts] tables, or None and why (its seeds were evaluated on
    different prompts). A quantity that some seed did not log (NaN anywhere) is left out.
    `diverged`: {seed: (step, why)} of its runs tagged diverged."""
    by_index = all("prompt_index" in s for s in samples_by_seed.values())
    per_seed = {seed: prompt_means(s, by_index) for seed, s in sorted(samples_by_seed.items())}
    prompt_sets = {tuple(m.index) for m in per_seed.values()}
    if len(prompt_sets) > 1:
        return None, (f"{method}: its confirmation seeds were evaluated on different prompts "
                      f"({sorted(len(p) for p in prompt_sets)} prompts), so it is not compared")
    tables = {}
    for q in QUANTITIES:
        if all(q in m for m in per_seed.values()):
            t = pd.DataFrame({seed: m[q] for seed, m in per_seed.items()}).T
            if t.notna().all().all():
                tables[q] = t
    if "win" not in tables:
        return None, f"{method}: the confirmation samples have no usable winner column"
    return MethodTables(method, tables, run_ids, dict(diverged or {})), None


def comparable(methods: dict[str, MethodTables]) -> tuple[dict[str, MethodTables], list[str]]:
    """The methods to compare: the largest group sharing one seed set and one prompt set (ties: the
    group with more seeds x prompts, then the first method by name). Each method left out gets a
    note saying why."""
    groups: dict[tuple, list[str]] = {}
    for m, t in sorted(methods.items()):
        groups.setdefault((tuple(t.seeds), tuple(t.prompts)), []).append(m)
    if not groups:
        return {}, []
    # max() keeps the first of equal keys, and groups are in the order of their first method's name.
    key = max(groups, key=lambda k: (len(groups[k]), len(k[0]) * len(k[1])))
    seeds, prompts = key
    notes = [f"{m}: confirmation seeds {list(t.seeds)} on {len(t.prompts)} prompts differ from the compared "
             f"methods' seeds {list(seeds)} on {len(prompts)} prompts (same seeds and prompts are needed to pair "
             "them), so it is not compared" for m, t in sorted(methods.items()) if m not in groups[key]]
    return {m: methods[m] for m in groups[key]}, notes


def _interval(table: pd.DataFrame, n_boot: int, alpha: float, rng_seed: int) -> tuple[float, float, float]:
    return two_level_bootstrap_ci(table.to_numpy(dtype=float), n_boot=n_boot, alpha=alpha, rng_seed=rng_seed)


def method_summary(t: MethodTables, n_boot: int, alpha: float, rng_seed: int) -> dict:
    """Means over seeds of the per-seed prompt means, with two-level intervals; the per-seed values
    (each seed diverged or not); the diverged seeds' count; the IQM of the per-seed win rates with its
    interval over seeds (`robust`)."""
    row: dict = {"seeds": t.seeds, "n_prompts": len(t.prompts)}
    for q, name in (("win", "win_rate"), ("kl", "kl"), ("gold", "gold")):
        if q in t.tables:
            mean, low, high = _interval(t.tables[q], n_boot, alpha, rng_seed)
            if q == "win":  # the seed t interval can reach past a rate's bounds
                low, high = max(0.0, low), min(1.0, high)
            row |= {f"{name}_mean": mean, f"{name}_ci_low": low, f"{name}_ci_high": high}
    row["per_seed"] = [{"seed": seed, "run_id": t.run_ids.get(seed),
                        **{name: float(t.tables[q].loc[seed].mean()) for q, name in
                           (("win", "win_rate"), ("kl", "kl"), ("gold", "gold")) if q in t.tables}}
                       for seed in t.seeds]
    for s in row["per_seed"]:
        step = t.diverged.get(s["seed"], (None, None))[0]
        s |= {"diverged": step is not None, "diverged_step": step}
    row["diverged_seeds"] = len(t.diverged)  # failed ones (no row above) included
    per_seed_wins = t.tables["win"].mean(axis=1).to_numpy(dtype=float)
    iqm, low, high = iqm_interval(per_seed_wins, n_boot=n_boot, alpha=alpha, rng_seed=rng_seed)
    row |= {"win_rate_iqm": iqm, "win_rate_iqm_ci_low": low, "win_rate_iqm_ci_high": high}
    return row


def add_improvement(pairs: list[dict], methods: dict[str, MethodTables], n_boot: int, alpha: float,
                    rng_seed: int) -> None:
    """Each pair's probability of improvement P(seed of a beats seed of b) on the per-seed win
    rates, with its interval over seeds (`robust`), added to its row."""
    for pair in pairs:
        x, y = (methods[pair[k]].tables["win"].mean(axis=1).to_numpy(dtype=float) for k in ("a", "b"))
        p, low, high = improvement_interval(x, y, n_boot=n_boot, alpha=alpha, rng_seed=rng_seed)
        pair |= {"p_improvement": p, "p_improvement_ci_low": low, "p_improvement_ci_high": high}


def diverged_counts(methods: dict[str, MethodTables]) -> dict[str, int]:
    """{method: confirmation seeds tagged diverged}: what the verdict's sentence can carry."""
    return {m: len(t.diverged) for m, t in sorted(methods.items())}


def confirmation_statistics(methods: dict[str, MethodTables], n_boot: int = 2000, alpha: float = 0.05,
                            rng_seed: int = 0, calibration_sims: int = 1000) -> tuple[dict, dict]:
    """(confirmation, verdict) of the comparable methods (`comparable`), all on the same seeds and
    prompts: per method its summary (`method_summary`), the pairwise win-rate differences paired by
    seed and prompt (Holm-corrected), `stats.verdict` on the mean test win rates, and the test's
    calibration at this design from these tables (`calibration.comparison_calibration`, with
    `calibration_sims` simulated comparisons; 0: none) as confirmation["calibration"] and its
    paragraph as verdict["calibration"]."""
    any_method = next(iter(methods.values()))
    n_seeds, n_prompts = len(any_method.seeds), len(any_method.prompts)
    summaries = {m: method_summary(t, n_boot, alpha, rng_seed) for m, t in sorted(methods.items())}
    wins = {m: t.tables["win"].to_numpy(dtype=float) for m, t in methods.items()}
    pairs = pairwise_comparisons(wins, n_boot=n_boot, alpha=alpha, rng_seed=rng_seed) if len(wins) > 1 else []
    add_improvement(pairs, methods, n_boot, alpha, rng_seed)
    means = {m: s["win_rate_mean"] for m, s in summaries.items()}
    result = verdict(means, pairs, alpha=alpha, n_seeds=n_seeds, n_prompts=n_prompts)
    confirmation = {"n_seeds": n_seeds, "n_prompts": n_prompts, "seeds": any_method.seeds, "alpha": alpha,
                    "n_boot": n_boot, "has_gold": all("gold" in t.tables for t in methods.values()),
                    "methods": summaries, "pairwise": pairs, "diverged_seeds": diverged_counts(methods)}
    if calibration_sims > 0:
        confirmation["calibration"] = comparison_calibration(wins, pairs, alpha=alpha, n_sim=calibration_sims,
                                                             n_boot=calibration_sims, rng_seed=rng_seed)
        result["calibration"] = calibration_text(confirmation["calibration"])
    return confirmation, result


def race_statistics(methods: dict[str, MethodTables], settings: dict, max_seeds: int, n_boot: int = 2000,
                    alpha: float = 0.05, rng_seed: int = 0) -> tuple[dict, dict]:
    """(confirmation, verdict) of a raced confirmation (`sweep.confirm=race`): the race replayed on
    the methods' seeds (`racing.race`, as the sweep ran it), each method's summary on the seeds the
    race gave it, the pairs as the race settled them and the verdict on those decisions. `settings`:
    the sweep's race settings (min_seeds, min_effect, spending)."""
    from alignbench.evaluation.racing import race

    prompts = {tuple(t.prompts) for t in methods.values()}
    if len(prompts) > 1:
        raise ValueError("a race compares methods on the same test prompts")
    wins = {m: t.tables["win"].to_numpy(dtype=float) for m, t in methods.items()}
    state = race(wins, max_seeds=max_seeds, min_seeds=int(settings["min_seeds"]),
                 min_effect=float(settings["min_effect"]), alpha=alpha, spending=str(settings["spending"]),
                 futility=float(settings.get("futility", 0.0)), rng_seed=rng_seed)
    used = {m: state.stops[m][0] if m in state.stops else len(t.seeds) for m, t in methods.items()}
    summaries = {}
    for m, t in sorted(methods.items()):
        summaries[m] = method_summary(t.first_seeds(used[m]), n_boot, alpha, rng_seed) | {
            "race_seeds": used[m], "race_stop": state.stops[m][1] if m in state.stops else "still racing"}
    counts = sorted(set(used.values()))
    n_seeds = counts[0] if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    decided = {frozenset((p["a"], p["b"])) for p in state.pairs if p["status"] == "ordered"}
    means = {m: s["win_rate_mean"] for m, s in summaries.items()}
    n_prompts = len(next(iter(methods.values())).prompts)
    result = verdict(means, state.pairs, alpha=alpha, n_seeds=n_seeds, n_prompts=n_prompts, decided=decided)
    seeds = sorted({s for m, t in methods.items() for s in t.seeds[:used[m]]})
    confirmation = {"n_seeds": n_seeds, "n_prompts": n_prompts, "seeds": seeds, "alpha": alpha, "n_boot": n_boot,
                    "has_gold": all("gold" in t.tables for t in methods.values()), "methods": summaries,
                    "pairwise": state.pairs,
                    "diverged_seeds": diverged_counts({m: t.first_seeds(used[m]) for m, t in methods.items()}),
                    "race": {**settings, "max_seeds": max_seeds, "finished": state.finished, "looks": state.looks,
                             "levels": {str(k): v for k, v in state.levels.items()},
                             "runs": sum(used.values()), "full_runs": max_seeds * len(methods)}}
    return confirmation, result
