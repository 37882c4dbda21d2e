"""An append-only, sharded cache of per-example rows (loss statistics, embeddings, probe scores),
keyed by content hashes: what lets a scoring run over a pool of millions stop and resume.

A cache is a folder; every `add` writes one new shard file into it, atomically (temporary file,
then rename), so a killed run loses only the chunk it was computing and a half-written shard is
never seen. A shard is a plain .npz of two arrays, read without pickle:

    keys    (n,)      fixed-width unicode, e.g. <U24 content hashes
    values  (n, ...)  the rows, any numeric dtype

Shard names are unique per writer (pid, counter, random suffix), so several processes may fill
the same folder (sweep workers, Ray actors' drivers) without overwriting each other; a key held by
two shards has the same value in both, and the first shard in load order wins.

Opening a cache reads only the key arrays and builds a sorted index key -> (shard, row) (about 60
bytes a 24-char key in memory: keys held as bytes, per shard and in the index); `get` gathers rows
from memory-mapped value arrays, one shard at a time.

Compaction keeps the shard count logarithmic in the rows written while rewriting each row only a
few times (size-tiered, as in LSM stores): a shard of r rows sits in tier floor(log_F r) (F =
`fanout`), and when one tier holds F shards this process knows of, they are merged into one
(which lands a tier up). Safe against other processes: a merge writes the merged shard (atomic
rename) before it deletes exactly the inputs it listed and read, so every row is always in some
shard on disk; shards written meanwhile are not touched; a merge whose input vanished (another
process merged it first) is abandoned, and `get` re-lists the folder when a shard it indexed is
gone.

A cache written by earlier versions of llm_al as one file `<folder name>.npz` beside the folder
(e.g. loss-v3-<hash>.npz) is the same format: it is read as the first shard, and never modified.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import secrets
import struct
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from llm_al.errors import UserError
from llm_al.io import atomic_path

log = logging.getLogger(__name__)

FANOUT = 8
"""Shards per tier before they are merged: with chunks of 256 rows, 1M rows sit in at most ~28
shards and each row is rewritten about 3 times (tiers of 256, 2k, 16k, 131k rows)."""
STALE_TMP_SECONDS = 24 * 3600
"""Temporary files (of a writer killed mid-shard) older than this are removed by a merge."""
_LISTING_RETRIES = 20                       # re-lists while other processes merge shards away

_counter = itertools.count()


@dataclass
class _Shard:
    path: Path
    keys: np.ndarray                        # (n,) keys as bytes (S), for the index
    shape: tuple[int, ...]                  # of its values array: (n, *row shape)
    dtype: np.dtype
    legacy: bool = False                    # a single-file cache of earlier versions: read, never merged

    @property
    def rows(self) -> int:
        return self.shape[0]


def text_key(*parts: str) -> str:
    """The cache key of one row: a short hash of its parts (formatted text, model fingerprint, settings)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def key_bytes(keys: np.ndarray) -> np.ndarray:
    """(n,) unicode keys as UTF-8 bytes (S): a quarter of the memory, same equality."""
    try:
        return keys.astype("S")             # ASCII (hex hashes): a plain cast
    except UnicodeEncodeError:
        return np.char.encode(keys, "utf-8")


def _unreadable(path: Path, err: BaseException) -> UserError:
    return UserError(f"feature cache {str(path)!r} cannot be read ({type(err).__name__}: {str(err)[:200]}); "
                     "delete it to recompute those features (only that file's rows are recomputed)")


def _read_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fh)
    raise ValueError(f"unsupported .npy format version {version}")


