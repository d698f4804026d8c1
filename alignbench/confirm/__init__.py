"""Confirmation: each method's selected trial retrained on fresh seeds and judged on the test prompts,
compared in full or raced seed by seed. The [seeds x prompts] tables (`tables`), the race's stopping
rule (`racing`), the comparison and its verdict behind one call (`comparison.compare`), and the
verdict's calibration at the comparison's own design (`calibration`), all read one `ConfirmSettings`
(`settings`). Pure functions of tables: no MLflow, no Optuna, no files."""
