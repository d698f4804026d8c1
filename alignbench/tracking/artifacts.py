"""Where a run's artifacts are written: straight into the run's artifact directory when the store
keeps artifacts on this machine (a `file://` URI or a plain path: the default of a SQLite or
file store), otherwise into a temporary directory uploaded in one `log_artifacts` call (an MLflow
server, S3, ...). Writing in place saves a second write of every file (a policy's weights
included) and the run read-back MLflow does to find where a run's artifacts go.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

log = logging.getLogger(__name__)

SAMPLES_ARTIFACT = "eval_samples.json"  # a run's per-prompt evaluation table


def local_dir(artifact_uri: str | None) -> Path | None:
    """The directory of a run's artifacts when it is on this machine's file system, else None."""
    if not artifact_uri:
        return None
    scheme = urlparse(artifact_uri).scheme
    if scheme == "file" or len(scheme) <= 1:  # a plain path ("" or a Windows drive letter)
        from mlflow.utils.file_utils import local_file_uri_to_path

        return Path(local_file_uri_to_path(artifact_uri))
    return None


def write_files(out: Path, documents: dict, tables: dict) -> None:
    """`documents` {name.yaml|name.json: object} and `tables` {name.json: list of row dicts} as files
    in `out`, the tables in `MlflowClient.log_table`'s format (pandas "split" JSON)."""
    for name, obj in documents.items():
        if name.endswith((".yaml", ".yml")):
            import yaml

            text = yaml.dump(obj, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)  # libyaml: ~5x faster
        else:
            text = json.dumps(obj, indent=2, default=str)
        (out / name).write_text(text)
    if tables:
        import pandas as pd

        for name, rows in tables.items():
            pd.DataFrame(rows).to_json(out / name, orient="split", index=False, date_format="iso")


def load_samples(client, run_id: str) -> pd.DataFrame | None:
    """A run's eval samples table (`MlflowClient.log_table` JSON: columns + data), or None."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, SAMPLES_ARTIFACT, tmp)
        except Exception as exc:  # noqa: BLE001 — missing artifact, unreachable store
            log.warning("run %s: no %s (%s)", run_id, SAMPLES_ARTIFACT, exc)
            return None
        obj = json.loads(Path(path).read_text())
    return pd.DataFrame(obj["data"], columns=obj["columns"])
