"""`alignbench report`: a sweep's MLflow runs and Optuna studies -> the comparison a researcher needs.

Reads the tracking layout of docs/ARCHITECTURE.md (one experiment per sweep, a parent run tagged
`alignbench.role=sweep`, one nested child run per Optuna search trial, and the confirmation runs:
child runs tagged `alignbench.role=confirmation`, each method retrained with its selected params on
fresh seeds and evaluated on the test prompts) through `mlflow.search_runs`, and writes
`<report.out_dir>/<sweep>/`, opening with the verdict of the confirmation runs (none without them;
the search trials' numbers are validation numbers of selected trials, biased upwards):

- `report.html` — self-contained (figures as base64 PNG data URIs, inline CSS, no script, no URL);
  every string from data or models is escaped by Jinja2's autoescape;
- `report.md`, `runs.csv` (every trial), `summary.json` (the numbers in the tables), `figures/*.png`;

and logs that folder under `report/` on the sweep's parent run.

The Optuna studies (importances, optimisation history) are found from the parent run's params
`sweep.storage` (the resolved storage URL the sweep logs) and `sweep.study_names` (see
`reading.load_studies`); without them those sections are skipped with a note and everything else
is still built. This module only orders the steps: reading (`reading`), computing (`analysis`),
drawing (`figures`) and writing (`rendering`) live in their own modules, the confirmation statistics
in `alignbench.confirm`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from pathlib import Path

import pandas as pd

import alignbench
from alignbench.evaluation.caveats import caveated_verdict, verdict_caveats
from alignbench.confirm.comparison import compare
from alignbench.confirm.settings import ConfirmSettings
from alignbench.confirm.tables import method_tables
from alignbench.report.analysis import (IMPORTANCE_METHOD, SAMPLE_COLUMNS, SEARCH_CAVEAT, SEED_OUTCOMES_NOTE,
                                        best_trials, examples, headline_rows, hyperparams, importance_caveat,
                                        importances, judge_caveats, judge_chance_caveat, length_control_caveat,
                                        length_controlled,
                                        paired_comparisons, run_metadata)
from alignbench.report.figures import (CURVE_KEYS, Figure, curves_figure, frontier_figure, history_figure,
                                       importance_figure, method_color, seed_strip_figure, sensitivity_figure)
from alignbench.report.formatting import fmt, fmt_p, slug
from alignbench.report.gold_frontier import gold_frontier_figure
from alignbench.report.reading import (NoStudies, column, diverged_confirmations, find_sweep,
                                       load_confirmation_runs, load_studies, load_trials, params_of,
                                       study_methods_of)
from alignbench.report.rendering import render_html, render_markdown, render_note, write_runs_csv, write_summary
from alignbench.tracking.artifacts import SAMPLES_ARTIFACT, load_samples

log = logging.getLogger(__name__)

NOTE_KEYS = ("confirmation", "headline", "frontier", "sensitivity", "optuna", "curves", "stats", "lc", "examples", "metadata")


def _cfg(cfg, key, default=None):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=default)


def build_report(cfg, studies: dict | None = None) -> Path:
    """Build the report of sweep `cfg.report.sweep` (None = the latest) from MLflow at
    `cfg.tracking.uri`; write it to `cfg.report.out_dir/<sweep>/` and log it on the parent run.

    `studies` ({method: optuna.Study}) overrides the lookup from the parent run's params.
    Returns the report directory (report.html, report.md, runs.csv, summary.json, figures/).
    """
    from mlflow import MlflowClient

    from alignbench.tracking import mlflow_runs as tracking

    tracking.set_uri(_cfg(cfg, "tracking.uri"))
    client = MlflowClient()
    parents, sweep_name = find_sweep(_cfg(cfg, "report.sweep"))
    parent, trials = parents.iloc[0], load_trials(parents)
    if trials.empty:
        raise LookupError(f"sweep {sweep_name!r} (parent run {parent['run_id']}) has no trial runs yet")
    out = _fresh_output_dir(_cfg(cfg, "report.out_dir", "reports"), sweep_name)
    notes: dict[str, list[str]] = {k: [] for k in NOTE_KEYS}
    methods = sorted(trials["method"].astype(str).unique())
    parent_params = params_of(parent)
    objective = parent_params.get("sweep.objective") or "win_rate"

    objective_metric = _objective_metric(objective, trials, notes)
    if studies is None:
        studies = _studies_or_note(parent, trials, notes)
    best = _best_trials_or_note(trials, methods, objective_metric, objective == "pareto", notes)
    swept = {m: hyperparams(trials, m, studies.get(m)) for m in methods}
    headline = headline_rows(trials, methods, best, swept)
    has_gold = any(not math.isnan(r.get("eval/gold_reward", float("nan"))) for r in headline)
    figures = _draw_figures(client, trials, methods, best, swept, studies, headline, has_gold, out / "figures", notes)
    samples = _best_trial_samples(client, best, notes)
    rng_seed = int(_cfg(cfg, "seed", 0) or 0)
    lc, comparisons = _statistics(samples, headline, rng_seed, notes)
    _length_control_note(trials, notes)
    notes["headline"].extend(judge_caveats(trials))
    confirmation, verdict = _confirmation(client, parents, parent_params, rng_seed, notes)
    verdict = _with_caveats(verdict, confirmation, judge_chance_caveat(trials),
                            confirmation.get("diverged_seeds") if confirmation else None)
    seeds_figure = seed_strip_figure(confirmation, methods, out / "figures") if confirmation else None
    figures["seeds"] = [seeds_figure] if seeds_figure else []
    shown = _examples_or_note(samples, methods, int(_cfg(cfg, "report.n_examples", 6)), notes)
    metadata = run_metadata(trials, parent, parents, sweep_name, studies, parent_params,
                            confirmation["seeds"] if confirmation else ())

    context = dict(sweep=sweep_name, parent_id=str(parent["run_id"]), experiment=str(parent.get("experiment_name", "")),
                   objective=objective, methods=methods, headline=headline, has_gold=has_gold, figures=figures,
                   notes=notes, comparisons=comparisons, confirmation=confirmation, verdict=verdict,
                   search_caveat=SEARCH_CAVEAT, seed_outcomes_note=SEED_OUTCOMES_NOTE, importance_method=IMPORTANCE_METHOD, lc=lc, examples=shown,
                   metadata=metadata, swept=swept,
                   fmt=fmt, fmt_p=fmt_p, colors={m: method_color(methods, m) for m in methods},
                   generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   version=alignbench.__version__)
    _write_files(out, trials, context)
    client.log_artifacts(context["parent_id"], str(out), "report")
    # The parent run's description in the MLflow UI: the verdict, the tables and where the report is.
    client.set_tag(context["parent_id"], "mlflow.note.content", render_note(context, out, str(parent["experiment_id"])))
    log.info("report of sweep %s written to %s and logged on parent run %s", sweep_name, out, context["parent_id"])
    return out


def _fresh_output_dir(out_dir, sweep_name: str) -> Path:
    """`out_dir/<sweep>/`, without the figures of an earlier report (a method may have gone)."""
    out = Path(out_dir) / slug(sweep_name)
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "figures").glob("*.png"):
        old.unlink()
    return out


def _objective_metric(objective: str, trials: pd.DataFrame, notes: dict) -> str:
    """The metric that picks each method's best trial: the sweep's objective when the runs logged it,
    else eval/win_rate (a Pareto sweep: the highest win rate on the front)."""
    objective_metric = objective if f"metrics.{objective}" in trials else "eval/win_rate"
    if objective == "pareto":
        notes["headline"].append("The sweep's objective is the Pareto front (win rate up, KL down); each method's "
                                 "best trial is the highest win rate on its front.")
    elif objective_metric.removeprefix("eval/") != objective.removeprefix("eval/"):
        notes["headline"].append(f"The sweep's objective is {objective!r}; the best trial of each method is the one "
                                 "with the highest eval/win_rate.")
    return objective_metric


def _studies_or_note(parent: pd.Series, trials: pd.DataFrame, notes: dict) -> dict:
    """The sweep's Optuna studies by method; {} and a note when they cannot be loaded."""
    try:
        return load_studies(parent, study_methods_of(trials), str(parent.get("experiment_name") or ""))
    except NoStudies as exc:
        notes["optuna"].append(f"Hyperparameter importances and optimisation histories are skipped: {exc}.")
    except Exception as exc:  # noqa: BLE001 — a broken storage must not stop the report
        notes["optuna"].append("Hyperparameter importances and optimisation histories are skipped: the "
                               f"Optuna studies could not be loaded ({type(exc).__name__}: {exc}).")
    return {}


