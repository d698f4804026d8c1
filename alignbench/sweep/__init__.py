"""Sweep: Optuna studies driven directly, one per method: the plan (config and search spaces),
storage and its locks, worker liveness and reaping, trials as tracked runs, several workers,
the live progress table, and the sweep's parent MLflow run."""
