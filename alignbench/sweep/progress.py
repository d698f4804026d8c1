"""What the sweep shows and returns: the live table of trials done / pruned / failed per method
with the best so far (plain log lines when not on a terminal), and the final summary (best trial
per method, by the rule of `selection`), printed and returned. The best trial's win rate is the
one it was selected on (validation prompts); next to it stands its confirmation: the mean test
win rate over the confirmation seeds run so far, and how many."""

from __future__ import annotations

import importlib.util
import sys

import optuna

from alignbench.sweep.budget import Counts, count
from alignbench.sweep.confirm_runs import confirm_seeds
from alignbench.sweep.confirmation import Confirmation, confirmation_of
from alignbench.sweep.plan import Plan
from alignbench.sweep.race import race_outcome
from alignbench.sweep.storage import journal_path
from alignbench.sweep.studies import best_trial


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
                yield m, Counts(), None, Confirmation(seeds=confirm_seeds(self.plan, m))
                continue
            best = best_trial(self.plan, study)
            yield m, count(self.plan, study), best, confirmation_of(self.plan, m, self.storage)

    def table(self):
        from rich.table import Table

        t = Table(title=f"sweep {self.plan.name} — {self.plan.n_trials} trials per method"
                  + (f" — {self.current}" if self.current else ""))
        for col in ("method", "done", "pruned", "failed", "running", "best win rate (validation)", "KL",
                    "best params", *(CONFIRM_COLUMNS if self.plan.confirmation.seeds else ())):
            t.add_column(col)
        for m, c, best, conf in self.rows():
            t.add_row(m, f"{c.done}/{self.plan.n_trials}", str(c.pruned), str(c.failed), str(c.running),
                      _fmt_wr(best), _fmt_kl(best), _fmt_params(best),
                      *(_fmt_confirmation(conf) if self.plan.confirmation.seeds else ()))
        return t

    def line(self) -> str:
        parts = []
        for m, c, best, conf in self.rows():
            confirmed = _fmt_confirmation(conf)
            parts.append(f"{m} {c.done}/{self.plan.n_trials} (pruned {c.pruned}, failed {c.failed}"
                         + (f", running {c.running}" if c.running else "") + f") best {_fmt_wr(best)} validation"
                         + (f", test {confirmed[0]} ({confirmed[1]} seeds)" if self.plan.confirmation.seeds else ""))
        return "sweep progress: " + " | ".join(parts)

    def refresh(self):
        if self._live is not None:
            self._live.update(self.table())
        else:
            line = self.line()
            if line != self._last_line:
                print(line, flush=True)
                self._last_line = line

    def running(self, label, step, win_rate):
        """`label` names the trial, e.g. "dpo trial 3" or "dpo confirmation seed 1"."""
        self.current = f"running {label}" + (f", step {step}: win rate {win_rate:.3f}"
                                             if win_rate is not None else "")
        if self._live is not None:
            self._live.update(self.table())

    def finished(self, label, state, reason):
        self.current = ""
        if self._live is None:
            print(f"sweep: {label} {state.name}" + (f" ({reason})" if reason else ""), flush=True)
        self.refresh()

    def poll(self):
        self.refresh()


CONFIRM_COLUMNS = ("test win rate (confirmation mean)", "seeds")


def _fmt_confirmation(conf: Confirmation) -> tuple[str, str]:
    """(mean test win rate over the seeds done, "done/K seeds") of a confirmation."""
    mean = conf.mean_win_rate
    return ("-" if mean is None else f"{mean:.3f}"), f"{len(conf.win_rates)}/{len(conf.seeds)}"


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
    """The sweep's summary (logged as sweep_summary.json): per method, its counts, why its search
    stopped, its best trial (selected on validation), its confirmation on test and (pareto) its
    front. `stopped`: {method: (why the search stopped, why the confirmation stopped)}."""
    methods = {}
    raced = race_outcome(plan, storage)[0] if plan.confirmation.raced and plan.confirmation.seeds else None
    for m in plan.methods:
        study = optuna.load_study(study_name=plan.study_name(m), storage=storage)
        c = count(plan, study)
        best = best_trial(plan, study)
        search_status, confirm_status = stopped.get(m, ("not run", "not run"))
        entry = {"study": study.study_name, "complete": c.complete, "pruned": c.pruned, "failed": c.failed,
                 "running": c.running, "budget": plan.n_trials, "status": search_status}
        failures = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        if failures:  # why the last one failed: what a failing sweep's exit message names
            entry["last_failure"] = str(failures[-1].user_attrs.get("failure_reason", "unknown"))
        if best is not None:
            a = best.user_attrs
            entry["best"] = {"trial": best.number, "split": "validation", "win_rate": a.get("eval/win_rate"),
                             "win_rate_ci": [a.get("eval/win_rate_ci_low"), a.get("eval/win_rate_ci_high")],
                             "kl": a.get("eval/kl"), "gold_reward": a.get("eval/gold_reward"),
                             "params": dict(best.params), "mlflow_run_id": a.get("mlflow_run_id")}
        if plan.confirmation.seeds:
            entry["confirmation"] = _confirmation_entry(plan, m, storage, confirm_status)
            if raced is not None:
                entry["confirmation"]["race"] = raced[m]
        if plan.objective == "pareto":
            entry["pareto_front"] = [{"trial": t.number, "win_rate": t.values[0], "kl": t.values[1],
                                      "params": dict(t.params)} for t in study.best_trials]
        methods[m] = entry
    return {"sweep": plan.name, "experiment": plan.experiment, "objective": plan.objective,
            "confirm": plan.confirmation.mode,
            "storage": plan.storage, "parent_run_id": parent_run_id, "n_trials": plan.n_trials,
            "methods": methods}


