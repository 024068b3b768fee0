"""Which records of a new file equal a record of its baseline, in memory that does not grow with the files.

Contract: ``Spill.add`` takes a batch of one file's records at a time, each as two 64-bit hashes of its
content (seeds drawn by the caller for the run) and the byte range [start, stop) it fills in its
file; a new file's records also carry the line each starts on and whether it is ``ragged`` (it can
equal no baseline record: never matched). ``match_part`` pairs the two files' records of one part of
the hash space: two records are equal when both hashes are, so a changed record passes for an
unchanged one with a chance near 2^-128 a pair. It gives the new file's records that equal no baseline
record (to be typed and staged) and the baseline's records that no new record equals (their keys are
deleted), each sorted by byte offset; or None when the baseline holds a record twice, or the new file
holds one of the baseline's records twice (only the full load can say what then happens).

Memory: records go to a temporary file, each batch's sorted by part of the hash space (``h1 % parts``),
and are matched a part at a time: about ``MATCH_BYTES`` for each record of the part being matched, whatever
the files' size (``parts_for`` picks how many parts a budget needs). Disk: 32 bytes a baseline record
and 41 a new one, freed by ``close``. Concurrency: a Spill has one writer; the two sides may be
written by two threads at once, and parts matched in any threads once both sides are written.

Keeping: a spill made at a named ``path`` can be ``finish``-ed — its chunk table and a trailer appended,
the file synced — and reopened read-only by ``load`` in a later run, so that a file's record hashes are
computed once, when it is merged, not again when the next file is diffed against it. That is sound only
because the hashes are stable (``cutover.delta.byte_hashes``: xxh3, never polars' own hash) and their
seeds are kept with the file (``cutover.baseline``).
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from cutover import record_pairs
from cutover.errors import CutoverError

BASE = np.dtype([("h1", "<u8"), ("h2", "<u8"), ("start", "<i8"), ("stop", "<i8")])
NEW = np.dtype([("h1", "<u8"), ("h2", "<u8"), ("start", "<i8"), ("stop", "<i8"), ("line", "<i8"),
                ("ragged", "u1")])
MATCH_BYTES = 160  # peak bytes of match_part a record of its part (both sides' records and the sort's arrays)
MAX_PARTS = 1024  # the parts' bounds take 4 bytes a part for each batch added; at most 65,535 (Spill.add)


def parts_for(records: int, budget: int) -> int | None:
    """Parts for matching ``records`` (both sides) with ``budget`` bytes at once; None: more than
    ``MAX_PARTS`` would be needed."""
    parts = max(1, -(-records * MATCH_BYTES // max(1, budget)))
    return parts if parts <= MAX_PARTS else None


_TRAILER = struct.Struct("<16sqqqq")  # magic, record size, parts, chunks, records
_MAGIC = b"cutover-records1"


class _Kept(NamedTuple):
    file: BinaryIO  # open for reading
    chunks: list[tuple[int, np.ndarray]]
    size: int  # of the chunks, without the chunk table and trailer
    records: int


class Spill:
    """One file's records in a temporary file: each batch added is one chunk, its records sorted by part.
    ``path``: a named file there (this process's own; removed by ``close`` unless ``finish``-ed), so
    that it can be kept."""

    def __init__(self, dtype: np.dtype, parts: int, path: Path | None = None, *, _kept: _Kept | None = None) -> None:
        """A new, empty spill (``_kept``: a finished one, as ``load`` read it)."""
        self.dtype, self.parts, self.path = dtype, parts, path
        if _kept is not None:
            self._file, self._chunks, self._size, self.records = _kept
            self._finished = True
            return
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "w+b") if path is not None else tempfile.TemporaryFile(prefix="cutover-match-")
        self._chunks: list[tuple[int, np.ndarray]] = []  # (offset in the file, the parts' bounds in records)
        self._size = 0
        self.records = 0
        self._finished = False

    @classmethod
    def load(cls, path: Path) -> Spill | None:
        """A spill ``finish``-ed by an earlier run, read-only; None if ``path`` is not one."""
        try:
            f = open(path, "rb")
        except OSError:
            return None
        try:
            size = os.fstat(f.fileno()).st_size
            if size < _TRAILER.size:
                raise ValueError
            magic, itemsize, parts, chunks, records = _TRAILER.unpack(os.pread(f.fileno(), _TRAILER.size,
                                                                               size - _TRAILER.size))
            dtype = {BASE.itemsize: BASE, NEW.itemsize: NEW}.get(itemsize)
            table_at = size - _TRAILER.size - 4 * chunks * (parts + 1)
            if magic != _MAGIC or dtype is None or not 1 <= parts <= MAX_PARTS or chunks < 0 or table_at < 0:
                raise ValueError
            table = np.frombuffer(os.pread(f.fileno(), size - _TRAILER.size - table_at, table_at),
                                  dtype="<i4").reshape(chunks, parts + 1)
            lengths = table[:, parts].astype(np.int64) * itemsize
            if int(lengths.sum()) != table_at or int(table[:, parts].sum()) != records:
                raise ValueError
        except (OSError, ValueError, struct.error):
            f.close()
            return None
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).tolist()
        return cls(dtype, int(parts), Path(path), _kept=_Kept(f, list(zip(offsets, table)), table_at, int(records)))

    def add(self, rows: np.ndarray) -> None:
        """Append a batch of records (an array of ``self.dtype``)."""
        # parts fit 16 bits (MAX_PARTS): numpy sorts those by radix, 8x faster than 64-bit keys
        part = (rows["h1"] % np.uint64(self.parts)).astype(np.uint16)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.parts + 1, dtype=np.uint16)).astype(np.int32)
        data = rows[order].view(np.uint8)  # the sorted records' bytes, written without another copy
        self._file.write(data)
        self._chunks.append((self._size, bounds))
        self._size += len(data)
        self.records += len(rows)

    def finish(self) -> None:
        """Append the chunk table and trailer and sync the file, so that ``load`` can read it; it is then
        the caller's to keep or remove (``close`` no longer does). Only for a spill at a ``path``."""
        table = np.array([bounds for _, bounds in self._chunks], dtype="<i4").reshape(len(self._chunks), self.parts + 1)
        self._file.write(table.tobytes())
        self._file.write(_TRAILER.pack(_MAGIC, self.dtype.itemsize, self.parts, len(self._chunks), self.records))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._finished = True

    def part(self, p: int) -> np.ndarray:
        """The records of part ``p`` (any thread, once every batch is added)."""
        self._file.flush()
        size, fd = self.dtype.itemsize, self._file.fileno()
        data = b"".join(os.pread(fd, size * int(bounds[p + 1] - bounds[p]), offset + size * int(bounds[p]))
                        for offset, bounds in self._chunks if bounds[p + 1] > bounds[p])
        return np.frombuffer(data, dtype=self.dtype)

    def close(self) -> None:
        self._file.close()
        if self.path is not None and not self._finished:
            self.path.unlink(missing_ok=True)


def new_rows(h1: np.ndarray, h2: np.ndarray, start: np.ndarray, stop: np.ndarray, line: np.ndarray,
             ragged: np.ndarray | None = None) -> np.ndarray:
    rows = np.empty(len(start), dtype=NEW)
    rows["h1"], rows["h2"], rows["start"], rows["stop"], rows["line"] = h1, h2, start, stop, line
    rows["ragged"] = 0 if ragged is None else ragged
    return rows


def base_rows(h1: np.ndarray, h2: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    rows = np.empty(len(start), dtype=BASE)
    rows["h1"], rows["h2"], rows["start"], rows["stop"] = h1, h2, start, stop
    return rows


@dataclass(frozen=True)
class Matched:
    """One part's outcome."""

    records: int  # the new file's records in the part
    unchanged: int  # of them, those equal to a baseline record
    changed: np.ndarray  # NEW: the others, by start
    gone: np.ndarray  # BASE: the baseline's records no new record equals, by start


def match_part(base: np.ndarray, new: np.ndarray) -> Matched | None:
    """Pair the records of one part (see the module docstring)."""
    ragged = new["ragged"].astype(bool)
    candidates = new[~ragged]
    paired = record_pairs.pair(base, candidates) if record_pairs.available() else _paired_by_sorting(base, candidates)
    if paired is None:
        return None
    base_paired, new_paired = paired
    changed = np.concatenate((candidates[~new_paired], new[ragged]))
    gone = base[~base_paired]
    return Matched(records=len(new), unchanged=int(np.count_nonzero(new_paired)),
                   changed=changed[np.argsort(changed["start"], kind="stable")],
                   gone=gone[np.argsort(gone["start"], kind="stable")])


def _paired_by_sorting(base: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``cutover.record_pairs.pair`` with numpy: both sides sorted by hash, equal records side by side."""
    nb = len(base)
    h1 = np.concatenate((base["h1"], new["h1"]))
    h2 = np.concatenate((base["h2"], new["h2"]))
    order = np.argsort(h1)  # equal records side by side, unless two others share a first hash
    first = _run_starts(h1[order], h2[order], sorted_by_both=False)
    if first is None:  # shared by records whose second hashes differ (~1e-9 a part): sort by both
        order = np.lexsort((h2, h1))
        first = _run_starts(h1[order], h2[order], sorted_by_both=True)
    del h1, h2
    run = np.cumsum(first) - 1
    is_new = order >= nb
    news = np.bincount(run, weights=is_new, minlength=run[-1] + 1 if len(run) else 0)
    bases = np.bincount(run, weights=~is_new, minlength=len(news))
    if (bases > 1).any() or ((bases == 1) & (news > 1)).any():
        return None
    paired = ((bases == 1) & (news == 1))[run]
    base_paired, new_paired = np.zeros(nb, bool), np.zeros(len(new), bool)
    base_paired[order[paired & ~is_new]] = True
    new_paired[order[paired & is_new] - nb] = True
    return base_paired, new_paired


def _run_starts(h1: np.ndarray, h2: np.ndarray, *, sorted_by_both: bool) -> np.ndarray | None:
    """Which sorted records begin a run of equal ones; None if sorted by the first hash only and equal
    first hashes sit beside different second ones (a run could then be split)."""
    same1 = h1[1:] == h1[:-1]
    same2 = h2[1:] == h2[:-1]
    if not sorted_by_both and (same1 & ~same2).any():
        return None
    first = np.ones(len(h1), dtype=bool)
    first[1:] = ~(same1 & same2)
    return first


def read_records(path: Path, rows: np.ndarray) -> bytes:
    """The records ``rows`` (byte ranges, sorted, apart) of the file at ``path``, each ending with a line
    feed; records that follow each other in the file are read at once."""
    if not len(rows):
        return b""
    start, stop = rows["start"], rows["stop"]
    first = np.flatnonzero(np.concatenate(([True], start[1:] != stop[:-1])))  # each run's first record
    last = np.append(first[1:], len(rows)) - 1
    out = bytearray()
    fd = os.open(path, os.O_RDONLY)
    try:
        for a, b in zip(start[first].tolist(), stop[last].tolist()):
            chunk = os.pread(fd, b - a, a)
            if len(chunk) != b - a:
                raise CutoverError(f"{path}: changed while it was read (a snapshot must not change)")
            out += chunk
            if out[-1:] != b"\n":  # only a file's last record may end without one
                out += b"\n"
    finally:
        os.close(fd)
    return bytes(out)
