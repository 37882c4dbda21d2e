"""Atomic file writes: write to a temporary file beside the target, then rename over it, so a
killed run never leaves a half-written result, cache or output file."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


def _current_umask() -> int:
    """The process umask, read from /proc where it can be (os.umask can only be read by setting
    it, which for a moment gives files another thread creates no umask at all)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()           # read once: mkstemp makes 0600 files, a plain open() honours the umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to `path`. A target
    that cannot be written (a folder, a parent that is a file, no permission) is a UserError
    naming it, raised before the caller's work."""
    from llm_al.errors import UserError

    path = Path(path)
    check_output(path, label="output", probe=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise UserError(f"cannot write {str(path)!r}: {err.strerror or err}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)        # the permissions a plain open() would have given
        try:
            os.replace(tmp_path, path)
        except OSError as err:
            raise UserError(f"cannot write {str(path)!r}: {err.strerror or err}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *,
                 folder: bool = False, replaces_folder: bool = False, label: str = "--out",
                 probe: bool = True) -> Path:
    """The one check every command makes on where it will write, before any model or corpus work.
    A UserError naming the path when `out`:
    - is one of `inputs` (the same file through symlinks, "..", or a hard link), or, with
      `replaces_folder` (a folder written by swapping it in whole), holds one of them;
    - is an existing folder where a file is meant (`folder=False`), or a file where a folder is;
    - lies under a file, or where nothing can be created (no permission, a read-only file system;
      with `probe`, a temporary file is created and removed in the nearest existing folder to be sure).
    Inputs that are not local paths (hub ids, "embedded:...") are passed over. Returns the path."""
    from llm_al.errors import UserError

    path = Path(out).expanduser()
    where = path.resolve()
    for item in inputs:
        if item is None:
            continue
        inp = Path(item).expanduser()
        if not os.path.lexists(inp):
            continue
        same = where == inp.resolve() or (path.exists() and _same_file(path, inp))
        inside = replaces_folder and inp.resolve().is_relative_to(where)
        if same or inside:
            what = "is" if same else "holds"
            raise UserError(f"{label} {str(out)!r} {what} the input {str(item)!r}; writing there would destroy it: "
                            "choose another path")
    if path.is_dir() and not folder:
        raise UserError(f"{label} {str(out)!r} is an existing folder; give a file name")
    if path.exists() and not path.is_dir() and folder:
        raise UserError(f"{label} {str(out)!r} is an existing file; give a folder name")
    ancestor = where.parent if not path.exists() or not folder else where
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{label} {str(out)!r}: {str(ancestor)!r} is a file, so nothing can be created under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{label} {str(out)!r}: no permission to write in {str(ancestor)!r}")
    if probe:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".llm_al-write-check.", dir=ancestor)
            os.close(fd)
            os.unlink(tmp)
        except OSError as err:
            raise UserError(f"{label} {str(out)!r}: cannot write in {str(ancestor)!r} "
                            f"({err.strerror or err})") from None
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def confined(root: str | os.PathLike, *parts: str) -> Path:
    """root / parts, refused (UserError) unless it lies inside `root`: names built from user input
    (strategy specs, run ids) must not write elsewhere through "..", "/" or a symlinked name."""
    from llm_al.errors import UserError

    root = Path(root)
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()) or path.resolve() == root.resolve():
        raise UserError(f"refusing to write {str(path)!r}: the name {'/'.join(parts)!r} leads outside {str(root)!r}")
    return path


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------------------- claims
FRESH_LOCK_SECONDS = 10.0
"""A lock file with no owner written in it yet counts as held this long (its creator is between
creating it and writing its pid), then as stale."""


@contextmanager
def claim(path: Path):
    """Claim a unit of work (a sweep cell, a chunk of a scoring pass) for this process with an
    exclusive lock file `path` with the suffix .lock, so several workers (e.g. one per GPU) can run
    the same experiment without doing it twice. A lock whose process is gone (killed) is taken over;
    one from another machine is trusted. Yields whether this process holds the claim."""
    lock = path.with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _alive(lock):
                yield False
                return
            lock.unlink(missing_ok=True)         # stale: its process died
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {socket.gethostname()}\n")
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)
        return
    yield False


def _alive(lock: Path) -> bool:
    try:
        pid, host = lock.read_text().split()
    except (OSError, ValueError):            # unreadable or empty: just created, not yet written?
        try:
            return time.time() - lock.stat().st_mtime < FRESH_LOCK_SECONDS
        except OSError:
            return False
    if host != socket.gethostname():
        return True                              # another machine's worker: trust its lock
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clear_stale_claims(folder: Path) -> None:
    """Remove the lock files in `folder` whose process is gone (a killed worker's), then the folder
    itself if that left it empty; a live worker's locks stay."""
    for lock in list(Path(folder).glob("*.lock")):          # none when the folder is absent
        if not _alive(lock):
            lock.unlink(missing_ok=True)
    try:
        Path(folder).rmdir()
    except OSError:                                  # absent, or a live worker's lock is in it
        pass

