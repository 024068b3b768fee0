"""The rows' canonical texts and their MD5s in one C pass (``_row_md5.c``), when the kernel was built.

Contract: ``digest(fields, layout, ...)`` gives, for each row of ``fields`` (the fields of
``cutover.digests``' canonical text, in spec order: texts as polars strings; timestamps as Int64
microseconds, or as the loader's text, which the kernel reads itself; numerics and uuids as written, which
it checks as the loader does and writes as PostgreSQL prints them), the same two 64-bit halves of the MD5
of the same text, and the same bucket and separator check, that ``digests``' polars
expressions give for the loader's typed rows. A value of a shape the kernel does not read, or one the
loader would reject, makes it give None: the caller then types by every rule, or uses polars.
``tests/test_row_md5.py`` holds the two equal. It takes polars' columns without a copy and computes no hex: a
4 MiB batch of leads in ~13–14 ms, against ~37 ms for polars' ``concat_str`` and polars-hash's MD5 in hex.

The kernel is built at install (``pyproject.toml``'s ``ext-modules``: an optional C extension, plain C
without Python's API, loaded with ctypes) and takes OpenSSL's ``MD5`` from the libcrypto Python's own
``hashlib`` uses. Where either is missing, ``available()`` is False and ``digests`` keeps its polars
expressions.

Concurrency: the kernel keeps no state; ctypes releases Python's lock around it, so batches digest in
parallel threads.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl

from cutover import kernels

AS_IS, TIMESTAMPS, NUMERICS, UUIDS = 0, 1, 2, 3  # how a UTF-8 field is written (see _row_md5.c)
ERRORS = {-1: "an Arrow stream failed", -2: "a column of a layout other than UTF-8 views or int64",
          -3: "a column not of one chunk of the batch's length", -4: "out of memory",
          -5: "columns or bucket out of range"}
UNREAD_VALUE = -6


class KernelError(RuntimeError):
    """The C kernel refused a batch (a bug of its caller: ``digest`` hands it what it takes)."""


@dataclass(frozen=True)
class Layout:
    """How the kernel writes a spec's fields (see ``cutover.digests``), built once per spec: per column,
    its kind (``AS_IS``, ``TIMESTAMPS``, ``NUMERICS`` or ``UUIDS``), its numeric scale and the most
    significant digits it holds before the point (precision - scale), and its (group, bit) in the NULL
    bitmasks ((-1, 0): never NULL); how many bitmasks; the key's column, whether it is a uuid (else its
    bucket comes from its MD5) and the bucket's bits."""

    kinds: tuple[int, ...]
    scales: tuple[int, ...]
    wholes: tuple[int, ...]
    mask_slots: tuple[tuple[int, int], ...]
    n_masks: int
    key_column: int
    uuid_key: bool
    bucket_bits: int


@dataclass(frozen=True)
class Digests:
    """Per row: its key's bucket, the MD5's halves (``x0``, ``x1``) and whether the row is untrusted
    (None: not asked)."""

    bucket: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    untrusted: np.ndarray | None


def _md5_address() -> int | None:
    """OpenSSL's one-shot ``MD5``: from the libcrypto ``hashlib`` loaded, else the system's."""
    import _hashlib  # noqa: PLC0415 - its library, not its Python API

    for name in (_hashlib.__file__, "libcrypto.so.3", "libcrypto.so"):
        try:
            return ctypes.cast(ctypes.CDLL(name).MD5, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


def kernel_file() -> Path | None:
    """The built kernel's file, if it was built (``cutover.digest_memo`` names it in its rules)."""
    return kernels.built("_row_md5")


@cache
def _kernel() -> tuple[ctypes._CFuncPtr, int, ctypes._CFuncPtr] | None:
    i32, i64, ptr = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p
    fn = kernels.function("_row_md5", "row_md5", i64,
                          (i64, i32, ptr, ptr, ptr, ptr, i32, i32, i32, ptr, ptr, i32, ptr, ptr, ptr, ptr, ptr))
    md5 = _md5_address()
    return None if fn is None or md5 is None else (fn, md5, kernels.capsule_pointer())


def available() -> bool:
    return _kernel() is not None


def digest(fields: pl.DataFrame, layout: Layout, *, check_separators: bool) -> Digests | None:
    """``fields``' rows digested, as ``layout`` says. ``check_separators``: flag rows whose values hold the
    separator. None: a value the kernel does not
    read or the loader would reject (a timestamp, numeric or uuid of another shape, a numeric past the column's
    precision). Needs ``available()``."""
    kernel = _kernel()
    if kernel is None:
        raise KernelError("the row digest kernel is not built")
    fn, md5, capsule = kernel
    fields = fields.rechunk()
    rows, n = fields.height, fields.width
    if not n == len(layout.kinds) == len(layout.scales) == len(layout.wholes) == len(layout.mask_slots):
        raise KernelError(f"{n} fields for a layout of {len(layout.kinds)}")
    streams = [fields.to_series(i).__arrow_c_stream__() for i in range(n)]  # alive until the call returns
    pointers = (ctypes.c_void_p * n)(*(capsule(s, b"arrow_array_stream") for s in streams))
    kinds, scales, wholes = (np.array(v, np.int32) for v in (layout.kinds, layout.scales, layout.wholes))
    group, bit = (np.array(column, np.int32) for column in zip(*layout.mask_slots))
    bucket, x0, x1 = np.empty(rows, np.int64), np.empty(rows, np.uint64), np.empty(rows, np.uint64)
    untrusted = np.empty(rows, np.uint8) if check_separators else None
    done = fn(rows, n, pointers, kinds.ctypes.data, scales.ctypes.data, wholes.ctypes.data, layout.key_column,
              0 if layout.uuid_key else 1, layout.bucket_bits, group.ctypes.data, bit.ctypes.data, layout.n_masks,
              md5, bucket.ctypes.data, x0.ctypes.data, x1.ctypes.data,
              None if untrusted is None else untrusted.ctypes.data)
    if done == UNREAD_VALUE:
        return None
    if done != rows:
        raise KernelError(f"row digest kernel: {ERRORS.get(done, f'code {done}')}")
    return Digests(bucket, x0, x1, None if untrusted is None else untrusted.view(bool))
