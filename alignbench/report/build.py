"""`alignbench report`: a sweep's MLflow runs and Optuna studies -> the comparison a researcher needs.

Reads the tracking layout of docs/ARCHITECTURE.md (one experiment per sweep, a parent run tagged
`alignbench.role=sweep`, one nested child run per Optuna trial) through `mlflow.search_runs`, and
writes `<report.out_dir>/<sweep>/`:

- `report.html` — self-contained (figures as base64 PNG data URIs, inline CSS, no script, no URL);
  every string from data or models is escaped by Jinja2's autoescape;
- `report.md`, `runs.csv` (every trial), `summary.json` (the numbers in the tables), `figures/*.png`;

and logs that folder under `report/` on the sweep's parent run.

The Optuna studies (importances, optimisation history) are found from the parent run's params
`sweep.storage_url` and `sweep.study_names` (see `load_studies`); without them those sections are
skipped with a note and everything else is still built.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import itertools
import json
import logging
import math
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import alignbench
from alignbench.evaluation.stats import holm, length_controlled_win_rate, paired_bootstrap, pareto_front, sign_test

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
SAMPLES_ARTIFACT = "eval_samples.json"
STATES = ("COMPLETE", "PRUNED", "FAIL")
STATUS_TO_STATE = {"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "KILLED", "RUNNING": "RUNNING",
                   "SCHEDULED": "RUNNING"}
CURVE_KEYS = ("train/loss", "eval/win_rate", "eval/kl")
# Params that differ between trials without being hyperparameters.
NOT_HYPERPARAMS = re.compile(r"^(data\.dropped\.|data\.n_|sweep\.|hydra\.)")


@dataclass
class Section:
    """Notes explaining what was skipped and why (shown in HTML and Markdown)."""
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Reading the sweep


def find_sweep(name: str | None):
    """The sweep's parent run(s) as a DataFrame (latest first) and the sweep's name.

    `name` matches the parent's `sweep.name` tag, or its experiment's name (`sweep-NAME` or NAME);
    None = the sweep whose parent run started last. LookupError when there is none.
    """
    import mlflow

    parents = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`alignbench.role` = 'sweep'",
                                 order_by=["attributes.start_time DESC"])
    if parents.empty:
        raise LookupError(f"no sweep found in MLflow at {mlflow.get_tracking_uri()} "
                          "(run `alignbench sweep` first, or set tracking.uri)")
    exp_names = {e.experiment_id: e.name for e in mlflow.search_experiments()}
    parents["experiment_name"] = parents["experiment_id"].map(exp_names)
    parents["sweep_name"] = _col(parents, "tags.sweep.name").fillna(
        parents["experiment_name"].str.replace(r"^sweep-", "", regex=True))
    if name is None:
        latest = parents.iloc[0]
        chosen = parents[(parents["experiment_id"] == latest["experiment_id"])
                         & (parents["sweep_name"] == latest["sweep_name"])]
    else:
        name = str(name)
        hit = parents[(parents["sweep_name"] == name) | (parents["experiment_name"] == name)
                      | (parents["experiment_name"] == f"sweep-{name}")]
        if hit.empty:
            known = ", ".join(sorted(set(parents["sweep_name"].astype(str))))
            raise LookupError(f"report.sweep={name}: no such sweep in MLflow at {mlflow.get_tracking_uri()} "
                              f"(known: {known})")
        first = hit.iloc[0]
        chosen = hit[(hit["experiment_id"] == first["experiment_id"]) & (hit["sweep_name"] == first["sweep_name"])]
    return chosen.reset_index(drop=True), str(chosen.iloc[0]["sweep_name"])


def load_trials(parents: pd.DataFrame) -> pd.DataFrame:
    """Every child run of the sweep's parent run(s), one row per Optuna trial (latest run wins).

    Adds columns: method, study, trial_number, state (COMPLETE | PRUNED | FAIL | KILLED | RUNNING).
    """
    import mlflow

    exp_ids = sorted(set(parents["experiment_id"]))
    runs = mlflow.search_runs(experiment_ids=exp_ids, order_by=["attributes.start_time ASC"])
    if runs.empty or "tags.mlflow.parentRunId" not in runs:
        return pd.DataFrame(columns=["run_id", "method", "study", "trial_number", "state", "status"])
    runs = runs[runs["tags.mlflow.parentRunId"].isin(set(parents["run_id"]))].copy()
    runs["method"] = _col(runs, "tags.method").fillna(_col(runs, "params.method.name")).fillna("?")
    runs["study"] = _col(runs, "tags.optuna.study")
    runs["trial_number"] = pd.to_numeric(_col(runs, "tags.optuna.trial_number"), errors="coerce")
    state = _col(runs, "tags.optuna.trial_state")
    runs["state"] = state.where(state.notna(), runs["status"].map(STATUS_TO_STATE)).fillna("RUNNING")
    # A trial re-run after an interruption has a second MLflow run; keep the latest.
    keyed = runs["trial_number"].notna()
    dedup = runs[keyed].drop_duplicates(subset=["study", "method", "trial_number"], keep="last")
    runs = pd.concat([dedup, runs[~keyed]]).sort_values(["method", "trial_number", "start_time"])
    return runs.reset_index(drop=True)


def load_studies(parent_run, study_methods: dict[str, str] | None = None, experiment: str | None = None) -> dict:
    """The sweep's Optuna studies, by method, from the parent run's params (or tags).

    `parent_run`: an MLflow `Run`, a search_runs row (Series), or a plain dict of params.
    Storage: param `sweep.storage_url`, else `sweep.storage` — an RDB URL (`sqlite:///optuna.db`,
    `postgresql://...`) or an Optuna journal file (`journal:///abs/path`, or a plain path).
    Studies: param `sweep.study_names` (comma-separated), else the `optuna.study` tags of the
    trial runs (keys of `study_methods`), else `<experiment>/<method>` for each of `sweep.methods`.
    A study's method is its `method` user attr, else `study_methods[name]`, else the name's last
    `/`- or `-`-separated part. Raises `_NoStudies` (with the reason) when they cannot be loaded.
    """
    import optuna

    params = _params_of(parent_run)
    url = params.get("sweep.storage_url") or params.get("sweep.storage")
    if not url or url == "None":
        raise _NoStudies("the sweep's parent run has no `sweep.storage_url` (or `sweep.storage`) param")
    if params.get("sweep.study_names"):
        names = [n.strip() for n in str(params["sweep.study_names"]).split(",") if n.strip()]
    elif study_methods:
        names = sorted(study_methods)
    elif experiment and params.get("sweep.methods"):
        names = [f"{experiment}/{m.strip()}" for m in str(params["sweep.methods"]).split(",") if m.strip()]
    else:
        raise _NoStudies("the sweep's parent run has no `sweep.study_names` param and no trial names its study")
    storage = _open_storage(url)
    studies = {}
    for name in names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except Exception as exc:  # noqa: BLE001 — optuna raises KeyError or its own errors
            raise _NoStudies(f"study {name!r} not found in {url}: {exc}") from exc
        method = (study.user_attrs.get("method") or (study_methods or {}).get(name)
                  or re.split(r"[/-]", name)[-1])
        studies[str(method)] = study
    return studies


class _NoStudies(Exception):
    pass


def _open_storage(url: str):
    import optuna

    if re.match(r"^[a-z0-9+]+://", url) and not url.startswith(("journal:", "file:")):
        return url  # an RDB URL; optuna.load_study connects
    path = Path(re.sub(r"^(journal|file):(//)?", "", url))
    if not path.exists():
        raise _NoStudies(f"Optuna journal {path} does not exist (run the report where the sweep ran)")
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


def _params_of(run) -> dict:
    """Params of a run, with its tags as a fallback for keys that are not params."""
    if hasattr(run, "data") and hasattr(run.data, "params"):
        return dict(run.data.tags) | dict(run.data.params)
    if isinstance(run, pd.Series):
        out = {}
        for prefix in ("tags.", "params."):
            out |= {k[len(prefix):]: v for k, v in run.items() if k.startswith(prefix) and isinstance(v, str)}
        return out
    return dict(run)


def load_samples(client, run_id: str) -> pd.DataFrame | None:
    """A run's eval samples table (`MlflowClient.log_table` JSON: columns + data), or None."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, SAMPLES_ARTIFACT, tmp)
        except Exception as exc:  # noqa: BLE001 — missing artifact, unreachable store
            log.warning("run %s: no %s (%s)", run_id, SAMPLES_ARTIFACT, exc)
            return None
        obj = json.loads(Path(path).read_text())
    return pd.DataFrame(obj["data"], columns=obj["columns"])


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


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df else pd.Series([None] * len(df), index=df.index, dtype=object)


