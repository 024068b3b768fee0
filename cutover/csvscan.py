"""Structural reading of a table's CSV file (RFC 4180, UTF-8, ``,`` and ``"``).

Two passes, both streaming with memory bounded by the batch size:

1. ``scan_file`` reads the file once, block by block: it checks the header against the spec,
   validates UTF-8, tracks quote parity to find record boundaries, cuts the file into batches of
   about ``batch_bytes`` that start and end on a record boundary, and computes the file's sha256.
   Anything that makes the file as a whole unreadable — no header, a missing, unknown or repeated
   column, invalid UTF-8, a quote left open at end of file — is a ``StructuralError`` naming the
   file, line and column. ``ScanStream`` hands out each batch as soon as it is cut, so that a
   consumer can work on the first batches while the scan reads the rest.
2. ``index_records`` takes one batch's bytes and returns, in one C pass (with numpy where that is not
   built), where each record starts and ends, its source line and (unless told not to) its field
   count — the facts a CSV parser hides (polars pads short rows and cannot say on which line a row
   began). A quote inside an unquoted field or text after a closing quote makes the rest of the file
   ambiguous and is a ``StructuralError``.

Records that are blank are skipped (not counted); records with the wrong number of fields are the
caller's to reject. Everything else is handed to polars as well-formed CSV.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cutover import record_index
from cutover.errors import StructuralError

QUOTE, COMMA, LF, CR = 0x22, 0x2C, 0x0A, 0x0D
BOM = b"\xef\xbb\xbf"
MAX_HEADER_BYTES = 1 << 20
END_OF_FILE = 1 << 62  # end_line of the last batch


@dataclass(frozen=True)
class Header:
    names: tuple[str, ...]  # as in the file, in file order
    data_start: int  # byte offset of the first data record
    data_line: int  # its line number (1-based; the header is line 1)


@dataclass(frozen=True)
class Batch:
    index: int
    start: int  # byte offsets [start, end) in the file, on record boundaries
    end: int
    first_line: int  # source line of the first record in the batch
    end_line: int  # first line of the next batch (records of this one start before it)


@dataclass(frozen=True)
class FileScan:
    path: Path
    size: int
    sha256: str
    header: Header
    batches: tuple[Batch, ...]


def _line_and_column(data: bytes, offset: int, first_line: int) -> tuple[int, int]:
    """1-based line and character column of ``offset`` in ``data`` (which starts at ``first_line``)."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return first_line + data.count(b"\n", 0, offset), column


def read_header(path: Path, expected: tuple[str, ...]) -> Header:
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    if not head.strip():
        raise StructuralError(path, "the file is empty: expected a header line naming the columns", line=1)
    skip = len(BOM) if head.startswith(BOM) else 0
    end = _first_record_end(head, skip)
    if end is None:
        raise StructuralError(path, f"no end of the header line within the first {MAX_HEADER_BYTES} bytes", line=1)
    raw = head[skip:end]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line, col = _line_and_column(raw, e.start, 1)
        raise StructuralError(path, f"invalid UTF-8 byte 0x{raw[e.start]:02x} in the header (character {col})",
                              line=line) from None
    names = tuple(n.strip() for n in next(csv.reader(io.StringIO(text.rstrip("\r\n")), strict=True), []))
    if not any(names):
        raise StructuralError(path, "the header line is blank: expected the column names", line=1)
    problems = []
    seen: set[str] = set()
    repeated = sorted({n for n in names if n in seen or seen.add(n)})
    if repeated:
        problems.append(f"repeated column(s) {', '.join(repeated)}")
    unknown = [n for n in names if n not in expected]
    if unknown:
        problems.append(f"unknown column(s) {', '.join(repr(n) for n in unknown)} (the table has no such column;"
                        " loading would drop it)")
    missing = [n for n in expected if n not in names]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if problems:
        raise StructuralError(path, "header: " + "; ".join(problems), line=1)
    return Header(names=names, data_start=end, data_line=1 + raw.count(b"\n") + (0 if raw.endswith(b"\n") else 1))


def _first_record_end(data: bytes, start: int) -> int | None:
    """Offset just past the first newline outside quotes at or after ``start``."""
    pos = start
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return len(data) if len(data) < MAX_HEADER_BYTES else None
        if data.count(b'"', start, nl) % 2 == 0:
            return nl + 1
        pos = nl + 1


