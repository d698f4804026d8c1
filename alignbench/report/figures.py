"""The report's figures (matplotlib, Agg backend): win rate (or gold reward) vs KL with each method's
Pareto frontier, sensitivity to each swept hyperparameter, Optuna's importances and optimisation
history, and the best trials' training curves. Each is saved as a PNG under the figures folder and
kept as a base64 data URI for the self-contained HTML."""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from alignbench.evaluation.stats import pareto_front
from alignbench.report.formatting import slug
from alignbench.report.reading import column

CURVE_KEYS = ("train/loss", "eval/win_rate", "eval/kl")
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


@dataclass
class Figure:
    """One saved figure: its PNG file and the same bytes as a data URI for the HTML."""
    name: str
    title: str
    path: Path
    data_uri: str
    caption: str = ""


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display), imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, name: str, title: str, caption: str = "") -> Figure:
    """Write `fig` as out/<name>.png, close it, and return it as a report `Figure` (its PNG inlined)."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": "alignbench"})
    plt.close(fig)
    data = buf.getvalue()
    path = out / f"{name}.png"
    path.write_bytes(data)
    return Figure(name, title, path, "data:image/png;base64," + base64.b64encode(data).decode("ascii"), caption)


def method_color(methods: list[str], method: str) -> str:
    """The colour of `method` in every figure and table (by its place among the sweep's methods)."""
    return COLORS[methods.index(method) % len(COLORS)]


def frontier_figure(trials, methods, y_key, y_label, out, name, title, caption, line_caption) -> Figure | None:
    """Every trial of each method in (KL, `y_key`); `line_caption` (what the Pareto lines are) joins
    `caption` only when some method's frontier has two trials or more, so that a line is drawn."""
    plt = pyplot()
    yc, xc = f"metrics.{y_key}", "metrics.eval/kl"
    if yc not in trials or xc not in trials:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    drawn = lines = False
    for method in methods:
        sub = trials[trials["method"] == method]
        done = sub[sub["state"] == "COMPLETE"]
        x, y = pd.to_numeric(done[xc], errors="coerce").to_numpy(), pd.to_numeric(done[yc], errors="coerce").to_numpy()
        ok = ~(np.isnan(x) | np.isnan(y))
        c = method_color(methods, method)
        if ok.any():
            drawn = True
            if y_key == "eval/win_rate" and "metrics.eval/win_rate_ci_low" in done:
                lo = pd.to_numeric(done["metrics.eval/win_rate_ci_low"], errors="coerce").to_numpy()
                hi = pd.to_numeric(done["metrics.eval/win_rate_ci_high"], errors="coerce").to_numpy()
                ax.errorbar(x[ok], y[ok], yerr=[np.clip(y - lo, 0, None)[ok], np.clip(hi - y, 0, None)[ok]],
                            fmt="none", ecolor=c, alpha=0.25, lw=1)
            n = int(ok.sum())
            ax.scatter(x[ok], y[ok], color=c, label=f"{method} ({n} trial{'s' if n != 1 else ''})", s=30, zorder=3)
            front = pareto_front(y[ok], x[ok])
            fx, fy = x[ok][front], y[ok][front]
            if len(fx) > 1:  # a frontier of one trial is a point, not a line
                ax.step(fx, fy, where="post", color=c, lw=1.8, alpha=0.9, zorder=2)
                lines = True
        pruned = sub[sub["state"] == "PRUNED"]
        px, py = pd.to_numeric(column(pruned, xc), errors="coerce"), pd.to_numeric(column(pruned, yc), errors="coerce")
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
    caption = f"{caption} {line_caption}" if lines else f"{caption} No Pareto line: each method's frontier is one trial."
    return save_figure(fig, out, name, title, caption)


def sensitivity_figure(trials, method, params, color, out) -> Figure | None:
    plt = pyplot()
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
            ys = pd.to_numeric(column(sub, f"metrics.{key}"), errors="coerce")
            if numeric:
                order = np.argsort(xs.to_numpy())
                ax.plot(xs.to_numpy()[order], ys.to_numpy()[order], "o-", color=color, ms=5, lw=1, alpha=0.85)
                pos = xs[xs > 0]
                if len(pos) == len(xs) and pos.max() / pos.min() > 4:
                    _log_ticks(ax, pos.min(), pos.max())
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
    return save_figure(fig, out, f"sensitivity_{slug(method)}", f"Sensitivity — {method}")


def _log_ticks(ax, low: float, high: float) -> None:
    """A log x axis labelled at 1, 2, 5 per decade (1 only over more than two decades), no minor
    labels: matplotlib labels minor ticks on a short log range, and they overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if high / low <= 100 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def importance_figure(imp: dict, method, color, out, n_complete: int) -> Figure:
    plt = pyplot()
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(names) + 1.4))
    ax.barh(names, [imp[n] for n in names], color=color)
    ax.set_xlabel("importance (Optuna, PED-ANOVA)")
    ax.set_title(f"{method}: hyperparameter importance for the objective")
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, out, f"importance_{slug(method)}", f"Importances — {method}",
                 f"{method}: PED-ANOVA (which params matter to reach the top 10% of trials), from {n_complete} "
                 "complete trials" + (" — few trials, so read it as a rough hint." if n_complete < 50 else "."))


def history_figure(study, method, out) -> Figure | None:
    import optuna

    plt = pyplot()
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
        return save_figure(fig, out, f"history_{slug(method)}", f"Optimisation history — {method}")


def curves_figure(histories: dict[str, dict[str, list]], methods, out) -> Figure | None:
    plt = pyplot()
    if not any(any(h.values()) for h in histories.values()):
        return None
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = {"train/loss": "training loss", "eval/win_rate": "eval win rate", "eval/kl": "eval KL (nats/seq)"}
    for ax, key in zip(axes, CURVE_KEYS):
        for method, hist in histories.items():
            pts = hist.get(key) or []
            if pts:
                steps, vals = zip(*pts)
                ax.plot(steps, vals, "o-" if len(pts) < 12 else "-", ms=3, label=method, color=method_color(methods, method))
        ax.set_xlabel("optimiser step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.set_title(labels[key])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Training curves of each method's best trial", y=1.04)
    return save_figure(fig, out, "training_curves", "Training curves")


def seed_strip_figure(confirmation: dict, methods, out) -> Figure | None:
    """Each confirmation seed's test win rate as a dot per method (diverged seeds a red cross), the
    mean over seeds a bar: the seeds a mean over few of them hides."""
    plt = pyplot()
    rows = sorted(confirmation.get("methods", {}).items())
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(1.3 * len(rows) + 2.5, 3.8))
    for i, (m, r) in enumerate(rows):
        seeds = r["per_seed"]
        offsets = np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else [0.0]
        for dx, s in zip(offsets, seeds):
            if s.get("diverged"):
                ax.scatter(i + dx, s["win_rate"], marker="x", color="#d62728", s=60, zorder=4, lw=2)
            else:
                ax.scatter(i + dx, s["win_rate"], color=method_color(methods, m) if m in methods else "k", s=30, zorder=3)
        ax.hlines(r["win_rate_mean"], i - 0.28, i + 0.28, color="k", lw=1.5, zorder=2)
    ax.scatter([], [], marker="x", color="#d62728", label="diverged seed")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(range(len(rows)), [m for m, _ in rows])
    ax.set_ylabel("test win rate vs reference")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.grid(alpha=0.3, axis="y")
    if any(s.get("diverged") for _, r in rows for s in r["per_seed"]):
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Confirmation: win rate of each seed")
    return save_figure(fig, out, "confirmation_seeds", "Per-seed outcomes",
                 "Each dot one confirmation seed's test win rate; bar: the mean over seeds; red cross: a seed "
                 "tagged diverged (its sampled KL above eval.diverged_kl, or its loss not finite).")