# --------------------------------------------------------------------------------------------
# Analysis


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


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
    """Per method, the COMPLETE trial with the highest objective; ties: the earliest trial, as Optuna's
    `study.best_trial` (`kl_tiebreak`: the lower KL first, i.e. the top of the Pareto front)."""
    best = {}
    col = f"metrics.{objective}"
    if col not in trials:
        return best
    for method, sub in trials[trials["state"] == "COMPLETE"].groupby("method", sort=True):
        sub = sub[pd.to_numeric(sub[col], errors="coerce").notna()]
        if sub.empty:
            continue
        kl = pd.to_numeric(_col(sub, "metrics.eval/kl"), errors="coerce").fillna(np.inf) if kl_tiebreak else 0.0
        order = sub.assign(_obj=-pd.to_numeric(sub[col]), _kl=kl).sort_values(["_obj", "_kl", "trial_number"],
                                                                             kind="stable")
        best[method] = order.iloc[0]
    return best


def state_counts(trials: pd.DataFrame, method: str) -> dict[str, int]:
    sub = trials[trials["method"] == method]["state"]
    counts = {s: int((sub == s).sum()) for s in STATES}
    counts["other"] = int((~sub.isin(STATES)).sum())
    return counts


def win_indicator(samples: pd.DataFrame) -> np.ndarray:
    """Per prompt: 1 policy preferred, 1/2 tie, 0 reference preferred (as the win rate counts them)."""
    return samples["winner"].map({"policy": 1.0, "tie": 0.5, "reference": 0.0}).to_numpy(dtype=float)


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


