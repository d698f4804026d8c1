"""What the report computes from a sweep's trials, studies and eval samples: each method's swept
hyperparameters and best trial, the headline rows, paired comparisons of the best trials, the
length-controlled win rate, Optuna's importances, the example prompts and the run metadata.
Pure functions of the tables `reading` returns; no MLflow calls, no files."""

from __future__ import annotations

import itertools
import math
import re
import warnings

import pandas as pd

import alignbench
from alignbench.evaluation.stats import holm, length_controlled_win_rate, paired_bootstrap, sign_test
from alignbench.report.formatting import duration, fmt, number, short_value, shown_text, text
from alignbench.report.reading import column
from alignbench.sweep.selection import best_index, finite_number
from alignbench.confirm.tables import win_indicator

STATES = ("COMPLETE", "PRUNED", "FAIL")
# Params that differ between trials without being hyperparameters.
NOT_HYPERPARAMS = re.compile(r"^(data\.dropped\.|data\.n_|sweep\.|hydra\.)")
HEADLINE_METRICS = ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl", "eval/kl_per_token",
                    "eval/policy_reward", "eval/reference_reward", "eval/gold_reward", "eval/reference_gold_reward",
                    "eval/policy_length", "eval/reference_length", "time/total_seconds", "train/tokens")
SAMPLE_COLUMNS = {"prompt", "winner", "policy_length", "reference_length"}  # what the statistics need


def hyperparams(trials: pd.DataFrame, method: str, study=None) -> list[str]:
    """The swept params of `method`: its study's distributions, else params that vary across its trials."""
    names = []
    if study is not None:
        for t in study.trials:
            names += [k for k in t.distributions if k not in names]
        if names:
            return names
    sub = trials[trials["method"] == method]
    for col in sorted(c for c in sub.columns if c.startswith("params.")):
        key = col[len("params."):]
        if not NOT_HYPERPARAMS.match(key) and sub[col].dropna().nunique() > 1:
            names.append(key)
    return names


def best_trials(trials: pd.DataFrame, objective: str = "eval/win_rate", kl_tiebreak: bool = False) -> dict[str, pd.Series]:
    """Per method, the best COMPLETE trial by the sweep's one rule (`alignbench.sweep.selection`): the
    highest objective; ties: the lower KL when `kl_tiebreak` (the top of the Pareto front), then the
    earliest trial, as Optuna's `study.best_trial`."""
    best = {}
    col = f"metrics.{objective}"
    if col not in trials:
        return best
    for method, sub in trials[trials["state"] == "COMPLETE"].groupby("method", sort=True):
        i = best_index(list(sub[col]), list(column(sub, "metrics.eval/kl")), list(sub["trial_number"]),
                       kl_tiebreak=kl_tiebreak)
        if i is not None:
            best[method] = sub.iloc[i]
    return best


def state_counts(trials: pd.DataFrame, method: str) -> dict[str, int]:
    sub = trials[trials["method"] == method]["state"]
    counts = {s: int((sub == s).sum()) for s in STATES}
    counts["other"] = int((~sub.isin(STATES)).sum())
    return counts


def headline_rows(trials: pd.DataFrame, methods: list[str], best: dict[str, pd.Series],
                  swept: dict[str, list[str]]) -> list[dict]:
    """One row per method: its trial counts and, when it has a best trial, that trial's run,
    hyperparameters and final metrics."""
    rows = []
    for m in methods:
        row = {"method": m, **{f"n_{k.lower()}": v for k, v in state_counts(trials, m).items()}}
        b = best.get(m)
        if b is not None:
            # Without a swept param (no study, nothing varies), show the method's own fixed params.
            keys = swept[m] or sorted(c[len("params."):] for c in b.index
                                      if c.startswith("params.method.") and c != "params.method.name"
                                      and isinstance(b[c], str))
            row.update({"run_id": b["run_id"], "run_name": text(b.get("tags.mlflow.runName")),
                        "trial_number": None if pd.isna(b["trial_number"]) else int(b["trial_number"]),
                        "hyperparameters": {k: short_value(b.get(f"params.{k}")) for k in keys}})
            row.update({k: number(b.get(f"metrics.{k}")) for k in HEADLINE_METRICS})
        rows.append(row)
    return rows


