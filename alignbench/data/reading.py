"""Reading preference rows: a hub data set (`datasets.load_dataset`) or a local .jsonl/.json/.parquet/.csv
file becomes a list of plain dicts, capped at `data.max_rows`. A local file that cannot be decoded
or parsed (not UTF-8, binary, compressed, an array where lines were expected, a broken parquet
file) is one DataError line naming the file, the line or byte, and what was expected. What to read is a
`DataSource`, built from the `data=` config by training/settings.py."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from alignbench.data.records import DataError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass(frozen=True)
class DataSource:
    """Where a hub or local data set's rows come from and how they split: a `data=` config,
    built once by `training.settings.data_source` (every value is the config's)."""

    source: str  # hub | local
    path: str  # a hub id, or a local file
    format: str  # auto | pairs | hh | chat | unpaired
    split: str | None  # hub: the training split (None: 'train', or the only one)
    eval_split: str | None  # hub: the split held out (halved into validation and test)
    subset: str | None  # hub: the data set's configuration name
    max_rows: int | None  # cap on the rows read (None: all)
    max_row_chars: int | None  # rows longer than this are dropped before parsing (None: no limit)
    validation_fraction: float  # prompts held out for validation when there is no eval_split
    test_fraction: float


def read_rows(source: DataSource) -> list[dict]:
    """Rows of `source.split` (hub) or of the local file, capped at `source.max_rows`."""
    return read_split(source, source.split)


def read_split(source: DataSource, split: str | None) -> list[dict]:
    """Like `read_rows` but for the named split (e.g. `source.eval_split`)."""
    if source.source == "hub":
        return _read_hub(source.path, source.subset, split, source.max_rows)
    if source.source == "local":
        rows = _read_local(Path(source.path).expanduser())
        return rows if source.max_rows is None else rows[: source.max_rows]
    raise DataError(f"data.source must be 'hub' or 'local' here, got {source.source!r}")


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
    if path.suffix == ".parquet":
        rows = _read_parquet(path)
    elif path.suffix == ".csv":  # every cell is text; an empty cell is "" (so a blank response counts as empty_response)
        import pandas as pd

        try:
            rows = pd.read_csv(io.StringIO(_utf8_text(path)), dtype=str, keep_default_na=False).to_dict("records")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise DataError(f"{path}: not readable as CSV ({_first_line(e)}); expected a header row "
                            "and comma-separated columns") from None
    elif path.suffix == ".json":
        rows = _read_json(path, _utf8_text(path))
    else:
        rows = _read_json_lines(path, _utf8_text(path))
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i + 1} is a {type(row).__name__}, expected an object")
    return rows


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# Signatures of files that are not text, and what to do about each.
_NOT_TEXT = ((b"\x1f\x8b", "gzip-compressed data; decompress it first (gunzip -c FILE > rows.jsonl)"),
             (b"PAR1", "a parquet file; name it .parquet"),
             (b"PK\x03\x04", "a zip archive; extract the data file from it"))


def _utf8_text(path: Path) -> str:
    """The file's text, or a one-line DataError naming the byte offset (and line) where it stops being
    UTF-8 text: compressed or binary data, or another encoding such as latin-1."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    for magic, what in _NOT_TEXT:
        if data.startswith(magic):
            raise DataError(f"{path}: byte 0: {what}; expected UTF-8 text")
    head = data[: 1 << 16]
    control = [i for i, b in enumerate(head) if b < 0x20 and b not in (0x09, 0x0A, 0x0D)]
    if control and (0 in head or len(control) > len(head) // 100):  # text has no NUL and few control bytes
        raise DataError(f"{path}: byte {control[0]}: binary data (control byte 0x{head[control[0]]:02x}); "
                        "expected UTF-8 text")
    try:
        return data.decode("utf-8-sig")  # a leading byte-order mark is not part of the first row
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line}, byte {e.start}: 0x{data[e.start]:02x} is not UTF-8; expected UTF-8 text "
                        "(another encoding, e.g. latin-1? convert it: iconv -f latin1 -t utf-8 FILE > rows.jsonl)"
                        ) from None


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()  # nested message lists stay plain lists/dicts
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({_first_line(e)})") from None


def _read_json(path: Path, text: str) -> list:
    """A .json file: one JSON list of objects, or JSON lines."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        return _read_json_lines(path, text)  # a .json file holding JSON lines
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of objects or JSON lines, got a {type(rows).__name__}")
    return rows


def _read_json_lines(path: Path, text: str) -> list[dict]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == 1 and line.strip() == "[" or line.lstrip().startswith("[{"):
                raise DataError(f"{path}:{lineno}: a JSON array; expected one JSON object per line "
                                "(JSON lines; an array belongs in a .json file)") from None
            raise DataError(f"{path}:{lineno}: invalid JSON at column {e.colno} ({e.msg}); "
                            "expected one JSON object per line") from None
        if not isinstance(row, dict):
            what = "a JSON array" if isinstance(row, list) else f"a JSON {type(row).__name__}"
            raise DataError(f"{path}:{lineno}: {what}; expected one JSON object per line")
        rows.append(row)
    return rows
