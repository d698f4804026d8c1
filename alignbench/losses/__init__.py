"""Preference objectives: pure functions of per-sequence log-probabilities (no models, no I/O)."""