def _is_utf8(data: bytes) -> bool:
    """Validity only, at memory speed (Python's decoder builds a str: 25x slower on mixed text)."""
    try:
        pl.Series([data], dtype=pl.Binary).cast(pl.String)
        return True
    except pl.exceptions.ComputeError:
        return False


def _incomplete_utf8_tail(block: bytes) -> int:
    """How many bytes at the end of ``block`` begin a UTF-8 sequence the block does not finish."""
    for back in range(1, min(4, len(block)) + 1):
        byte = block[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII)
            need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return back if need > back else 0
    return 0


def _last_record_boundary(block: bytes, parity_at_end: int) -> int | None:
    """Index just past the last newline in ``block`` that lies outside quotes, if any."""
    pos, parity, upto = len(block), parity_at_end, len(block)
    while True:
        nl = block.rfind(b"\n", 0, pos)
        if nl < 0:
            return None
        parity ^= block.count(b'"', nl, upto) & 1
        if parity == 0:
            return nl + 1
        pos = upto = nl


def scan_batches(path: Path, expected: tuple[str, ...], batch_bytes: int) -> Generator[Batch, None, FileScan]:
    """Pass 1 as a stream: yields each batch as soon as the scan has passed its end, and returns the
    ``FileScan`` once the whole file is read. A structural error is raised where the scan finds it —
    possibly after batches were yielded, so a consumer applies nothing before the scan has returned."""
    path = Path(path)
    size = path.stat().st_size
    header = read_header(path, expected)
    digest = hashlib.sha256()
    batches: list[Batch] = []
    batch_start, batch_line = header.data_start, header.data_line
    quotes = newlines = 0  # counts over the bytes before the current block (data part only)
    carry = b""  # an unfinished UTF-8 sequence from the previous block
    with open(path, "rb") as f:
        digest.update(f.read(header.data_start))
        offset = header.data_start
        while block := f.read(batch_bytes):
            digest.update(block)
            pending = carry + block
            tail = _incomplete_utf8_tail(pending) if len(block) == batch_bytes else 0
            complete = pending[: len(pending) - tail]
            if not _is_utf8(complete):
                try:
                    complete.decode("utf-8")
                except UnicodeDecodeError as e:  # the slow decoder finds where
                    _raise_utf8(path, offset - len(carry) + e.start)
            carry = pending[len(pending) - tail:]
            a = np.frombuffer(block, dtype=np.uint8)  # numpy counts bytes ~8x faster than bytes.count, GIL released
            block_quotes = int(np.count_nonzero(a == QUOTE))
            cut = _last_record_boundary(block, (quotes + block_quotes) & 1)
            if cut is not None and offset + cut - batch_start >= batch_bytes // 2:
                next_line = header.data_line + newlines + int(np.count_nonzero(a[:cut] == LF))
                batches.append(Batch(len(batches), batch_start, offset + cut, batch_line, next_line))
                yield batches[-1]
                batch_start, batch_line = offset + cut, next_line
            quotes += block_quotes
            newlines += int(np.count_nonzero(a == LF))
            offset += len(block)
        if carry:
            _raise_utf8(path, offset - len(carry))
    if quotes & 1:
        _raise_unterminated(path, batch_start)
    if batch_start < size:
        batches.append(Batch(len(batches), batch_start, size, batch_line, END_OF_FILE))
        yield batches[-1]
    return FileScan(path=path, size=size, sha256=digest.hexdigest(), header=header, batches=tuple(batches))


def scan_file(path: Path, expected: tuple[str, ...], batch_bytes: int) -> FileScan:
    """Pass 1 (see module docstring), whole."""
    return ScanStream.start(path, expected, batch_bytes).finish()


