"""Atomic file replacement: readers see the old file or the new one, never a torn mix.

Contract: ``atomic_write(path)`` yields a binary file in the same directory; on clean exit it is
flushed, fsynced and renamed over ``path`` and the directory is fsynced, so the rename survives a
crash. On any exception the temporary file is removed and ``path`` is untouched; a failure to write
(disk full, read-only filesystem, no permission) is raised as ``WriteFailed``, an ``OSError`` whose
message names ``path`` (polars' own disk-full error names no file). The new file keeps the old
one's permissions (or gets the umask's default), not mkstemp's private 0600. Concurrent writers
each rename a complete file; the last rename wins (callers that need more take a lock).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cutover.errors import WriteFailed

# read once at import (setting the umask is process-wide, so never toggle it later from threads)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


# errors that writing the temporary file can cause and reading another file cannot
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _errno(exc: OSError) -> int | None:
    if exc.errno is not None:
        return exc.errno
    found = re.search(r"\(os error (\d+)\)", str(exc))  # how Rust writers (polars) report an io error
    return int(found.group(1)) if found else None


def _failed(path: Path, exc: OSError, outcome: str | None = None) -> WriteFailed:
    code = _errno(exc)
    outcome = outcome or ("it was left as it was" if os.path.lexists(path) else "nothing was written")
    reason = exc.strerror or (os.strerror(code) if code is not None else str(exc))
    return WriteFailed(path, code, reason, failed_path=exc.filename, outcome=outcome)


@contextmanager
def _naming(path: Path, outcome: str | None = None) -> Iterator[None]:
    try:
        yield
    except WriteFailed:
        raise
    except OSError as exc:
        raise _failed(path, exc, outcome) from exc


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with _naming(path):
            os.fchmod(fd, _mode_for(path))
        f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        try:
            yield f
        except OSError as exc:
            if _errno(exc) in _WRITE_ERRNOS:  # the caller's writes into f: disk full, read-only
                raise _failed(path, exc) from exc
            raise
        with _naming(path):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, path)
    except BaseException:
        try:
            f.close()
        except OSError:
            pass  # its buffer cannot be flushed (disk full): the file is discarded anyway
        Path(tmp).unlink(missing_ok=True)
        raise
    with _naming(path, "it was replaced, but the rename may not survive a crash"):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def unlink_quietly(*paths: Path) -> None:
    """Unlink each path if it is there; an error is ignored (never mask the error being reported: a
    later run reaps what is left)."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
