"""Report statistics against hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignbench.evaluation.stats import (holm, indistinguishable_groups, length_controlled_win_rate, paired_bootstrap,
                                         paired_difference, pairwise_comparisons, pareto_front, sign_test,
                                         two_level_bootstrap_ci, verdict, win_rate_ci)


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


# --- Seed x prompt comparison -----------------------------------------------------------------


def test_two_level_interval_includes_seed_spread():
    # Prompts constant within each seed, seed means 0.2, 0.5, 0.8: all the variance is between seeds.
    # A resample is the mean of 3 seeds drawn from {0.2, 0.5, 0.8}; P(all three 0.2) = 1/27 > 2.5%,
    # so the 2.5% and 97.5% percentiles are the extremes 0.2 and 0.8 themselves.
    seed_spread = np.repeat([[0.2], [0.5], [0.8]], 8, axis=1)
    mean, low, high = two_level_bootstrap_ci(seed_spread, seed_t=False)
    assert mean == pytest.approx(0.5)
    assert (low, high) == pytest.approx((0.2, 0.8))
    # With the seed t interval: sd of the seed means 0.3, se 0.3 / sqrt(3) = 0.1732, t(0.975, 2 df) = 4.3027,
    # so 0.5 -+ 0.7452: three seeds say little about a fourth, which the bootstrap's (0.2, 0.8) hides.
    assert two_level_bootstrap_ci(seed_spread)[1:] == pytest.approx((0.5 - 0.7452, 0.5 + 0.7452), abs=1e-4)
    # Same mean, no seed spread: every seed sees prompts 0.2, 0.5, 0.8 (x3). A resample is the mean of
    # 27 draws from {0.2, 0.5, 0.8} (variance 0.06): sd = sqrt(0.06 / 27) = 0.047, width ~ 3.92 sd = 0.185.
    no_seed_spread = np.tile([0.2, 0.5, 0.8] * 3, (3, 1))
    mean2, low2, high2 = two_level_bootstrap_ci(no_seed_spread)
    assert mean2 == pytest.approx(0.5)
    assert high2 - low2 == pytest.approx(0.185, abs=0.04)
    assert high2 - low2 < 0.5 * (high - low)
    # A one-level bootstrap over the 24 pooled outcomes would miss the seed spread (width ~ 0.2).
    pooled = paired_bootstrap(seed_spread.ravel(), np.zeros(24), n_boot=2000)
    assert pooled["ci_high"] - pooled["ci_low"] < 0.5 * (high - low)


def test_two_level_matches_a_literal_loop_over_the_documented_draws():
    table = np.arange(12, dtype=float).reshape(3, 4) ** 1.5
    rng = np.random.default_rng(7)
    seeds = rng.integers(0, 3, size=(50, 3))  # documented order: seed indices, then prompt indices
    prompts = rng.integers(0, 4, size=(50, 3, 4))
    boot = [np.mean([table[seeds[b, k], prompts[b, k]].mean() for k in range(3)]) for b in range(50)]
    mean, low, high = two_level_bootstrap_ci(table, n_boot=50, alpha=0.1, rng_seed=7, seed_t=False)
    assert mean == pytest.approx(table.mean())
    assert (low, high) == pytest.approx(tuple(np.quantile(boot, [0.05, 0.95])), rel=1e-12)
    assert two_level_bootstrap_ci(table, n_boot=50, alpha=0.1, rng_seed=7, seed_t=False) == (mean, low, high)


def test_two_level_with_one_seed_is_the_prompt_bootstrap():
    x = np.array([1, 0, 0.5, 1, 1, 0, 1, 0.5, 0, 1, 1, 1])
    mean, low, high = two_level_bootstrap_ci(x[None, :], n_boot=500, rng_seed=3)
    rng = np.random.default_rng(3)
    boot = x[rng.integers(0, 12, size=(500, 12))].mean(axis=1)
    assert mean == pytest.approx(x.mean())
    assert (low, high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), rel=1e-12)
    plain = paired_bootstrap(x, np.zeros(12), n_boot=500, seed=3)
    assert (low, high) == pytest.approx((plain["ci_low"], plain["ci_high"]), rel=1e-12)
    assert low < mean < high


def test_two_level_rejects_bad_tables():
    with pytest.raises(ValueError, match="2-D"):
        two_level_bootstrap_ci([0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        two_level_bootstrap_ci([[0.1, float("nan")]])


def test_paired_difference_with_itself_and_constant_shift():
    a = np.array([[0, 0.5, 1, 1], [1, 0, 0.5, 0], [0.5, 0.5, 1, 0]])
    same = paired_difference(a, a, n_boot=999)
    assert {k: same[k] for k in ("diff", "low", "high", "p_value", "p_bootstrap", "p_seed_t")} == {
        "diff": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0, "p_bootstrap": 1.0, "p_seed_t": 1.0}
    shifted = paired_difference(a + 0.1, a, n_boot=999)
    assert shifted["diff"] == pytest.approx(0.1)
    assert (shifted["low"], shifted["high"]) == pytest.approx((0.1, 0.1))
    assert shifted["high"] - shifted["low"] == pytest.approx(0.0, abs=1e-12)
    assert shifted["p_value"] == pytest.approx(2 / 1000)  # no resample on the far side of 0
    assert shifted["p_seed_t"] < 1e-12  # every seed 0.1 apart: the t test has no spread to doubt
    assert paired_difference(a, a + 0.1, n_boot=999)["diff"] == pytest.approx(-0.1)


def test_paired_difference_pairs_by_seed_and_prompt():
    # A huge seed effect shared by both methods cancels in the paired difference.
    base = np.repeat([[0.1], [0.5], [0.9]], 6, axis=1) + np.tile([0.0, 0.02, 0.04, 0.0, 0.02, 0.04], (3, 1))
    out = paired_difference(base + 0.05, base)
    assert out["low"] == pytest.approx(0.05) and out["high"] == pytest.approx(0.05)
    _, low_a, high_a = two_level_bootstrap_ci(base + 0.05)
    _, low_b, high_b = two_level_bootstrap_ci(base)
    assert low_a < high_b and low_b < high_a  # the separate intervals overlap widely


def test_paired_difference_takes_the_larger_p_of_the_bootstrap_and_the_seed_t_test():
    """The smoke sweep's dpo vs simpo: per-seed wins 0.583, 0.250 and 0.417, 0.000 on 12 prompts (in the
    sweep's prompt order the bootstrap alone gave p = 0.002, 0.011 in this one); the t test on the seed differences 0.1667 and 0.25 (mean 0.2083,
    se 0.0417, t = 5.0 on 1 df) gives p = 2 * (1/2 - atan(5) / pi) = 0.1257, and that is the p-value."""
    dpo = np.array([[1.0] * 7 + [0.0] * 5, [1.0] * 3 + [0.0] * 9])
    simpo = np.array([[1.0] * 5 + [0.0] * 7, [0.0] * 12])
    out = paired_difference(dpo, simpo)
    assert out["p_bootstrap"] < 0.02  # the bootstrap alone orders the pair
    assert out["p_seed_t"] == pytest.approx(2 * (0.5 - math.atan(5.0) / math.pi), abs=1e-6)
    assert out["p_value"] == out["p_seed_t"]
    assert out["low"] == out["low_seed_t"] < 0 < out["low_bootstrap"]  # the hull reaches below 0
    assert paired_difference(dpo, simpo, seed_t=False)["p_value"] == out["p_bootstrap"]


def test_paired_difference_needs_equal_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        paired_difference(np.zeros((3, 4)), np.zeros((3, 5)))


def test_pairwise_comparisons_order_and_holm():
    ones, halves = np.ones((2, 5)), np.full((2, 5), 0.5)
    tables = {"C": np.zeros((2, 5)), "D": ones, "B": halves, "A": ones}
    rows = pairwise_comparisons(tables, n_boot=999)
    assert [(r["a"], r["b"]) for r in rows] == [("A", "D"), ("A", "B"), ("A", "C"), ("D", "B"), ("D", "C"),
                                                ("B", "C")]
    assert [r["diff"] for r in rows] == pytest.approx([0, 0.5, 1, 0.5, 1, 0.5])
    # Constant differences: p = 2/1000 for the five real ones, 1 for A-D; Holm over 6 pairs gives
    # 6p, 5p, 4p, 3p, 2p in sorted order, made monotone: all five are 6p = 0.012.
    assert [r["p_value"] for r in rows] == pytest.approx([1, 0.002, 0.002, 0.002, 0.002, 0.002])
    assert [r["p_holm"] for r in rows] == pytest.approx([1, 0.012, 0.012, 0.012, 0.012, 0.012])
    assert [r["significant"] for r in rows] == [False, True, True, True, True, True]
    assert [r["p_holm"] for r in rows] == pytest.approx(holm([r["p_value"] for r in rows]))
    text = verdict({m: float(t.mean()) for m, t in tables.items()}, rows, n_seeds=2, n_prompts=5)["statement"]
    assert text == ("A and D are ahead of B and C; B is ahead of C; no difference between A and D "
                    "(α = 0.05, Holm-corrected, 2 seeds × 5 test prompts).")
    lower = pairwise_comparisons(tables, n_boot=999, higher_is_better=False)
    assert (lower[0]["a"], lower[0]["b"], lower[0]["diff"]) == ("C", "B", pytest.approx(-0.5))


def _comparisons(p_holm: dict) -> list[dict]:
    return [{"a": a, "b": b, "p_holm": p} for (a, b), p in p_holm.items()]


def test_verdict_only_ends_differ():
    # A > B > C, only A-C significant: the runs [A, B] and [B, C] overlap at B.
    means = {"C": 0.4, "A": 0.6, "B": 0.5}
    out = verdict(means, _comparisons({("A", "B"): 0.2, ("A", "C"): 0.01, ("B", "C"): 0.3}),
                  n_seeds=3, n_prompts=128)
    assert out["ranking"] == ["A", "B", "C"]
    assert out["groups"] == [["A", "B"], ["B", "C"]]
    assert out["statement"] == ("A is ahead of C; no difference between A and B, or between B and C "
                                "(α = 0.05, Holm-corrected, 3 seeds × 128 test prompts).")
    assert out["text"] == out["statement"] + (
        "\n95% intervals from a two-level bootstrap over seeds and prompts, widened to the t interval of the "
        "per-seed means; a pair differs only where a t test on its per-seed differences agrees.")
    # At alpha = 0.005 nothing differs.
    strict = verdict(means, _comparisons({("A", "B"): 0.2, ("A", "C"): 0.01, ("B", "C"): 0.3}),
                     alpha=0.005, n_seeds=3, n_prompts=128)
    assert strict["groups"] == [["A", "B", "C"]]
    assert strict["statement"].startswith("No method is distinguishable from the others (α = 0.005,")


def test_verdict_three_ahead_of_one_and_one_alone_on_top():
    means = {"A": 0.7, "B": 0.6, "C": 0.55, "D": 0.3}
    p = {("A", "B"): 0.5, ("A", "C"): 0.4, ("B", "C"): 0.9, ("A", "D"): 0.001, ("B", "D"): 0.01, ("C", "D"): 0.02}
    out = verdict(means, _comparisons(p), n_seeds=3, n_prompts=128)
    assert out["groups"] == [["A", "B", "C"], ["D"]]
    assert out["statement"] == ("A, B and C are ahead of D; no difference among A, B and C "
                                "(α = 0.05, Holm-corrected, 3 seeds × 128 test prompts).")
    p.update({("A", "B"): 0.01, ("A", "C"): 0.01})
    top = verdict(means, _comparisons(p), n_seeds=3, n_prompts=128)
    assert top["groups"] == [["A"], ["B", "C"], ["D"]]
    assert top["statement"] == ("A is ahead of B, C and D; B and C are ahead of D; no difference between B and C "
                                "(α = 0.05, Holm-corrected, 3 seeds × 128 test prompts).")


def test_verdict_single_method_lower_is_better_and_one_seed():
    single = verdict({"dpo": 0.5}, [], n_seeds=1, n_prompts=64)
    assert single["groups"] == [["dpo"]] and single["ranking"] == ["dpo"]
    assert single["statement"] == "Only one method, dpo: nothing to compare (1 seed × 64 test prompts)."
    assert "bootstrap over prompts only" in single["intervals"]
    kl = verdict({"ipo": 0.2, "dpo": 0.9}, _comparisons({("ipo", "dpo"): 0.001}), n_seeds=3, n_prompts=8,
                 higher_is_better=False)
    assert kl["ranking"] == ["ipo", "dpo"] and kl["groups"] == [["ipo"], ["dpo"]]
    assert kl["statement"].startswith("ipo is ahead of dpo (")
    with pytest.raises(ValueError, match="no comparison"):
        verdict({"a": 1.0, "b": 0.0}, [], n_seeds=3, n_prompts=8)


def test_groups_are_maximal_runs_without_a_significant_pair():
    # A > B > C > D with only B-C significant: [A, B] and [C, D]; the run from B ([B]) is inside [A, B].
    sig = lambda x, y: {x, y} == {"B", "C"}
    assert indistinguishable_groups(["A", "B", "C", "D"], sig) == [["A", "B"], ["C", "D"]]
    # Only A-C significant, but A-B and B-C not: a run from A stops at B even though the test is not transitive.
    sig = lambda x, y: {x, y} == {"A", "C"}
    assert indistinguishable_groups(["A", "B", "C", "D"], sig) == [["A", "B"], ["B", "C", "D"]]
    assert indistinguishable_groups(["A"], sig) == [["A"]]


def test_iqm_and_probability_of_improvement_hand_values():
    from alignbench.evaluation.robust import improvement_interval, iqm, iqm_interval, probability_of_improvement

    assert iqm([0.0, 1.0, 2.0, 3.0, 100.0]) == 2.0  # one cut at each end: the collapse does not carry it
    assert iqm([0.2, 0.8, 0.9]) == pytest.approx(0.6333333)  # below 4 seeds: the mean
    assert probability_of_improvement([1.0, 2.0], [0.0, 2.0]) == 0.625  # (1 + 0 + 1 + 1/2) / 4
    assert probability_of_improvement([0.1, 0.2], [0.5, 0.6]) == 0.0
    value, low, high = iqm_interval([0.80, 0.85, 0.86, 0.88, 0.24], n_boot=500)
    assert value == pytest.approx((0.80 + 0.85 + 0.86) / 3) and low <= value <= high
    p, low, high = improvement_interval([0.8, 0.85, 0.9], [0.7, 0.75, 0.95], n_boot=500)
    assert p == pytest.approx(6 / 9) and 0.0 <= low <= p <= high <= 1.0
