"""Sweep: Optuna studies driven directly, one per method (`run.run_sweep` is the entry point and
describes the whole flow). `plan` reads and checks the sweep config and search spaces; `storage`
opens the studies' storage and holds the budget lock; `studies` makes each study and its sampler;
`liveness` reaps trials whose worker is gone; `budget` counts trials against `n_trials`; `trials`
runs one trial as a tracked run; `workers` loops over trials in one or several processes;
`progress` shows the live table and the summary; `selection` is the best-trial rule (shared with
the report); `parent` finds or creates the sweep's parent MLflow run."""