class ScanStream:
    """Pass 1 consumed while it runs, so that work on the first batches need not wait for the last.

    ``batches()`` yields every batch in file order, from the first, scanning (``scan_batches``) only
    when it passes the last batch scanned so far — so a second pass, or one after ``finish``, costs no
    scan. ``finish()`` scans whatever is left and returns the ``FileScan``. One consumer at a time, in
    one thread: a batch is scanned when it is first asked for. ``name_errors`` maps a structural error
    before it is raised (a caller scanning a copy names the original file); once raised, the same
    error is raised again by any later call."""

    def __init__(self, header: Header, size: int, scan: Generator[Batch, None, FileScan],
                 name_errors: Callable[[StructuralError], StructuralError] = lambda exc: exc):
        self.header, self.size = header, size
        self._scan = scan
        self._name_errors = name_errors
        self._scanned: list[Batch] = []
        self._done: FileScan | None = None
        self._failed: StructuralError | None = None

    @classmethod
    def start(cls, path: Path, expected: tuple[str, ...], batch_bytes: int,
              name_errors: Callable[[StructuralError], StructuralError] = lambda exc: exc) -> ScanStream:
        """The scan of ``path``, its header read now (a bad header raises here)."""
        try:
            header = read_header(path, expected)
        except StructuralError as exc:
            raise name_errors(exc) from None
        return cls(header, Path(path).stat().st_size, scan_batches(path, expected, batch_bytes), name_errors)

    @classmethod
    def of(cls, fscan: FileScan) -> ScanStream:
        """A scan already finished, as a stream."""
        def replay() -> Generator[Batch, None, FileScan]:
            yield from fscan.batches
            return fscan
        return cls(fscan.header, fscan.size, replay())

    def batches(self) -> Iterator[Batch]:
        at = 0
        while True:
            if at < len(self._scanned):
                yield self._scanned[at]
                at += 1
            elif self._done is not None:
                return
            elif self._failed is not None:
                raise self._failed
            else:
                self._scan_one()

    def _scan_one(self) -> None:
        try:
            self._scanned.append(next(self._scan))
        except StopIteration as end:
            self._done = end.value
        except StructuralError as exc:
            self._failed = self._name_errors(exc)
            raise self._failed from None

    def finish(self) -> FileScan:
        while self._done is None:
            if self._failed is not None:
                raise self._failed
            self._scan_one()
        return self._done


def _locate(path: Path, offset: int) -> tuple[int, int]:
    """Line and character column of a byte offset, streaming (error paths only)."""
    line, line_start_bytes = 1, b""
    with open(path, "rb") as f:
        pos = 0
        while pos < offset:
            block = f.read(min(1 << 20, offset - pos))
            if not block:
                break
            nl = block.rfind(b"\n")
            if nl >= 0:
                line += block.count(b"\n")
                line_start_bytes = block[nl + 1:]
            else:
                line_start_bytes += block
            pos += len(block)
    return line, len(line_start_bytes.decode("utf-8", errors="replace")) + 1


def _raise_utf8(path: Path, bad: int) -> None:
    with open(path, "rb") as f:
        f.seek(bad)
        byte = f.read(1)[0]
    line, col = _locate(path, bad)
    raise StructuralError(path, f"invalid UTF-8 byte 0x{byte:02x} at character {col}"
                          " (the file must be UTF-8: re-export it as UTF-8 or convert it, e.g. with iconv)", line=line)


def _raise_unterminated(path: Path, start: int) -> None:
    """An odd number of quotes after the last record boundary: blame a misplaced quote if there is
    one (it is what unbalanced the count), else the last quote that opened a field."""
    opener, count, before = start, 0, LF
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        while block := f.read(1 << 20):
            after = f.read(1)
            f.seek(-len(after), 1)
            a = np.frombuffer(block, dtype=np.uint8)
            hits = np.flatnonzero(a == QUOTE)
            misplaced = _misplaced_quote(a, hits, count & 1, before, after[0] if after else LF)
            if misplaced is not None:
                _raise_misplaced(path, pos + misplaced[0], misplaced[1])
            openers = hits[(count + np.arange(len(hits))) % 2 == 0]
            if len(openers):
                opener = pos + int(openers[-1])
            count += len(hits)
            pos += len(block)
            before = int(a[-1])
    line, col = _locate(path, opener)
    raise StructuralError(path, f"unterminated quoted field starting at character {col}: the quote is never"
                          " closed, so it would swallow the rest of the file", line=line)


def _misplaced_quote(a: np.ndarray, quotes: np.ndarray, parity: int, before: int,
                     after: int) -> tuple[int, bool] | None:
    """First quote in ``a`` that breaks RFC 4180 as (index, is_opening), given the parity of quotes
    before ``a`` and the bytes just before and after it. A field opens with a quote right after a
    separator or line start; a closing quote is followed by a separator or line end; "" escapes."""
    n = len(a)
    opening = quotes[parity::2]
    closing = quotes[1 - parity::2]
    prev = np.where(opening > 0, a[np.maximum(opening - 1, 0)], before)
    bad_open = opening[(prev != COMMA) & (prev != LF) & (prev != QUOTE)]
    nxt = np.where(closing < n - 1, a[np.minimum(closing + 1, n - 1)], after)
    bad_close = closing[(nxt != COMMA) & (nxt != LF) & (nxt != CR) & (nxt != QUOTE)]
    firsts = [(int(bad_open[0]), True)] if len(bad_open) else []
    firsts += [(int(bad_close[0]), False)] if len(bad_close) else []
    return min(firsts) if firsts else None