def _best_trials_or_note(trials, methods, objective_metric: str, pareto: bool, notes: dict) -> dict[str, pd.Series]:
    best = best_trials(trials, objective_metric, kl_tiebreak=pareto)
    for m in methods:
        if m not in best:
            notes["headline"].append(f"{m}: no complete trial, so no best trial.")
    return best


def _draw_figures(client, trials, methods, best, swept, studies, headline, has_gold, fig_dir: Path,
                  notes: dict) -> dict[str, list[Figure]]:
    """Every figure, by report section; a note for each one that could not be drawn. Adds each
    method's importances to its headline row."""
    figures = {"frontier": _frontier_figures(trials, methods, has_gold, fig_dir, notes), "sensitivity": []}
    for m in methods:
        f = sensitivity_figure(trials, m, swept[m], method_color(methods, m), fig_dir)
        if f:
            figures["sensitivity"].append(f)
        else:
            notes["sensitivity"].append(f"{m}: no swept hyperparameter with complete trials.")
    figures["importance"], figures["history"] = _optuna_figures(studies, methods, headline, fig_dir, notes)
    f = curves_figure(_best_trial_histories(client, best), methods, fig_dir)
    figures["curves"] = [f] if f else []
    if not f:
        notes["curves"].append("No metric history for the best trials.")
    return figures