def importances(study) -> tuple[dict | None, str | None]:
    """Optuna's own fANOVA-style analysis (its default evaluator); None + why when it cannot run."""
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return None, f"{len(complete)} complete trial(s); importances need at least 2"
    varying = {k for k in {k for t in complete for k in t.params}
               if len({repr(t.params.get(k)) for t in complete}) > 1}
    if not varying:
        return None, "no hyperparameter varies across the complete trials"
    kwargs = {"target": lambda t: t.values[0]} if len(study.directions) > 1 else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study, **kwargs), None
    except Exception as exc:  # noqa: BLE001 — optuna refuses some degenerate studies
        return None, f"Optuna could not compute importances: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------
# Figures


COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


@dataclass
class Figure:
    name: str
    title: str
    path: Path
    data_uri: str
    caption: str = ""


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str, title: str, caption: str = "") -> Figure:
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": "alignbench"})
    plt.close(fig)
    data = buf.getvalue()
    path = out / f"{name}.png"
    path.write_bytes(data)
    return Figure(name, title, path, "data:image/png;base64," + base64.b64encode(data).decode("ascii"), caption)


def _color(methods: list[str], method: str) -> str:
    return COLORS[methods.index(method) % len(COLORS)]


def frontier_figure(trials, methods, y_key, y_label, out, name, title, caption) -> Figure | None:
    plt = _plt()
    yc, xc = f"metrics.{y_key}", "metrics.eval/kl"
    if yc not in trials or xc not in trials:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    drawn = False
    for method in methods:
        sub = trials[trials["method"] == method]
        done = sub[sub["state"] == "COMPLETE"]
        x, y = pd.to_numeric(done[xc], errors="coerce").to_numpy(), pd.to_numeric(done[yc], errors="coerce").to_numpy()
        ok = ~(np.isnan(x) | np.isnan(y))
        c = _color(methods, method)
        if ok.any():
            drawn = True
            if y_key == "eval/win_rate" and "metrics.eval/win_rate_ci_low" in done:
                lo = pd.to_numeric(done["metrics.eval/win_rate_ci_low"], errors="coerce").to_numpy()
                hi = pd.to_numeric(done["metrics.eval/win_rate_ci_high"], errors="coerce").to_numpy()
                ax.errorbar(x[ok], y[ok], yerr=[np.clip(y - lo, 0, None)[ok], np.clip(hi - y, 0, None)[ok]],
                            fmt="none", ecolor=c, alpha=0.25, lw=1)
            ax.scatter(x[ok], y[ok], color=c, label=f"{method} ({ok.sum()} trials)", s=30, zorder=3)
            front = pareto_front(y[ok], x[ok])
            fx, fy = x[ok][front], y[ok][front]
            ax.step(fx, fy, where="post", color=c, lw=1.8, alpha=0.9, zorder=2)
        pruned = sub[sub["state"] == "PRUNED"]
        px, py = pd.to_numeric(_col(pruned, xc), errors="coerce"), pd.to_numeric(_col(pruned, yc), errors="coerce")
        okp = px.notna() & py.notna()
        if okp.any():
            ax.scatter(px[okp], py[okp], facecolors="none", edgecolors=c, marker="o", s=30, alpha=0.5,
                       label=f"{method} pruned (last eval)")
    if not drawn:
        plt.close(fig)
        return None
    if y_key == "eval/win_rate":
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("KL(policy || reference), nats per sequence")
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.set_title(title)
    return _save(fig, out, name, title, caption)


