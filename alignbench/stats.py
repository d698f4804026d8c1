"""Small statistics shared by evaluation and reports."""

from __future__ import annotations

import math


def win_rate_ci(wins: float, ties: float, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """(win rate, low, high): ties count 1/2; Wilson score interval at ~95% (z = 1.96).

    Wilson rather than the normal approximation because it stays inside [0, 1] and behaves
    near 0 and 1 and for small n (Brown, Cai & DasGupta 2001).
    """
    if n <= 0:
        return float("nan"), float("nan"), float("nan")
    p = (wins + 0.5 * ties) / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, center - half), min(1.0, center + half)
