"""One batch of a CSV: its records read as strings, typed, and written for COPY.

Contract: ``read_raw`` reads the byte range of one ``csvscan.Batch`` from the run's snapshot and returns
its well-formed records as strings (polars) with their source lines, and a reject for every record
with the wrong number of fields; ``type_rows`` types them by the spec (``cutover.coerce``), every
reject carrying its value as stored. ``cut`` and ``read_cut`` do what ``read_raw`` does for chosen
records of several batches (the diff's changed ones), each keeping its own source line. None of them
touches the database: any thread may run them, each batch on its own. ``copy_staged`` writes typed
rows and rejects into the run's staging table and ``cutover.rejects`` in the caller's transaction. The
staged sync, the diff and parity all read batches through this one module, so they agree on every row
and every reject.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import psycopg
from psycopg import errors as pgerr

from cutover import csv_fields, csvscan, merge
from cutover.coerce import REJECT_SCHEMA, coerce
from cutover.errors import ConcurrentChange, CutoverError, StructuralError
from cutover.syncplan import SyncPlan, _as_source

MAX_REJECT_VALUE = 500  # characters of a rejected value kept in the rejects table and file


def read_range(path: Path, start: int, end: int) -> bytes:
    """Bytes [start, end) of the file at ``path``."""
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def stored_value(col: str) -> pl.Expr:
    """A rejected value as stored: a 5 MB field is reported, not copied."""
    # a NUL (the very reason such a row is rejected) cannot be stored in PostgreSQL text: spell it out
    value = pl.col(col).str.replace_all("\x00", "\\x00", literal=True)
    length = value.str.len_chars()
    return (pl.when(length > MAX_REJECT_VALUE)
            .then(pl.format("{}… ({} characters)", value.str.slice(0, MAX_REJECT_VALUE), length))
            .otherwise(value).alias(col))


class RawBatch(NamedTuple):
    raw: pl.DataFrame  # the well-formed records, as strings, in spec column order
    lines: pl.Series  # their source lines
    ragged: pl.DataFrame  # rejects of the records with the wrong number of fields
    read: int  # rows read (records that are not blank lines)
    verbatim: bytes | None  # the batch's bytes, when every record is well formed and ends with a bare LF
    nul: bool = True  # whether a record may hold a NUL character (False: its bytes have none)


_REJECT_ROW = {"line": pl.Int64, **REJECT_SCHEMA, "key": pl.String}


def read_raw(plan: SyncPlan, header: csvscan.Header, batch: csvscan.Batch, buf: bytes | None = None) -> RawBatch:
    """One batch as strings (see ``RawBatch``); ``buf``: its bytes, if read already."""
    buf = read_bytes(plan, batch) if buf is None else buf
    return as_strings(plan, header, buf, index_batch(plan, buf, batch.first_line))


def read_bytes(plan: SyncPlan, batch: csvscan.Batch) -> bytes:
    return read_range(plan.snapshot, batch.start, batch.end)


def index_batch(plan: SyncPlan, buf: bytes, first_line: int, *, count_fields: bool = True) -> csvscan.RecordIndex:
    try:
        return csvscan.index_records(buf, first_line, plan.snapshot, count_fields=count_fields)
    except StructuralError as exc:
        raise _as_source(plan, exc) from None


def cut(buf: bytes, idx: csvscan.RecordIndex, which: np.ndarray) -> bytes:
    """The records ``which`` (indices into ``idx``) of a batch, verbatim, each ending with a line feed."""
    return b"".join(buf[s:t] if buf[t - 1:t] == b"\n" else buf[s:t] + b"\n"
                    for s, t in zip(idx.starts[which].tolist(), idx.stops[which].tolist()))


def read_cut(plan: SyncPlan, header: csvscan.Header, text: bytes, lines: np.ndarray) -> RawBatch:
    """Records ``cut`` from batches (none blank), with their source lines, as strings: ``read_raw`` of a
    batch that held just them."""
    if not text:
        return RawBatch(pl.DataFrame(schema={n: pl.String for n in plan.spec.column_names}),
                        pl.Series("_line", [], dtype=pl.Int64), pl.DataFrame(schema=_REJECT_ROW), 0, None, False)
    idx = index_batch(plan, text, 1)  # whole records of their batches: the same bounds here
    return as_strings(plan, header, text, dataclasses.replace(idx, lines=lines))


def as_strings(plan: SyncPlan, header: csvscan.Header, buf: bytes, idx: csvscan.RecordIndex) -> RawBatch:
    """The records of ``buf`` (indexed, fields counted) as a ``RawBatch``."""
    ncols = len(header.names)
    counted = ~idx.blank
    good = counted & (idx.fields == ncols)
    ragged = pl.DataFrame([
        {"line": int(idx.lines[i]), "column": None,
         "value": buf[idx.starts[i]:idx.ends[i]].decode("utf-8"),
         "reason": f"expected {ncols} fields, found {int(idx.fields[i])}", "key": None}
        for i in (counted & ~good).nonzero()[0]
    ], schema=_REJECT_ROW)
    lines = pl.Series("_line", idx.lines[good], dtype=pl.Int64)
    if len(lines):
        # the C splitter reads the good records where they lie; polars, the bytes of exactly those records
        raw = csv_fields.split(buf, idx.starts[good], idx.ends[good], list(header.names)) \
            if csv_fields.available() else None
        if raw is None:
            raw = pl.read_csv(io.BytesIO(_records(buf, idx, good)), has_header=False, new_columns=list(header.names),
                              schema={n: pl.String for n in header.names}, quote_char='"')
        if raw.height != len(lines):  # the scanner and polars must agree on record boundaries
            raise CutoverError(f"{plan.csv_path}: internal error: {raw.height} rows parsed, {len(lines)} expected"
                               f" in lines {int(lines[0])}..")
        raw = raw.select(plan.spec.column_names)
    else:
        raw = pl.DataFrame(schema={n: pl.String for n in plan.spec.column_names})
    plain = good.all() and not (idx.stops - idx.ends > 1).any()  # a CR LF ending: not a bare LF
    return RawBatch(raw, lines, ragged, int(counted.sum()), buf if plain else None, b"\x00" in buf)


def _records(buf: bytes, idx: csvscan.RecordIndex, good: np.ndarray) -> bytes:
    """The records ``good`` of ``buf``, each ending with a line feed: blank and ragged ones dropped."""
    if good.all():
        return buf
    return b"".join(buf[idx.starts[i]:idx.stops[i]] + (b"" if buf[idx.stops[i] - 1:idx.stops[i]] == b"\n" else b"\n")
                    for i in good.nonzero()[0])


def type_rows(plan: SyncPlan, raw: pl.DataFrame, lines: pl.Series, ragged: pl.DataFrame, *, nul: bool = True,
              instants: bool = False, unchecked_shapes: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(typed good rows, every reject with its value as stored); ``nul``: see ``RawBatch``,
    ``instants``, ``unchecked_shapes``: see ``cutover.coerce.coerce``."""
    typed, rejects = coerce(raw, plan.spec, lines, nul=nul, instants=instants, unchecked_shapes=unchecked_shapes)
    if ragged.height:
        rejects = pl.concat([rejects, ragged])
    return typed, rejects.with_columns(stored_value("value"))