def sensitivity_figure(trials, method, params, color, out) -> Figure | None:
    plt = _plt()
    sub = trials[(trials["method"] == method) & (trials["state"] == "COMPLETE")]
    params = [p for p in params if f"params.{p}" in sub]
    if not params or sub.empty:
        return None
    fig, axes = plt.subplots(2, len(params), figsize=(3.4 * len(params) + 0.6, 5.4), squeeze=False)
    for j, p in enumerate(params):
        raw = sub[f"params.{p}"]
        xs = pd.to_numeric(raw, errors="coerce")
        numeric = xs.notna().all()
        for i, (key, label) in enumerate((("eval/win_rate", "win rate"), ("eval/kl", "KL (nats/seq)"))):
            ax = axes[i][j]
            ys = pd.to_numeric(_col(sub, f"metrics.{key}"), errors="coerce")
            if numeric:
                order = np.argsort(xs.to_numpy())
                ax.plot(xs.to_numpy()[order], ys.to_numpy()[order], "o-", color=color, ms=5, lw=1, alpha=0.85)
                pos = xs[xs > 0]
                if len(pos) == len(xs) and pos.max() / pos.min() > 4:
                    ax.set_xscale("log")
                else:
                    from matplotlib.ticker import FuncFormatter, MaxNLocator

                    ax.xaxis.set_major_locator(MaxNLocator(4))
                    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            else:
                cats = sorted(raw.astype(str).unique())
                ax.plot([cats.index(v) for v in raw.astype(str)], ys, "o", color=color, ms=6)
                ax.set_xticks(range(len(cats)), cats)
            if key == "eval/win_rate" and "metrics.eval/win_rate_ci_low" in sub and numeric:
                lo = pd.to_numeric(sub["metrics.eval/win_rate_ci_low"], errors="coerce")
                hi = pd.to_numeric(sub["metrics.eval/win_rate_ci_high"], errors="coerce")
                ax.errorbar(xs, ys, yerr=[np.clip(ys - lo, 0, None), np.clip(hi - ys, 0, None)], fmt="none",
                            ecolor=color, alpha=0.3)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(label)
            if i == 1:
                ax.set_xlabel(p)
    fig.suptitle(f"{method}: sensitivity to each swept hyperparameter (complete trials)")
    return _save(fig, out, f"sensitivity_{_slug(method)}", f"Sensitivity — {method}")


def importance_figure(imp: dict, method, color, out, n_complete: int) -> Figure:
    plt = _plt()
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.4))
    ax.barh(names, [imp[n] for n in names], color=color)
    ax.set_xlabel("importance (Optuna get_param_importances)")
    ax.set_title(f"{method}: hyperparameter importance for the objective")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, out, f"importance_{_slug(method)}", f"Importances — {method}",
                 f"{method}: from {n_complete} complete trials" + (" — few trials, so read it as a rough hint."
                                                                  if n_complete < 10 else "."))


def history_figure(study, method, out) -> Figure | None:
    import optuna

    plt = _plt()
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return None
    kwargs = {"target": lambda t: t.values[0], "target_name": "win rate"} if len(study.directions) > 1 else {
        "target_name": "objective (win rate)"}
    # Optuna's plots switch matplotlib's global style; rc_context puts it back afterwards.
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore")
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, **kwargs)
        fig = ax.figure
        fig.set_size_inches(6.5, 4)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{method}: optimisation history ({study.study_name})")
        return _save(fig, out, f"history_{_slug(method)}", f"Optimisation history — {method}")


def curves_figure(histories: dict[str, dict[str, list]], methods, out) -> Figure | None:
    plt = _plt()
    if not any(any(h.values()) for h in histories.values()):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = {"train/loss": "training loss", "eval/win_rate": "eval win rate", "eval/kl": "eval KL (nats/seq)"}
    for ax, key in zip(axes, CURVE_KEYS):
        for method, hist in histories.items():
            pts = hist.get(key) or []
            if pts:
                steps, vals = zip(*pts)
                ax.plot(steps, vals, "o-" if len(pts) < 12 else "-", ms=3, label=method, color=_color(methods, method))
        ax.set_xlabel("optimiser step")
        ax.set_title(labels[key])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Training curves of each method's best trial", y=1.04)
    return _save(fig, out, "training_curves", "Training curves")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("._") or "x"


