"""Racing against full confirmation on the same selections, replayed from a full confirmation's runs.

    python -m alignbench.bench.race_replay DIR [DIR ...] [--min-seeds 2] [--min-effect 0.05] [--futility 0.1] [--json out.json]

Each DIR holds a finished `alignbench sweep` with `sweep.confirm=full` (its ./mlflow.db). A race
looks at a prefix of the same seeds (round k trains confirmation seed k, the same run as full
confirmation's seed k: same selection, seed, config), so what a race would have done on that sweep
is computed exactly from the full runs' eval samples: `confirm.racing.replay_race` on each method's
[seeds x prompts] win table (`confirm.tables.method_tables`, as the report builds it), with the
sweep's seed for the bootstrap draws, as a raced sweep runs it.

Per DIR and alpha spending it prints and returns:
- the verdicts: full confirmation's (`confirm.comparison.confirmation_statistics`, the report's)
  and the race's (`race_statistics`), compared as the sets of ordered pairs ("a ahead of b");
- compute: the summed `time/total_seconds` of the confirmation runs the race uses over that of all
  of full confirmation's runs. Each sweep worker trains single-threaded, so a run's wall time is
  its CPU time when its core is not shared with other processes;
- the least seeds (`least_seeds`): what a stopping rule that knew the end could save while giving
  full confirmation's verdict with the report's test. No race can use less, so where this bound is
  above a compute goal, no choice of race settings meets the goal on that sweep."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignbench.confirm.racing import SPENDING
from alignbench.confirm.settings import ConfirmSettings


def ordered_pairs(pairs: list[dict], decided=None) -> set[tuple[str, str]]:
    """{(ahead, behind)} of a comparison's pairs: significant ones (full), or the race's "ordered"."""
    out = set()
    for p in pairs:
        if (p["status"] == "ordered") if decided else p["significant"]:
            out.add((p["a"], p["b"]) if p["diff"] > 0 else (p["b"], p["a"]))
    return out


def load_sweep(folder: Path):
    """({method: MethodTables}, {(method, seed): run seconds}, sweep seed) of the sweep in `folder`."""
    import mlflow
    import pandas as pd

    from alignbench.confirm.tables import method_tables
    from alignbench.report.reading import find_sweep, load_confirmation_runs, params_of
    from alignbench.tracking.artifacts import load_samples

    mlflow.set_tracking_uri(f"sqlite:///{(folder / 'mlflow.db').resolve()}")
    client = mlflow.MlflowClient()
    parents, _ = find_sweep(None)
    runs = load_confirmation_runs(parents)
    tables, seconds = {}, {}
    for method, sub in runs.groupby("method", sort=True):
        samples = {int(r.seed): load_samples(client, r.run_id) for r in sub.itertuples()}
        t, why = method_tables(method, samples, {int(r.seed): r.run_id for r in sub.itertuples()})
        if t is None:
            raise SystemExit(f"alignbench: error: {folder}: {why}")
        tables[method] = t
        for _, r in sub.iterrows():
            seconds[(method, int(r["seed"]))] = float(pd.to_numeric(r.get("metrics.time/total_seconds")))
    return tables, seconds, int(params_of(parents.iloc[0]).get("sweep.seed") or 0)


def least_seeds(tables: dict, full_pairs: set, min_seeds: int, seed: int) -> dict[str, int]:
    """{method: seeds} of the cheapest stopping rule that could give full confirmation's verdict with
    the report's own test: a lower bound on any race's compute, not a race.

    It knows the end: a pair that full confirmation does not order is let go at min_seeds for free
    (a race needs evidence for that: equivalence or futility); a pair that it orders must stay open
    until the report's test on the first k seeds (Holm over every pair, at the full alpha = 0.05,
    which no look of a race exceeds) orders it the same way. A method gets the most its pairs need."""
    from alignbench.confirm.comparison import confirmation_statistics

    n_max = min(len(t.seeds) for t in tables.values())
    need = {m: min(min_seeds, n_max) for m in tables}
    open_pairs = set(full_pairs)
    for k in range(min_seeds, n_max + 1):
        if not open_pairs:
            break
        if k < n_max:  # at n_max the prefix is full confirmation itself: every pair left is ordered there
            prefix, _ = confirmation_statistics({m: t.first_seeds(k) for m, t in tables.items()}, rng_seed=seed,
                                                calibration_sims=0)
            settled = open_pairs & ordered_pairs(prefix["pairwise"])
        else:
            settled = set(open_pairs)
        for a, b in settled:
            need[a], need[b] = max(need[a], k), max(need[b], k)
        open_pairs -= settled
    return need


def replay(folder: Path, min_seeds: int, min_effect: float, futility: float) -> dict:
    tables, seconds, seed = load_sweep(folder)
    return replay_tables(tables, seconds, seed, min_seeds, min_effect, futility) | {"folder": str(folder)}


def replay_tables(tables: dict, seconds: dict, seed: int, min_seeds: int, min_effect: float, futility: float) -> dict:
    """Full confirmation, the race under each alpha spending, and the least seeds (`least_seeds`) on
    the same methods' tables; `seconds`: {(method, seed): run seconds}."""
    from alignbench.confirm.comparison import confirmation_statistics, race_statistics

    k = min(len(t.seeds) for t in tables.values())
    full, full_verdict = confirmation_statistics(tables, rng_seed=seed, calibration_sims=0)
    full_pairs = ordered_pairs(full["pairwise"])
    total = sum(seconds.values())

    def compute(used: dict) -> dict:  # the runs of each method's first used[m] seeds
        spent = sum(s for (m, seed_), s in seconds.items() if tables[m].seeds.index(seed_) < used[m])
        return {"runs": sum(used.values()), "seconds": spent, "compute_ratio": spent / total}

    least = least_seeds(tables, full_pairs, min_seeds, seed)
    out = {"max_seeds": k, "sweep_seed": seed, "full_runs": k * len(tables),
           "full_seconds": total, "full_verdict": full_verdict["statement"],
           "full_ordered": sorted(full_pairs), "races": {}, "least": compute(least) | {"seeds": least}}
    for spending in SPENDING:
        settings = ConfirmSettings(mode="race", seeds=k, min_seeds=min_seeds, min_effect=min_effect, spending=spending,
                                   futility=futility, rng_seed=seed)
        conf, verdict = race_statistics(tables, settings)
        used = {m: r["race_seeds"] for m, r in conf["methods"].items()}
        race_pairs = ordered_pairs(conf["pairwise"], decided=True)
        out["races"][spending] = compute(used) | {
            "same_verdict": race_pairs == full_pairs, "only_full": sorted(full_pairs - race_pairs),
            "only_race": sorted(race_pairs - full_pairs), "verdict": verdict["statement"],
            "stops": {m: [r["race_seeds"], r["race_stop"]] for m, r in conf["methods"].items()}}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--min-seeds", type=int, default=2)
    parser.add_argument("--min-effect", type=float, default=0.05)
    parser.add_argument("--futility", type=float, default=0.1)  # the sweep's default (sweep.race.futility)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results = [replay(f, args.min_seeds, args.min_effect, args.futility) for f in args.folders]
    for r in results:
        print(f"{r['folder']} (sweep seed {r['sweep_seed']}, {r['max_seeds']} seeds): full {r['full_runs']} runs "
              f"{r['full_seconds']:.0f} s: {r['full_verdict']}")
        for spending, x in r["races"].items():
            print(f"  race {spending}: {x['runs']} runs {x['seconds']:.0f} s = {x['compute_ratio']:.2f} of full; "
                  f"same verdict: {x['same_verdict']}" + (f" (full only {x['only_full']}, race only {x['only_race']})"
                                                          if not x["same_verdict"] else ""))
            print(f"    {x['verdict']}")
            for m, (n, why) in sorted(x["stops"].items()):
                print(f"    {m}: {n} seeds, {why}")
        least = r["least"]
        print(f"  least seeds for full's verdict (a bound, not a race): {least['runs']} runs {least['seconds']:.0f} s = "
              f"{least['compute_ratio']:.2f} of full; " + ", ".join(f"{m} {n}" for m, n in sorted(least["seeds"].items())))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=list))


if __name__ == "__main__":
    main()
