"""One table's CSV file as a keyed row store: the CSV store an application reads and writes through.

Values are CSV text: ``str``, or ``None`` for NULL (an empty unquoted field); ``''`` is an empty
string (``""`` in the file), distinct from NULL. The file format is the loader's and the export's:
a header line in spec column order, every non-NULL value quoted, NULL as an empty unquoted field,
UTF-8, ``\\n`` line ends; values may hold commas, quotes and line breaks (``\\r\\n`` inside a value
round-trips byte-exactly). Reading accepts what the loader accepts (header in any order, a BOM,
CRLF line ends, blank lines); a record with the wrong number of fields, a misplaced quote or
invalid UTF-8 is a ``StructuralError``, because rewriting around it would silently drop data.

Contract:

- ``get``/``get_many``/``scan``/``keys`` stream the file in batches of about ``BATCH_BYTES`` (memory
  is bounded by the batch, plus the result); a missing file has no rows. Each call reads the file
  once: to look up many keys use ``get_many``, not ``get`` in a loop.
- ``apply(upserts, deletes)`` is one atomic rewrite (``cutover.atomic.atomic_write``: temp file in
  the same directory, fsync, rename, directory fsync, permissions kept). It streams the old file
  batch by batch: an upserted key's row is replaced where it stands (later duplicates of that key
  are dropped), a new key is appended at the end, deleted keys are removed, every other row is
  copied (re-emitted in the canonical format). On any error the old file is untouched. Memory is
  bounded by the batch plus the upserts. Nothing to change leaves the file as it is.
- Input is validated before anything is touched: every row has exactly the spec's columns, values
  are ``str``/``None`` without NUL (PostgreSQL text cannot hold it), the key is a non-empty string,
  no key is upserted twice or both upserted and deleted. Violations raise ``InvalidRow``
  (a ``ValueError`` and a ``CutoverError``) naming the table and key.

Concurrency model: writers serialize on an exclusive ``fcntl.flock`` of a sibling ``<name>.lock``
file (never deleted: deleting a lock file lets two writers lock different inodes). ``apply`` takes
it itself; a read-modify-write must hold ``locked()`` across its reads and its ``apply`` (the lock
is re-entrant within a thread, whichever ``CsvStore`` object takes it). Waiting longer than
``lock_timeout_s`` raises ``StoreLocked``. Readers take no lock: each read opens the file once and
reads that inode to the end, and writers only ever rename a complete file over it, so a reader sees
the old rows or the new ones, never a torn mix. Anything else that replaces the file (a restore, an
export) without taking the lock may lose a concurrent ``apply``'s update, or have its own lost.
flock is advisory, per open file description, and unreliable on some network filesystems.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import polars as pl

from cutover import csvscan
from cutover.atomic import atomic_write
from cutover.errors import CutoverError, StructuralError, WriteFailed
from cutover.spec import TableSpec

Row = dict[str, str | None]
BATCH_BYTES = 1 << 20  # peak memory is ~20-30x this (numpy indexes, polars buffers), so keep it small
_MAX_HEADER_BYTES = csvscan.MAX_HEADER_BYTES
DEAD_TEMPORARY_S = 600  # a rewrite that has not touched its temporary file for this long was killed


class StoreLocked(CutoverError):
    """Another writer held the store's lock for longer than the timeout; nothing was written."""

    def __init__(self, path: Path, lock_path: Path, timeout_s: float):
        self.path, self.lock_path, self.timeout_s = Path(path), Path(lock_path), timeout_s
        super().__init__(f"{path}: could not lock {lock_path} within {timeout_s:g} s (another writer holds it);"
                         " nothing was written, retry later")


class InvalidRow(CutoverError, ValueError):
    """A row (or key) given to the store does not fit the table's spec; nothing was written."""


class _Unchanged(Exception):
    """Raised inside ``atomic_write`` to discard a rewrite that would change nothing."""


_held = threading.local()  # lock file -> depth, for this thread


