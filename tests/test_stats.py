"""Report statistics against hand-worked values."""

from __future__ import annotations

import math

import pytest

from alignbench.evaluation.stats import (holm, length_controlled_win_rate, paired_bootstrap, pareto_front, sign_test,
                              win_rate_ci)


def test_win_rate_ci_wilson_hand_worked():
    # 8 wins, 2 ties of 20: p = 9/20; Wilson at z = 1.96.
    p, low, high = win_rate_ci(8, 2, 20)
    z = 1.96
    centre = (0.45 + z * z / 40) / (1 + z * z / 20)
    half = z * math.sqrt(0.45 * 0.55 / 20 + z * z / 1600) / (1 + z * z / 20)
    assert p == pytest.approx(0.45)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert low == pytest.approx(0.2582, abs=1e-4) and high == pytest.approx(0.6579, abs=1e-4)


def test_pareto_front_maximises_win_minimises_kl():
    win = [0.6, 0.7, 0.5, 0.55, 0.7, float("nan")]
    kl = [1.0, 2.0, 0.5, 1.5, 3.0, 0.1]
    # 3 is dominated by 0 (higher win, lower KL); 4 by 1 (same win, lower KL); NaN never on it.
    assert pareto_front(win, kl) == [2, 0, 1]


def test_pareto_front_single_and_duplicates():
    assert pareto_front([0.5], [1.0]) == [0]
    assert pareto_front([0.5, 0.5], [1.0, 1.0]) == [0, 1]
    assert pareto_front([], []) == []


def test_sign_test_hand_worked():
    diffs = [1] * 6 + [0.5] * 2 + [-1, -0.5] + [0] * 3
    pos, neg, p = sign_test(diffs)
    # 8 of 10 non-zero positive: P(X >= 8 | n=10, 1/2) = (45 + 10 + 1) / 1024, two-sided x2.
    assert (pos, neg) == (8, 2)
    assert p == pytest.approx(112 / 1024)
    assert sign_test([0, 0])[2] == 1.0


def test_holm_hand_worked():
    # sorted: 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.02]) == pytest.approx([0.02])
    assert holm([]) == []


def test_paired_bootstrap_constant_and_null():
    b = [0.0, 1.0, 0.5, 0.0, 1.0]
    a = [x + 0.5 for x in b]
    out = paired_bootstrap(a, b, n_boot=999, seed=1)
    assert out["mean_diff"] == pytest.approx(0.5)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((0.5, 0.5))
    assert out["p_value"] == pytest.approx(1 / 1000)  # no resample is as far from 0.5 as 0 is
    null = paired_bootstrap(b, b, n_boot=999)
    assert null["mean_diff"] == 0 and null["p_value"] == 1.0


def test_paired_bootstrap_ci_covers_mean_and_is_seeded():
    a = [1, 0, 1, 1, 0, 1, 1, 0, 1, 1] * 3
    b = [0, 0, 1, 0, 0, 1, 0, 1, 1, 0] * 3
    r1, r2 = paired_bootstrap(a, b, seed=3), paired_bootstrap(a, b, seed=3)
    assert r1 == r2
    assert r1["mean_diff"] == pytest.approx(0.3)
    assert r1["ci_low"] < 0.3 < r1["ci_high"]
    with pytest.raises(ValueError):
        paired_bootstrap([1, 2], [1])


def test_length_controlled_equals_raw_without_length_differences():
    out = length_controlled_win_rate([1, 1, 0, 0.5], [0, 0, 0, 0])
    assert out["raw_win_rate"] == pytest.approx(0.625)
    assert out["lc_win_rate"] == pytest.approx(0.625, abs=1e-6)


def test_length_controlled_hand_worked_two_groups():
    # Longer responses (diff +2): 3 of 4 win; shorter (diff -2): 1 of 2 win. The saturated model
    # fits each group's rate: a + b*c = logit(3/4) = ln 3, a - b*c = logit(1/2) = 0, so
    # a = ln(3)/2 and the win rate at zero length difference is sigmoid(ln(3)/2) = sqrt3/(1+sqrt3).
    prefs = [1, 1, 1, 0, 1, 0]
    diffs = [2, 2, 2, 2, -2, -2]
    out = length_controlled_win_rate(prefs, diffs, l2=0.0)
    assert out["raw_win_rate"] == pytest.approx(4 / 6)
    assert out["lc_win_rate"] == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)), abs=1e-5)
    assert out["slope"] > 0
    # Saturated model: a = (logit p1 + logit p2) / 2, so Var(a) = (1/(4*.75*.25) + 1/(2*.5*.5)) / 4 = 5/6;
    # the interval is sigmoid(ln(3)/2 -+ 1.96 * sqrt(5/6)).
    half = 1.959964 * math.sqrt(5 / 6)
    sig = lambda z: 1 / (1 + math.exp(-z))
    assert out["lc_win_rate_ci"] == pytest.approx((sig(math.log(3) / 2 - half), sig(math.log(3) / 2 + half)), abs=1e-4)


def test_length_controlled_ci_without_length_spread_is_the_logit_interval():
    # 30 wins of 40, no length differences: logit(0.75) -+ 1.96 / sqrt(40 * .75 * .25) -> (0.5946, 0.8599)
    out = length_controlled_win_rate([1] * 30 + [0] * 10, [0] * 40)
    assert out["lc_win_rate"] == pytest.approx(0.75, abs=1e-6)
    assert out["lc_win_rate_ci"] == pytest.approx((0.5946, 0.8599), abs=1e-4)


def test_length_controlled_symmetric_length_bias_gives_one_half():
    # Wins only come from longer responses, symmetrically: no length-free preference at all.
    out = length_controlled_win_rate([1, 1, 0, 1, 0, 0], [5, 5, 5, -5, -5, -5], l2=0.0)
    assert out["raw_win_rate"] == pytest.approx(0.5)
    assert out["lc_win_rate"] == pytest.approx(0.5, abs=1e-6)


def test_length_controlled_survives_separation_and_empty():
    out = length_controlled_win_rate([1, 1, 0, 0], [3, 4, -3, -4])  # perfectly separated by length
    assert 0.0 <= out["lc_win_rate"] <= 1.0 and out["lc_win_rate"] == pytest.approx(0.5, abs=1e-3)
    assert math.isnan(length_controlled_win_rate([], [])["lc_win_rate"])