# --------------------------------------------------------------------------------------------
# Formatting


def fmt(v, digits: int = 3) -> str:
    """Numbers as the tables show them (the tests compare against MLflow with this)."""
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "—"
    if f != 0 and (abs(f) < 1e-3 or abs(f) >= 1e6):
        return f"{f:.{digits}g}" if abs(f) < 1e-3 else f"{f:.4g}"
    return f"{f:.{digits}f}"


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _md_cell(s) -> str:
    """Markdown cell: HTML-escaped (Markdown renderers pass raw HTML through), pipes and newlines neutralised."""
    s = str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("|", "\\|").replace("\r", " ").replace("\n", "<br>")


def _md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The report


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
    parent = parents.iloc[0]
    parent_id = str(parent["run_id"])
    trials = load_trials(parents)
    if trials.empty:
        raise LookupError(f"sweep {sweep_name!r} (parent run {parent_id}) has no trial runs yet")
    out = Path(_cfg(cfg, "report.out_dir", "reports")) / _slug(sweep_name)
    fig_dir = out / "figures"
    out.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    notes: dict[str, list[str]] = {k: [] for k in ("headline", "frontier", "sensitivity", "optuna", "curves",
                                                    "stats", "examples", "metadata")}
    seed = int(_cfg(cfg, "seed", 0) or 0)
    n_examples = int(_cfg(cfg, "report.n_examples", 6))

    methods = sorted(trials["method"].astype(str).unique())
    parent_params = _params_of(parent)
    objective = parent_params.get("sweep.objective") or "win_rate"
    pareto = objective == "pareto"
    objective_metric = objective if f"metrics.{objective}" in trials else "eval/win_rate"
    if pareto:
        notes["headline"].append("The sweep's objective is the Pareto front (win rate up, KL down); each method's "
                                 "best trial is the highest win rate on its front.")
    elif objective_metric.removeprefix("eval/") != objective.removeprefix("eval/"):
        notes["headline"].append(f"The sweep's objective is {objective!r}; the best trial of each method is the one "
                                 "with the highest eval/win_rate.")

    # Optuna studies
    if studies is None:
        study_methods = {}
        if "study" in trials:
            for s, m in trials[["study", "method"]].dropna().drop_duplicates().itertuples(index=False):
                study_methods[str(s)] = str(m)
        try:
            studies = load_studies(parent, study_methods, str(parent.get("experiment_name") or ""))
        except _NoStudies as exc:
            studies = {}
            notes["optuna"].append(f"Hyperparameter importances and optimisation histories are skipped: {exc}.")
        except Exception as exc:  # noqa: BLE001 — a broken storage must not stop the report
            studies = {}
            notes["optuna"].append("Hyperparameter importances and optimisation histories are skipped: the "
                                   f"Optuna studies could not be loaded ({type(exc).__name__}: {exc}).")

    best = best_trials(trials, objective_metric, kl_tiebreak=pareto)
    for m in methods:
        if m not in best:
            notes["headline"].append(f"{m}: no complete trial, so no best trial.")

    # Headline
    swept = {m: hyperparams(trials, m, studies.get(m)) for m in methods}
    headline = []
    for m in methods:
        counts = state_counts(trials, m)
        row = {"method": m, **{f"n_{k.lower()}": v for k, v in counts.items()}}
        b = best.get(m)
        if b is not None:
            keys = swept[m] or sorted(c[len("params."):] for c in b.index
                                      if c.startswith("params.method.") and c != "params.method.name"
                                      and isinstance(b[c], str))
            row.update({"run_id": b["run_id"], "run_name": _str(b.get("tags.mlflow.runName")),
                        "trial_number": None if pd.isna(b["trial_number"]) else int(b["trial_number"]),
                        "hyperparameters": {k: _short(b.get(f"params.{k}")) for k in keys}})
            for k in ("eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/kl",
                      "eval/kl_per_token", "eval/policy_reward", "eval/reference_reward", "eval/gold_reward",
                      "eval/reference_gold_reward", "eval/policy_length", "eval/reference_length",
                      "time/total_seconds", "train/tokens"):
                row[k] = _num(b.get(f"metrics.{k}"))
        headline.append(row)
    has_gold = any(not math.isnan(r.get("eval/gold_reward", float("nan"))) for r in headline)

    # Figures
    figures: dict[str, list[Figure]] = {k: [] for k in ("frontier", "sensitivity", "importance", "history", "curves")}
    f = frontier_figure(trials, methods, "eval/win_rate", "win rate vs reference (judge)", fig_dir,
                        "winrate_vs_kl", "Win rate vs KL, every trial",
                        "Filled: complete trials (bars: 95% Wilson CI); line: each method's Pareto frontier "
                        "(higher win rate, lower KL); hollow: pruned trials at their last evaluation.")
    if f:
        figures["frontier"].append(f)
    else:
        notes["frontier"].append("No complete trial has both eval/win_rate and eval/kl.")
    if has_gold:
        f = frontier_figure(trials, methods, "eval/gold_reward", "gold reward (built-in task)", fig_dir,
                            "gold_vs_kl", "Gold reward vs KL, every trial",
                            "The built-in task's ground-truth reward; line: Pareto frontier (higher gold, lower KL).")
        if f:
            figures["frontier"].append(f)
    for m in methods:
        f = sensitivity_figure(trials, m, swept[m], _color(methods, m), fig_dir)
        if f:
            figures["sensitivity"].append(f)
        else:
            notes["sensitivity"].append(f"{m}: no swept hyperparameter with complete trials.")

    for m in methods:
        study = studies.get(m)
        if study is None:
            if studies:
                notes["optuna"].append(f"{m}: no Optuna study found.")
            continue
        imp, why = importances(study)
        if imp is not None:
            n_complete = sum(t.state.name == "COMPLETE" for t in study.trials)
            figures["importance"].append(importance_figure(imp, m, _color(methods, m), fig_dir, n_complete))
            for row in headline:
                if row["method"] == m:
                    row["importances"] = imp
        else:
            notes["optuna"].append(f"{m}: importances skipped — {why}.")
        h = history_figure(study, m, fig_dir)
        if h:
            figures["history"].append(h)
        else:
            notes["optuna"].append(f"{m}: no complete trial, no optimisation history.")

    histories = {}
    for m, b in best.items():
        histories[m] = {}
        for key in CURVE_KEYS:
            try:
                hist = client.get_metric_history(b["run_id"], key)
            except Exception:  # noqa: BLE001
                hist = []
            histories[m][key] = sorted((h.step, h.value) for h in hist)
    f = curves_figure(histories, methods, fig_dir)
    if f:
        figures["curves"].append(f)
    else:
        notes["curves"].append("No metric history for the best trials.")

    # Statistics on the eval samples of each best trial
    samples = {}
    for m, b in best.items():
        s = load_samples(client, b["run_id"])
        if s is None or s.empty or not {"prompt", "winner", "policy_length", "reference_length"} <= set(s.columns):
            notes["stats"].append(f"{m}: best trial {b['run_id']} has no usable {SAMPLES_ARTIFACT}.")
        else:
            samples[m] = s
    lc = {m: length_controlled(s) for m, s in samples.items()}
    for row in headline:
        if row["method"] in lc:
            row["lc_win_rate"] = lc[row["method"]]["lc_win_rate"]
    comparisons = paired_comparisons(samples, seed=seed) if len(samples) > 1 else []
    if len(samples) < 2:
        notes["stats"].append("Paired comparisons need the eval samples of at least two methods' best trials.")

    # Examples
    examples = []
    if samples:
        first = samples[methods[[m in samples for m in methods].index(True)]]
        for _, r in first.loc[example_rows(samples, n_examples)].iterrows():
            ex = {"prompt": _str(r["prompt"]), "reference": _str(r.get("reference_response")),
                  "reference_score": _num(r.get("reference_score")), "reference_gold": _num(r.get("reference_gold")),
                  "policies": []}
            for m in methods:
                s = samples.get(m)
                if s is None:
                    continue
                match = s[s["prompt"] == r["prompt"]]
                if match.empty:
                    continue
                p = match.iloc[0]
                ex["policies"].append({"method": m, "response": _str(p.get("policy_response")),
                                       "score": _num(p.get("policy_score")), "gold": _num(p.get("policy_gold")),
                                       "winner": _str(p.get("winner")), "length": _num(p.get("policy_length"))})
            examples.append(ex)
    else:
        notes["examples"].append("No eval samples to show.")

    metadata = _metadata(trials, parent, parents, sweep_name, studies, parent_params)

    # runs.csv
    csv_cols = ["run_id", "method", "study", "trial_number", "state", "status", "start_time", "end_time"]
    csv_cols += sorted(c for c in trials.columns if c.startswith("metrics."))
    csv_cols += sorted(c for c in trials.columns if c.startswith("params."))
    csv_cols += [c for c in ("tags.failure_reason", "tags.mlflow.runName") if c in trials]
    trials[csv_cols].to_csv(out / "runs.csv", index=False)

    context = dict(sweep=sweep_name, parent_id=parent_id, experiment=str(parent.get("experiment_name", "")),
                   objective=objective, methods=methods, headline=headline, has_gold=has_gold, figures=figures,
                   notes=notes, comparisons=comparisons, lc=lc, examples=examples, metadata=metadata,
                   swept=swept, fmt=fmt, fmt_p=fmt_p, colors={m: _color(methods, m) for m in methods},
                   generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   version=alignbench.__version__)
    (out / "report.html").write_text(render_html(context), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(context), encoding="utf-8")
    summary = {"sweep": sweep_name, "parent_run_id": parent_id, "objective": objective, "headline": headline,
               "comparisons": comparisons, "length_controlled": lc, "notes": notes, "metadata": metadata}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")

    client.log_artifacts(parent_id, str(out), "report")
    log.info("report of sweep %s written to %s and logged on parent run %s", sweep_name, out, parent_id)
    return out


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