def _frontier_figures(trials, methods, has_gold: bool, fig_dir: Path, notes: dict) -> list[Figure]:
    shown = []
    f = frontier_figure(trials, methods, "eval/win_rate", "win rate vs reference (judge)", fig_dir,
                        "winrate_vs_kl", "Win rate vs KL, every trial",
                        "Filled: complete trials (bars: 95% Wilson CI); hollow: pruned trials at their last evaluation.",
                        "Line: each method's Pareto frontier (higher win rate, lower KL).")
    if f:
        shown.append(f)
    else:
        notes["frontier"].append("No complete trial has both eval/win_rate and eval/kl.")
    if has_gold:
        f = frontier_figure(trials, methods, "eval/gold_reward", "gold reward (the task's)", fig_dir,
                            "gold_vs_kl", "Gold reward vs KL, every trial",
                            "The task's gold reward (data=builtin: its grammar's; data=sentiment: VADER, guarded).",
                            "Line: each method's Pareto frontier (higher gold, lower KL).")
        if f:
            shown.append(f)
        shown += _gold_frontier(trials, fig_dir, notes)
    return shown


def _gold_frontier(trials, fig_dir: Path, notes: dict) -> list[Figure]:
    """The DPO paper's figure where two variants (e.g. DPO, PPO, PPO-GT) have gold-reward runs, and its sentence."""
    f, sentence = gold_frontier_figure(trials, fig_dir)
    if not f:
        return []
    notes["frontier"].append(sentence)
    return [f]


def _optuna_figures(studies, methods, headline, fig_dir: Path, notes: dict) -> tuple[list[Figure], list[Figure]]:
    """Per method with a study: Optuna's importances (also put on its headline row) and its
    optimisation history."""
    importance, history = [], []
    for m in methods:
        study = studies.get(m)
        if study is None:
            if studies:
                notes["optuna"].append(f"{m}: no Optuna study found.")
            continue
        imp, why = importances(study)
        if imp is not None:
            n_complete = sum(t.state.name == "COMPLETE" for t in study.trials)
            importance.append(importance_figure(imp, m, method_color(methods, m), fig_dir, n_complete))
            for row in headline:
                if row["method"] == m:
                    row["importances"] = imp
        else:
            notes["optuna"].append(f"{m}: importances skipped — {why}.")
        caveat = importance_caveat(m, sum(t.state.name == "COMPLETE" for t in study.trials)) if imp else None
        if caveat:
            notes["optuna"].append(caveat)
        h = history_figure(study, m, fig_dir)
        if h:
            history.append(h)
        else:
            notes["optuna"].append(f"{m}: no complete trial, no optimisation history.")
    return importance, history


def _best_trial_histories(client, best: dict[str, pd.Series]) -> dict[str, dict[str, list]]:
    """{method: {metric: [(step, value), ...]}} of each best trial's training curves."""
    histories = {}
    for m, b in best.items():
        histories[m] = {}
        for key in CURVE_KEYS:
            try:
                hist = client.get_metric_history(b["run_id"], key)
            except Exception:  # noqa: BLE001
                hist = []
            histories[m][key] = sorted((h.step, h.value) for h in hist)
    return histories


def _best_trial_samples(client, best: dict[str, pd.Series], notes: dict) -> dict[str, pd.DataFrame]:
    """Each best trial's eval samples, for the methods whose samples the statistics can use."""
    samples = {}
    for m, b in best.items():
        s = load_samples(client, b["run_id"])
        if s is None or s.empty or not SAMPLE_COLUMNS <= set(s.columns):
            notes["stats"].append(f"{m}: best trial {b['run_id']} has no usable {SAMPLES_ARTIFACT}.")
        else:
            samples[m] = s
    return samples


