"""Reading a finished sweep back: its parent run, search trial runs and confirmation runs from MLflow
(`mlflow.search_runs`), its Optuna studies from the storage named by the parent run's params, and a
run's eval samples artifact.
Everything here returns pandas tables or Optuna studies; nothing is computed or written."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from alignbench.sweep.storage import open_storage

log = logging.getLogger(__name__)

CONFIRMATION_ROLE = "confirmation"
STATUS_TO_STATE = {"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "KILLED", "RUNNING": "RUNNING",
                   "SCHEDULED": "RUNNING"}


class NoStudies(Exception):
    """The sweep's Optuna studies cannot be found or loaded; the message says why."""


def column(df: pd.DataFrame, name: str) -> pd.Series:
    """Column `name` of `df`, or all None when the runs never logged it."""
    return df[name] if name in df else pd.Series([None] * len(df), index=df.index, dtype=object)


def check_store_exists(name: str | None, uri: str | None) -> None:
    """LookupError naming the sweep when the tracking store is a SQLite file that does not exist
    (MLflow would create an empty one, and log about it, just to find nothing in it)."""
    import mlflow

    if uri:
        mlflow.set_tracking_uri(uri)
    uri = mlflow.get_tracking_uri()
    store = Path(uri[len("sqlite:///"):].split("?")[0]) if uri.startswith("sqlite:///") else None
    if store is not None and not store.exists():
        asked = f"report.sweep={name}: no such sweep" if name is not None else "no sweep to report on"
        raise LookupError(f"{asked}: no MLflow store at {uri} (run `alignbench sweep` here first, or set tracking.uri)")


def find_sweep(name: str | None):
    """The sweep's parent run(s) as a DataFrame (latest first) and the sweep's name.

    `name` matches the parent's `sweep.name` tag, or its experiment's name (`sweep-NAME` or NAME);
    None = the sweep whose parent run started last. LookupError when there is none.
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    asked = f"report.sweep={name}: no such sweep" if name is not None else "no sweep"
    parents = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`alignbench.role` = 'sweep'",
                                 order_by=["attributes.start_time DESC"])
    if parents.empty:
        raise LookupError(f"{asked}: MLflow at {uri} holds no sweep (run `alignbench sweep` first, or set tracking.uri)")
    exp_names = {e.experiment_id: e.name for e in mlflow.search_experiments()}
    parents["experiment_name"] = parents["experiment_id"].map(exp_names)
    parents["sweep_name"] = column(parents, "tags.sweep.name").fillna(
        parents["experiment_name"].str.replace(r"^sweep-", "", regex=True))
    if name is None:
        hit = parents
    else:
        name = str(name)
        hit = parents[(parents["sweep_name"] == name) | (parents["experiment_name"] == name)
                      | (parents["experiment_name"] == f"sweep-{name}")]
        if hit.empty:
            known = ", ".join(sorted(set(parents["sweep_name"].astype(str))))
            raise LookupError(f"report.sweep={name}: no such sweep in MLflow at {uri}; the sweeps there: {known}")
    # Every parent run of the chosen sweep (an interrupted sweep resumed later has several).
    first = hit.iloc[0]
    chosen = hit[(hit["experiment_id"] == first["experiment_id"]) & (hit["sweep_name"] == first["sweep_name"])]
    return chosen.reset_index(drop=True), str(chosen.iloc[0]["sweep_name"])


def _child_runs(parents: pd.DataFrame) -> pd.DataFrame:
    """Every child run of the sweep's parent run(s), oldest first, with a `method` column."""
    import mlflow

    exp_ids = sorted(set(parents["experiment_id"]))
    runs = mlflow.search_runs(experiment_ids=exp_ids, order_by=["attributes.start_time ASC"])
    if runs.empty or "tags.mlflow.parentRunId" not in runs:
        return pd.DataFrame(columns=["run_id", "method", "status", "tags.alignbench.role"])
    runs = runs[runs["tags.mlflow.parentRunId"].isin(set(parents["run_id"]))].copy()
    runs["method"] = column(runs, "tags.method").fillna(column(runs, "params.method.name")).fillna("?")
    return runs


def _is_confirmation(runs: pd.DataFrame) -> pd.Series:
    return column(runs, "tags.alignbench.role") == CONFIRMATION_ROLE


def load_trials(parents: pd.DataFrame) -> pd.DataFrame:
    """Every search trial of the sweep (child runs of its parent run(s) that are not confirmation
    runs), one row per Optuna trial (latest run wins).

    Adds columns: method, study, trial_number, state (COMPLETE | PRUNED | FAIL | KILLED | RUNNING).
    """
    runs = _child_runs(parents)
    if "tags.mlflow.parentRunId" not in runs:
        return pd.DataFrame(columns=["run_id", "method", "study", "trial_number", "state", "status"])
    runs = runs[~_is_confirmation(runs)].copy()
    runs["study"] = column(runs, "tags.optuna.study")
    runs["trial_number"] = pd.to_numeric(column(runs, "tags.optuna.trial_number"), errors="coerce")
    state = column(runs, "tags.optuna.trial_state")
    runs["state"] = state.where(state.notna(), runs["status"].map(STATUS_TO_STATE)).fillna("RUNNING")
    # A trial re-run after an interruption has a second MLflow run; keep the latest.
    keyed = runs["trial_number"].notna()
    dedup = runs[keyed].drop_duplicates(subset=["study", "method", "trial_number"], keep="last")
    runs = pd.concat([dedup, runs[~keyed]]).sort_values(["method", "trial_number", "start_time"])
    return runs.reset_index(drop=True)