def _short(v) -> str:
    """A param value for the tables: floats to 4 significant digits, anything else as logged."""
    s = _str(v)
    try:
        f = float(s)
    except ValueError:
        return s
    return s if re.fullmatch(r"-?\d+", s) else f"{f:.4g}"


def _str(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def _metadata(trials, parent, parents, sweep_name, studies, parent_params) -> list[tuple[str, str]]:
    def uniq(col):
        vals = sorted({str(v) for v in _col(trials, col).dropna()} | (
            {str(parent[col])} if col in parent and isinstance(parent[col], str) else set()))
        return ", ".join(vals) if vals else "not recorded"

    start, end = parents["start_time"].min(), parents["end_time"].max()
    wall = (end - start).total_seconds() if pd.notna(start) and pd.notna(end) else float("nan")
    total = pd.to_numeric(_col(trials, "metrics.time/total_seconds"), errors="coerce").sum()
    tokens = pd.to_numeric(_col(trials, "metrics.train/tokens"), errors="coerce").sum()
    hardware = uniq("tags.alignbench.hardware")
    if hardware == "not recorded":
        hardware = uniq("params.hardware")
    rows = [
        ("sweep", sweep_name),
        ("MLflow experiment / parent run", f"{parent.get('experiment_name', '')} / {parent['run_id']}"),
        ("objective", parent_params.get("sweep.objective", "win_rate")),
        ("alignbench version (runs)", uniq("tags.alignbench.version")),
        ("alignbench version (report)", alignbench.__version__),
        ("git commit", uniq("tags.mlflow.source.git.commit")),
        ("model", uniq("params.model.name")),
        ("data", uniq("params.data.name")),
        ("judge", uniq("params.judge.name")),
        ("seeds", uniq("params.seed")),
        ("device", uniq("params.device")),
        ("hardware", hardware),
        ("trials", f"{len(trials)} runs: " + ", ".join(f"{s} {int((trials['state'] == s).sum())}"
                                                      for s in sorted(trials["state"].unique()))),
        ("sweep wall time", _duration(wall)),
        ("summed trial time", _duration(total) + f" ({fmt(tokens, 0)} training tokens)" if total else "not recorded"),
        ("Optuna studies", ", ".join(f"{m}: {s.study_name}" for m, s in sorted(studies.items())) or "not loaded"),
    ]
    return rows


def _duration(seconds: float) -> str:
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "not recorded (sweep still running?)"
    seconds = float(seconds)
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{seconds:.1f} s"


def render_html(context: dict) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**context)