def parse_batch(plan: SyncPlan, header: csvscan.Header, batch: csvscan.Batch) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Pure CPU work for one batch: (typed good rows, rejects, rows read)."""
    rb = read_raw(plan, header, batch)
    typed, rejects = type_rows(plan, rb.raw, rb.lines, rb.ragged, nul=rb.nul)
    return typed, rejects, rb.read


def csv_bytes(df: pl.DataFrame) -> bytes:
    out = io.BytesIO()
    # non_numeric quotes every string, so '' stays '' and NULL stays an empty unquoted field.
    df.write_csv(out, include_header=False, quote_style="non_numeric")
    return out.getvalue()


def copy_staged(conn: psycopg.Connection, plan: SyncPlan, rows: bytes, rejects: pl.DataFrame) -> None:
    """COPY typed rows (``csv_bytes`` of them, ``_line`` last) into the run's staging table and its
    rejects into ``cutover.rejects``, in the caller's transaction."""
    with conn.cursor() as cur:
        try:
            with cur.copy(merge.copy_into_staging(plan.spec, plan.staging)) as cp:
                for i in range(0, len(rows), 1 << 20):
                    cp.write(rows[i:i + (1 << 20)])
        except pgerr.UndefinedTable as exc:  # a newer sync merged first and ended this run
            raise ConcurrentChange(
                f"{plan.spec.name}: another sync merged while this one was loading, which ended this run"
                " (its staging table is gone); nothing was applied — rerun the sync") from exc
        if rejects.height:
            with cur.copy(merge.COPY_REJECTS) as cp:
                cp.write(csv_bytes(rejects.select(pl.lit(str(plan.run_id)).alias("run_id"), pl.all())))
