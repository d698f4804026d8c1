"""The confirmation comparison behind one call, `compare(tables, settings)`: the methods' [seeds x
prompts] tables (`tables`) compared in full (`confirmation_statistics`: every method on the same K
seeds) or as the race ran them (`race_statistics`: each method on the seeds the race gave it), as
per-method means with two-level (seed, prompt) bootstrap intervals, the Holm-corrected pairwise
differences, the verdict (`alignbench.evaluation.stats`) and, in full, the test's calibration at
this design (`calibration`). Pure functions of tables; no MLflow calls, no files."""

from __future__ import annotations

import pandas as pd

from alignbench.confirm.calibration import calibration_text, comparison_calibration
from alignbench.confirm.racing import replay_race
from alignbench.confirm.settings import ConfirmSettings
from alignbench.confirm.tables import MethodTables, comparable, diverged_counts
from alignbench.evaluation.robust import improvement_interval, iqm_interval
from alignbench.evaluation.stats import pairwise_comparisons, two_level_bootstrap_ci, verdict

NO_RESULTS = "No method has usable confirmation results, so this report makes no verdict."


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


def race_statistics(methods: dict[str, MethodTables], settings: ConfirmSettings,
                    n_boot: int = 2000) -> tuple[dict, dict]:
    """(confirmation, verdict) of a raced confirmation (`sweep.confirm=race`): the race replayed on
    the methods' seeds (`racing.replay_race`, as the sweep ran it), each method's summary on the
    seeds the race gave it, the pairs as the race settled them and the verdict on those decisions."""
    prompts = {tuple(t.prompts) for t in methods.values()}
    if len(prompts) > 1:
        raise ValueError("a race compares methods on the same test prompts")
    alpha, rng_seed, max_seeds = settings.alpha, settings.rng_seed, settings.seeds
    state = replay_race({m: t.tables["win"].to_numpy(dtype=float) for m, t in methods.items()}, settings)
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
                    "race": {**settings.race_params(), "max_seeds": max_seeds, "finished": state.finished,
                             "looks": state.looks, "levels": {str(k): v for k, v in state.levels.items()},
                             "runs": sum(used.values()), "full_runs": max_seeds * len(methods)}}
    return confirmation, result


def compare(tables: dict[str, MethodTables], settings: ConfirmSettings) -> tuple[dict | None, dict | None, list[str]]:
    """(confirmation, verdict, notes) of the methods' confirmation tables as `settings` ran them: in
    full, the methods sharing one seed set and one prompt set (`tables.comparable`); raced, the
    methods on the most common prompt set, replayed with the sweep's settings and seed. (None, None,
    notes) when no method can be compared. Each note is one sentence saying what was left out and why."""
    if not tables:
        return None, None, [NO_RESULTS]
    if settings.raced:
        by_prompts: dict[tuple, list[str]] = {}
        for m, t in sorted(tables.items()):
            by_prompts.setdefault(tuple(t.prompts), []).append(m)
        kept = max(by_prompts.values(), key=len)
        notes = [f"{m}: evaluated on other test prompts than {', '.join(kept)}, so it is not compared."
                 for m in sorted(tables) if m not in kept]
        confirmation, result = race_statistics({m: tables[m] for m in kept}, settings)
        if not confirmation["race"]["finished"]:
            notes.append("The race has not finished (a method still needs seeds): the verdict is that of its "
                         "looks so far.")
        return confirmation, result, notes
    compared, left_out = comparable(tables)
    notes = [n + "." for n in left_out]
    if not compared:
        return None, None, notes + [NO_RESULTS]
    n_seeds = len(next(iter(compared.values())).seeds)
    if settings.seeds and settings.seeds != n_seeds:
        notes.append(f"The sweep asked for {settings.seeds} confirmation seeds; {n_seeds} finished for every "
                     "compared method, and only those are compared.")
    return (*confirmation_statistics(compared, alpha=settings.alpha, rng_seed=settings.rng_seed), notes)
