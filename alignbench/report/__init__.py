"""Report: `reading` a finished sweep (MLflow runs, Optuna studies, eval samples), the `analysis`
(best trials, paired tests, length control, importances), `figures`, and `rendering` to HTML,
Markdown and CSV; `build.build_report` runs those steps in order."""