def _statistics(samples: dict[str, pd.DataFrame], headline: list[dict], seed: int, notes: dict):
    """Length-controlled win rate per method (also put on its headline row) and the paired
    comparisons of the best trials."""
    lc = {m: length_controlled(s) for m, s in samples.items()}
    for row in headline:
        if row["method"] in lc:
            row["lc_win_rate"] = lc[row["method"]]["lc_win_rate"]
    comparisons = paired_comparisons(samples, seed=seed) if len(samples) > 1 else []
    if len(samples) < 2:
        notes["stats"].append("Paired comparisons need the eval samples of at least two methods' best trials.")
    return lc, comparisons


def _length_control_note(trials: pd.DataFrame, notes: dict) -> None:
    def recorded(col: str) -> list[str]:
        return sorted({str(v) for v in column(trials, col).dropna()})

    caveat = length_control_caveat(recorded("params.judge.name"), recorded("params.data.name"))
    if caveat:
        notes["lc"].append(caveat)


def _confirmation(client, parents: pd.DataFrame, parent_params: dict, rng_seed: int,
                  notes: dict) -> tuple[dict | None, dict | None]:
    """The confirmation statistics and the verdict, or (None, None) and a note saying why there are none."""
    runs = load_confirmation_runs(parents)
    if runs.empty:
        notes["confirmation"].append(_no_confirmation_reason(parent_params.get("sweep.confirm_seeds")))
        return None, None
    tables, diverged = {}, diverged_confirmations(parents)
    for method, sub in runs.groupby("method", sort=True):
        samples = _confirmation_samples(client, method, sub, notes)
        notes["confirmation"] += [f"{method}: confirmation seed {seed} diverged at step {step} and failed ({why}), so "
                                  "it has no test outcome." for seed, (step, why) in sorted(diverged.get(method, {}).items())
                                  if seed not in samples]
        if not samples:
            continue
        t, why = method_tables(method, samples, {int(r.seed): r.run_id for r in sub.itertuples()}, diverged.get(method))
        if t is None:
            notes["confirmation"].append(why + ".")
        else:
            tables[method] = t
    confirmation, verdict, why_not = compare(tables, ConfirmSettings.from_logged(parent_params, rng_seed))
    notes["confirmation"] += why_not
    return confirmation, verdict


def _with_caveats(verdict: dict | None, confirmation: dict | None, judge_caveat: str | None,
                  diverged: dict[str, int] | None = None) -> dict | None:
    """The verdict whose statement carries what limits it: a judge at chance, the fewest seeds a
    compared method has, `diverged` ({method: diverged seeds})."""
    if verdict is None:
        return None
    n_seeds = min(len(r["seeds"]) for r in confirmation["methods"].values())
    return caveated_verdict(verdict, verdict_caveats(n_seeds, judge_caveat, diverged), judge_caveat is not None)


def _no_confirmation_reason(confirm_seeds) -> str:
    if confirm_seeds is None:
        why = "the sweep logged no `sweep.confirm_seeds` (an older sweep, before confirmation runs)"
    elif str(confirm_seeds) == "0":
        why = "the sweep ran with confirm_seeds=0"
    else:
        why = f"the sweep asked for {confirm_seeds} confirmation seeds, but none has finished (yet)"
    return (f"No confirmation: {why}, so this report makes no verdict. The numbers below are validation numbers "
            "of the selected trials only.")


def _confirmation_samples(client, method: str, runs: pd.DataFrame, notes: dict) -> dict[int, pd.DataFrame]:
    """{seed: eval samples} of one method's confirmation runs; a note for each run without usable samples."""
    samples = {}
    for r in runs.itertuples():
        s = load_samples(client, r.run_id)
        if s is None or s.empty or not {"prompt", "winner"} <= set(s.columns):
            notes["confirmation"].append(f"{method}: confirmation run {r.run_id} (seed {r.seed}) has no usable "
                                         f"{SAMPLES_ARTIFACT}; that seed is left out.")
        else:
            samples[int(r.seed)] = s
    return samples


def _examples_or_note(samples: dict[str, pd.DataFrame], methods: list[str], n: int, notes: dict) -> list[dict]:
    if not samples:
        notes["examples"].append("No eval samples to show.")
        return []
    return examples(samples, methods, n)


def _write_files(out: Path, trials: pd.DataFrame, context: dict) -> None:
    write_runs_csv(trials, out / "runs.csv")
    (out / "report.html").write_text(render_html(context), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(context), encoding="utf-8")
    c = context
    summary = {"sweep": c["sweep"], "parent_run_id": c["parent_id"], "objective": c["objective"],
               "verdict": c["verdict"], "confirmation": c["confirmation"],
               "diverged_seeds": (c["confirmation"] or {}).get("diverged_seeds"),  # {method: count}, confirmation seeds
               "headline": c["headline"], "comparisons": c["comparisons"], "length_controlled": c["lc"],
               "notes": c["notes"], "metadata": c["metadata"]}
    write_summary(summary, out / "summary.json")
