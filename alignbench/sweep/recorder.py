"""The sweep's one door to MLflow. Every run the sweep finds, creates, opens, tags, ends KILLED or
deletes, every artifact it prunes and every eval sample it reads goes through a `Recorder` bound to
the sweep's tracking settings (`Plan.recorder`); no other module of sweep/ imports mlflow or
`alignbench.tracking.mlflow_runs`. The layout it records: docs/tracking.md."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from alignbench.tracking import mlflow_runs as tracking
from alignbench.tracking import store


@dataclass(frozen=True)
class Recorder:
    """`uri`: the tracking URI (None: MLflow's current one); `async_logging`: whether a trial's run
    logs from a background thread."""

    uri: str | None = None
    async_logging: bool = True

    def check_store(self) -> None:
        """Refuse in one line a SQLite store file that SQLite cannot read, before anything is written."""
        store.check_store_file(self.uri)

    def find_runs(self, experiment: str, filter_string: str) -> list:
        """The experiment's runs matching an MLflow filter string, oldest first."""
        return tracking.search_runs(experiment, filter_string, self.uri)

    def create_run(self, experiment: str, run_name: str, tags: dict) -> str:
        return tracking.create_run(experiment, run_name, tags, self.uri)

    def delete_run(self, run_id: str) -> None:
        tracking.delete_run(run_id, self.uri)

    def set_tags(self, run_id: str, tags: dict) -> None:
        tracking.set_run_tags(run_id, tags, self.uri)

    def mark_killed(self, run_id: str, reason: str) -> None:
        """End a run its process left RUNNING: KILLED, with `reason`."""
        tracking.mark_killed(run_id, reason, self.uri)

    def open_run(self, run_id: str):
        """A tracker on an existing run, to read or prune its artifacts (the run is not reopened)."""
        return tracking.open_tracker(run_id, self.uri)

    def delete_artifacts(self, run_id: str, path: str) -> bool:
        return tracking.delete_artifacts(run_id, path, self.uri)

    def tracked_run(self, experiment: str, run_name: str, *, tags: dict, run_id: str | None = None,
                    parent_run_id: str | None = None,
                    async_logging: bool | None = None) -> contextlib.AbstractContextManager:
        """A run (a new one, or `run_id` reopened) whose final status says how the block ended."""
        return tracking.tracked_run(experiment, run_name=run_name, parent_run_id=parent_run_id, tags=tags,
                                    async_logging=self.async_logging if async_logging is None else async_logging,
                                    uri=self.uri, run_id=run_id)

    def log_params_once(self, tracker, params: dict, created: bool) -> None:
        """Params are immutable: logged on a run this call `created` or that has none yet. Workers
        opening a new sweep together can each find it without params and race its creator to write
        them (a unique-key violation): whoever wrote first, they are there."""
        from mlflow.exceptions import MlflowException

        if not created and tracker.client.get_run(tracker.run_id).data.params:
            return
        try:
            tracker.log_params(params)
        except MlflowException:
            if not tracker.client.get_run(tracker.run_id).data.params:
                raise

    def show_columns(self, tracker, params: list[str]) -> str:
        """The run's experiment gets the saved view with `params` as columns; returns its id."""
        experiment_id = tracker.client.get_run(tracker.run_id).info.experiment_id
        store.set_view(tracker.client, experiment_id, sorted(params))
        return experiment_id

    def samples(self, run_id: str):
        """A finished run's eval samples (a DataFrame; None without them)."""
        from mlflow import MlflowClient

        from alignbench.tracking.artifacts import load_samples

        tracking.set_uri(self.uri)
        return load_samples(MlflowClient(), run_id)
