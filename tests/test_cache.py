"""The content-keyed disk cache: keys that move with every input, one build per entry, no half entries."""

from __future__ import annotations

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
