"""Where a sweep's Optuna studies live: the storage URL (a journal file or an RDB URL), opening the
storage for the sweep (which repairs a torn journal) or for a reader such as the report, and the
file lock beside a local storage that serialises count-then-ask among this machine's workers."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import random
import re
import time
import warnings
from pathlib import Path

import optuna

# We ask and tell trials ourselves (no Study.optimize) and run the stale-trial check ourselves.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
log = logging.getLogger(__name__)

DEFAULT_JOURNAL = "sweeps.journal"
RDB_ATTEMPTS = 6


def storage_url(storage: str | None) -> str:
    """null → journal file in the working directory; `journal://path`; a bare *.journal path; or an RDB URL."""
    if not storage:
        return f"journal://{Path(DEFAULT_JOURNAL).resolve()}"
    storage = str(storage)
    if storage.startswith("journal://"):
        return f"journal://{Path(storage[len('journal://'):]).expanduser().resolve()}"
    if "://" not in storage:
        return f"journal://{Path(storage).expanduser().resolve()}"
    if storage.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        # SQLAlchemy 2.x reads a bare postgresql:// as psycopg 3; the [postgres] extra installs psycopg2.
        return "postgresql+psycopg2://" + storage[len("postgresql://"):]
    return storage


def journal_path(url: str) -> Path | None:
    """The journal file a storage URL names (`journal://path`, `file:path`, or a bare path); None
    for an RDB URL (`sqlite:///...`, `postgresql://...`)."""
    url = str(url)
    if url.startswith(("journal:", "file:")):
        return Path(re.sub(r"^(journal|file):(//)?", "", url))
    if "://" in url:
        return None
    return Path(url)


def open_storage(url: str):
    """An existing sweep's storage, for reading (optuna.load_study): a JournalStorage for a journal
    file, the URL itself for an RDB (Optuna connects). LookupError when the journal file is missing."""
    path = journal_path(url)
    if path is None:
        return url
    if not path.exists():
        raise LookupError(f"Optuna journal {path} does not exist (run the report where the sweep ran)")
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def make_storage(plan, heartbeat_stale_callback=None):
    """The storage of the sweep `plan` (a journal file is created and repaired first).

    `heartbeat_stale_callback(study, trial)`: run by Optuna's heartbeat check for a trial whose
    worker stopped beating (RDB with `sweep.heartbeat_interval` only).
    """
    path = journal_path(plan.storage)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_journal(str(path))
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    kwargs = {}
    if plan.heartbeat_interval:
        kwargs = dict(heartbeat_interval=int(plan.heartbeat_interval), grace_period=plan.grace_period,
                      heartbeat_stale_trial_callback=heartbeat_stale_callback)
    return _rdb_storage(plan.storage, kwargs)


def _rdb_storage(url: str, kwargs: dict):
    import sqlalchemy.exc

    for attempt in range(RDB_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers started together on a fresh database race to create Optuna's tables (and its
            # alembic_version): one wins, the others see a duplicate; after a pause the schema exists.
            if attempt == RDB_ATTEMPTS - 1:
                raise
            time.sleep(0.5 + random.random())


def repair_journal(path: str) -> bool:
    """Cut a torn last line (a process killed mid-write) off the journal file; True if one was cut.

    Optuna skips a last line without a newline when reading, but the next record it appends is glued
    onto it and from then on the journal no longer loads. Done under Optuna's own journal lock, so a
    write in progress in another process is never mistaken for a torn one.
    """
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return False
    with optuna.storages.journal._file.get_lock_file(optuna.storages.journal.JournalFileSymlinkLock(path)):
        with open(p, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return False
            pos = _after_last_newline(fh, size)
            fh.truncate(pos)
    log.warning("%s: cut a torn last record (%d bytes) left by a process killed mid-write", path, size - pos)
    return True


def _after_last_newline(fh, size: int, chunk: int = 1 << 16) -> int:
    """The offset just past the file's last newline (0 if none), reading backwards from `size`."""
    pos = size
    while pos > 0:
        start = max(0, pos - chunk)
        fh.seek(start)
        i = fh.read(pos - start).rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def lock_path(plan) -> Path | None:
    """The lock file beside a local storage (journal or SQLite file); None for a remote RDB."""
    path = journal_path(plan.storage)
    if path is not None:
        return Path(f"{path}.alignbench.lock")
    if plan.storage.startswith("sqlite:///"):
        return Path(plan.storage[len("sqlite:///"):] + ".alignbench.lock")
    return None


@contextlib.contextmanager
def budget_lock(plan):
    """Serialises count-then-ask among processes on this machine (nothing for remote RDB storage)."""
    path = lock_path(plan)
    if path is None:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
