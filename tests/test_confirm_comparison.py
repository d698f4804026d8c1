"""`alignbench.confirm`'s one interface: `ConfirmSettings` as a sweep logs it and its report reads it
back, and `compare(tables, settings)` choosing the full comparison or the race, with its notes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alignbench.confirm.comparison import NO_RESULTS, compare, confirmation_statistics
from alignbench.confirm.settings import ConfirmSettings
from alignbench.confirm.tables import MethodTables


def _tables(method: str, quality: float, seeds=(1, 2, 3), n_prompts: int = 6) -> MethodTables:
    """A method whose win indicator on each (seed, prompt) is 1 with probability `quality`."""
    rng = np.random.default_rng(abs(hash((method, seeds))) % 2**32)
    wins = (rng.random((len(seeds), n_prompts)) < quality).astype(float)
    return MethodTables(method, {"win": pd.DataFrame(wins, index=list(seeds), columns=range(n_prompts))},
                        {s: f"run-{method}-{s}" for s in seeds})


@pytest.mark.parametrize("settings", [
    ConfirmSettings(mode="race", seeds=4, min_seeds=3, min_effect=0.1, spending="bonferroni", futility=0.2,
                    rng_seed=7),
    ConfirmSettings(mode="full", seeds=3, rng_seed=11)])
def test_the_report_reads_back_the_settings_the_sweep_logged(settings):
    """MLflow keeps params as strings; a race is replayed with the sweep's seed, full confirmation's
    bootstrap with the report's own."""
    logged = {k: str(v) for k, v in settings.logged_params().items()} | {"sweep.seed": str(settings.rng_seed)}
    report_seed = 11
    assert ConfirmSettings.from_logged(logged, report_seed) == settings
    assert ("sweep.race.futility" in logged) == settings.raced


def test_older_sweeps_read_back_as_they_ran():
    """Before `sweep.race.futility` there were no futility stops; without `sweep.confirm_seeds`, no seeds."""
    old_race = {"sweep.confirm": "race", "sweep.confirm_seeds": "5", "sweep.seed": "3"}
    assert ConfirmSettings.from_logged(old_race, 0) == ConfirmSettings(mode="race", seeds=5, futility=0.0, rng_seed=3)
    assert ConfirmSettings.from_logged({}, 4) == ConfirmSettings(mode="full", seeds=0, rng_seed=4)


def test_compare_in_full_keeps_the_methods_on_one_seed_set_and_says_why_not_the_others():
    tables = {"a": _tables("a", 0.8), "b": _tables("b", 0.3), "c": _tables("c", 0.5, seeds=(1, 2))}
    settings = ConfirmSettings(mode="full", seeds=3, rng_seed=0)
    confirmation, verdict, notes = compare(tables, settings)
    assert sorted(confirmation["methods"]) == ["a", "b"] and confirmation["n_seeds"] == 3
    assert len(notes) == 1 and notes[0].startswith("c: confirmation seeds [1, 2] on 6 prompts differ")
    direct = confirmation_statistics({m: tables[m] for m in ("a", "b")}, rng_seed=0)
    assert confirmation["pairwise"] == direct[0]["pairwise"] and verdict == direct[1]
    _, _, notes = compare({m: tables[m] for m in ("a", "b")}, ConfirmSettings(mode="full", seeds=5))
    assert notes == ["The sweep asked for 5 confirmation seeds; 3 finished for every compared method, and only "
                     "those are compared."]
    assert compare({}, settings) == (None, None, [NO_RESULTS])


def test_compare_raced_replays_the_race_and_shows_its_settings():
    tables = {"a": _tables("a", 0.9), "b": _tables("b", 0.1), "c": _tables("c", 0.5, n_prompts=4)}
    settings = ConfirmSettings(mode="race", seeds=3, min_seeds=2, rng_seed=0)
    confirmation, verdict, notes = compare(tables, settings)
    assert sorted(confirmation["methods"]) == ["a", "b"]
    assert notes == ["c: evaluated on other test prompts than a, b, so it is not compared."]
    race = confirmation["race"]
    assert {k: race[k] for k in settings.race_params()} == settings.race_params()
    assert race["max_seeds"] == 3 and race["full_runs"] == 6 and race["finished"]
    assert race["runs"] == sum(r["race_seeds"] for r in confirmation["methods"].values())
    assert verdict["statement"]
