"""The one rule that picks a method's best trial, shared by the sweep's summary and the report:
the COMPLETE trial with the highest objective; ties go to the lower KL when `kl_tiebreak` (a
Pareto sweep: the top of the win-rate/KL front), then to the earliest trial number. This is the
choice Optuna makes (`study.best_trial` takes the first maximum in trial order; on a Pareto front
the highest win rate is the one with the lowest KL among equals). Plain sequences in, an index
out: no Optuna or pandas here."""

from __future__ import annotations

import math
from collections.abc import Sequence


def best_index(objectives: Sequence, kls: Sequence | None = None, trial_numbers: Sequence | None = None,
               kl_tiebreak: bool = False) -> int | None:
    """Index of the best of the candidate trials (already the COMPLETE ones), or None when no
    objective is a number. A missing objective (None/NaN) is skipped; a missing KL or trial number
    ranks last among ties; the candidates' order breaks any tie left."""
    best_key, best = None, None
    for i, objective in enumerate(objectives):
        value = finite_number(objective)
        if value is None:
            continue
        kl = finite_number(kls[i]) if kl_tiebreak and kls is not None else 0.0
        number = finite_number(trial_numbers[i]) if trial_numbers is not None else 0.0
        key = (-value, math.inf if kl is None else kl, math.inf if number is None else number)
        if best_key is None or key < best_key:
            best_key, best = key, i
    return best


def finite_number(x) -> float | None:
    """x as a float, or None when it is not a number or is NaN (a missing metric)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v
