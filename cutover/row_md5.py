"""The rows' canonical texts and their MD5s in one C pass (``_row_md5.c``), when the kernel was built.

Contract: ``digest(fields, ...)`` gives, for each row of ``fields`` (the canonical fields of
``cutover.digests``, in spec order: text as polars strings; timestamps as Int64 microseconds, or as the
loader's text, which the kernel reads itself), the same two 64-bit halves of the MD5 of the same text
that ``digests``' polars expressions give — and the same separator check and character count. A
timestamp of a shape the kernel does not read makes it give None: the caller then uses polars. ``tests/test_row_md5.py`` holds the two equal. It needs no copy
of the batch and computes no hex: a 4 MiB batch of leads in ~12 ms against polars' ~30 ms (its
``concat_str`` and polars-hash's MD5 in hex), and `cutover parity` of 1M rows with ~0.8 s less CPU.

The kernel is built at install (``setup.py``: an optional C extension, plain C without Python's API,
loaded with ctypes) and takes OpenSSL's ``MD5`` from the libcrypto Python's own ``hashlib`` uses. Where
either is missing, ``available()`` is False and ``digests`` keeps its polars expressions.

Concurrency: the kernel keeps no state; ctypes releases Python's lock around it, so batches digest in
parallel threads.
"""

from __future__ import annotations

import ctypes
import importlib.util
from dataclasses import dataclass
from functools import cache

import numpy as np
import polars as pl

SEPARATOR = 0x1F
ERRORS = {-1: "an Arrow stream failed", -2: "a column of a layout other than UTF-8 views or int64",
          -3: "a column not of one chunk of the batch's length", -4: "out of memory", -5: "too many columns"}
UNREAD_TIMESTAMP = -6


class KernelError(RuntimeError):
    """The C kernel refused a batch (a bug of its caller: ``digest`` hands it what it takes)."""


@dataclass(frozen=True)
class Digests:
    """Per row: the MD5's halves (``x0``, ``x1``) and whether the row is untrusted (None: not asked)."""

    x0: np.ndarray
    x1: np.ndarray
    untrusted: np.ndarray | None
    counted: int


def _md5_address() -> int | None:
    """OpenSSL's one-shot ``MD5``: from the libcrypto ``hashlib`` loaded, else the system's."""
    import _hashlib  # noqa: PLC0415 - its library, not its Python API

    for name in (_hashlib.__file__, "libcrypto.so.3", "libcrypto.so"):
        try:
            return ctypes.cast(ctypes.CDLL(name).MD5, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


@cache
def _kernel() -> tuple[ctypes._CFuncPtr, int, ctypes._CFuncPtr] | None:
    spec = importlib.util.find_spec("cutover._row_md5")
    md5 = _md5_address()
    if spec is None or spec.origin is None or md5 is None:
        return None
    fn = ctypes.CDLL(spec.origin).row_md5
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_int32,
                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p]
    capsule = ctypes.pythonapi.PyCapsule_GetPointer
    capsule.restype, capsule.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return fn, md5, capsule


def available() -> bool:
    return _kernel() is not None


def digest(fields: pl.DataFrame, mask_slots: list[tuple[int, int]], n_masks: int, *, check_separators: bool,
           count: str | None = None, timestamps: list[bool] | None = None) -> Digests | None:
    """``fields``' rows digested. ``mask_slots[c]``: (group, bit) of column c's NULL flag in the bitmasks
    (group -1: the column is never NULL); ``check_separators``: flag rows whose values hold the separator;
    ``count``: one ASCII character to count in the texts; ``timestamps[c]``: column c is timestamps as
    text. None: a timestamp the kernel does not read. Needs ``available()``."""
    kernel = _kernel()
    if kernel is None:
        raise KernelError("the row digest kernel is not built")
    fn, md5, capsule = kernel
    if count is not None and (len(count) != 1 or not count.isascii()):
        raise ValueError(f"can count one ASCII character, not {count!r}")
    fields = fields.rechunk()
    rows, n = fields.height, fields.width
    streams = [fields.to_series(i).__arrow_c_stream__() for i in range(n)]  # alive until the call returns
    pointers = (ctypes.c_void_p * n)(*(capsule(s, b"arrow_array_stream") for s in streams))
    stamps = np.array(timestamps or [False] * n, np.int32)
    group = np.array([g for g, _ in mask_slots], np.int32)
    bit = np.array([b for _, b in mask_slots], np.int32)
    x0, x1 = np.empty(rows, np.uint64), np.empty(rows, np.uint64)
    untrusted = np.empty(rows, np.uint8) if check_separators else None
    counted = ctypes.c_int64(0)
    done = fn(rows, n, pointers, stamps.ctypes.data, group.ctypes.data, bit.ctypes.data, n_masks, md5, x0.ctypes.data, x1.ctypes.data,
              None if untrusted is None else untrusted.ctypes.data, ord(count) if count else 0,
              ctypes.byref(counted) if count else None)
    if done == UNREAD_TIMESTAMP:
        return None
    if done != rows:
        raise KernelError(f"row digest kernel: {ERRORS.get(done, f'code {done}')}")
    return Digests(x0, x1, None if untrusted is None else untrusted.view(bool), counted.value)
