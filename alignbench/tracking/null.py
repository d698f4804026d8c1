"""The in-memory tracker: keeps what a run would log (params, tags, metrics, artifacts) in plain
attributes, for tests, benchmarks and `alignbench train tracking.enabled=false`."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path


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

    def log_dir(self, local_dir, artifact_path: str) -> None:
        """Records each file's size under `artifact_path/` (the files themselves are not kept)."""
        for f in sorted(Path(local_dir).rglob("*")):
            if f.is_file():
                self.artifacts[f"{artifact_path}/{f.relative_to(local_dir).as_posix()}"] = f.stat().st_size

    @contextlib.contextmanager
    def artifact_dir(self, artifact_path: str = ""):
        """A temporary directory recorded as by `log_dir` when the block ends."""
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
            self.log_dir(tmp, artifact_path)

    def list_artifacts(self, path: str) -> list[str]:
        return sorted({k[: k.index("/", len(path) + 1)] if "/" in k[len(path) + 1:] else k
                       for k in self.artifacts if k.startswith(path + "/")})

    def delete_artifacts(self, path: str) -> bool:
        for k in [k for k in self.artifacts if k == path or k.startswith(path + "/")]:
            del self.artifacts[k]
        return True