def _member_offset(fh, info: zipfile.ZipInfo) -> int:
    """Where an uncompressed member's data starts in the zip file: after its local header."""
    fh.seek(info.header_offset)
    local = fh.read(30)
    if local[:4] != b"PK\x03\x04":
        raise ValueError(f"bad local header of member {info.filename!r}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _read_keys(path: Path) -> np.ndarray:
    """A shard's (n,) unicode keys; FileNotFoundError passes through, anything else unreadable
    is a UserError naming the file."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("keys.npy") as f:
            keys = np.lib.format.read_array(f, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, struct.error) as err:
        raise _unreadable(path, err) from None
    if keys.ndim != 1 or keys.dtype.kind != "U":
        raise _unreadable(path, ValueError(f"expected (n,) unicode keys, got {keys.dtype}{keys.shape}"))
    return keys


def read_shard(path: Path, legacy: bool = False) -> _Shard:
    """A shard's keys and the shape and dtype of its values (not the values). FileNotFoundError
    passes through (another process merged it away); anything else unreadable is a UserError."""
    keys = _read_keys(path)
    try:
        with zipfile.ZipFile(path) as zf, zf.open("values.npy") as f:
            shape, _, dtype = _read_header(f)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, struct.error) as err:
        raise _unreadable(path, err) from None
    if len(shape) < 1 or shape[0] != len(keys) or dtype.hasobject:
        raise _unreadable(path, ValueError(f"expected (n, ...) numeric values for its {len(keys)} keys, "
                                           f"got {dtype}{shape}"))
    return _Shard(path, key_bytes(keys), tuple(shape), dtype, legacy)


def _load_values(path: Path) -> np.ndarray:
    """A shard's values, memory-mapped (np.savez stores members uncompressed); read whole if not."""
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
            info = zf.getinfo("values.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                with zf.open(info) as f:
                    return np.lib.format.read_array(f, allow_pickle=False)
            start = _member_offset(fh, info)
            fh.seek(start)
            shape, fortran, dtype = _read_header(fh)
            offset = fh.tell()
            if offset + int(np.prod(shape)) * dtype.itemsize > start + info.file_size:
                raise ValueError(f"values {dtype}{shape} run past their zip member")
        if dtype.hasobject:
            raise ValueError("object values")
        if int(np.prod(shape)) == 0:
            return np.empty(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, struct.error) as err:
        raise _unreadable(path, err) from None


def _tier(rows: int, fanout: int) -> int:
    tier = 0
    while rows >= fanout:
        rows //= fanout
        tier += 1
    return tier


def _new_shard_name() -> str:
    return f"{os.getpid()}-{next(_counter):06d}-{secrets.token_hex(4)}.npz"


class SavedElsewhere:
    """Which of the `todo` positions of `keys` a batch of cache keys (as bytes, ShardedCache.new_keys)
    holds: the rows another process saved meanwhile."""

    def __init__(self, keys: Sequence[str], todo: Sequence[int]):
        todo_keys = key_bytes(np.asarray([keys[i] for i in todo], dtype=str))
        by_key = np.argsort(todo_keys)
        self.sorted_keys, self.todo_at = todo_keys[by_key], np.asarray(todo)[by_key]

    def __call__(self, new: np.ndarray) -> np.ndarray:
        if not len(new):
            return np.zeros(0, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.sorted_keys, new), len(self.sorted_keys) - 1)
        return self.todo_at[pos[self.sorted_keys[pos] == new]]


class ShardedCache:
    """Rows keyed by strings in a folder of append-only shards: `missing`, `add`, `get`.

    `path` is the folder (created by the first `add`; opening a cache writes nothing). A legacy
    single-file cache `<path>.npz` is read as its first shard."""

    def __init__(self, path: str | os.PathLike, fanout: int = FANOUT):
        if fanout < 2:
            raise ValueError(f"fanout must be >= 2, got {fanout}")
        self.path = Path(path)
        self.legacy_path = self.path.with_name(self.path.name + ".npz")
        self.fanout = fanout
        self._shards: dict[str, _Shard] = {}   # by file name, in load order (first wins)
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray, list[_Shard]] | None = None
        self.refresh()

    # ------------------------------------------------------------------ reading
    def _listing(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.path)
                      if e.name.endswith(".npz") and not e.name.startswith(".") and e.is_file())

    def refresh(self) -> None:
        """Pick up the shards other processes wrote since, and drop those merged away."""
        for _ in range(_LISTING_RETRIES):
            on_disk = self._listing()
            listed = set(on_disk)
            known = {name: s for name, s in self._shards.items()
                     if name in listed or (s.legacy and s.path.is_file())}
            try:
                if self.legacy_path.is_file() and self.legacy_path.name not in known:
                    known = {self.legacy_path.name: read_shard(self.legacy_path, legacy=True), **known}
                for name in on_disk:
                    if name not in known:
                        known[name] = read_shard(self.path / name)
            except FileNotFoundError:       # merged away between listing and reading: list again
                continue
            if set(known) != set(self._shards):         # the index stays valid while nothing changed
                self._index = None
            self._shards = known
            return
        raise UserError(f"feature cache {str(self.path)!r}: its shards kept vanishing while being read "
                        f"({_LISTING_RETRIES} listings); is another process deleting them?")

    def _built(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[_Shard]]:
        """(sorted unique keys, shard position, row) and the shards: the index, rebuilt after changes."""
        if self._index is None:
            shards = list(self._shards.values())
            widths = {s.shape[1:] for s in shards}
            if len(widths) > 1:
                first = shards[0]
                odd = next(s for s in shards if s.shape[1:] != first.shape[1:])
                raise UserError(f"feature cache {str(self.path)!r}: shard {str(odd.path)!r} holds rows of shape "
                                f"{odd.shape[1:]}, {str(first.path)!r} rows of shape {first.shape[1:]}; delete "
                                "the odd one to recompute its rows")
            if shards:
                keys = np.concatenate([s.keys for s in shards])
                which = np.repeat(np.arange(len(shards), dtype=np.int32), [s.rows for s in shards])
                rows = np.concatenate([np.arange(s.rows, dtype=np.int64) for s in shards])
                keys, first = np.unique(keys, return_index=True)        # stable: the first shard wins
                self._index = (keys, which[first], rows[first], shards)
            else:
                self._index = (np.empty(0, "S1"), np.empty(0, np.int32), np.empty(0, np.int64), [])
        return self._index

    def _lookup(self, keys: Sequence[str]) -> np.ndarray:
        """(len(keys),) position of each key in the index, -1 where absent."""
        index = self._built()[0]
        out = np.full(len(keys), -1, dtype=np.int64)
        if not len(keys) or not len(index):
            return out
        q = key_bytes(np.asarray(list(keys), dtype=str))
        order = np.argsort(q)                                  # sorted queries: far fewer cache misses
        qs = q[order]
        pos = np.minimum(np.searchsorted(index, qs), len(index) - 1)
        out[order] = np.where(index[pos] == qs, pos, -1)
        return out

    def __len__(self) -> int:
        return len(self._built()[0])

    def new_keys(self) -> np.ndarray:
        """Re-list the folder and return the keys (as UTF-8 bytes) of the shards this object had not
        seen: rows another process saved, or merged, since. Costs those shards' size, not the
        cache's, so it can run before every chunk of a long scoring pass."""
        before = set(self._shards)
        self.refresh()
        new = [s.keys for name, s in self._shards.items() if name not in before]
        return np.concatenate(new) if new else np.empty(0, "S1")

    def missing(self, keys: Sequence[str]) -> list[int]:
        """Positions in `keys` of the keys with no row."""
        return np.flatnonzero(self._lookup(keys) < 0).tolist()

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """(len(keys), ...) the rows of `keys`, in order; KeyError if any is missing."""
        for _ in range(_LISTING_RETRIES):
            try:
                return self._gather(keys)
            except FileNotFoundError:        # a shard merged away by another process: list again
                self.refresh()
        raise UserError(f"feature cache {str(self.path)!r}: its shards kept vanishing while being read")

    def _gather(self, keys: Sequence[str]) -> np.ndarray:
        pos = self._lookup(keys)
        absent = np.flatnonzero(pos < 0)
        if len(absent):
            raise KeyError(f"{len(absent)} of {len(keys)} keys have no row in the cache {str(self.path)!r}, "
                           f"e.g. {keys[absent[0]]!r}")
        _, which, rows, shards = self._built()
        if not shards:
            return np.empty((0,))
        dtype = np.result_type(*{s.dtype for s in shards})
        out = np.empty((len(keys), *shards[0].shape[1:]), dtype=dtype)
        which, rows = which[pos], rows[pos]
        order = np.argsort(which, kind="stable")
        bounds = np.flatnonzero(np.diff(which[order])) + 1
        for sel in np.split(order, bounds) if len(order) else []:
            values = _load_values(shards[which[sel[0]]].path)
            out[sel] = values[rows[sel]]
            del values                       # unmap before the next shard
        return out

    # ------------------------------------------------------------------ writing
    def add(self, keys: Sequence[str], values: np.ndarray) -> None:
        """Write the rows as one new shard (atomically), then merge a full tier if there is one. A
        merge that fails for want of disk or memory is logged and skipped: it cannot lose the rows
        just written, and a later add retries it."""
        values = np.asarray(values)
        if values.ndim < 1 or len(keys) != len(values):
            raise ValueError(f"add needs one row per key: {len(keys)} keys, values of shape {values.shape}")
        if not len(keys):
            return
        if values.dtype.hasobject:
            raise ValueError(f"cache rows must be numeric, got dtype {values.dtype}")
        shapes = {s.shape[1:] for s in self._shards.values()}
        if shapes and values.shape[1:] not in shapes:
            raise ValueError(f"rows of shape {values.shape[1:]} do not match the cache's {shapes.pop()} "
                             f"({str(self.path)!r})")
        key_array = np.asarray(list(keys), dtype=str)
        self._write(key_array, values)
        try:                                 # the rows are saved; merging is housekeeping, best effort
            self._merge_full_tiers()
        except (OSError, MemoryError) as err:
            log.warning("could not merge the shards of %s (%s: %s); the new rows are saved, merging is "
                        "retried on a later write", self.path, type(err).__name__, err)
            self.refresh()

    def _write(self, keys: np.ndarray, values: np.ndarray) -> _Shard:
        path = self.path / _new_shard_name()
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=keys, values=values)
        shard = _Shard(path, key_bytes(keys), tuple(values.shape), values.dtype)
        self._shards[path.name] = shard
        self._index = None
        return shard

    def _merge_full_tiers(self) -> None:
        while True:
            tiers: dict[int, list[str]] = {}
            for name, s in self._shards.items():
                if not s.legacy:
                    tiers.setdefault(_tier(s.rows, self.fanout), []).append(name)
            full = [names for _, names in sorted(tiers.items()) if len(names) >= self.fanout]
            if not full or not self.compact(full[0]):
                return

    def compact(self, names: Sequence[str] | None = None) -> bool:
        """Merge the named shards (default: every shard but a legacy file) into one; True if done.
        Writes the merged shard first, then deletes exactly its inputs. False, with nothing
        deleted, when an input vanished (another process merged it: the folder is re-listed)."""
        names = [n for n in (self._shards if names is None else names) if not self._shards[n].legacy]
        if len(names) < 2:
            return False
        inputs = [self._shards[n] for n in names]
        try:
            keys = [_read_keys(s.path) for s in inputs]
            merged_keys, first = np.unique(np.concatenate(keys), return_index=True)   # first shard wins
            which = np.repeat(np.arange(len(inputs)), [len(k) for k in keys])[first]
            rows = (first - np.concatenate([[0], np.cumsum([len(k) for k in keys])])[which])
            dtype = np.result_type(*{s.dtype for s in inputs})
            values = np.empty((len(merged_keys), *inputs[0].shape[1:]), dtype=dtype)
            for j, s in enumerate(inputs):
                sel = np.flatnonzero(which == j)
                values[sel] = _load_values(s.path)[rows[sel]]
        except FileNotFoundError:
            self.refresh()
            return False
        self._write(merged_keys, values)
        for s in inputs:
            s.path.unlink(missing_ok=True)
            del self._shards[s.path.name]
        self._index = None
        self._remove_stale_temporaries()
        return True

    def _remove_stale_temporaries(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        for e in os.scandir(self.path):
            try:
                if e.name.startswith(".") and e.name.endswith(".tmp") and e.stat().st_mtime < cutoff:
                    os.unlink(e.path)
            except FileNotFoundError:
                pass

    def __repr__(self) -> str:
        return f"ShardedCache({str(self.path)!r}, {len(self._shards)} shards)"
