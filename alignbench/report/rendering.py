"""Writing the report's files from the context `build` assembles: report.html and report.md from the
Jinja templates in templates/ (HTML autoescaped; Markdown cells escaped by the `md` filter), runs.csv
(every trial) and summary.json (the numbers in the tables)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from alignbench.tracking import store
from alignbench.tracking.description import text_table

TEMPLATES = Path(__file__).parent / "templates"
RUNS_CSV_TAGS = ("tags.failure_reason", "tags.mlflow.runName")
NOTE_LIMIT = 7800  # MLflow keeps tag values up to 8000 characters


def md_cell(s) -> str:
    """Markdown cell: HTML-escaped (Markdown renderers pass raw HTML through), pipes and newlines neutralised."""
    s = str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("|", "\\|").replace("\r", " ").replace("\n", "<br>")


def _render(template: str, context: dict, **options) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, trim_blocks=True,
                      lstrip_blocks=True, **options)
    env.filters["md"] = md_cell
    return env.get_template(template).render(**context)


def render_html(context: dict) -> str:
    return _render("report.html.j2", context, autoescape=True)


def render_markdown(context: dict) -> str:
    # No autoescape: the `md` filter escapes each cell; the file ends with a newline.
    return _render("report.md.j2", context, autoescape=False, keep_trailing_newline=True)


def render_note(context: dict, report_dir: Path, experiment_id: str) -> str:
    """The parent run's description (`mlflow.note.content`) once the report exists: the verdict, the
    confirmation and search tables (ruled text: `tracking.description`), the report's path. Replaces
    the one the sweep wrote."""
    note = _render("note.md.j2", dict(context, report_path=str(Path(report_dir).resolve() / "report.html"),
                                      runs_view=store.view_path(experiment_id),
                                      confirmation_table=_confirmation_table(context),
                                      search_table=_search_table(context)), autoescape=False)
    return note[:NOTE_LIMIT]


def _confirmation_table(context: dict) -> str:
    conf, fmt = context["confirmation"], context["fmt"]
    if not conf:
        return ""
    gold = conf["has_gold"]
    head = ["method", "seeds", "test win rate", "95% CI", "KL (nats/seq)", "95% CI"] + (["gold reward", "95% CI"] * gold)
    rows = []
    for m, r in sorted(conf["methods"].items()):
        row = [m, str(len(r["seeds"])), fmt(r["win_rate_mean"]),
               f"[{fmt(r['win_rate_ci_low'])}, {fmt(r['win_rate_ci_high'])}]",
               fmt(r.get("kl_mean")), f"[{fmt(r.get('kl_ci_low'))}, {fmt(r.get('kl_ci_high'))}]"]
        if gold:
            row += [fmt(r.get("gold_mean")), f"[{fmt(r.get('gold_ci_low'))}, {fmt(r.get('gold_ci_high'))}]"]
        rows.append(row)
    return text_table(head, rows)


def _search_table(context: dict) -> str:
    fmt, rows = context["fmt"], []
    for r in context["headline"]:
        trials = f"{r['n_complete']} / {r['n_pruned']} / {r['n_fail']}"
        if "run_id" not in r:
            rows.append([r["method"], "no complete trial", "", "", "", trials])
            continue
        params = ", ".join(f"{k}={v}" for k, v in r["hyperparameters"].items())
        interval = f"[{fmt(r['eval/win_rate_ci_low'])}, {fmt(r['eval/win_rate_ci_high'])}]"
        rows.append([r["method"], fmt(r["eval/win_rate"]), interval, fmt(r["eval/kl"]), params, trials])
    return text_table(["method", "win rate", "95% CI", "KL (nats/seq)", "hyperparameters",
                       "trials (complete / pruned / failed)"], rows)


def write_runs_csv(trials: pd.DataFrame, path: Path) -> None:
    """Every trial run: its identity and state, then all metrics and params, then the tags worth reading."""
    cols = ["run_id", "method", "study", "trial_number", "state", "status", "start_time", "end_time"]
    cols += sorted(c for c in trials.columns if c.startswith("metrics."))
    cols += sorted(c for c in trials.columns if c.startswith("params."))
    cols += [c for c in RUNS_CSV_TAGS if c in trials]
    trials[cols].to_csv(path, index=False)


def write_summary(summary: dict, path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)
