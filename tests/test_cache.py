"""The sharded, append-only row cache (llm_al.features.cache): one shard per add, rows back in order,
resumable after a kill, corrupt shards named, legacy single-file caches read, several writers on
one folder, and merges that keep every row."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from llm_al.features.cache import ShardedCache, _tier
from llm_al.errors import UserError


def _rows(keys, width: int = 3) -> np.ndarray:
    """Deterministic rows from keys, so any writer computes the same value for a key."""
    return np.array([[hash_i * 1.0 + j for j in range(width)] for hash_i in (int(k[1:]) for k in keys)])


def _keys(lo: int, hi: int) -> list[str]:
    return [f"k{i}" for i in range(lo, hi)]


def _shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".npz")


def test_each_add_is_one_shard_and_rows_come_back_in_order(tmp_path):
    cache = ShardedCache(tmp_path / "c", fanout=1000)
    assert not (tmp_path / "c").exists()                     # opening writes nothing
    for lo in range(0, 50, 10):
        cache.add(_keys(lo, lo + 10), _rows(_keys(lo, lo + 10)))
    assert len(_shards(tmp_path / "c")) == 5
    query = ["k42", "k3", "k42", "k0", "k49"]
    np.testing.assert_array_equal(cache.get(query), _rows(query))
    fresh = ShardedCache(tmp_path / "c")
    assert len(fresh) == 50
    np.testing.assert_array_equal(fresh.get(query), _rows(query))
    assert fresh.missing(["k7", "nope", "k60", "k8"]) == [1, 2]
    with pytest.raises(KeyError, match="1 of 2 keys"):
        fresh.get(["k1", "nope"])


def test_dtype_row_shape_and_unicode_keys_survive(tmp_path):
    cache = ShardedCache(tmp_path / "emb")
    vecs = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    cache.add(["é", "a", "日本"], vecs)
    got = ShardedCache(tmp_path / "emb").get(["日本", "é"])
    assert got.dtype == np.float32 and got.shape == (2, 2, 2)
    np.testing.assert_array_equal(got, vecs[[2, 0]])
    with pytest.raises(ValueError, match="do not match"):
        cache.add(["b"], np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="one row per key"):
        cache.add(["b", "c"], np.zeros((1, 2, 2)))


def test_a_leftover_temporary_file_is_ignored_on_resume(tmp_path):
    folder = tmp_path / "loss-v3-x"
    ShardedCache(folder).add(_keys(0, 5), _rows(_keys(0, 5)))
    (folder / ".123-000001-abcd.npz.k2j3.tmp").write_bytes(b"PK\x03\x04 half a shard")   # a writer killed mid-write
    resumed = ShardedCache(folder)
    assert resumed.missing(_keys(0, 8)) == [5, 6, 7]
    resumed.add(_keys(5, 8), _rows(_keys(5, 8)))
    np.testing.assert_array_equal(ShardedCache(folder).get(_keys(0, 8)), _rows(_keys(0, 8)))


def test_a_shard_write_interrupted_before_its_rename_leaves_no_shard(tmp_path, monkeypatch):
    cache = ShardedCache(tmp_path / "c")
    cache.add(["a"], np.ones((1, 2)))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.add(["b"], np.ones((1, 2)))
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "c").iterdir()] == _shards(tmp_path / "c") and len(_shards(tmp_path / "c")) == 1
    assert ShardedCache(tmp_path / "c").missing(["a", "b"]) == [1]


def test_a_corrupt_shard_is_an_error_naming_the_file(tmp_path):
    folder = tmp_path / "c"
    ShardedCache(folder).add(["a", "b"], np.ones((2, 2)))
    (name,) = _shards(folder)
    whole = (folder / name).read_bytes()
    (folder / name).write_bytes(whole[: len(whole) // 2])                  # truncated
    with pytest.raises(UserError, match=rf"{name}.*cannot be read.*delete it"):
        ShardedCache(folder)
    (folder / name).write_bytes(b"not a zip at all")
    with pytest.raises(UserError, match=name):
        ShardedCache(folder)
    np.savez(folder / name, keys=np.array(["a", "b"]), values=np.ones((3, 2)))   # rows do not match keys
    with pytest.raises(UserError, match=rf"{name}.*3, 2"):
        ShardedCache(folder)
    np.savez(folder / name, keys=np.array([{"a": 1}], dtype=object), values=np.ones((1, 2)))   # needs pickle
    with pytest.raises(UserError, match=name):
        ShardedCache(folder)


def test_a_legacy_single_file_cache_reads_and_is_left_alone(tmp_path):
    legacy = tmp_path / "loss-v3-abc.npz"                        # written as RowCache did
    keys = np.array(_keys(0, 6), dtype=object).astype(str)
    np.savez(legacy, keys=keys, values=_rows(_keys(0, 6)))
    before = legacy.read_bytes()
    cache = ShardedCache(tmp_path / "loss-v3-abc", fanout=2)
    assert cache.missing(_keys(0, 9)) == [6, 7, 8]
    for i in range(6, 9):                                        # enough adds to merge (fanout 2)
        cache.add(_keys(i, i + 1), _rows(_keys(i, i + 1)))
    np.testing.assert_array_equal(ShardedCache(tmp_path / "loss-v3-abc").get(_keys(0, 9)), _rows(_keys(0, 9)))
    assert legacy.read_bytes() == before                         # read, never rewritten or merged away


def test_two_cache_objects_on_one_folder_both_persist(tmp_path):
    a, b = ShardedCache(tmp_path / "c"), ShardedCache(tmp_path / "c")
    a.add(_keys(0, 10), _rows(_keys(0, 10)))
    b.add(_keys(5, 15), _rows(_keys(5, 15)))                     # overlaps a's keys: same values
    assert b.missing(_keys(0, 15)) == list(range(5))             # b has not re-listed the folder
    b.refresh()
    assert b.missing(_keys(0, 15)) == []
    np.testing.assert_array_equal(ShardedCache(tmp_path / "c").get(_keys(0, 15)), _rows(_keys(0, 15)))


def test_a_reader_survives_another_process_merging_its_shards_away(tmp_path):
    writer = ShardedCache(tmp_path / "c", fanout=100)
    for lo in range(0, 30, 3):
        writer.add(_keys(lo, lo + 3), _rows(_keys(lo, lo + 3)))
    reader = ShardedCache(tmp_path / "c")
    assert writer.compact() and len(_shards(tmp_path / "c")) == 1
    np.testing.assert_array_equal(reader.get(_keys(0, 30)), _rows(_keys(0, 30)))   # re-lists, finds the merge


def test_a_merge_whose_input_another_process_merged_first_is_abandoned(tmp_path):
    folder = tmp_path / "c"
    ShardedCache(folder).add(["k1"], _rows(["k1"]))
    stale = ShardedCache(folder, fanout=2)                      # knows k1's shard
    other = ShardedCache(folder)
    other.add(["k2"], _rows(["k2"]))
    assert other.compact() and len(_shards(folder)) == 1         # k1's shard is gone, merged with k2's
    stale.add(["k3"], _rows(["k3"]))                             # tier 0 is full: its merge finds k1's shard gone
    assert len(_shards(folder)) == 2                             # abandoned: nothing deleted, nothing lost
    np.testing.assert_array_equal(stale.get(["k1", "k2", "k3"]), _rows(["k1", "k2", "k3"]))
    np.testing.assert_array_equal(ShardedCache(folder).get(["k1", "k2", "k3"]), _rows(["k1", "k2", "k3"]))


def test_a_merge_writes_its_shard_before_it_deletes_the_inputs(tmp_path, monkeypatch):
    cache = ShardedCache(tmp_path / "c", fanout=100)
    for lo in range(0, 9, 3):
        cache.add(_keys(lo, lo + 3), _rows(_keys(lo, lo + 3)))
    events, unlink = [], Path.unlink

    def recording(path, *args, **kwargs):
        events.append(len(_shards(tmp_path / "c")))              # shard files at each deletion
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", recording)
    assert cache.compact()
    assert events == [4, 3, 2]                                   # the merged shard was there first
    monkeypatch.undo()
    np.testing.assert_array_equal(ShardedCache(tmp_path / "c").get(_keys(0, 9)), _rows(_keys(0, 9)))


def test_merging_keeps_every_row_and_bounds_the_shard_count(tmp_path):
    fanout, chunk = 4, 5
    cache = ShardedCache(tmp_path / "c", fanout=fanout)
    counts = []
    for lo in range(0, 1000, chunk):
        cache.add(_keys(lo, lo + chunk), _rows(_keys(lo, lo + chunk)))
        counts.append(len(_shards(tmp_path / "c")))
    cache.add(_keys(0, 3), _rows(_keys(0, 3)))                   # a duplicate: same value, fine
    tiers = _tier(1000, fanout) + 1
    assert max(counts) <= (fanout - 1) * tiers + 1, counts      # logarithmic, not one per add
    assert 1 < counts[-1] < 200
    fresh = ShardedCache(tmp_path / "c")
    assert len(fresh) == 1000
    np.testing.assert_array_equal(fresh.get(_keys(0, 1000)), _rows(_keys(0, 1000)))
    assert fresh.compact() and len(_shards(tmp_path / "c")) == 1
    np.testing.assert_array_equal(ShardedCache(tmp_path / "c").get(_keys(0, 1000)), _rows(_keys(0, 1000)))


def test_two_processes_writing_and_merging_concurrently_lose_nothing(tmp_path):
    """Two writers add overlapping chunks to one folder with a small fanout, so they merge (and
    race to merge the same shards) all along; every row of both ends up readable."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from llm_al.features.cache import ShardedCache
        start = int(sys.argv[1])
        cache = ShardedCache({str(tmp_path / "c")!r}, fanout=3)
        for lo in range(start, start + 600, 4):
            keys = [f"k{{i}}" for i in range(lo, lo + 4)]
            cache.add(keys, np.array([[int(k[1:]) * 1.0 + j for j in range(3)] for k in keys]))
            if lo % 40 == 0:
                cache.refresh()                                  # see (and merge) the other's shards too
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(s)], env=env, stderr=subprocess.PIPE, text=True)
             for s in (0, 300)]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    cache = ShardedCache(tmp_path / "c")
    assert len(cache) == 900
    np.testing.assert_array_equal(cache.get(_keys(0, 900)), _rows(_keys(0, 900)))
    assert len(_shards(tmp_path / "c")) < 40


