"""Typed rows in PostgreSQL's binary COPY format, by one C pass (``_copy_binary.c``), when it was built.

Contract: ``encode(frame, layout)`` gives the rows of ``frame`` (its columns in a COPY's column order, as
``cutover.coerce`` types them: strings, and int64 for ``_line``) as the tuples of a ``COPY ... (FORMAT
binary)``; a COPY's data is ``SIGNATURE``, the tuples of any number of batches, then ``TRAILER``. The
server then holds what it would have parsed from the same rows as CSV text — ``tests/test_copy_binary.py``
loads both ways and compares. None when a value is not of a shape the kernel reads (a timestamp without
an offset, say): the caller sends that batch as text.

Why: the server parses binary fields for half the work of text. A 1M-row leads file took PostgreSQL 2.9 s
to COPY as CSV and 1.4 s as binary, and on two cores the first load waits on the server's COPY.

Where the kernel was not built, ``available()`` is False and the loader keeps text. Concurrency: no state;
ctypes releases Python's lock around each call, so batches are encoded in parallel.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from dataclasses import dataclass
from functools import cache

import numpy as np
import polars as pl

from cutover import kernels
from cutover.spec import TableSpec

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # no flags, no header extension
TRAILER = b"\xff\xff"
KINDS = {"text": 0, "uuid": 1, "timestamptz": 2, "numeric": 3}
INT8 = 4
UNREAD_VALUE, NO_ROOM = -6, -7
ERRORS = {-1: "an Arrow stream failed", -2: "a column of a layout other than UTF-8 views or int64",
          -3: "a column not of one chunk of the batch's length", -4: "out of memory", -5: "too many columns"}


class KernelError(RuntimeError):
    """The kernel failed in a way no input should make it (a bug, or no memory)."""


@dataclass(frozen=True)
class Layout:
    """How each column of a COPY's rows is encoded: its kind and, for a numeric, its scale."""

    kinds: tuple[int, ...]
    scales: tuple[int, ...]

    @classmethod
    def of(cls, spec: TableSpec) -> Layout:
        """The table's columns in spec order (``INT8``, an int64 column's kind, is for a staging table's
        ``_line``)."""
        return cls(tuple(KINDS[c.type] for c in spec.columns), tuple(c.scale or 0 for c in spec.columns))


@cache
def _kernel() -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    fn = kernels.function("_copy_binary", "copy_binary", i64, (i64, i32, ptr, ptr, ptr, ptr, i64, ptr))
    return None if fn is None else (fn, kernels.capsule_pointer())


def available() -> bool:
    return sys.byteorder == "little" and _kernel() is not None  # Arrow's buffers are read as native integers


def encode(frame: pl.DataFrame, layout: Layout, text_bytes: int) -> memoryview | None:
    """The tuples of ``frame``'s rows (see the module docstring); None: a value the kernel does not read.
    ``text_bytes``: about how many bytes the rows took as CSV, to size the buffer (a buffer too small costs
    a second pass). Needs ``available()``."""
    fn, capsule = _kernel()
    if frame.width != len(layout.kinds):
        raise KernelError(f"{frame.width} columns for a layout of {len(layout.kinds)}")
    if frame.height == 0:
        return memoryview(b"")
    frame = frame.rechunk()
    kinds, scales = np.array(layout.kinds, np.int32), np.array(layout.scales, np.int32)
    # room for each field's length and any value longer than its text (a numeric's header): most batches
    # fit; pages past the end are never touched, so never resident
    needed = ctypes.c_int64(text_bytes + frame.height * (2 + 16 * frame.width))
    for _ in range(2):
        streams = [frame.to_series(i).__arrow_c_stream__() for i in range(frame.width)]  # alive for the call
        pointers = (ctypes.c_void_p * frame.width)(*(capsule(s, b"arrow_array_stream") for s in streams))
        # a map of its own, unmapped once the batch is written: malloc's heaps kept ~15 MB of such buffers
        out = mmap.mmap(-1, max(1, needed.value))
        done = fn(frame.height, frame.width, pointers, kinds.ctypes.data, scales.ctypes.data,
                  ctypes.addressof(ctypes.c_char.from_buffer(out)), len(out), ctypes.byref(needed))
        if done != NO_ROOM:
            break
    if done == UNREAD_VALUE:
        return None
    if done < 0:
        raise KernelError(f"binary COPY kernel: {ERRORS.get(done, f'code {done}')}")
    return memoryview(out)[:done]