def render_markdown(c: dict) -> str:
    out = [f"# alignbench report — sweep `{_md_cell(c['sweep'])}`", "",
           f"Generated {c['generated']} by alignbench {c['version']}. Objective: {_md_cell(c['objective'])}. "
           "Best trial = the complete trial with the highest win rate (Pareto objective: the highest on the front). Win rate: judge prefers "
           "the policy's response over the reference's on held-out prompts, ties 1/2, 95% Wilson CI.", ""]
    out += ["## Best trial per method", ""]
    rows = []
    for r in c["headline"]:
        hp = ", ".join(f"{k}={v}" for k, v in r.get("hyperparameters", {}).items())
        rows.append([r["method"], fmt(r.get("eval/win_rate")),
                     f"[{fmt(r.get('eval/win_rate_ci_low'))}, {fmt(r.get('eval/win_rate_ci_high'))}]",
                     fmt(r.get("lc_win_rate")), fmt(r.get("eval/kl")), fmt(r.get("eval/policy_reward")),
                     *([fmt(r.get("eval/gold_reward"))] if c["has_gold"] else []),
                     fmt(r.get("eval/policy_length"), 1), hp,
                     f"{r['n_complete']}/{r['n_pruned']}/{r['n_fail']}" + (f" (+{r['n_other']})" if r["n_other"] else ""),
                     fmt(r.get("time/total_seconds"), 1), fmt(r.get("train/tokens"), 0), r.get("run_id", "")])
    out.append(_md_table(["method", "win rate", "95% CI", "LC win rate", "KL (nats/seq)", "judge reward",
                          *(["gold reward"] if c["has_gold"] else []), "length", "hyperparameters",
                          "trials complete/pruned/failed", "train time (s)", "tokens", "MLflow run"], rows))
    out += [""] + [f"- {_md_cell(n)}" for n in c["notes"]["headline"]]
    for key, title in (("frontier", "Win rate vs KL"), ("sensitivity", "Sensitivity"), ("importance", "Hyperparameter importances"),
                       ("history", "Optimisation history"), ("curves", "Training curves")):
        out += ["", f"## {title}", ""]
        for f in c["figures"][key]:
            out += [f"![{_md_cell(f.title)}](figures/{f.path.name})", ""] + ([_md_cell(f.caption), ""] if f.caption else [])
        note_key = {"importance": "optuna", "history": "optuna"}.get(key, key)
        if key != "importance":
            out += [f"- {_md_cell(n)}" for n in c["notes"][note_key]]
    out += ["", "## Paired comparisons of the best trials", "",
            "Per-prompt win indicator (1 win, 1/2 tie, 0 loss vs the reference) of method A minus method B on the "
            "same eval prompts; 95% paired-bootstrap CI; two-sided p-values from the paired bootstrap and an exact "
            "sign test, each Holm-Bonferroni corrected across the pairs.", ""]
    if c["comparisons"]:
        out.append(_md_table(["A", "B", "n", "win A", "win B", "A − B", "95% CI", "p (bootstrap)", "p Holm",
                              "sign test A>B / B>A", "p (sign)", "p Holm"],
                             [[r["method_a"], r["method_b"], r["n"], fmt(r["win_rate_a"]), fmt(r["win_rate_b"]),
                               fmt(r["diff"]), f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]", fmt_p(r["p_bootstrap"]),
                               fmt_p(r["p_bootstrap_holm"]), f"{r['a_better']} / {r['b_better']}", fmt_p(r["p_sign"]),
                               fmt_p(r["p_sign_holm"])] for r in c["comparisons"]]))
    out += [f"- {_md_cell(n)}" for n in c["notes"]["stats"]]
    out += ["", "## Length-controlled win rate", "",
            "Logistic regression of the judge's preference on tanh(length difference / sd), read at zero length "
            "difference (as AlpacaEval 2).", ""]
    if c["lc"]:
        out.append(_md_table(["method", "raw win rate", "length-controlled", "95% CI (Wald, logit)", "slope (length)", "n"],
                             [[m, fmt(v["raw_win_rate"]), fmt(v["lc_win_rate"]),
                               f"[{fmt(v['lc_win_rate_ci'][0])}, {fmt(v['lc_win_rate_ci'][1])}]", fmt(v["slope"]), v["n"]]
                              for m, v in sorted(c["lc"].items())]))
    out += ["", "## Example generations", "",
            "The eval prompts where the judge's scores of the reference and the methods' best policies differ most.", ""]
    for i, ex in enumerate(c["examples"], 1):
        out += [f"**Prompt {i}.** {_md_cell(ex['prompt'])}", "",
                _md_table(["", "response", "judge score"],
                          [["reference", ex["reference"], fmt(ex["reference_score"])]]
                          + [[p["method"], p["response"], fmt(p["score"])] for p in ex["policies"]]), ""]
    out += ["## Run metadata", "", _md_table(["", ""], [list(r) for r in c["metadata"]]), ""]
    return "\n".join(out)
