"""A batch's record bounds in one C pass (``_record_index.c``), when it was built.

Contract: ``bounds(buf, first_line, count_fields=...)`` gives (starts, ends, stops, lines, fields or None) as
``cutover.csvscan.index_records`` computes them with numpy, for bytes whose quotes are well placed and
closed; for any other bytes it gives None, and numpy's reader, which names the line and column, decides.
``tests/test_record_index.py`` holds the two equal. A 4 MiB batch of leads takes ~2 ms (~2.3 with its fields
counted) against numpy's ~5–6 (~9): numpy makes five passes, each with a temporary the size of the batch.

Built at install as ``cutover._row_md5`` is (``pyproject.toml``'s ``ext-modules``: optional, plain C, loaded
with ctypes). Where it is not, ``available()`` is False and csvscan keeps numpy.

Concurrency: no state; ctypes releases Python's lock around each call, so batches are read in parallel.
"""

from __future__ import annotations

import ctypes
from functools import cache
from pathlib import Path

import numpy as np

from cutover import kernels

MISPLACED_QUOTES, NO_ROOM = -1, -2


def kernel_file() -> Path | None:
    """The built C file's library, if it was built (``cutover.digest_memo`` names it in its rules)."""
    return kernels.built("_record_index")


@cache
def _kernel() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    count = kernels.function("_record_index", "count_line_feeds", i64, (ptr, i64))
    index = kernels.function("_record_index", "index_records", i64, (ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr))
    return None if count is None or index is None else (count, index)


def available() -> bool:
    return _kernel() is not None


def bounds(buf: bytes, first_line: int, *, count_fields: bool
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(starts, ends, stops, lines, fields) of ``buf``'s records (see the module docstring); None when the
    kernel is not built, ``buf`` is empty, or its quotes are not as a well-formed file's are."""
    kernel = _kernel()
    if kernel is None or not len(buf):
        return None
    count, index = kernel
    data = np.frombuffer(buf, dtype=np.uint8)
    capacity = count(data.ctypes.data, len(data)) + 1
    starts, ends, stops, lines = (np.empty(capacity, np.int64) for _ in range(4))
    fields = np.empty(capacity, np.int64) if count_fields else None
    found = index(data.ctypes.data, len(data), first_line, capacity, starts.ctypes.data, ends.ctypes.data,
                  stops.ctypes.data, lines.ctypes.data, None if fields is None else fields.ctypes.data)
    if found == MISPLACED_QUOTES:
        return None
    if found < 0:
        raise RuntimeError(f"record index kernel: code {found}")  # NO_ROOM: count_line_feeds is its bound
    return starts[:found], ends[:found], stops[:found], lines[:found], None if fields is None else fields[:found]