def align_samples(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of two runs' samples on the same prompts: positional when the prompt lists agree, else by prompt."""
    if len(a) == len(b) and list(a["prompt"]) == list(b["prompt"]):
        return a.reset_index(drop=True), b.reset_index(drop=True)
    keep = set(a["prompt"]) & set(b["prompt"])
    a2 = a[a["prompt"].isin(keep)].drop_duplicates("prompt").set_index("prompt")
    b2 = b[b["prompt"].isin(keep)].drop_duplicates("prompt").set_index("prompt")
    b2 = b2.loc[a2.index]
    return a2.reset_index(), b2.reset_index()


def paired_comparisons(samples: dict[str, pd.DataFrame], n_boot: int = 10_000, seed: int = 0) -> list[dict]:
    """Every pair of methods' best trials on the same prompts: paired bootstrap of the per-prompt
    win-indicator difference and an exact sign test, both Holm-corrected across the pairs."""
    rows = []
    for m1, m2 in itertools.combinations(sorted(samples), 2):
        a, b = align_samples(samples[m1], samples[m2])
        if len(a) == 0:
            continue
        wa, wb = win_indicator(a), win_indicator(b)
        boot = paired_bootstrap(wa, wb, n_boot=n_boot, seed=seed)
        pos, neg, p_sign = sign_test(wa - wb)
        rows.append({"method_a": m1, "method_b": m2, "n": len(a), "win_rate_a": float(wa.mean()),
                     "win_rate_b": float(wb.mean()), "diff": boot["mean_diff"], "ci_low": boot["ci_low"],
                     "ci_high": boot["ci_high"], "p_bootstrap": boot["p_value"], "a_better": pos,
                     "b_better": neg, "p_sign": p_sign})
    for key in ("p_bootstrap", "p_sign"):
        for row, adj in zip(rows, holm([r[key] for r in rows])):
            row[key + "_holm"] = adj
    return rows


def length_controlled(samples: pd.DataFrame) -> dict:
    diff = samples["policy_length"].astype(float) - samples["reference_length"].astype(float)
    return length_controlled_win_rate(win_indicator(samples), diff.to_numpy())


# Optuna 5's default importance evaluator is PED-ANOVA (not fANOVA as before); the report names it and
# passes it explicitly so that a change of Optuna's default cannot change the report silently.
IMPORTANCE_EVALUATOR = "PED-ANOVA"
IMPORTANCE_TOP_QUANTILE = 0.1   # PED-ANOVA's default target_quantile: the top 10% of complete trials
IMPORTANCE_MIN_TOP = 5          # Optuna's advice: at least this many trials above the cutoff
IMPORTANCE_METHOD = (f"Importances from Optuna's {IMPORTANCE_EVALUATOR} evaluator (Optuna 5's default; not "
                     "fANOVA): how differently each hyperparameter is distributed among the top "
                     f"{IMPORTANCE_TOP_QUANTILE:.0%} of a method's complete trials than among all of them. It needs "
                     f"several trials above that cutoff (Optuna advises at least {IMPORTANCE_MIN_TOP}); with few "
                     "trials the importances are noisy.")
SEED_OUTCOMES_NOTE = ("IQM of seeds: the interquartile mean of the per-seed win rates (rliable's robust aggregate; "
                      "below 4 seeds it equals the mean), 95% percentile bootstrap over seeds. Diverged seeds: "
                      "confirmation runs tagged diverged=true (sampled KL above eval.diverged_kl, or a non-finite "
                      "loss); they stay in the mean and the intervals and are counted and marked here, because an "
                      "interval from a few seeds cannot cover collapses it has not seen. P(A > B) over seeds: "
                      "rliable's probability of improvement, the share of (seed of A, seed of B) pairs where A's "
                      "win rate is higher (ties 1/2), 95% bootstrap over each method's seeds.")
SEARCH_CAVEAT = ("Validation numbers of the selected trials, optimistically biased: the best of N noisy trials "
                 "(N: the complete trials of the method), on the prompts they were selected on.")


def importances(study) -> tuple[dict | None, str | None]:
    """Optuna's PED-ANOVA importances of the study's params for reaching its top 10% of objective
    values (for a Pareto study: of the win rate, objective 0); None + why when it cannot run."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return None, f"{len(complete)} complete trial(s); importances need at least 2"
    varying = {k for k in {k for t in complete for k in t.params}
               if len({repr(t.params.get(k)) for t in complete}) > 1}
    if not varying:
        return None, "no hyperparameter varies across the complete trials"
    # PED-ANOVA takes a given target as lower-is-better; objective 0 (the win rate) is maximised.
    kwargs = {"target": lambda t: -t.values[0]} if len(study.directions) > 1 else {}
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=IMPORTANCE_TOP_QUANTILE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study, evaluator=evaluator, **kwargs), None
    except Exception as exc:  # noqa: BLE001 — optuna refuses some degenerate studies
        return None, f"Optuna could not compute importances: {type(exc).__name__}: {exc}"


def importance_caveat(method: str, n_complete: int) -> str | None:
    """A note when PED-ANOVA's top quantile holds fewer trials than Optuna advises (noisy importances)."""
    n_top = max(1, math.ceil(IMPORTANCE_TOP_QUANTILE * n_complete))
    if n_top >= IMPORTANCE_MIN_TOP:
        return None
    return (f"{method}: {n_complete} complete trials, so only {n_top} lie in {IMPORTANCE_EVALUATOR}'s top "
            f"{IMPORTANCE_TOP_QUANTILE:.0%} (Optuna advises at least {IMPORTANCE_MIN_TOP}, i.e. about "
            f"{math.ceil(IMPORTANCE_MIN_TOP / IMPORTANCE_TOP_QUANTILE)} complete trials): these importances are "
            "noisy; read them as a rough hint.")


def length_control_caveat(judges: list[str], data_names: list[str]) -> str | None:
    """Why the length-controlled win rate misleads under the built-in task's gold judge (None for other
    judges, and for other tasks' gold rewards: the sentiment task's has no length term to peak)."""
    if "gold" not in judges or "builtin" not in data_names:
        return None
    return ("The judge is the built-in task's gold reward, and length is one of its parts (a term that peaks at "
            "the target length): controlling for length removes real signal here: the length-controlled win "
            "rate discounts real gains (or losses) from a policy's length. Read the raw win rate for this judge.")


def example_rows(samples: dict[str, pd.DataFrame], n: int) -> list:
    """Index labels (in the first method's table) of the `n` prompts where the judge scores of the
    reference and of every method's best policy spread the most: where the methods disagree,
    which says more than the first n prompts. Ties keep the eval order."""
    tables = list(samples.values())
    first = tables[0]
    scores = pd.DataFrame({"prompt": first["prompt"]}, index=first.index)
    scores["reference"] = pd.to_numeric(first["reference_score"], errors="coerce") if "reference_score" in first else float("nan")
    for i, s in enumerate(tables):
        if "policy_score" not in s:
            continue
        by_prompt = pd.to_numeric(s.drop_duplicates("prompt").set_index("prompt")["policy_score"], errors="coerce")
        scores[f"policy{i}"] = scores["prompt"].map(by_prompt)
    values = scores.drop(columns="prompt")
    spread = (values.max(axis=1) - values.min(axis=1)).fillna(-1.0)
    order = sorted(range(len(spread)), key=lambda k: (-spread.iloc[k], k))
    return [first.index[k] for k in order[:n]]


def examples(samples: dict[str, pd.DataFrame], methods: list[str], n: int) -> list[dict]:
    """The `n` example prompts (`example_rows`), each with the reference's response and every
    method's best policy's response, judge score, gold reward, verdict and length."""
    first = samples[next(m for m in methods if m in samples)]
    out = []
    for _, r in first.loc[example_rows(samples, n)].iterrows():
        ex = {"prompt": shown_text(r["prompt"]), "reference": shown_text(r.get("reference_response")),
              "reference_score": number(r.get("reference_score")), "reference_gold": number(r.get("reference_gold")),
              "policies": []}
        for m in methods:
            match = samples[m][samples[m]["prompt"] == r["prompt"]] if m in samples else None
            if match is None or match.empty:
                continue
            p = match.iloc[0]
            ex["policies"].append({"method": m, "response": shown_text(p.get("policy_response")),
                                   "score": number(p.get("policy_score")), "gold": number(p.get("policy_gold")),
                                   "winner": text(p.get("winner")), "length": number(p.get("policy_length"))})
        out.append(ex)
    return out


JUDGE_ACCURACY_KEYS = ("eval/judge_accuracy", "eval/judge_accuracy_ci_low", "eval/judge_accuracy_ci_high",
                       "eval/judge_n_pairs")


def judge_accuracy_note(trials: pd.DataFrame) -> str:
    """The judge's held-out accuracy as the report's run metadata shows it (its first run that logged
    it), with "at chance" when its interval includes 0.5; "" when no run logged it."""
    for _, row in trials.iterrows():
        m = [finite_number(row.get(f"metrics.{k}")) for k in JUDGE_ACCURACY_KEYS]
        if all(v is not None for v in m):
            ties = finite_number(row.get("metrics.eval/judge_ties"))
            tie_note = f", {int(ties)} ties counted 1/2" if ties is not None else ""
            chance = ": AT CHANCE, its win rates mean nothing" if m[1] <= 0.5 <= m[2] else ""
            return (f"; held-out accuracy {m[0]:.3f} (95% CI [{m[1]:.3f}, {m[2]:.3f}], {int(m[3])} pairs"
                    f"{tie_note}){chance}")
    return ""


def judge_chance_caveat(trials: pd.DataFrame) -> str | None:
    """`judges.judge_accuracy_caveat` of the first run that logged the judge's held-out accuracy (every
    run of a sweep has the same judge and held-out pairs): None when the judge is above chance or no
    run logged it."""
    from alignbench.evaluation.judges import judge_accuracy_caveat

    for _, row in trials.iterrows():
        metrics = {k: row.get(f"metrics.{k}") for k in JUDGE_ACCURACY_KEYS}
        if all(finite_number(v) is not None for v in metrics.values()):
            metrics["eval/judge_ties"] = finite_number(row.get("metrics.eval/judge_ties"))  # None in older runs
            return judge_accuracy_caveat(metrics)
    return None


def judge_caveats(trials: pd.DataFrame) -> list[str]:
    """The report's plain warnings about the judge: its held-out accuracy interval includes 0.5 (the
    first run that logged it; every run of a sweep has the same judge and held-out pairs), or it is
    the reward model a PPO/RLOO run trained against."""
    from alignbench.evaluation.judges import judge_bias_caveat

    caveat = judge_chance_caveat(trials)
    notes = [f"Warning: {caveat}."] if caveat else []
    for method in sorted(trials["method"].astype(str).unique()):
        runs = trials[trials["method"].astype(str) == method]
        first = runs.iloc[0]
        caveat = judge_bias_caveat(method, str(first.get("params.judge.name")), first.get("params.judge.path"),
                                   first.get("params.method.reward"))
        notes += [f"Warning: {caveat}."] if caveat else []
    return notes


def run_metadata(trials, parent, parents, sweep_name, studies, parent_params,
                 confirmation_seeds=()) -> list[tuple[str, str]]:
    """(label, value) rows saying what was run where: versions, model, data, judge, seeds (the search
    trials' and the confirmation's), hardware, times."""
    def uniq(col):
        vals = sorted({str(v) for v in column(trials, col).dropna()} | (
            {str(parent[col])} if col in parent and isinstance(parent[col], str) else set()))
        return ", ".join(vals) if vals else "not recorded"

    start, end = parents["start_time"].min(), parents["end_time"].max()
    wall = (end - start).total_seconds() if pd.notna(start) and pd.notna(end) else float("nan")
    total = pd.to_numeric(column(trials, "metrics.time/total_seconds"), errors="coerce").sum()
    tokens = pd.to_numeric(column(trials, "metrics.train/tokens"), errors="coerce").sum()
    hardware = uniq("tags.alignbench.hardware")
    if hardware == "not recorded":
        hardware = uniq("params.hardware")
    return [
        ("sweep", sweep_name),
        ("MLflow experiment / parent run", f"{parent.get('experiment_name', '')} / {parent['run_id']}"),
        ("objective", parent_params.get("sweep.objective", "win_rate")),
        ("alignbench version (runs)", uniq("tags.alignbench.version")),
        ("alignbench version (report)", alignbench.__version__),
        ("git commit", uniq("tags.mlflow.source.git.commit")),
        ("model", uniq("params.model.name")),
        ("data", uniq("params.data.name")),
        ("judge", uniq("params.judge.name") + judge_accuracy_note(trials)),
        ("seeds", f"search trials: {uniq('params.seed')}; confirmation: "
                  + (", ".join(str(x) for x in confirmation_seeds) or "none")),
        ("device", uniq("params.device")),
        ("hardware", hardware),
        ("trials", f"{len(trials)} runs: " + ", ".join(f"{s} {int((trials['state'] == s).sum())}"
                                                      for s in sorted(trials["state"].unique()))),
        ("sweep wall time", duration(wall)),
        ("summed trial time", duration(total) + f" ({fmt(tokens, 0)} training tokens)" if total else "not recorded"),
        ("Optuna studies", ", ".join(f"{m}: {s.study_name}" for m, s in sorted(studies.items())) or "not loaded"),
    ]
