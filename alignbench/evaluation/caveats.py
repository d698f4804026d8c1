"""What limits a verdict, said in the verdict itself: a judge at chance (its held-out accuracy
interval includes 0.5), too few confirmation seeds, diverged seeds. Pure functions of the verdict
(`stats.verdict`) and plain numbers; the report puts the result in report.html, report.md, the
MLflow parent run's description and summary.json."""

from __future__ import annotations

# Below this many confirmation seeds the two-level bootstrap sees almost no seed-to-seed variance:
# resampling 2 seeds gives 3 distinct seed sets, so the intervals are too narrow.
MIN_SEEDS = 3


def verdict_caveats(n_seeds: int, judge_caveat: str | None = None, diverged: dict[str, int] | None = None,
                    min_seeds: int = MIN_SEEDS) -> list[str]:
    """The sentences (no final full stop) that limit a verdict on `n_seeds` confirmation seeds (the
    fewest any compared method has): `judge_caveat` (`judges.judge_accuracy_caveat`, None when the
    judge is above chance), too few seeds, and `diverged` ({method: seeds that diverged}, methods
    with none may be left out)."""
    caveats = [judge_caveat] if judge_caveat else []
    if n_seeds < min_seeds:
        caveats.append(f"only {n_seeds} confirmation seed{'s' if n_seeds != 1 else ''}: fewer than {min_seeds} "
                       "hardly measure seed-to-seed variance, so the intervals may be too narrow")
    bad = {m: k for m, k in sorted((diverged or {}).items()) if k}
    if bad:
        caveats.append("diverged seeds (" + ", ".join(f"{m} {k}" for m, k in bad.items())
                       + ") are part of those methods' results")
    return caveats


def caveated_verdict(verdict: dict, caveats: list[str], judge_at_chance: bool) -> dict:
    """`verdict` whose statement carries its caveats: under a judge at chance the order is given as
    the judge's order, not as a finding. Adds "caveats" (the list) and "finding" (False under a
    judge at chance); "text" is the new statement and the intervals line."""
    statement = verdict["statement"]
    if judge_at_chance:
        statement = f"Not a finding, the judge is at chance; its order: {statement[:1].lower()}{statement[1:]}"
    if caveats:
        statement += " Caveats: " + "; ".join(caveats) + "."
    return dict(verdict, statement=statement, text=statement + "\n" + verdict["intervals"], caveats=list(caveats),
                finding=not judge_at_chance)
