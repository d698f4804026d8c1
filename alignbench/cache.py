"""Content-keyed disk caches: a stage's output is stored under a hash of everything that determines it.

A changed input (model, data, max length, seed, code version of the stage) gives a new key and
so a miss; an unchanged one is a hit. Writes are atomic (temp dir + rename) so concurrent
workers never read a half-written entry. Each entry's `.complete` marker records the size and
SHA-256 of every file in it; an entry whose files no longer match (truncated, edited, written by
an older alignbench) or that fails to load is a miss: a warning names it, it is removed and rebuilt.
Under DDP (a `torch.distributed` group is initialised) rank 0 looks up or builds each entry while
the other ranks wait, then they read it: no two processes of one trial build the same entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

MARKER = ".complete"
_VERIFIED: set = set()  # (entry dir, marker mtime) checked in this process: the hashes are read once


def _process_group():
    """torch.distributed when this process is one of several of a trial, else None (torch not imported
    for it: a process that never imported torch.distributed runs alone)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist if dist.get_world_size() > 1 else None


_ORDERED = [False]  # inside main_process_first already: a nested lookup needs no barrier of its own


@contextlib.contextmanager
def main_process_first():
    """Under DDP: rank 0 runs the block first (looks up, builds, publishes), the others after it (and
    find the entry published). Every rank reaches the same lookups in the same order: one barrier each."""
    dist = None if _ORDERED[0] else _process_group()
    if dist is not None and dist.get_rank() != 0:
        dist.barrier()
    _ORDERED[0], outer = True, _ORDERED[0]
    try:
        yield
    finally:
        _ORDERED[0] = outer
    if dist is not None and dist.get_rank() == 0:
        dist.barrier()


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


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """A hash of a file's bytes: the same file in another venv or after a reinstall has the same key."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


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


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(entry: Path) -> dict:
    """{relative path: {"size", "sha256"}} of every file of an entry (its marker aside)."""
    files = sorted(p for p in entry.rglob("*") if p.is_file() and p.name != MARKER)
    return {str(p.relative_to(entry)): {"size": p.stat().st_size, "sha256": _file_sha256(p)} for p in files}


def check_entry(entry: Path) -> str | None:
    """What is wrong with a published entry, or None when every recorded file has its size and hash."""
    marker = entry / MARKER
    try:
        stamp = (str(entry), marker.stat().st_mtime_ns)
        if stamp in _VERIFIED:
            return None
        recorded = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no integrity record in its .complete marker (written by an older alignbench?)"
    for name, want in recorded.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, {want['size']} were written"
        if _file_sha256(path) != want["sha256"]:
            return f"{name} does not match the SHA-256 written with it"
    _VERIFIED.add(stamp)
    return None


def discard(entry: Path, problem: str) -> None:
    """Warn, then remove a broken entry (moved aside first: a concurrent worker sees it whole or not at all)."""
    log.warning("WARNING: cache entry %s is unusable (%s); rebuilding it", entry, problem)
    trash = entry.parent / f".discarded-{entry.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(entry, trash)
    except OSError:  # another worker moved it first
        return
    shutil.rmtree(trash, ignore_errors=True)


def lookup(cache_dir: str | Path, kind: str, key: str) -> Path | None:
    """The entry's directory if it is complete and intact, else None (a broken entry is discarded)."""
    path = entry_dir(cache_dir, kind, key)
    if not (path / MARKER).exists():
        return None
    problem = check_entry(path)
    if problem is not None:
        discard(path, problem)
        return None
    return path


def store(cache_dir: str | Path, kind: str, key: str, write) -> Path:
    """Create an entry by calling `write(tmp_dir)`, record its files' sizes and hashes, then publish it atomically."""
    final = entry_dir(cache_dir, kind, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps({"kind": kind, "key": key, "files": manifest(tmp)}, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:  # another worker published the same entry first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def cached(cache_dir: str | Path, kind: str, key: str, write) -> tuple[Path, bool]:
    """(entry dir, hit?) — computes and stores the entry on a miss (a broken entry is a miss)."""
    with main_process_first():
        return _cached(cache_dir, kind, key, write)


def _cached(cache_dir: str | Path, kind: str, key: str, write) -> tuple[Path, bool]:
    hit = lookup(cache_dir, kind, key)
    if hit is not None:
        return hit, True
    return store(cache_dir, kind, key, write), False


def load_cached(cache_dir: str | Path, kind: str, key: str, write, read: Callable[[Path], Any]) -> tuple[Any, Path, bool]:
    """(read(entry dir), entry dir, hit?): `cached`, and an entry that passes its check but fails to
    load is a miss too (warned about, removed, rebuilt, read again)."""
    with main_process_first():
        return _load_cached(cache_dir, kind, key, write, read)


def _load_cached(cache_dir, kind: str, key: str, write, read: Callable[[Path], Any]) -> tuple[Any, Path, bool]:
    path, hit = cached(cache_dir, kind, key, write)  # nested: no second barrier
    if hit:
        try:
            return read(path), path, True
        except Exception as exc:
            discard(path, f"failed to load: {type(exc).__name__}: {exc}")
        path = store(cache_dir, kind, key, write)
    return read(path), path, False
