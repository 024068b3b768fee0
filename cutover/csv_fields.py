"""A batch's records split into their fields by one C pass (``_csv_fields.c``), when it was built.

Contract: ``split(buf, starts, ends, names)`` gives the records ``buf[starts[i]:ends[i]]`` (their content,
without line endings), each of ``len(names)`` fields, as a frame of string columns named ``names``: what
polars' ``read_csv`` reads of the same records (a quoted field's value unescaped, an empty unquoted field
NULL, anything else as written) — ``tests/test_csv_fields.py`` holds the two equal. None when a record has
another number of fields or a quote out of place: the caller then asks polars, which says what is wrong.
The columns come to polars through the Arrow C stream interface, their values views into one copy of the
batch: ~3-4 ms of CPU for a 4 MiB batch of leads, against ~6-7 ms for ``read_csv`` (over its threads).

Where the kernel was not built, ``available()`` is False and the loader keeps ``read_csv``. Concurrency: no
state; ctypes releases Python's lock around each call, so batches are split in parallel.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl

from cutover import kernels

NO_MEMORY = -4


class _Stream(ctypes.Structure):  # struct ArrowArrayStream
    _fields_ = [(name, ctypes.c_void_p) for name in ("get_schema", "get_next", "get_last_error", "release",
                                                    "private_data")]


class _Exported:
    """The PyCapsule interface polars reads a stream from."""

    def __init__(self, capsule: object) -> None:
        self._capsule = capsule

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        return self._capsule


def kernel_file() -> Path | None:
    """The built splitter's file, if it was built (``cutover.digest_memo`` names it in its rules)."""
    return kernels.built("_csv_fields")


@cache
def _kernel() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    fn = kernels.function("_csv_fields", "split_fields", i64, (ptr, i64, ptr, ptr, i64, i32, ptr))
    return None if fn is None else (fn, kernels.new_capsule())


def available() -> bool:
    return sys.byteorder == "little" and _kernel() is not None  # Arrow's views are read as native integers


def split(buf: bytes, starts: np.ndarray, ends: np.ndarray, names: list[str]) -> pl.DataFrame | None:
    """The records' fields (see the module docstring), or None. Needs ``available()``."""
    fn, capsule = _kernel()
    starts, ends = (np.ascontiguousarray(a, dtype=np.int64) for a in (starts, ends))
    stream = _Stream()
    done = fn(buf, len(buf), starts.ctypes.data, ends.ctypes.data, len(starts), len(names), ctypes.byref(stream))
    if done == NO_MEMORY:
        raise MemoryError("csv fields kernel: out of memory")
    if done != 0:
        return None
    try:
        frame = pl.DataFrame(_Exported(capsule(ctypes.addressof(stream), b"arrow_array_stream", None)))
    finally:
        if stream.release:  # not taken: freed here
            ctypes.CFUNCTYPE(None, ctypes.c_void_p)(stream.release)(ctypes.addressof(stream))
    return frame.rename(dict(zip(frame.columns, names)))
