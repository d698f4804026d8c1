"""The sweep's parent-run description: the Markdown the MLflow UI shows at the top of the parent run
(tag `mlflow.note.content`). Written from the sweep's summary when a sweep invocation ends: each
method's best trial (validation win rate, Wilson interval, KL) and its confirmation (mean test win
rate over the seeds done); the verdict and the report's path once `alignbench report` has run,
which rewrites the description with the confirmation's intervals (`report.rendering.render_note`).
"""

from __future__ import annotations

from alignbench.tracking import store
from alignbench.tracking.description import text_table

MAX_NOTE = 7800  # MLflow keeps tag values up to 8000 characters


def _num(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "—"


def summary_table(summary: dict) -> str:
    """Per method, trials done, its best trial (validation) and its confirmation, as a ruled text
    table (`tracking.description.text_table`: MLflow draws Markdown tables without borders)."""
    confirm = any("confirmation" in e for e in summary["methods"].values())
    head = ["method", "trials (complete / pruned / failed)", "best trial", "validation win rate [95% CI]",
            "KL (nats/seq)", "hyperparameters"] + (["test win rate (confirmation mean)", "seeds"] if confirm else [])
    rows = []
    for m, e in summary["methods"].items():
        best = e.get("best") or {}
        low, high = (best.get("win_rate_ci") or [None, None])[:2]
        cells = [m, f"{e['complete']} / {e['pruned']} / {e['failed']}", str(best.get("trial", "—")),
                 f"{_num(best.get('win_rate'))} [{_num(low)}, {_num(high)}]" if best else "—",
                 _num(best.get("kl"), 2), _params(best.get("params", {}))]
        if confirm:
            c = e.get("confirmation") or {}
            cells += [_num(c.get("mean_win_rate")), f"{c.get('n_seeds', 0)}/{len(c.get('seeds', []))}"]
        rows.append(cells)
    return text_table(head, rows)


def sweep_note(summary: dict, experiment_id: str) -> str:
    """The description after a sweep invocation: the summary table; the verdict and the report are
    still to come (`alignbench report` writes both here)."""
    name = summary["sweep"]
    lines = [f"**alignbench sweep `{name}`**: objective `{summary['objective']}`, {summary['n_trials']} trials per "
             f"method ([runs table with the comparison columns]({store.view_path(experiment_id)})).", "", summary_table(summary), "",
             "Validation win rates are those each best trial was selected on, so biased upwards; the "
             "confirmation retrains it on fresh seeds and judges it on test prompts.", "",
             f"**Verdict:** not yet; `alignbench report report.sweep={name}` computes it, with intervals over "
             "seeds and prompts, and writes it here.", "",
             f"**Report:** not written yet (`alignbench report report.sweep={name}` writes "
             f"`reports/{name}/report.html` and logs it under `report/` on this run)."]
    return "\n".join(lines)[:MAX_NOTE]
