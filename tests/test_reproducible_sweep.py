"""Item 1 of issue 21: with the same seeds and `sweep.n_workers`, two sweeps from scratch give the
same trial params, selections and confirmation values, whichever worker finishes first."""

from __future__ import annotations

import optuna
import pytest

from alignbench.config import compose
from alignbench.sweep import run as run_mod
from helpers import TINY

SWEEP = ["sweep=smoke", "sweep.methods=[dpo,ipo]", "sweep.n_trials=4", "sweep.n_workers=2",
         "sweep.confirm_seeds=1"]


def _record(folder, monkeypatch) -> tuple[dict, dict]:
    """Sweep in `folder`: (what the summary says per method, less run ids; every trial's params and values)."""
    monkeypatch.chdir(folder)
    summary = run_mod.run_sweep(compose([*SWEEP, *TINY]), overrides=list(TINY))
    picked = {}
    for m, e in summary["methods"].items():
        best = {k: v for k, v in e["best"].items() if k != "mlflow_run_id"}
        conf = {k: e["confirmation"][k] for k in ("selected_trial", "params_digest", "seeds", "win_rates",
                                                   "mean_win_rate")}
        picked[m] = {"best": best, "confirmation": conf, "complete": e["complete"], "pruned": e["pruned"]}
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "sweeps.journal")))
    trials = {s.study_name: [(t.number, t.state.name, t.params, t.values) for t in
                             optuna.load_study(study_name=s.study_name, storage=storage).trials]
              for s in optuna.get_all_study_summaries(storage)}
    return picked, trials


@pytest.mark.slow
def test_two_sweeps_from_scratch_agree(tmp_path, monkeypatch, shared_cache):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _record(tmp_path / "a", monkeypatch)
    second = _record(tmp_path / "b", monkeypatch)
    assert first[0] == second[0]
    assert first[1] == second[1]
    assert sum(len(v) for v in first[1].values()) >= 10  # 4 trials x 2 methods, 1 confirmation each
