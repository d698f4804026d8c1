"""Content-keyed disk caches: a stage's output is stored under a hash of everything that determines it.

A changed input (model, data, max length, seed, code version of the stage) gives a new key and
so a miss; an unchanged one is a hit. Writes are atomic (temp dir + rename) so concurrent
workers never read a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def _plain(obj: Any) -> Any:
    if isinstance(obj, DictConfig) or OmegaConf.is_config(obj):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (configs are resolved first)."""
    blob = json.dumps([_plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def tensor_digest(tensors: dict) -> str:
    """A hash of the bytes of every tensor in a dict (the data a cached computation read)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name]
        if hasattr(value, "numpy"):
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def records_digest(records) -> str:
    """A hash of a list of dataclass records' fields (the text a cached computation read)."""
    import dataclasses

    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(dataclasses.astuple(r)).encode())
    return h.hexdigest()[:16]


def entry_dir(cache_dir: str | Path, kind: str, key: str) -> Path:
    return Path(cache_dir) / kind / key


def lookup(cache_dir: str | Path, kind: str, key: str) -> Path | None:
    """The entry's directory if it is complete, else None."""
    path = entry_dir(cache_dir, kind, key)
    return path if (path / ".complete").exists() else None


def store(cache_dir: str | Path, kind: str, key: str, write) -> Path:
    """Create an entry by calling `write(tmp_dir)`, then publish it atomically."""
    final = entry_dir(cache_dir, kind, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        write(tmp)
        (tmp / ".complete").write_text("ok")
        try:
            os.rename(tmp, final)
        except OSError:  # another worker published the same entry first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def cached(cache_dir: str | Path, kind: str, key: str, write) -> tuple[Path, bool]:
    """(entry dir, hit?) — computes and stores the entry on a miss."""
    hit = lookup(cache_dir, kind, key)
    if hit is not None:
        return hit, True
    return store(cache_dir, kind, key, write), False
