"""The verdict's calibration (`confirm/calibration.py`): variance components of a constructed table,
the simulated test's false-positive rate against a t test's known one, power, and the seeds needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignbench.confirm.calibration import (Components, NullDraws, calibration_text, comparison_calibration,
                                               difference_components, min_detectable, p_values, rejection_rate,
                                               seeds_needed, simulate_null, variance_components)


def test_variance_components_of_a_constructed_table():
    """Seed effects -1, 0, +1 (sum of squares 2), prompt effects -2, +2 (8), interaction +-0.5 (4 x 0.25 = 1,
    over 2 x 1 df): MS_seed = 2 * 2 / 2 = 2, MS_prompt = 3 * 8 / 1 = 24, MS_within = 1 / 2 = 0.5;
    so within^2 = 0.5, seed^2 = (2 - 0.5) / 2 = 0.75, prompt^2 = (24 - 0.5) / 3 = 7.8333."""
    seed = np.array([-1.0, 0.0, 1.0])[:, None]
    prompt = np.array([-2.0, 2.0])[None, :]
    inter = np.array([[0.5, -0.5], [-0.5, 0.5], [0.0, 0.0]])  # rows and columns sum to 0
    c = variance_components(10 + seed + prompt + inter)
    assert c.within == pytest.approx(math.sqrt(0.5))
    assert c.seed == pytest.approx(math.sqrt(0.75))
    assert c.prompt == pytest.approx(math.sqrt(23.5 / 3))
    # No seed effect at all: its estimate is clipped at 0, not negative.
    assert variance_components(10 + prompt + inter).seed == 0.0
    with pytest.raises(ValueError, match="at least 2 seeds"):
        variance_components(np.zeros((1, 5)))


def test_a_method_against_itself_keeps_no_prompt_part():
    c = difference_components(Components(3.0, 5.0, 4.0), Components(3.0, 5.0, 4.0))
    assert (c.seed, c.prompt, c.within) == pytest.approx((math.hypot(3, 3), 0.0, math.hypot(4, 4)))


def test_the_seed_t_test_alone_rejects_at_its_level_and_the_percentile_bootstrap_more_at_two_seeds():
    """With only a seed part, the t test on 2 seeds (1 df) is exact: its rate under the null is alpha
    (0.05 within the simulation's error). The bootstrap alone at 2 seeds sees one of 4 equally likely
    seed draws on each side of 0 at most, so it rejects far more often; their combination (the report's
    test) holds alpha."""
    draws = simulate_null(Components(1.0, 0.0, 0.0), n_seeds=2, n_prompts=4, n_sim=4000, n_boot=400)
    from scipy.stats import t as student_t
    means = draws.seed_means
    p_t = 2 * student_t.sf(np.abs(means.mean(axis=1)) / (means.std(axis=1, ddof=1) / math.sqrt(2)), 1)
    assert (p_t <= 0.05).mean() == pytest.approx(0.05, abs=0.012)
    combined = rejection_rate(draws, 0.05)
    assert combined["rate"] <= 0.05 + 0.012 and combined["low"] <= combined["rate"] <= combined["high"]
    assert combined["n_sim"] == 4000
    assert rejection_rate(draws, 0.05, seed_t=False)["rate"] > 0.3


def test_p_values_shift_the_same_draws():
    """A shift moves every bootstrap replicate and seed mean: with replicates all at +-1 and seeds at
    0.5 and 1.5, shifting by 10 puts every replicate above 0 (p = 2 / (n_boot + 1)) and the t test's
    mean 11 over se 0.5 (t = 22, 1 df) gives p = 2 (1/2 - atan(22) / pi)."""
    draws = NullDraws(boot=np.array([[-1.0, 1.0, -1.0, 1.0]]), seed_means=np.array([[0.5, 1.5]]))
    assert p_values(draws, 0.0, seed_t=False)[0] == pytest.approx(1.0)
    assert p_values(draws, 10.0, seed_t=False)[0] == pytest.approx(2 / 5)
    assert p_values(draws, 10.0)[0] == pytest.approx(max(2 / 5, 2 * (0.5 - math.atan(22.0) / math.pi)))


def test_power_and_seeds_needed_follow_the_t_tests_formula():
    """Seed part 1, nothing else: the combined test is about the t test on k seeds, whose power at a
    difference d is the noncentral t's (noncentrality d sqrt(k)). At d = 2.0 its power is 0.755 at 4
    seeds and 0.909 at 5, so 5 seeds are needed; at 2 seeds the smallest difference found with 80% power
    is large (t(0.975, 1) = 12.7)."""
    from scipy.stats import nct, t as student_t

    def t_power(k, d):
        crit = student_t.ppf(0.975, k - 1)
        return 1 - nct.cdf(crit, k - 1, d * math.sqrt(k)) + nct.cdf(-crit, k - 1, d * math.sqrt(k))

    first = next(k for k in range(2, 20) if t_power(k, 2.0) >= 0.8)
    assert first == 5 and t_power(4, 2.0) == pytest.approx(0.755, abs=1e-3)
    needed = seeds_needed(Components(1.0, 0.0, 0.0), 4, 2.0, 0.05, from_seeds=2, n_sim=800, n_boot=400)
    assert needed in (first, first + 1)  # the bootstrap's p can only add to the t test's
    draws = simulate_null(Components(1.0, 0.0, 0.0), 2, 4, n_sim=800, n_boot=400)
    assert min_detectable(draws, 0.05) > 5.0
    assert seeds_needed(Components(1.0, 0.0, 0.0), 4, 0.01, 0.05, from_seeds=2, max_seeds=4, n_sim=200) is None


def test_comparison_calibration_states_rate_power_and_seeds():
    rng = np.random.default_rng(0)
    prompts = rng.normal(0, 0.1, 32)
    tables = {m: np.clip(mu + rng.normal(0, 0.03, (3, 1)) + prompts + rng.normal(0, 0.2, (3, 32)), 0, 1)
              for m, mu in (("a", 0.8), ("b", 0.78), ("c", 0.3))}
    pairs = [{"a": "a", "b": "b", "diff": 0.02, "significant": False},
             {"a": "a", "b": "c", "diff": 0.5, "significant": True}]
    cal = comparison_calibration(tables, pairs, n_sim=200, n_boot=200, max_seeds=6)
    assert cal["available"] and (cal["n_seeds"], cal["n_prompts"]) == (3, 32)
    assert set(cal["methods"]) == {"a", "b", "c"}
    assert cal["false_positive"]["rate"] == max(r["aa_false_positive"]["rate"] for r in cal["methods"].values())
    assert cal["false_positive"]["rate"] <= 0.1
    ab, ac = cal["pairs"]
    assert not ab["resolved"] and ab["seeds_needed"] is None  # 0.02 apart: beyond 6 seeds
    assert ac["resolved"] and ac["seeds_needed"] is None and ac["power_at_diff"] > 0.9
    assert 0 < cal["min_detectable"] < 0.5
    text = calibration_text(cal)
    assert "3 seeds × 32 prompts" in text and "a vs b (+0.020): more than 6" in text
    one_seed = comparison_calibration({"a": tables["a"][:1]}, [], n_sim=10)
    assert not one_seed["available"] and calibration_text(one_seed).startswith("No calibration: 1 seed(s)")


# --- the A/A bench (`alignbench.bench.calibration`) ---------------------------------------------


def test_every_split_of_six_seeds_into_halves_once():
    from alignbench.bench.calibration import seed_splits

    splits = seed_splits(6)
    assert len(splits) == 10  # C(6, 3) / 2: a split and its mirror are the same A/A comparison
    assert all(sorted(a + b) == list(range(6)) and len(a) == len(b) == 3 and 0 in a for a, b in splits)
    assert len(set(splits)) == 10


def test_aa_on_a_table_whose_seeds_are_identical_never_differs():
    from alignbench.bench.calibration import aa_on_table

    row = np.r_[np.ones(12), np.zeros(4)]
    out = aa_on_table(np.tile(row, (4, 1)), n_boot=200, n_sims=50)
    assert out["splits"] == 3 and out["n_seeds"] == 4 and out["per_seed_win_rate"] == [0.75] * 4
    assert out["p_report"] == [1.0] * 3 and out["fp_report"]["rate"] == 0.0 and out["seed_sd"] == 0.0
    assert out["simulated_fp_report"]["n_sim"] == 50


def test_the_simulated_aa_table_at_ci_size():
    """Small simulation counts (the docs' table uses 1000 A/A comparisons per row): the rows, their
    rates in [0, 1], the true means of the two mixes (0.8647 and 0.6829 by Monte Carlo: the collapsing
    mix is 0.75 x its unimodal part + 0.25 x 0.25), and the Markdown table a reader reruns."""
    from alignbench.bench.calibration import MIXES, markdown, run, true_mean

    assert true_mean(MIXES[0]) == pytest.approx(0.8647, abs=2e-3)
    assert true_mean(MIXES[1]) == pytest.approx(0.6829, abs=2e-3)
    rows = run(n_sims=20, n_boot=200, n_prompts=16, seeds=(2, 3))
    assert [(r["mix"], r["n_seeds"]) for r in rows] == [(m.name, k) for m in MIXES for k in (2, 3)]
    for r in rows:
        for key in ("fp_bootstrap", "fp_seed_t", "fp_report", "cover_bootstrap", "cover_report"):
            assert 0.0 <= r[key]["low"] <= r[key]["rate"] <= r[key]["high"] <= 1.0
        assert r["fp_report"]["rate"] <= min(r["fp_bootstrap"]["rate"], r["fp_seed_t"]["rate"]) + 1e-12
        assert r["cover_report"]["rate"] >= r["cover_bootstrap"]["rate"]  # the hull only widens
    assert len(markdown(rows).splitlines()) == 2 + 4


@pytest.mark.slow
def test_empirical_aa_trains_four_seeds_and_splits_them():
    from alignbench.bench.calibration import trained_aa
    from helpers import FAST

    out = trained_aa(4, ["method=dpo", *FAST, "threads=1"], n_boot=200)
    assert out["method"] == "dpo" and out["n_seeds"] == 4 and out["splits"] == 3 and len(out["seconds"]) == 4
    assert len(out["p_report"]) == 3 and all(0 < p <= 1 for p in out["p_report"])


@pytest.mark.parametrize("argv, message", [
    (["--train", "5", "method=dpo"], "--train 5: needs an even number of seeds, at least 4"),
    (["method=dpo"], "method=dpo: train overrides need --train 2K"),
    (["--train", "4", "method.lr=-1"], "method.lr=-1: must be > 0"),
])
def test_calibrate_refuses_bad_input_in_one_line(argv, message, capsys):
    from alignbench.cli import run_command

    with pytest.raises(SystemExit) as exit_info:
        run_command("calibrate", argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("alignbench: error: " + message) and err.count("\n") == 1
