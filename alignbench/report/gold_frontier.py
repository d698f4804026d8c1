"""The reward-KL frontier as in the DPO paper's Fig. 2 (Rafailov et al. 2023): one point per complete
run, gold reward against sampled KL, one frontier per *variant* (a method, with PPO/RLOO split by
their reward: `ppo (reward model)` and `ppo-gt` for `method.reward=gold`), and one sentence naming
which frontier is ahead where.

A variant's frontier at KL x is the highest gold reward any of its runs reached with KL <= x (a
step function, as the paper reads its scatter). Over the KL range that every variant reaches, the
leader at x is the variant whose frontier is highest there; the sentence lists the stretches of
that range with one leader each."""

from __future__ import annotations

import numpy as np
import pandas as pd

from alignbench.report.figures import COLORS, Figure, pyplot, save_figure
from alignbench.report.reading import column


def variant_name(method: str, reward) -> str:
    """`ppo-gt` for an online method trained on the gold reward, `ppo (reward model)` on a learned one,
    the method's name otherwise."""
    if isinstance(reward, str) and reward == "gold":
        return f"{method}-gt"
    if isinstance(reward, str) and reward == "model":
        return f"{method} (reward model)"
    return method


def frontier_points(trials: pd.DataFrame) -> pd.DataFrame:
    """Complete runs with both a gold reward and a KL: columns variant, kl, gold (empty without any)."""
    if trials.empty or "metrics.eval/gold_reward" not in trials or "metrics.eval/kl" not in trials:
        return pd.DataFrame(columns=["variant", "kl", "gold"])
    done = trials[trials["state"] == "COMPLETE"]
    rewards = column(done, "params.method.reward")
    points = pd.DataFrame({
        "variant": [variant_name(str(m), r) for m, r in zip(done["method"], rewards)],
        "kl": pd.to_numeric(done["metrics.eval/kl"], errors="coerce").to_numpy(),
        "gold": pd.to_numeric(done["metrics.eval/gold_reward"], errors="coerce").to_numpy()})
    return points.dropna().reset_index(drop=True)


def frontier_at(kl: np.ndarray, gold: np.ndarray, x: float) -> float:
    """The best gold reward reached with KL <= x (-inf where no run stays that close)."""
    reached = gold[kl <= x]
    return float(reached.max()) if reached.size else float("-inf")


def leaders(points: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(variant, KL from, KL to) stretches with one leader each, over the KL range every variant reaches.
    Frontiers change only at a run's KL, so the leader is read at those KLs exactly: it holds from one
    to the next (a stretch whose ends are equal is the leader at that KL alone)."""
    variants = sorted(points["variant"].unique())
    if len(variants) < 2:
        return []
    by = {v: (points.loc[points["variant"] == v, "kl"].to_numpy(), points.loc[points["variant"] == v, "gold"].to_numpy())
          for v in variants}
    low = max(kl.min() for kl, _ in by.values())   # from where every variant has a point ...
    high = float(points["kl"].max())               # ... to the largest KL any run reached
    stretches: list[tuple[str, float, float]] = []
    for x in sorted(k for k in set(points["kl"].tolist()) if low <= k <= high):
        best = max(variants, key=lambda v: frontier_at(*by[v], x))
        if stretches and stretches[-1][0] == best:
            continue
        if stretches:
            stretches[-1] = (stretches[-1][0], stretches[-1][1], float(x))
        stretches.append((best, float(x), float(x)))
    stretches[-1] = (stretches[-1][0], stretches[-1][1], high)
    return stretches


def leader_sentence(points: pd.DataFrame) -> str:
    """Which variant's frontier is ahead where, in words."""
    variants = sorted(points["variant"].unique()) if not points.empty else []
    if len(variants) < 2:
        return "Fewer than two variants have complete runs with a gold reward and a KL: no frontier to compare."
    stretches = leaders(points)
    if len(stretches) == 1:
        v, lo, hi = stretches[0]
        return (f"{v}'s frontier is ahead over the whole KL range every variant reaches ({lo:.2f} to {hi:.2f} "
                f"nats/seq): at every KL there, its best run has the highest gold reward.")
    parts = [f"{v} at KL {lo:.2f}" if lo == hi else f"{v} for KL {lo:.2f}-{hi:.2f}" for v, lo, hi in stretches]
    return ("The frontier ahead (highest gold reward reached at or below each KL) changes with KL: "
            + "; ".join(parts) + " nats/seq.")


def gold_frontier_figure(trials: pd.DataFrame, out) -> tuple[Figure | None, str]:
    """The figure (None without two variants' points) and the leader sentence, its caption's end."""
    points = frontier_points(trials)
    sentence = leader_sentence(points)
    variants = sorted(points["variant"].unique()) if not points.empty else []
    if len(variants) < 2:
        return None, sentence
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for i, v in enumerate(variants):
        sub = points[points["variant"] == v].sort_values("kl")
        color = COLORS[i % len(COLORS)]
        ax.scatter(sub["kl"], sub["gold"], color=color, s=30, zorder=3, label=f"{v} ({len(sub)} runs)")
        ax.step(sub["kl"], np.maximum.accumulate(sub["gold"].to_numpy()), where="post", color=color, lw=1.6, alpha=0.9)
    ax.set_xlabel("sampled KL(policy || reference), nats per sequence")
    ax.set_ylabel("gold reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    title = "Gold reward vs KL: each variant's frontier (the DPO paper's Fig. 2)"
    caption = ("One point per complete run; line: the best gold reward each variant reached at or below each KL. "
               + sentence)
    return save_figure(fig, out, "gold_frontier", title, caption), sentence
