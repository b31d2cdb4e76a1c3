"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

A crash mid-write leaves the previous file intact, never a half-written one.
:func:`write_set_atomic` does the same for a set of files that belong together
(a report and its plots): all of them, or none, replace the previous set.

Files get the permissions an ordinary ``open()`` would give, ``0o666`` less the
user's umask (``tempfile.mkstemp`` alone makes them ``0o600``, unreadable to the
other users of a shared results folder).

A failed write raises :class:`WriteError`: still an ``OSError`` (``errno``,
``strerror`` and ``filename`` are kept), and also a :class:`UserError`, so the
CLI prints it as one ``error:`` line with exit code 2 instead of a traceback.
"""

from __future__ import annotations

import errno as _errno
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import UserError

_PROC_STATUS = "/proc/self/status"
_UMASK_LOCK = threading.Lock()
#: ``os.replace``, the one rename of this module (tests replace it to make a commit fail midway).
_replace = os.replace


class WriteError(OSError, UserError):
    """A file could not be written: no space, no permission, a read-only file system..."""

    def __str__(self) -> str:
        cause = self.strerror or "write failed"
        code = _errno.errorcode.get(self.errno or 0)
        if code:
            cause = f"{cause} [{code}]"
        return f"cannot write {self.filename}: {cause}" if self.filename else f"cannot write: {cause}"


def write_error(exc: OSError, path: str | os.PathLike) -> WriteError:
    """``exc`` as a :class:`WriteError` naming ``path`` (the file meant, not its temporary name)."""
    return WriteError(exc.errno, exc.strerror or str(exc), str(path))


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``).

    Elsewhere it is set and restored under a lock; a file another thread creates in
    between gets ``0o077``, the restrictive side, never a wider mode."""
    try:
        with open(_PROC_STATUS, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask & 0o777


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def _write_all(fh, data: bytes) -> None:
    """The one low-level write of this module (tests replace it to simulate a full disk)."""
    fh.write(data)


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort: not every OS can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, writer: Callable[[str], None], mode: int | None = None) -> Path:
    """Call ``writer(tmp_path)`` and rename the result onto ``path`` in one step.

    The file gets ``mode`` (default: ``0o666`` less the umask) before it appears
    under its name. An ``OSError`` is raised as :class:`WriteError`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(exc, path) from exc
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, default_file_mode() if mode is None else mode)
        _replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_error(exc, path) from exc
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes, mode: int | None = None) -> Path:
    def writer(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            _write_all(fh, data)
            fh.flush()  # a full disk shows here at the latest, inside the cleanup of write_atomic

    return write_atomic(path, writer, mode)


def write_text_atomic(path: str | os.PathLike, text: str, mode: int | None = None) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), mode)


def write_json_atomic(path: str | os.PathLike, obj: Any, mode: int | None = None) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n", mode)


def write_set_atomic(folder: str | os.PathLike, files: Mapping[str, bytes], replaces: Iterable[str] = ()) -> dict[str, Path]:
    """Write ``files`` (name -> bytes) into ``folder`` as one set: all of them, or none.

    Every file is first written into a hidden staging folder inside ``folder``
    (same file system, so the moves below are renames that need no space). Only
    when all are written do they move into place: the previous files of the set,
    ``files``' names and ``replaces`` (names of an older set that this one
    supersedes), go aside into a hidden folder, the new ones move in, the **last**
    name of ``files`` (the one readers look for, e.g. ``report.json``) last. Any
    error removes the staged files and puts the previous set back, then raises
    :class:`WriteError`; on success the previous set is deleted.

    Names are plain file names (no folders). Returns name -> final path."""
    folder = Path(folder)
    names = list(files)
    for name in [*names, *replaces]:
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"write_set_atomic: {name!r} is not a plain file name")
    if not names:
        return {}
    marker = names[-1]
    old = [n for n in dict.fromkeys([marker, *names, *replaces]) if os.path.lexists(folder / n)]
    staging = backup = None
    placed: list[str] = []
    moved: list[str] = []
    current = folder
    restored = True
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
        for name in names:
            current = folder / name
            write_bytes_atomic(staging / name, files[name])
        current = folder
        if old:
            backup = Path(tempfile.mkdtemp(prefix=".previous-", dir=folder))
            for name in old:  # the marker first: never a complete-looking mixed set
                current = folder / name
                _replace(folder / name, backup / name)
                moved.append(name)
        for name in names:  # the marker last
            current = folder / name
            _replace(staging / name, folder / name)
            placed.append(name)
        _fsync_dir(folder)
    except BaseException as exc:
        restored = _roll_back(folder, backup, placed, moved)
        if isinstance(exc, OSError):
            raise write_error(exc, current) from exc
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if backup is not None and restored:
            shutil.rmtree(backup, ignore_errors=True)  # kept if a previous file could not go back
    return {name: folder / name for name in names}


def _roll_back(folder: Path, backup: Path | None, placed: list[str], moved: list[str]) -> bool:
    """Undo a partial commit: new files out, previous files back (the marker last).

    False when some previous file could not be put back (it stays in ``backup``)."""
    for name in reversed(placed):
        try:
            os.unlink(folder / name)
        except OSError:
            pass
    ok = True
    for name in reversed(moved):
        try:
            _replace(backup / name, folder / name)  # type: ignore[operator]
        except OSError:
            ok = False
    return ok
