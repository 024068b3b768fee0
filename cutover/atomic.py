"""Atomic file replacement: readers see the old file or the new one, never a torn mix.

Contract: ``atomic_write(path)`` yields a binary file in the same directory; on clean exit it is
flushed, fsynced and renamed over ``path`` and the directory is fsynced, so the rename survives a
crash. On any exception the temporary file is removed and ``path`` is untouched. The new file
keeps the old one's permissions (or gets the umask's default), not mkstemp's private 0600. Concurrent
writers each rename a complete file; the last rename wins (callers that need more take a lock).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# read once at import (setting the umask is process-wide, so never toggle it later from threads)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