def _confirmation_entry(plan: Plan, method: str, storage, status: str) -> dict:
    conf = confirmation_of(plan, method, storage)
    return {"study": plan.confirm_study_name(method), "status": status, "split": "test",
            "selected_trial": conf.selection.get("confirmation.selected_trial"),
            "params_digest": conf.selection.get("confirmation.params_digest"), "seeds": conf.seeds,
            "win_rates": {str(seed): wr for seed, wr in sorted(conf.win_rates.items())},
            "mean_win_rate": conf.mean_win_rate, "n_seeds": len(conf.win_rates), "failed": conf.failed}


def unfinished(summary: dict) -> list[str]:
    """The methods whose search or confirmation stopped on failures (or whose worker did not
    finish it), e.g. ["dpo", "ipo (confirmation)"]."""
    bad = ("failures", "incomplete")
    out = []
    for m, e in summary["methods"].items():
        if e["status"] in bad:
            out.append(m)
        elif e.get("confirmation", {}).get("status") in bad:
            out.append(f"{m} (confirmation)")
    return out


def shortfall(summary: dict) -> str:
    """Which methods ended short of their budget, how far and why, in one line (a failing sweep's exit message)."""
    why = {"failures": "stopped by failures", "incomplete": "its workers did not finish it"}
    parts = []
    for m, e in summary["methods"].items():
        if e["status"] in why:
            last = e.get("last_failure", "").splitlines()[0][:200] if e.get("last_failure") else ""
            parts.append(f"{m} {e['complete'] + e['pruned']} of {e['budget']} trials ({why[e['status']]}: "
                         f"{e['failed']} failed" + (f", the last with {last}" if last else "") + ")")
        elif e.get("confirmation", {}).get("status") in why:
            c = e["confirmation"]
            parts.append(f"{m} confirmation {c['n_seeds']} of {len(c['seeds'])} seeds ({why[c['status']]}: "
                         f"{c['failed']} failed)")
    return "; ".join(parts)


def print_summary(plan: Plan, storage, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"sweep {plan.name}: best trial per method ({plan.objective})")
    for col in ("method", "complete", "pruned", "failed", "best trial", "validation win rate [95% CI]",
                "KL (nats/seq)", "params", *(CONFIRM_COLUMNS if plan.confirmation.seeds else ())):
        t.add_column(col)
    for m in plan.methods:
        study = optuna.load_study(study_name=plan.study_name(m), storage=storage)
        best = best_trial(plan, study)
        e = summary["methods"][m]
        t.add_row(m, str(e["complete"]), str(e["pruned"]), str(e["failed"]), "-" if best is None else str(best.number),
                  _fmt_wr(best), _fmt_kl(best), _fmt_params(best),
                  *(_fmt_confirmation(confirmation_of(plan, m, storage)) if plan.confirmation.seeds else ()))
    console = Console(width=max(120, Console().width))
    console.print(t)
    if plan.sampler.get("type") == "grid":  # a grid is read point by point (e.g. KL against beta)
        console.print(_grid_table(plan, storage))
    stopped = unfinished(summary)
    if stopped:
        console.print(f"[bold red]stopped by failures:[/] {', '.join(stopped)} (re-run to retry)")
    storage_arg = journal_path(plan.storage) or plan.storage
    console.print(f"studies: {dashboard_command(storage_arg)}    runs: alignbench ui"
                  + (f" tracking.uri={plan.tracking['uri']}" if plan.tracking["uri"] else "")
                  + f"  (experiment {plan.experiment})")


def dashboard_command(storage_arg: str) -> str:
    """The command that shows the studies: `optuna-dashboard <storage>`, preceded by its install
    command when it is not installed (it is in the `dashboard` and `test` extras)."""
    command = f"optuna-dashboard {storage_arg}"
    if importlib.util.find_spec("optuna_dashboard") is None:
        return f"pip install optuna-dashboard && {command}"
    return command


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
