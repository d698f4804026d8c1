"""Tracking: MLflow runs for `train` and for every sweep trial (params, tags, metrics and
artifacts written off the training path), the store set-up, and an in-memory tracker for tests."""
