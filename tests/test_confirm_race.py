"""Racing the confirmation seeds (`sweep.confirm=race`): the stopping rule on hand-made per-seed
tables, its alpha spending, the config checks, and a smoke-sized raced sweep with its report."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from omegaconf import OmegaConf

from alignbench.config import ConfigError, compose
from alignbench.confirm.racing import look_levels, look_n_boot, race, spent
from alignbench.confirm.settings import ConfirmSettings
from alignbench.sweep import plan as plan_mod
from helpers import TINY_NO_EVAL as TINY

P = 64  # prompts per seed in the hand-made tables


def table(per_seed: list[float]) -> np.ndarray:
    """One method's (seeds, P) win table whose seed s has win rate per_seed[s] exactly (wins first)."""
    rows = []
    for rate in per_seed:
        k = round(rate * P)
        rows.append(np.r_[np.ones(k), np.zeros(P - k)])
    return np.array(rows)


def shuffled(per_seed: list[float], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([rng.permutation(row) for row in table(per_seed)])


# --- alpha spending -----------------------------------------------------------------------------


def test_obrien_fleming_levels_add_up_to_alpha_and_grow_towards_the_last_look():
    levels = look_levels(0.05, 2, 5)
    assert list(levels) == [2, 3, 4, 5]
    assert sum(levels.values()) == pytest.approx(0.05)
    assert levels[2] == pytest.approx(2 - 2 * 0.9990296, abs=2e-5)  # 2 - 2 Phi(1.95996 / sqrt(0.4)) = 0.00194
    assert [round(v, 4) for v in levels.values()] == [0.0019, 0.0095, 0.017, 0.0216]
    assert spent(1.0, 0.05, "obrien_fleming") == pytest.approx(0.05)


def test_bonferroni_splits_alpha_evenly_over_the_looks_not_the_seeds():
    assert look_levels(0.05, 2, 5, "bonferroni") == {k: pytest.approx(0.0125) for k in (2, 3, 4, 5)}
    assert look_levels(0.05, 3, 3, "bonferroni") == {3: pytest.approx(0.05)}  # one look: all of alpha
    with pytest.raises(ValueError):
        look_levels(0.05, 4, 3)


def test_a_look_gets_enough_replicates_to_reach_its_smallest_holm_threshold():
    level, pairs = 0.0019, 10
    n = look_n_boot(level, pairs)
    assert 2 / (n + 1) <= level / pairs  # the smallest bootstrap p-value passes Holm's first threshold
    assert look_n_boot(0.05, 1) == 2000  # the report's replicates when they suffice


# --- the stopping rule --------------------------------------------------------------------------


def test_a_clear_winner_stops_at_the_first_look_its_seed_t_test_allows():
    """0.703, 0.672, 0.703 apart on seeds 1-3 (64 prompts): at 2 seeds the t test on the per-seed
    differences (1 degree of freedom, t = 44) gives p = 0.0145, above look 2's level 0.0019, so the pair
    stays open although the bootstrap's p is at its floor; at 3 seeds (t = 66, 2 df) p = 0.00023 < 0.0095."""
    tables = {"a": table([0.9, 0.92, 0.9, 0.9, 0.9]), "b": table([0.2, 0.25, 0.2, 0.2, 0.2])}
    r = race(tables, max_seeds=5, min_seeds=2)
    assert r.finished and r.looks == [2, 3]
    assert r.stops == {"a": (3, "settled: ahead of b"), "b": (3, "settled: behind a")}
    (pair,) = r.pairs
    assert pair["status"] == "ordered" and pair["n_seeds"] == 3 and pair["diff"] == pytest.approx(0.6927, abs=1e-4)
    assert pair["p_seed_t"] == pytest.approx(2.26e-4, rel=0.01)


def test_two_seeds_that_agree_do_not_order_a_pair_at_the_first_look():
    """SimPO and PPO in a default comparison (task seed 1): 0.157 and 0.141 apart on the first two
    seeds, 0.095 on all five, where the report's test gives p = 0.08. The bootstrap alone took the two
    seeds' spread for the seed variance and ordered the pair at look 2 (p < 0.002); with the seed
    t test (p = 0.034 on 1 degree of freedom) it stays open."""
    from alignbench.confirm.racing import _look, look_levels

    simpo, ppo = table([0.641, 0.664, 0.695, 0.598, 0.598]), table([0.484, 0.523, 0.539, 0.566, 0.605])
    level = look_levels(0.05, 2, 5)[2]
    bootstrap_only = _look({"simpo": simpo, "ppo": ppo}, {"simpo": 2, "ppo": 2}, {}, level, 0.05, 0, seed_t=False)
    assert bootstrap_only[0]["status"] == "ordered" and bootstrap_only[0]["p_holm"] < level
    (row,) = _look({"simpo": simpo, "ppo": ppo}, {"simpo": 2, "ppo": 2}, {}, level, 0.05, 0, seed_t=True)
    assert row["status"] == "open" and row["p_seed_t"] == pytest.approx(0.034, abs=0.01)
    assert race({"simpo": simpo, "ppo": ppo}, max_seeds=5, min_effect=0.05).stops["simpo"][0] > 2


def test_equal_methods_stop_as_equivalent():
    same = [0.5, 0.52, 0.48, 0.5, 0.5]
    r = race({"a": shuffled(same, 1), "b": shuffled(same, 2)}, max_seeds=5, min_seeds=2, min_effect=0.3)
    assert r.finished and r.stops["a"] == (2, "settled: equivalent to b")
    assert r.pairs[0]["status"] == "equivalent" and -0.3 < r.pairs[0]["low"] < r.pairs[0]["high"] < 0.3


def test_a_noisy_pair_runs_to_max_seeds_and_stays_undecided():
    a, b = [0.7, 0.3, 0.7, 0.3, 0.7], [0.3, 0.7, 0.3, 0.7, 0.4]  # seed noise swamps the difference
    r = race({"a": table(a), "b": table(b)}, max_seeds=5, min_seeds=2, min_effect=0.05)
    assert r.finished and r.looks == [2, 3, 4, 5]
    assert r.stops == {"a": (5, "max seeds: undecided vs b"), "b": (5, "max seeds: undecided vs a")}


def test_a_pair_whose_order_is_out_of_reach_stops_for_futility():
    """A difference far below its noise: at 2 seeds its conditional power is tiny, so with
    futility=0.2 it stops there ("out of reach"); without futility stops it runs to max_seeds."""
    a, b = [0.6, 0.3, 0.6, 0.3, 0.6], [0.3, 0.6, 0.3, 0.6, 0.3]  # first two seeds: mean difference 0
    stopped = race({"a": table(a), "b": table(b)}, max_seeds=5, min_effect=0.0, futility=0.2)
    assert stopped.stops == {"a": (2, "settled: out of reach vs b"), "b": (2, "settled: out of reach vs a")}
    assert stopped.pairs[0]["status"] == "futile" and stopped.pairs[0]["conditional_power"] < 0.2
    assert race({"a": table(a), "b": table(b)}, max_seeds=5, min_effect=0.0).stops["a"][0] == 5


def test_a_method_keeps_racing_only_while_one_of_its_pairs_is_open():
    """a is far above b and c; b and c are close: a stops at 4 seeds (b's and c's seed noise leaves
    the t test short of look 3's Holm threshold), b and c race on."""
    noisy_b, noisy_c = [0.45, 0.3, 0.45, 0.3, 0.45], [0.3, 0.45, 0.3, 0.45, 0.35]
    tables = {"a": table([0.95] * 5), "b": table(noisy_b), "c": table(noisy_c)}
    r = race(tables, max_seeds=5, min_seeds=2, min_effect=0.02)
    assert r.stops["a"] == (4, "settled: ahead of b, c")
    assert r.stops["b"][0] == r.stops["c"][0] == 5
    # Given only a's first four seeds (what a race would have run), the replay is the same.
    short = race({**tables, "a": tables["a"][:4]}, max_seeds=5, min_seeds=2, min_effect=0.02)
    assert short.stops == r.stops


def test_the_race_asks_for_the_seeds_its_next_look_needs():
    tables = {"a": table([0.5, 0.4, 0.6]), "b": table([0.4, 0.6])}
    r = race(tables, max_seeds=5, min_seeds=2, min_effect=0.0)
    assert not r.finished and r.looks == [2] and r.needs == {"b": 3}
    assert race({"a": table([0.5]), "b": table([0.5])}, max_seeds=5).needs == {"a": 2, "b": 2}


# --- config -------------------------------------------------------------------------------------


def _plan(*keys: str):
    return plan_mod.plan_sweep(compose(["sweep=smoke", *keys]), overrides=[])


def test_a_race_runs_in_one_worker_process():
    assert (_plan("sweep.confirm=race", "sweep.n_workers=auto").n_workers,
            _plan("sweep.confirm=race", "sweep.n_workers=1").n_workers) == (1, 1)
    with pytest.raises(ConfigError, match=r"sweep.n_workers=2: sweep.confirm=race runs in one worker process"):
        _plan("sweep.confirm=race", "sweep.n_workers=2")
    assert _plan("sweep.confirm=full", "sweep.n_workers=2").n_workers == 2


def test_race_settings_are_read_and_checked():
    p = _plan("sweep.confirm=race", "sweep.confirm_seeds_max=4", "seed=7")
    assert p.confirmation == ConfirmSettings(mode="race", seeds=4, min_seeds=2, min_effect=0.05,
                                             spending="obrien_fleming", futility=0.1, alpha=0.05, rng_seed=7)
    assert p.confirmation.race_params() == {"min_seeds": 2, "min_effect": 0.05, "spending": "obrien_fleming",
                                            "futility": 0.1}
    assert _plan("sweep.confirm=race").confirmation.seeds == 2  # confirm_seeds_max null: confirm_seeds
    full = _plan("sweep.confirm_seeds_max=9").confirmation
    assert (full.mode, full.seeds, full.race_params()) == ("full", 2, {})  # full confirmation ignores the maximum
    for bad, words in (("sweep.confirm=fast", "must be full or race"),
                       ("sweep.race.min_seeds=3", "more than the race's maximum"),
                       ("sweep.race.min_effect=1.5", "in [0, 1)"),
                       ("sweep.race.spending=pocock", "obrien_fleming or bonferroni"),
                       ("sweep.race.futility=1", "in [0, 1)")):
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            _plan("sweep.confirm=race", bad)


# --- a raced smoke sweep and its report ---------------------------------------------------------




def test_a_raced_sweep_stops_early_and_the_report_shows_seeds_and_stop_reasons(workdir):
    from alignbench.report.build import build_report
    from alignbench.sweep import run as run_mod

    keys = ["sweep=smoke", "sweep.n_trials=1", "sweep.pruner.type=none", "sweep.methods=[dpo,ipo]",
            "sweep.confirm=race", "sweep.confirm_seeds_max=3", "sweep.race.min_effect=0.99"]
    summary = run_mod.run_sweep(compose([*keys, *TINY]), overrides=list(TINY), live=False)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("sweep-smoke")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    confirmed = [r for r in runs if r.data.tags.get("alignbench.role") == "confirmation"]
    (parent,) = [r for r in runs if r.data.tags.get("alignbench.role") == "sweep"]
    # The tiny model's DPO and IPO: at the first look, after min_seeds = 2 seeds, their order is out
    # of reach by 3 seeds (the seed t test's interval on 1 degree of freedom is too wide for equivalence).
    assert sorted((r.data.tags["method"], r.data.tags["confirmation.seed"]) for r in confirmed) == [
        ("dpo", "1"), ("dpo", "2"), ("ipo", "1"), ("ipo", "2")]
    for m, other in (("dpo", "ipo"), ("ipo", "dpo")):
        race_entry = summary["methods"][m]["confirmation"]["race"]
        assert race_entry == {"n_seeds": 2, "stop": f"settled: out of reach vs {other}"}
        assert summary["methods"][m]["confirmation"]["status"] == "done"
        assert parent.data.tags[f"race.{m}.n_seeds"] == "2"
        assert parent.data.tags[f"race.{m}.stop"] == f"settled: out of reach vs {other}"
    assert parent.data.params["sweep.confirm"] == "race" and parent.data.params["sweep.race.min_effect"] == "0.99"

    cfg = OmegaConf.create({"tracking": {"uri": None}, "report": {"sweep": "sweep-smoke", "out_dir": "reports"},
                            "seed": 0})
    out = build_report(cfg)
    report = json.loads((out / "summary.json").read_text())
    conf = report["confirmation"]
    assert conf["race"]["runs"] == 4 and conf["race"]["full_runs"] == 6 and conf["race"]["finished"]
    assert {m: (r["race_seeds"], r["race_stop"]) for m, r in conf["methods"].items()} == {
        "dpo": (2, "settled: out of reach vs ipo"), "ipo": (2, "settled: out of reach vs dpo")}
    assert conf["pairwise"][0]["status"] == "futile"
    assert "no method is distinguishable" in report["verdict"]["statement"].lower()
    md = (out / "report.md").read_text()
    assert "| dpo | 2 | settled: out of reach vs ipo |" in md
    html = (out / "report.html").read_text()
    assert "settled: out of reach vs ipo" in html and "α = 0.05 spent over the race" in html


def test_least_seeds_bounds_any_race_by_when_the_reports_test_first_orders_each_pair():
    """race_replay's bound on three methods whose tables repeat on every seed, so only the number of
    seeds decides: A wins every test prompt, C none, E one prompt in 16. The bootstrap misses E's win
    on all 16 k prompts with probability (15/16)^(16k): p = 0.25, 0.09, 0.03 at 2, 3, 4 seeds, so
    the report's test orders E ahead of C first at 4 seeds; A's pairs are ordered at min_seeds (2)."""
    import pandas as pd

    from alignbench.bench.race_replay import replay_tables
    from alignbench.confirm.tables import MethodTables

    seeds, prompts = [1, 2, 3, 4, 5], list(range(16))
    rows = {"A": [1.0] * 16, "C": [0.0] * 16, "E": [1.0] + [0.0] * 15}
    tables = {m: MethodTables(m, {"win": pd.DataFrame([row] * 5, index=seeds, columns=prompts)}, {})
              for m, row in rows.items()}
    run_seconds = {"A": 1.0, "C": 2.0, "E": 3.0}
    seconds = {(m, s): run_seconds[m] for m in rows for s in seeds}
    out = replay_tables(tables, seconds, seed=0, min_seeds=2, min_effect=0.0, futility=0.0)
    assert out["full_ordered"] == [("A", "C"), ("A", "E"), ("E", "C")]
    assert out["least"]["seeds"] == {"A": 2, "C": 4, "E": 4}
    assert out["least"]["runs"] == 10 and out["least"]["seconds"] == 2 * 1 + 4 * 2 + 4 * 3
    assert out["least"]["compute_ratio"] == pytest.approx(22 / 30)
    for spending, race_out in out["races"].items():  # a race spends at most alpha: never below the bound
        assert race_out["same_verdict"], spending
        assert race_out["seconds"] >= out["least"]["seconds"], spending
