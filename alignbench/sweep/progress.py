"""What the sweep shows and returns: the live table of trials done / pruned / failed per method
with the best so far (plain log lines when not on a terminal), and the final summary (best trial
per method, by the rule of `selection`), printed and returned."""

from __future__ import annotations

import sys

import optuna
from optuna.trial import TrialState

from alignbench.sweep.budget import Counts, count
from alignbench.sweep.plan import Plan
from alignbench.sweep.selection import best_index
from alignbench.sweep.storage import journal_path


class Progress:
    """Trials done / pruned / failed per method and the best so far: a live table on a terminal,
    plain log lines otherwise."""

    def __init__(self, plan: Plan, storage, live: bool | None = None):
        self.plan, self.storage = plan, storage
        self.live_mode = sys.stdout.isatty() if live is None else live
        self.current = ""
        self._live = None
        self._last_line = None

    def __enter__(self):
        if self.live_mode:
            from rich.live import Live

            self._live = Live(self.table(), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.update(self.table())
            self._live.__exit__(*exc)
        return False

    def rows(self):
        for m in self.plan.methods:
            try:
                study = optuna.load_study(study_name=self.plan.study_name(m), storage=self.storage)
            except KeyError:
                yield m, Counts(), None
                continue
            best = best_trial(self.plan, study)
            yield m, count(self.plan, study), best

    def table(self):
        from rich.table import Table

        t = Table(title=f"sweep {self.plan.name} — {self.plan.n_trials} trials per method"
                  + (f" — {self.current}" if self.current else ""))
        for col in ("method", "done", "pruned", "failed", "running", "best win rate", "KL", "best params"):
            t.add_column(col)
        for m, c, best in self.rows():
            t.add_row(m, f"{c.done}/{self.plan.n_trials}", str(c.pruned), str(c.failed), str(c.running),
                      _fmt_wr(best), _fmt_kl(best), _fmt_params(best))
        return t

    def line(self) -> str:
        parts = []
        for m, c, best in self.rows():
            parts.append(f"{m} {c.done}/{self.plan.n_trials} (pruned {c.pruned}, failed {c.failed}"
                         + (f", running {c.running}" if c.running else "") + f") best {_fmt_wr(best)}")
        return "sweep progress: " + " | ".join(parts)

    def refresh(self):
        if self._live is not None:
            self._live.update(self.table())
        else:
            line = self.line()
            if line != self._last_line:
                print(line, flush=True)
                self._last_line = line

    def running(self, method, number, step, win_rate):
        self.current = f"running {method} trial {number}" + (f", step {step}: win rate {win_rate:.3f}"
                                                              if win_rate is not None else "")
        if self._live is not None:
            self._live.update(self.table())

    def finished(self, method, number, state, reason):
        self.current = ""
        if self._live is None:
            print(f"sweep: {method} trial {number} {state.name}" + (f" ({reason})" if reason else ""), flush=True)
        self.refresh()

    def poll(self):
        self.refresh()


def best_trial(plan: Plan, study):
    """The best COMPLETE trial (pareto: the highest win rate on the Pareto front, the lower KL
    among equals), by `selection.best_index`; None before any trial completed."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pareto = plan.objective == "pareto"
    i = best_index([t.values[0] for t in trials], [t.values[1] if pareto else None for t in trials],
                   [t.number for t in trials], kl_tiebreak=pareto)
    return None if i is None else trials[i]


def _fmt_wr(t) -> str:
    if t is None:
        return "-"
    a = t.user_attrs
    wr = a.get("eval/win_rate", t.values[0] if t.values else float("nan"))
    if "eval/win_rate_ci_low" in a:
        return f"{wr:.3f} [{a['eval/win_rate_ci_low']:.3f}, {a['eval/win_rate_ci_high']:.3f}]"
    return f"{wr:.3f}"


def _fmt_kl(t) -> str:
    return "-" if t is None or "eval/kl" not in t.user_attrs else f"{t.user_attrs['eval/kl']:.2f}"


def _fmt_params(t) -> str:
    if t is None:
        return "-"
    return " ".join(f"{k.removeprefix('method.')}={v:.3g}" if isinstance(v, float) else f"{k.removeprefix('method.')}={v}"
                    for k, v in t.params.items())


def summarize(plan: Plan, storage, stopped: dict, parent_run_id: str | None) -> dict:
    """The sweep's summary (logged as sweep_summary.json): per method, its counts, why it stopped,
    its best trial and (pareto) its front."""
    methods = {}
    for m in plan.methods:
        study = optuna.load_study(study_name=plan.study_name(m), storage=storage)
        c = count(plan, study)
        best = best_trial(plan, study)
        entry = {"study": study.study_name, "complete": c.complete, "pruned": c.pruned, "failed": c.failed,
                 "running": c.running, "budget": plan.n_trials, "status": stopped.get(m, "not run")}
        if best is not None:
            a = best.user_attrs
            entry["best"] = {"trial": best.number, "win_rate": a.get("eval/win_rate"),
                             "win_rate_ci": [a.get("eval/win_rate_ci_low"), a.get("eval/win_rate_ci_high")],
                             "kl": a.get("eval/kl"), "gold_reward": a.get("eval/gold_reward"),
                             "params": dict(best.params), "mlflow_run_id": a.get("mlflow_run_id")}
        if plan.objective == "pareto":
            entry["pareto_front"] = [{"trial": t.number, "win_rate": t.values[0], "kl": t.values[1],
                                      "params": dict(t.params)} for t in study.best_trials]
        methods[m] = entry
    return {"sweep": plan.name, "experiment": plan.experiment, "objective": plan.objective,
            "storage": plan.storage, "parent_run_id": parent_run_id, "n_trials": plan.n_trials,
            "methods": methods}


def print_summary(plan: Plan, storage, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"sweep {plan.name}: best trial per method ({plan.objective})")
    for col in ("method", "complete", "pruned", "failed", "best trial", "win rate [95% CI]", "KL (nats/seq)",
                "params"):
        t.add_column(col)
    for m in plan.methods:
        study = optuna.load_study(study_name=plan.study_name(m), storage=storage)
        best = best_trial(plan, study)
        e = summary["methods"][m]
        t.add_row(m, str(e["complete"]), str(e["pruned"]), str(e["failed"]), "-" if best is None else str(best.number),
                  _fmt_wr(best), _fmt_kl(best), _fmt_params(best))
    console = Console(width=max(120, Console().width))
    console.print(t)
    if plan.sampler.get("type") == "grid":  # a grid is read point by point (e.g. KL against beta)
        console.print(_grid_table(plan, storage))
    stopped = [m for m, e in summary["methods"].items() if e["status"] == "failures"]
    if stopped:
        console.print(f"[bold red]stopped by failures:[/] {', '.join(stopped)} (re-run to retry)")
    storage_arg = journal_path(plan.storage) or plan.storage
    console.print(f"studies: optuna-dashboard {storage_arg}    runs: alignbench ui"
                  + (f" tracking.uri={plan.tracking['uri']}" if plan.tracking["uri"] else "")
                  + f"  (experiment {plan.experiment})")


def _grid_table(plan: Plan, storage):
    from rich.table import Table

    g = Table(title=f"sweep {plan.name}: every grid point")
    for col in ("method", "params", "win rate [95% CI]", "KL (nats/seq)", "state"):
        g.add_column(col)
    for m in plan.methods:
        study = optuna.load_study(study_name=plan.study_name(m), storage=storage)
        for trial in sorted(study.get_trials(deepcopy=False), key=lambda tr: sorted(tr.params.items())):
            g.add_row(m, _fmt_params(trial), _fmt_wr(trial), _fmt_kl(trial), trial.state.name)
    return g
