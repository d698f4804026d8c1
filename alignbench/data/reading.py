"""Reading preference rows: a hub data set (`datasets.load_dataset`) or a local .jsonl/.json/.parquet/.csv
file becomes a list of plain dicts, capped at `data.max_rows`. Also `cfg_value`, the one way every
data stage reads a `data=` config (dict or OmegaConf node)."""

from __future__ import annotations

import json
from pathlib import Path

from alignbench.data.records import DataError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def cfg_value(data_cfg, key: str, default=None):
    """`data_cfg.get(key)` for dicts and OmegaConf nodes; a '???' value is a one-line DataError."""
    try:
        value = data_cfg.get(key, default)
    except Exception as e:  # omegaconf.MissingMandatoryValue for `path: ???`
        raise DataError(f"data.{key} is required but not set ({type(e).__name__})") from None
    return default if value is None else value


def read_rows(data_cfg) -> list[dict]:
    """Rows of `data_cfg.split` (hub) or of the local file, capped at `data_cfg.max_rows`."""
    return read_split(data_cfg, cfg_value(data_cfg, "split"))


def read_split(data_cfg, split: str | None) -> list[dict]:
    """Like `read_rows` but for the named split (e.g. `data_cfg.eval_split`)."""
    source = cfg_value(data_cfg, "source")
    path = cfg_value(data_cfg, "path")
    max_rows = cfg_value(data_cfg, "max_rows")
    if path is None:
        raise DataError("data.path is required but not set")
    if source == "hub":
        return _read_hub(str(path), cfg_value(data_cfg, "subset"), split, max_rows)
    if source == "local":
        rows = _read_local(Path(str(path)).expanduser())
        return rows if max_rows is None else rows[: int(max_rows)]
    raise DataError(f"data.source must be 'hub' or 'local' here, got {source!r}")


def _read_hub(path: str, subset: str | None, split: str | None, max_rows: int | None) -> list[dict]:
    import datasets

    where = f"{path!r}" + (f" (subset {subset!r})" if subset else "")
    try:
        ds = datasets.load_dataset(path, subset, split=split)
    except Exception as e:  # not found, offline, unknown split: one line naming the dataset
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"could not load dataset {where} split {split!r}: {type(e).__name__}: {msg}") from None
    if isinstance(ds, datasets.DatasetDict):  # split=None: take 'train', or the only split
        if "train" in ds:
            ds = ds["train"]
        elif len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataError(f"dataset {where} has splits {sorted(ds)}; set data.split")
    if max_rows is not None:
        ds = ds.select(range(min(int(max_rows), len(ds))))
    return ds.to_list()


def _read_local(path: Path) -> list[dict]:
    if path.suffix not in LOCAL_SUFFIXES:
        raise DataError(f"unknown data file type {path.suffix!r} for {path}; use one of {', '.join(LOCAL_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix == ".jsonl":
        rows = _read_json_lines(path)
    elif path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            rows = _read_json_lines(path)  # a .json file holding JSON lines
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of objects or JSON lines, got a {type(rows).__name__}")
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()  # nested message lists stay plain lists/dicts
    else:  # .csv: every cell is text; an empty cell is "" (so a blank response counts as empty_response)
        import pandas as pd

        rows = pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i} is a {type(row).__name__}, expected an object")
    return rows


def _read_json_lines(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
    return rows
