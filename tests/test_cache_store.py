"""The content-keyed disk cache: keys that move with every input, one build per entry, no half entries."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from alignbench import cache

PARTS = ("stage-v1", "model-key", {"max_length": 64, "seed": 0}, [1, 2, 3], 0.5)


def test_content_key_is_stable_short_hex():
    key = cache.content_key(*PARTS)
    assert key == cache.content_key(*PARTS)
    assert len(key) == 16 and int(key, 16) >= 0
    # Dict key order does not matter (sorted), a config equals its plain container, a Path its string.
    assert cache.content_key({"a": 1, "b": 2}) == cache.content_key({"b": 2, "a": 1})
    assert cache.content_key(OmegaConf.create({"a": 1, "b": "${a}"})) == cache.content_key({"a": 1, "b": 1})
    assert cache.content_key(Path("/x/y")) == cache.content_key("/x/y")


@pytest.mark.parametrize("index, changed", [
    (0, "stage-v2"), (1, "other-model"), (2, {"max_length": 65, "seed": 0}), (2, {"max_length": 64, "seed": 1}),
    (3, [1, 2, 4]), (3, [1, 2]), (4, 0.25),
])
def test_content_key_changes_with_each_part(index, changed):
    parts = list(PARTS)
    parts[index] = changed
    assert cache.content_key(*parts) != cache.content_key(*PARTS)


def test_content_key_depends_on_order_and_number_of_parts():
    assert cache.content_key("a", "b") != cache.content_key("b", "a")
    assert cache.content_key("a", "b") != cache.content_key("a", "b", None)


def test_cached_builds_once_then_reuses(tmp_path):
    calls = []

    def write(path):
        calls.append(path)
        (path / "out.txt").write_text("built")

    first, hit_first = cache.cached(tmp_path, "stage", "k1", write)
    second, hit_second = cache.cached(tmp_path, "stage", "k1", write)
    assert len(calls) == 1
    assert (hit_first, hit_second) == (False, True)
    assert first == second == cache.entry_dir(tmp_path, "stage", "k1")
    assert (second / "out.txt").read_text() == "built"
    assert (second / ".complete").exists()
    # Another key is another entry: built again.
    other, hit_other = cache.cached(tmp_path, "stage", "k2", write)
    assert len(calls) == 2 and hit_other is False and other != first


def test_failing_writer_leaves_no_entry(tmp_path):
    def broken(path):
        (path / "partial.txt").write_text("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        cache.cached(tmp_path, "stage", "k1", broken)
    assert cache.lookup(tmp_path, "stage", "k1") is None
    assert list((tmp_path / "stage").iterdir()) == []  # no published entry, no temp dir left over

    calls = []

    def write(path):
        calls.append(path)
        (path / "out.txt").write_text("ok")

    path, hit = cache.cached(tmp_path, "stage", "k1", write)  # the next call builds it
    assert hit is False and len(calls) == 1 and (path / "out.txt").read_text() == "ok"


# --------------------------------------------------------------------------- integrity: a broken entry is a miss

def _write_two_files(path):
    (path / "weights.bin").write_bytes(b"\x01" * 1000)
    (path / "meta.json").write_text('{"a": 1}')


def _read_both(path):
    return (path / "weights.bin").read_bytes(), json.loads((path / "meta.json").read_text())


def test_the_marker_records_every_file_size_and_hash(tmp_path):
    path, _ = cache.cached(tmp_path, "stage", "k1", _write_two_files)
    marker = json.loads((path / cache.MARKER).read_text())
    assert marker["kind"] == "stage" and marker["key"] == "k1"
    assert set(marker["files"]) == {"weights.bin", "meta.json"}
    assert marker["files"]["weights.bin"]["size"] == 1000
    assert marker["files"]["weights.bin"]["sha256"] == hashlib.sha256(b"\x01" * 1000).hexdigest()
    assert cache.check_entry(path) is None


@pytest.mark.parametrize("damage, problem", [
    (lambda p: (p / "weights.bin").write_bytes(b"\x01" * 10), "weights.bin has 10 bytes, 1000 were written"),
    (lambda p: (p / "weights.bin").write_bytes(b"\x02" * 1000), "weights.bin does not match the SHA-256"),
    (lambda p: (p / "meta.json").unlink(), "meta.json is missing"),
    (lambda p: (p / cache.MARKER).write_text("ok"), "no integrity record"),  # an entry of an older alignbench
])
def test_a_damaged_entry_is_warned_about_removed_and_rebuilt(tmp_path, caplog, damage, problem):
    calls = []

    def write(path):
        calls.append(path)
        _write_two_files(path)

    first, _ = cache.cached(tmp_path, "stage", "k1", write)
    damage(first)
    cache._VERIFIED.clear()  # another process: nothing checked yet
    with caplog.at_level(logging.WARNING, logger="alignbench.cache"):
        value, path, hit = cache.load_cached(tmp_path, "stage", "k1", write, _read_both)
    assert hit is False and len(calls) == 2 and path == first
    assert value == (b"\x01" * 1000, {"a": 1})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(first) in warnings[0] and problem in warnings[0]
    assert cache.check_entry(path) is None
    assert [p.name for p in (tmp_path / "stage").iterdir()] == ["k1"]  # nothing discarded left behind
    _, _, hit_again = cache.load_cached(tmp_path, "stage", "k1", write, _read_both)
    assert hit_again is True and len(calls) == 2


def test_an_entry_that_fails_to_load_is_rebuilt(tmp_path, caplog):
    builds, reads = [], []

    def write(path):
        builds.append(path)
        _write_two_files(path)

    def read(path):  # the first read fails as a changed loader would on an old but intact entry
        reads.append(path)
        if len(reads) == 1:
            raise ValueError("incomplete metadata")
        return _read_both(path)

    cache.cached(tmp_path, "stage", "k1", write)
    with caplog.at_level(logging.WARNING, logger="alignbench.cache"):
        value, _, hit = cache.load_cached(tmp_path, "stage", "k1", write, read)
    assert hit is False and len(builds) == 2 and len(reads) == 2 and value[1] == {"a": 1}
    assert any("failed to load: ValueError: incomplete metadata" in r.getMessage() for r in caplog.records)