def load_confirmation_runs(parents: pd.DataFrame) -> pd.DataFrame:
    """The sweep's confirmation runs (tag `alignbench.role=confirmation`): one row per method and
    confirmation seed, the latest FINISHED run of each (a seed re-run after a kill has several).

    Adds columns: method, seed (int, from the `confirmation.seed` tag). Runs that never finished
    are left out: their eval samples do not exist.
    """
    runs = _child_runs(parents)
    if "tags.mlflow.parentRunId" not in runs:
        return pd.DataFrame(columns=["run_id", "method", "seed"])
    runs = runs[_is_confirmation(runs) & (runs["status"] == "FINISHED")].copy()
    runs["seed"] = pd.to_numeric(column(runs, "tags.confirmation.seed"), errors="coerce")
    runs = runs[runs["seed"].notna()].drop_duplicates(subset=["method", "seed"], keep="last")
    runs["seed"] = runs["seed"].astype(int)
    return runs.sort_values(["method", "seed"]).reset_index(drop=True)


def diverged_confirmations(parents: pd.DataFrame) -> dict[str, dict[int, tuple[int, str]]]:
    """{method: {seed: (step, why)}} of the confirmation seeds whose latest run, whatever its status
    (a non-finite loss fails the run), is tagged `diverged=true` (`training.loop.diverged_tags`)."""
    runs = _child_runs(parents)
    if "tags.mlflow.parentRunId" not in runs or "tags.diverged" not in runs:
        return {}
    runs = runs[_is_confirmation(runs)].copy()
    runs["seed"] = pd.to_numeric(column(runs, "tags.confirmation.seed"), errors="coerce")
    runs = runs[runs["seed"].notna()].drop_duplicates(subset=["method", "seed"], keep="last")
    out: dict[str, dict[int, tuple[int, str]]] = {}
    for _, r in runs[column(runs, "tags.diverged") == "true"].iterrows():
        step = pd.to_numeric(r.get("tags.diverged.step"), errors="coerce")
        out.setdefault(str(r["method"]), {})[int(r["seed"])] = (None if pd.isna(step) else int(step),
                                                               str(r.get("tags.diverged.reason") or ""))
    return out


def study_methods_of(trials: pd.DataFrame) -> dict[str, str]:
    """{study name: method} as the trial runs' `optuna.study` and `method` tags record them."""
    if "study" not in trials:
        return {}
    pairs = trials[["study", "method"]].dropna().drop_duplicates().itertuples(index=False)
    return {str(study): str(method) for study, method in pairs}


def load_studies(parent_run, study_methods: dict[str, str] | None = None, experiment: str | None = None) -> dict:
    """The sweep's Optuna studies, by method, from the parent run's params (or tags).

    `parent_run`: an MLflow `Run`, a search_runs row (Series), or a plain dict of params.
    Storage: param `sweep.storage`, the resolved storage URL the sweep logs — an RDB URL
    (`sqlite:///optuna.db`, `postgresql://...`) or an Optuna journal file (`journal:///abs/path`,
    or a plain path).
    Studies: param `sweep.study_names` (comma-separated), else the `optuna.study` tags of the
    trial runs (keys of `study_methods`), else `<experiment>/<method>` for each of `sweep.methods`.
    A study's method is its `method` user attr, else `study_methods[name]`, else the name's last
    `/`- or `-`-separated part. Raises `NoStudies` (with the reason) when they cannot be loaded.
    """
    import optuna

    params = params_of(parent_run)
    url = params.get("sweep.storage")
    if not url or url == "None":
        raise NoStudies("the sweep's parent run has no `sweep.storage` param")
    names = _study_names(params, study_methods, experiment)
    try:
        storage = open_storage(url)
    except LookupError as exc:
        raise NoStudies(str(exc)) from exc
    studies = {}
    for name in names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except Exception as exc:  # noqa: BLE001 — optuna raises KeyError or its own errors
            raise NoStudies(f"study {name!r} not found in {url}: {exc}") from exc
        method = (study.user_attrs.get("method") or (study_methods or {}).get(name)
                  or re.split(r"[/-]", name)[-1])
        studies[str(method)] = study
    return studies


def _study_names(params: dict, study_methods: dict[str, str] | None, experiment: str | None) -> list[str]:
    # The search studies only: a method's confirmation study (`<experiment>/<method>/confirm`) has
    # fixed params and a seed grid, nothing to analyse, and would stand in for its search study.
    if params.get("sweep.study_names"):
        return [n.strip() for n in str(params["sweep.study_names"]).split(",")
                if n.strip() and not n.strip().endswith("/confirm")]
    if study_methods:
        return sorted(n for n in study_methods if not n.endswith("/confirm"))
    if experiment and params.get("sweep.methods"):
        return [f"{experiment}/{m.strip()}" for m in str(params["sweep.methods"]).split(",") if m.strip()]
    raise NoStudies("the sweep's parent run has no `sweep.study_names` param and no trial names its study")


def params_of(run) -> dict:
    """Params of a run, with its tags as a fallback for keys that are not params."""
    if hasattr(run, "data") and hasattr(run.data, "params"):
        return dict(run.data.tags) | dict(run.data.params)
    if isinstance(run, pd.Series):
        out = {}
        for prefix in ("tags.", "params."):
            out |= {k[len(prefix):]: v for k, v in run.items() if k.startswith(prefix) and isinstance(v, str)}
        return out
    return dict(run)
