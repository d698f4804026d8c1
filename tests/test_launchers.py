"""The README's SLURM route without SLURM: Hydra's submitit launcher with submitit's local executor
(`hydra/launcher=submitit_local`: the same launcher code as `submitit_slurm`, jobs started as local
processes) starts identical sweep workers that share one budget, as the joblib launcher does
(tests/test_sweep.py)."""

from __future__ import annotations

import subprocess

import pytest
from optuna.trial import TrialState
from helpers import NO_CONFIRM, TINY, assert_consistent, parent_runs, studies, sweep_cli


@pytest.mark.slow
def test_hydra_submitit_local_launcher_starts_workers_that_share_the_budget(workdir):
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (the `launchers`/`test` extra: fail, never skip)

    cmd, kw = sweep_cli("--multirun", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=30",
                   "hydra.sweep.dir=multirun", "+sweep.worker=0,1", "sweep.batch_trials=2",
                   "sweep=smoke", NO_CONFIRM, "sweep.methods=[dpo]", "sweep.n_trials=4", *TINY,
                   "fault.sleep_per_step=1.0", cwd=workdir)
    kw["env"].pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, **kw)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((workdir / "multirun" / ".submitit").glob("*/*_log.out"))) == 2  # submitit ran 2 jobs
    trials = assert_consistent()
    (s,) = studies().values()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in s.trials) == 4
    assert len({t.user_attrs["alignbench.worker"]["pid"] for _, t in trials}) == 2
    assert len(parent_runs()) == 1 and parent_runs()[0].info.status == "FINISHED"