def test_a_merge_that_runs_out_of_disk_keeps_the_new_rows_and_is_retried(tmp_path, monkeypatch, caplog):
    """add() writes the chunk's shard, then merges: a full disk during the merge must not turn a
    saved chunk into a failed scoring run."""
    import errno

    cache = ShardedCache(tmp_path / "c", fanout=2)
    cache.add(_keys(0, 3), _rows(_keys(0, 3)))
    real_write = ShardedCache._write
    calls = []

    def full_disk_on_merge(self, keys, values):
        calls.append(len(keys))
        if len(calls) > 1:                                       # the first write is the chunk itself
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, keys, values)

    monkeypatch.setattr(ShardedCache, "_write", full_disk_on_merge)
    with caplog.at_level("WARNING", logger="llm_al.features.cache"):
        cache.add(_keys(3, 6), _rows(_keys(3, 6)))               # no exception
    assert calls == [3, 6] and "could not merge the shards" in caplog.text
    assert len(_shards(tmp_path / "c")) == 2                     # both chunks on disk, no partial merge
    monkeypatch.undo()
    np.testing.assert_array_equal(ShardedCache(tmp_path / "c").get(_keys(0, 6)), _rows(_keys(0, 6)))
    cache.add(_keys(6, 7), _rows(_keys(6, 7)))                   # the next add merges
    assert len(_shards(tmp_path / "c")) < 3
    np.testing.assert_array_equal(ShardedCache(tmp_path / "c").get(_keys(0, 7)), _rows(_keys(0, 7)))