def _raise_misplaced(path: Path, offset: int, opening: bool, line_col: tuple[int, int] | None = None) -> None:
    line, col = line_col or _locate(path, offset)
    what = "a quote inside an unquoted field" if opening else "text after the closing quote of a field"
    raise StructuralError(path, f"{what} at character {col}: the file's quoting is ambiguous from here on"
                          " (quote the whole field and double inner quotes)", line=line)


@dataclass(frozen=True)
class RecordIndex:
    starts: np.ndarray  # byte offset of each record's first byte
    ends: np.ndarray  # byte offset just past its content (before the CR/LF that ends it)
    stops: np.ndarray  # byte offset just past its line ending
    lines: np.ndarray  # source line on which it starts
    fields: np.ndarray | None  # number of fields (None: not counted)
    blank: np.ndarray  # an empty line: skipped, not counted as a row

    def __len__(self) -> int:
        return len(self.starts)


def index_records(buf: bytes, first_line: int, path: Path, *, count_fields: bool = True) -> RecordIndex:
    """Pass 2 (see module docstring). ``buf`` starts on a record boundary. Counting fields is most of
    numpy's cost, little of the C reader's: a caller that only needs the records' bounds says so. The C reader
    (``cutover.record_index``) gives the same index for a file without quoting errors; numpy's, below,
    for one with them says where."""
    found = record_index.bounds(buf, first_line, count_fields=count_fields)
    if found is not None:
        starts, ends, stops, lines, fields = found
        return RecordIndex(starts=starts, ends=ends, stops=stops, lines=lines, fields=fields, blank=ends == starts)
    a = np.frombuffer(buf, dtype=np.uint8)
    n = len(a)
    quotes = np.flatnonzero(a == QUOTE)
    if len(quotes):
        _check_quotes(a, quotes, buf, first_line, path)
    newlines = np.flatnonzero(a == LF)
    record_nl = newlines[(np.searchsorted(quotes, newlines) & 1) == 0] if len(quotes) else newlines
    stops = record_nl + 1
    if n and (len(stops) == 0 or stops[-1] != n):
        stops = np.append(stops, n)  # last record without a final newline
    starts = np.concatenate(([0], stops[:-1])).astype(np.int64)
    ends = np.where((stops > starts) & (a[np.maximum(stops - 1, 0)] == LF), stops - 1, stops)
    ends = np.where((ends > starts) & (a[np.maximum(ends - 1, 0)] == CR), ends - 1, ends)
    lines = first_line + np.searchsorted(newlines, starts)
    fields = _count_fields(a, quotes, starts, stops) if count_fields else None
    return RecordIndex(starts=starts, ends=ends, stops=stops, lines=lines, fields=fields, blank=ends == starts)


def _count_fields(a: np.ndarray, quotes: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Commas outside quotes, plus one, per record (records are never empty: each has its line end)."""
    records = len(starts)
    commas = np.flatnonzero(a == COMMA)
    if len(quotes) > 2 * records or not len(a):  # quotes everywhere: which commas lie outside them, one by one
        commas = commas[(np.searchsorted(quotes, commas) & 1) == 0]
        return 1 + np.bincount(np.searchsorted(stops, commas, side="right"), minlength=records)[:records]
    # few quotes: all the commas of a record (located by binary search: no temporary the size of the
    # batch), less those between its quotes
    fields = 1 + np.searchsorted(commas, stops) - np.searchsorted(commas, starts)
    if len(quotes):
        opening = quotes[0::2]
        inside = np.searchsorted(commas, quotes[1::2]) - np.searchsorted(commas, opening)
        some = inside > 0
        fields -= np.bincount(np.searchsorted(stops, opening[some], side="right"), weights=inside[some],
                              minlength=records)[:records].astype(np.int64)
    return fields


def _check_quotes(a: np.ndarray, quotes: np.ndarray, buf: bytes, first_line: int, path: Path) -> None:
    misplaced = _misplaced_quote(a, quotes, 0, LF, LF)
    if misplaced is None and len(quotes) % 2:  # cannot happen after scan_file; kept as a guard
        misplaced = (int(quotes[-1]), True)
    if misplaced is not None:
        _raise_misplaced(path, 0, misplaced[1], line_col=_line_and_column(buf, misplaced[0], first_line))
