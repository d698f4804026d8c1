"""The in-memory tracker: keeps what a run would log (params, tags, metrics, artifacts) in plain
attributes, for tests, benchmarks and `alignbench train tracking.enabled=false`."""

from __future__ import annotations


class NullTracker:
    """Keeps what would be logged in memory (tests, benchmarks, tracking disabled)."""

    def __init__(self):
        self.params: dict = {}
        self.tags: dict = {}
        self.metrics: list[tuple[int, dict]] = []
        self.artifacts: dict[str, object] = {}

    def log_params(self, params: dict) -> None:
        self.params.update(params)

    def set_tags(self, tags: dict) -> None:
        self.tags.update(tags)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_files(self, documents: dict | None = None, tables: dict | None = None) -> None:
        self.artifacts.update(documents or {})
        self.artifacts.update(tables or {})