def _held_locks() -> dict[str, int]:
    if not hasattr(_held, "depth"):
        _held.depth = {}
    return _held.depth


def _write_rows(f: BinaryIO, frame: pl.DataFrame) -> None:
    # All columns are String, so non_numeric quotes every non-NULL value ('' -> "") and leaves NULL empty.
    frame.write_csv(f, include_header=False, quote_style="non_numeric", line_terminator="\n")


def _first_record_end(data: bytes, start: int) -> int | None:
    """Offset just past the first newline outside quotes at or after ``start``."""
    pos = start
    while (nl := data.find(b"\n", pos)) >= 0:
        if data.count(b'"', start, nl) % 2 == 0:
            return nl + 1
        pos = nl + 1
    return None


def _last_record_end(buf: bytes) -> int:
    """Offset just past the last newline outside quotes in ``buf`` (which starts on a record
    boundary), or 0. Walks back from the end; each byte's quotes are counted once."""
    parity, pos = buf.count(b'"') & 1, len(buf)
    while (nl := buf.rfind(b"\n", 0, pos)) >= 0:
        parity ^= buf.count(b'"', nl, pos) & 1  # now: parity of the quotes before nl
        if parity == 0:
            return nl + 1
        pos = nl
    return 0


class CsvStore:
    def __init__(self, path: Path, spec: TableSpec, *, lock_timeout_s: float = 30.0):
        self.path = Path(path)
        self.spec = spec
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout_s = lock_timeout_s
        self._pk = spec.primary_key
        self._columns = spec.column_names
        self._schema = {c: pl.String for c in self._columns}

    # ----------------------------------------------------------------------------------- reads

    def get(self, key: str) -> Row | None:
        """The row with this key (the first, should the file hold it twice), or None. Batches that
        cannot hold the key are skipped unparsed, so a point read does not vet the whole file."""
        self._check_key(key, "get")
        # A batch that does not contain the key's text (quotes doubled, as in the file) cannot hold it.
        needle = key.replace('"', '""').encode("utf-8")
        for frame in self._frames(needle=needle):
            hit = (frame.get_column(self._pk) == key).arg_true()
            if len(hit):
                return frame.row(hit[0], named=True)
        return None

    def get_many(self, keys: Iterable[str]) -> dict[str, Row]:
        """The rows with these keys, in one pass over the file (absent keys are left out). Use it
        rather than ``get`` in a loop: every ``get`` reads the file."""
        if isinstance(keys, (str, bytes)):
            raise InvalidRow(f"{self.spec.name}: get_many takes a list of keys, not a single key")
        wanted = set(keys)
        for key in wanted:
            self._check_key(key, "get")
        found: dict[str, Row] = {}
        if not wanted:
            return found
        wanted_s = pl.Series(sorted(wanted), dtype=pl.String)
        for frame in self._frames():
            hit = frame.filter(frame.get_column(self._pk).is_in(wanted_s))
            for row in hit.iter_rows(named=True):
                found.setdefault(row[self._pk], row)  # the first occurrence, as get
        return found

    def scan(self, filters: Mapping[str, str | None] | None = None, *, after: str | None = None,
             limit: int | None = None) -> list[Row]:
        """Rows equal to every filter (``None`` matches NULL), ordered by key (string order), with
        key > ``after``; at most ``limit`` of them. Memory: one batch plus ``limit`` rows."""
        filters = dict(filters or {})
        unknown = sorted(set(filters) - set(self._columns))
        if unknown:
            raise InvalidRow(f"{self.spec.name}: cannot filter on unknown column(s) {', '.join(unknown)}")
        for c, v in filters.items():
            if v is not None and not isinstance(v, str):
                raise InvalidRow(f"{self.spec.name}: filter {c} must be text or None, not {type(v).__name__}")
        if after is not None and not isinstance(after, str):
            raise InvalidRow(f"{self.spec.name}: 'after' must be a key (text)")
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InvalidRow(f"{self.spec.name}: limit must be a non-negative integer")
        if limit == 0:
            return []
        conds = [pl.col(c).is_null() if v is None else pl.col(c) == v for c, v in filters.items()]
        if after is not None:
            conds.append(pl.col(self._pk) > after)
        best = pl.DataFrame(schema=self._schema)
        parts = []
        for frame in self._frames():
            match = frame.filter(*conds) if conds else frame
            if not match.height:
                continue
            if limit is None:
                parts.append(match)
            else:  # keep only the running smallest `limit` keys; stable, so file order breaks ties
                best = pl.concat([best, match]).sort(self._pk, maintain_order=True, nulls_last=True).head(limit)
        if limit is None:
            best = pl.concat([best, *parts]).sort(self._pk, maintain_order=True, nulls_last=True)
        return best.to_dicts()

    def keys(self) -> set[str]:
        """Every key in the file (memory grows with the number of rows)."""
        out: set[str] = set()
        for frame in self._frames():
            out.update(frame.get_column(self._pk).drop_nulls().to_list())
        return out

    # ---------------------------------------------------------------------------------- writes

    def upsert(self, rows: Iterable[Mapping[str, str | None]]) -> None:
        self._apply(rows, ())

    def delete(self, keys: Iterable[str]) -> int:
        """Remove these keys; returns how many of them existed."""
        return self._apply((), keys)

    def apply(self, upserts: Iterable[Mapping[str, str | None]], deletes: Iterable[str] = ()) -> None:
        """One atomic rewrite under the lock (see the module docstring)."""
        self._apply(upserts, deletes)

    def _apply(self, upserts: Iterable[Mapping[str, str | None]], deletes: Iterable[str]) -> int:
        for name, value in (("upserts", upserts), ("deletes", deletes)):
            if isinstance(value, (str, bytes, Mapping)):  # one row or key where a list of them belongs
                raise InvalidRow(f"{self.spec.name}: {name} must be a list, not a single {type(value).__name__}")
        rows, delete_keys = self._validated(list(upserts), list(deletes))
        with self.locked():
            try:
                return self._rewrite(rows, delete_keys)
            except _Unchanged:
                return 0

    def _rewrite(self, rows: dict[str, Row], delete_keys: set[str]) -> int:
        pk = self._pk
        upd_keys = pl.Series(list(rows), dtype=pl.String)
        dels = pl.Series(sorted(delete_keys), dtype=pl.String)
        written: set[str] = set()  # upserted keys already emitted in place
        found_deletes: set[str] = set()
        existed = self.path.exists()
        with atomic_write(self.path) as out:
            out.write((",".join(self._columns) + "\n").encode("utf-8"))
            for frame in self._frames():
                if len(dels):
                    gone = frame.get_column(pk).is_in(dels)
                    if gone.any():
                        found_deletes.update(frame.get_column(pk).filter(gone).to_list())
                        frame = frame.filter(~gone)
                if rows:
                    frame = self._replace(frame, rows, upd_keys, written)
                _write_rows(out, frame)
            new = [row for key, row in rows.items() if key not in written]
            if new:
                _write_rows(out, pl.DataFrame(new, schema=self._schema))
            if existed and not rows and not found_deletes:
                raise _Unchanged  # discards the temporary file: the old one stays as it was
        return len(found_deletes)

    def _replace(self, frame: pl.DataFrame, rows: dict[str, Row], upd_keys: pl.Series,
                 written: set[str]) -> pl.DataFrame:
        """``frame`` with the upserted rows in place of their keys' rows (eager Series operations:
        cheap per call, and the number of hits is at most the number of upserts)."""
        keys = frame.get_column(self._pk)
        hit = keys.is_in(upd_keys)
        if not hit.any():
            return frame
        at: list[int] = []
        repeats: list[int] = []
        for i, key in zip(hit.arg_true().to_list(), keys.filter(hit).to_list()):
            # A key upserted once stands once: a repeat (duplicate in the file) is dropped.
            (repeats if key in written else at).append(i)
            written.add(key)
        if at:
            new = [rows[keys[i]] for i in at]
            frame = pl.DataFrame([
                frame.get_column(c) if c == self._pk
                else frame.get_column(c).clone().scatter(at, pl.Series([r[c] for r in new], dtype=pl.String))
                for c in self._columns])
        if repeats:
            frame = frame.filter(~pl.int_range(frame.height).is_in(repeats))
        return frame

    def _validated(self, upserts: list[Mapping[str, str | None]], deletes: list[str]
                   ) -> tuple[dict[str, Row], set[str]]:
        table, pk, expected = self.spec.name, self._pk, set(self._columns)
        rows: dict[str, Row] = {}  # key -> row, in the order given
        for i, row in enumerate(upserts):
            if not isinstance(row, Mapping):
                raise InvalidRow(f"{table}: upsert #{i} is a {type(row).__name__}, not a mapping of column to text")
            key = row.get(pk)
            who = f"{table}: row {key!r}" if isinstance(key, str) and key else f"{table}: upsert #{i}"
            if set(row) != expected:
                missing = sorted(expected - set(row))
                unknown = sorted(map(str, set(row) - expected))
                raise InvalidRow(f"{who}: columns must be exactly the spec's"
                                 + (f"; missing {', '.join(missing)}" if missing else "")
                                 + (f"; unknown {', '.join(unknown)}" if unknown else ""))
            self._check_key(key, "upsert", who=who)
            for c in self._columns:
                v = row[c]
                if v is None:
                    continue
                if not isinstance(v, str):
                    raise InvalidRow(f"{who}: {c} must be text or None, not {type(v).__name__}")
                self._check_text(v, f"{who}: {c}")
            if key in rows:
                raise InvalidRow(f"{who}: the key is upserted twice in one apply")
            rows[key] = {c: row[c] for c in self._columns}
        delete_keys: set[str] = set()
        for key in deletes:
            self._check_key(key, "delete")
            if key in rows:
                raise InvalidRow(f"{table}: key {key!r} is both upserted and deleted in one apply")
            delete_keys.add(key)
        return rows, delete_keys

    def _check_key(self, key: object, what: str, who: str | None = None) -> None:
        who = who or f"{self.spec.name}: {what} {key!r}"
        if not isinstance(key, str) or not key:
            raise InvalidRow(f"{who}: the primary key {self._pk} must be non-empty text")
        self._check_text(key, f"{who}: {self._pk}")

    @staticmethod
    def _check_text(value: str, where: str) -> None:
        if "\x00" in value:
            raise InvalidRow(f"{where}: contains a NUL character (PostgreSQL text cannot hold it)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRow(f"{where}: is not encodable as UTF-8 (a lone surrogate?)") from None

    # ------------------------------------------------------------------------------------ lock

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's exclusive inter-process write lock (re-entrant within a thread)."""
        name = os.path.realpath(self.lock_path)
        held = _held_locks()
        if held.get(name):
            held[name] += 1
            try:
                yield
            finally:
                held[name] -= 1
            return
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:  # read-only directory, no permission: say which store cannot be written
            raise WriteFailed(self.path, exc.errno, exc.strerror or str(exc), failed_path=exc.filename,
                              outcome="nothing was written") from exc
        try:
            deadline = time.monotonic() + self.lock_timeout_s
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StoreLocked(self.path, self.lock_path, self.lock_timeout_s) from None
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, 0.01)
            held[name] = 1
            self._reap_dead_temporaries()
            try:
                yield
            finally:
                del held[name]
        finally:
            os.close(fd)  # releases the flock

    def _reap_dead_temporaries(self) -> None:
        """Remove the temporary files of writers killed mid-rewrite (``atomic_write``'s
        ``.<name>.*.tmp``). Called under the lock; a file untouched for ``DEAD_TEMPORARY_S`` is taken
        for dead, so a writer that replaces the file without the lock (see above) keeps its own."""
        cutoff = time.time() - DEAD_TEMPORARY_S
        for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except OSError:  # gone already, or a read-only store: nothing to clean, nothing lost
                pass

    # ---------------------------------------------------------------------------------- reading

    def _frames(self, needle: bytes | None = None) -> Iterator[pl.DataFrame]:
        """The file's rows as String frames in spec column order, batch by batch, all read from one
        open file (one inode, whatever renames happen meanwhile). With ``needle``, batches whose
        bytes do not contain it are skipped unparsed."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            names, data, line = self._header(f)
            while True:
                block = f.read(BATCH_BYTES)
                buf = data + block if data else block
                if block:
                    cut = _last_record_end(buf)
                    if cut == 0:  # one record longer than the batch so far: read on
                        data = buf
                        continue
                else:
                    if buf.count(b'"') & 1:
                        raise StructuralError(self.path, "unterminated quoted field: a quote is never closed",
                                              line=line)
                    cut = len(buf)
                chunk, data = buf[:cut], buf[cut:]
                if chunk and (needle is None or needle in chunk):
                    yield self._parse(chunk, names, line)
                line += chunk.count(b"\n")
                if not block:
                    return

    def _header(self, f: BinaryIO) -> tuple[tuple[str, ...], bytes, int]:
        """(column names in file order, bytes read past the header, line of the first record)."""
        head = b""
        while True:
            block = f.read(1 << 16)
            head += block
            end = _first_record_end(head, 0)
            if end is not None or not block:
                break
            if len(head) > _MAX_HEADER_BYTES:
                raise StructuralError(self.path, f"no end of the header line within {_MAX_HEADER_BYTES} bytes", line=1)
        if end is None:
            end = len(head)
        raw = head[:end]
        skip = len(csvscan.BOM) if raw.startswith(csvscan.BOM) else 0
        try:
            text = raw[skip:].decode("utf-8")
        except UnicodeDecodeError:
            raise StructuralError(self.path, "invalid UTF-8 in the header", line=1) from None
        names = tuple(n.strip() for n in next(csv.reader(io.StringIO(text.rstrip("\r\n")), strict=True), []))
        if not any(names):
            raise StructuralError(self.path, "no header line naming the columns", line=1)
        if len(set(names)) != len(names) or set(names) != set(self._columns):
            raise StructuralError(self.path, f"header {', '.join(names)} does not name the columns of"
                                  f" {self.spec.name} ({', '.join(self._columns)}) exactly once each", line=1)
        return names, head[end:], 1 + raw.count(b"\n")

    def _parse(self, chunk: bytes, names: tuple[str, ...], first_line: int) -> pl.DataFrame:
        idx = csvscan.index_records(chunk, first_line, self.path)  # raises on misplaced quotes
        counted = ~idx.blank
        ragged = counted & (idx.fields != len(names))
        if ragged.any():
            i = int(ragged.nonzero()[0][0])
            raise StructuralError(self.path, f"expected {len(names)} fields, found {int(idx.fields[i])}",
                                  line=int(idx.lines[i]))
        rows = int(counted.sum())
        if not rows:
            return pl.DataFrame(schema=self._schema)
        if not counted.all():  # blank lines: polars must see exactly the records
            chunk = b"".join(chunk[idx.starts[i]:idx.ends[i]] + b"\n" for i in counted.nonzero()[0])
        try:
            frame = pl.read_csv(io.BytesIO(chunk), has_header=False, new_columns=list(names),
                                schema={n: pl.String for n in names}, quote_char='"')
        except pl.exceptions.ComputeError:
            # polars validates UTF-8 itself; decode only on failure, to say where (a str copy is 4x the batch)
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError as e:
                raise StructuralError(self.path, f"invalid UTF-8 byte 0x{chunk[e.start]:02x} (the file must be UTF-8)",
                                      line=first_line + chunk.count(b"\n", 0, e.start)) from None
            raise
        if frame.height != rows:  # the record index and polars must agree
            raise StructuralError(self.path, f"internal error: {frame.height} rows parsed, {rows} expected",
                                  line=first_line)
        return frame if names == self._columns else frame.select(self._columns)
