"""alignbench.tracking.mlflow_runs: the tracker's background writer queues metrics off the hot path,
flushes them before the run ends, and hands a write error back to the caller."""

from __future__ import annotations

import pytest


def test_metrics_are_logged_async_and_flushed_before_the_run_ends(workdir, monkeypatch):
    """train/* metrics go onto the tracker's queue (no wait on the hot path) and are all in the
    store once the run has ended (tracking.finish flushes before set_terminated). The writer is
    held back until the 50 steps are logged, so nothing here depends on timing."""
    import threading

    import mlflow

    from alignbench.tracking import mlflow_runs as tracking

    gate = threading.Event()
    real_write = tracking.MlflowTracker._write

    def gated_write(self, kind, items):
        gate.wait()
        real_write(self, kind, items)

    monkeypatch.setattr(tracking.MlflowTracker, "_write", gated_write)
    with tracking.tracked_run("async-check", async_logging=True) as tracker:
        for step in range(1, 51):
            tracker.log_metrics({"train/loss": 1.0 / step, "train/lr": 1e-3}, step)
        run_id = tracker.run_id
        assert mlflow.MlflowClient().get_metric_history(run_id, "train/loss") == []  # queued, not written
        gate.set()
    assert tracker.pending == 0
    history = mlflow.MlflowClient().get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 51))
    assert mlflow.get_run(run_id).info.status == "FINISHED"


def test_a_write_error_in_the_background_reaches_the_caller(workdir, monkeypatch):
    from alignbench.tracking import mlflow_runs as tracking

    def failing_write(self, kind, items):
        raise RuntimeError("store unavailable")

    with pytest.raises(RuntimeError, match="store unavailable"):
        with tracking.tracked_run("async-error", async_logging=True) as tracker:
            monkeypatch.setattr(tracking.MlflowTracker, "_write", failing_write)
            tracker.log_metrics({"train/loss": 1.0}, 1)
            tracker.flush()
