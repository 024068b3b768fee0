"""Row digests of a CSV's typed rows and of a table's rows, summed into buckets of keys.

Contract: ``source_sums`` (polars, over typed batches) and ``cutover.table_digests.target_sql`` (one
PostgreSQL query) give the same sums for the same rows, and ``table_digests.target_totals_sql``
(cheaper: no buckets) their ``Sums.totals``.
Both sides write each row in one canonical text and digest it with MD5, the one digest both have
(PostgreSQL's ``md5``, the ``polars-hash`` plugin's), so the value never depends on a polars version;
no row's digest is stored (``cutover.digest_memo`` may keep a file's sums).

The canonical text is the row's non-NULL fields joined by U+001F, then a bitmask of its NULL columns:
- uuid: lower-case hyphenated hex, as PostgreSQL prints it;
- timestamptz: microseconds since 1970-01-01 UTC (a value only the table can hold, such as
  ``infinity``, prints as itself and equals no CSV value);
- numeric(p,s): PostgreSQL's output: exactly s decimals, no sign on zero;
- text: as is.
It is injective as long as no text holds U+001F: the bitmask fixes which fields are present, so two
equal texts have equal separator counts, and a separator inside a table's value would need one more
than the CSV row has. A CSV row with U+001F in a text is therefore never trusted to its digest: its
bucket is always compared row by row (``suspects``).

Where the C kernel is built (``cutover.row_md5``), it writes each row's text and digests it in one pass
over the canonical fields; the polars expressions below are its definition and the fallback.

A bucket (one of 4,096) is a function of the key alone (``table_digests.key_bucket_sql``); its sums are the row
count and the XOR of the rows' 128-bit digests (two 64-bit halves). The table's rows have
distinct keys, so they form a set; a multiset of CSV rows with the same count and XOR as a set is
that very set (each of its rows must appear an odd number of times, any other row an even number),
unless digests collide. Sums take constant memory and let PostgreSQL aggregate without sending rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl
import polars_hash as plh

from cutover import row_md5
from cutover.coerce import instant_column
from cutover.spec import Column, TableSpec
from cutover.table_digests import BUCKET_DIGITS, BUCKETS, SEPARATOR, masks

MAX_DECIMAL_PRECISION = 38  # polars' Decimal; wider numerics take the string rule
NUM_PARTS = r"^([+-]?)0*([0-9]*)(?:\.([0-9]*))?$"  # ASCII digits: the loader admits no other
TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%:z"


@dataclass(frozen=True)
class Sums:
    """Per bucket (the array index): ``rows``, ``x0``/``x1`` (the XOR of the digests' halves) and
    ``untrusted`` (a CSV row of it holds the separator: compare it row by row whatever its sums)."""

    rows: np.ndarray
    x0: np.ndarray
    x1: np.ndarray
    untrusted: np.ndarray

    @classmethod
    def empty(cls) -> Sums:
        return cls(np.zeros(BUCKETS, np.int64), np.zeros(BUCKETS, np.uint64), np.zeros(BUCKETS, np.uint64),
                   np.zeros(BUCKETS, bool))

    @property
    def total(self) -> int:
        return int(self.rows.sum())

    def fold(self, other: Sums) -> None:
        """Fold in another part's sums (of other rows)."""
        np.add(self.rows, other.rows, out=self.rows)
        np.bitwise_xor(self.x0, other.x0, out=self.x0)
        np.bitwise_xor(self.x1, other.x1, out=self.x1)
        np.logical_or(self.untrusted, other.untrusted, out=self.untrusted)

    def totals(self) -> tuple[int, int, int]:
        """(rows, x0, x1) of all buckets together: the XORs of every row's digest halves."""
        return self.total, int(np.bitwise_xor.reduce(self.x0)), int(np.bitwise_xor.reduce(self.x1))

    def add_rows(self, bucket: np.ndarray, x0: np.ndarray, x1: np.ndarray, untrusted: np.ndarray | None) -> None:
        """Fold in CSV rows, one per array element. numpy's ``.at`` ufuncs fold repeated indices one by
        one, so a bucket met twice counts twice."""
        np.add(self.rows, np.bincount(bucket, minlength=BUCKETS), out=self.rows)
        np.bitwise_xor.at(self.x0, bucket, x0)
        np.bitwise_xor.at(self.x1, bucket, x1)
        if untrusted is not None and untrusted.any():
            np.logical_or.at(self.untrusted, bucket, untrusted)

    def add(self, frame: pl.DataFrame) -> None:
        """Fold in a frame of (bucket, rows, x0, x1[, untrusted]) with one row per bucket."""
        at = frame["bucket"].to_numpy()
        self.rows[at] += frame["rows"].to_numpy()
        self.x0[at] ^= frame["x0"].to_numpy()
        self.x1[at] ^= frame["x1"].to_numpy()
        if "untrusted" in frame.columns:
            self.untrusted[at] |= frame["untrusted"].to_numpy()


# --- the CSV side -----------------------------------------------------------------------------

def _numeric_text(col: pl.Expr, c: Column) -> pl.Expr:
    parts = col.str.extract_groups(NUM_PARTS)
    sign, whole, frac = parts.struct.field("1"), parts.struct.field("2"), parts.struct.field("3").fill_null("")
    whole = pl.when(whole == "").then(pl.lit("0")).otherwise(whole)
    frac = (frac + "0" * c.scale).str.slice(0, c.scale)  # the loader let only zeros pass beyond the scale
    zero = (whole == "0") & (frac.str.strip_chars("0") == "")
    signed = pl.when(zero | (sign != "-")).then(pl.lit("")).otherwise(pl.lit("-"))
    return signed + whole + ("." + frac if c.scale else pl.lit(""))


def _field(c: Column, parsed: bool = False, *, as_text: bool = True) -> pl.Expr:
    """The canonical text of a typed value (``cutover.coerce``'s output), NULL kept. ``parsed``: the frame
    carries the timestamps' instants as the loader parsed them (``coerce(..., instants=True)``);
    ``as_text`` False: a timestamp's microseconds stay an Int64 (the C kernel writes them)."""
    col = pl.col(c.name)
    if c.type == "timestamptz" and parsed:
        micros = pl.col(instant_column(c.name)).dt.epoch("us")
        return micros.cast(pl.String) if as_text else micros
    if c.type == "timestamptz":  # the loader passes either shape: as written (fast) or its own UTC form
        instant = col.str.replace(" ", "T", literal=True).str.replace("Z", "+00:00", literal=True).str.to_datetime(
            TS_FORMAT, time_unit="us", time_zone="UTC", strict=True)
        return instant.dt.epoch("us").cast(pl.String) if as_text else instant.dt.epoch("us")
    if c.type == "numeric":
        if c.precision <= MAX_DECIMAL_PRECISION:  # prints as PostgreSQL does: ``scale`` decimals, no -0
            return col.cast(pl.Decimal(c.precision, c.scale)).cast(pl.String)
        return _numeric_text(col, c)
    return col  # a uuid: lower-case already (``cutover.coerce``)


def _mask(columns: list[Column]) -> pl.Expr:
    return pl.sum_horizontal(pl.col(c.name).is_null().cast(pl.Int64) * (1 << i)
                             for i, c in enumerate(columns)).cast(pl.String)


def _bucket(key: Column, text: pl.Expr) -> pl.Expr:
    """The bucket of the key whose canonical text is ``text``."""
    if key.type == "uuid":  # see table_digests.key_bucket_sql
        first, last = (text.str.slice(at, 4).str.to_integer(base=16) for at in (0, -4))
        return (first.xor(last) // (1 << (16 - 4 * BUCKET_DIGITS))).alias("bucket")
    return text.nchash.md5().str.slice(0, BUCKET_DIGITS).str.to_integer(base=16).alias("bucket")


def _halves(digest: pl.Expr) -> list[pl.Expr]:
    return [digest.str.slice(16 * i, 16).str.to_integer(base=16, dtype=pl.UInt64).alias(f"x{i}") for i in range(2)]


@lru_cache(maxsize=64)
def _summing(spec: TableSpec, parsed: bool, separator_free: bool) -> tuple[tuple[pl.Expr | str, ...], ...]:
    """``source_sums``' expressions for one spec, built once (see ``cutover.coerce._typing``): the
    canonical text, its digest, and the digest's halves."""
    fields = [_field(c, parsed) for c in spec.columns] + [_mask(m) for m in masks(spec)]
    key = spec.column(spec.primary_key)
    canonical = [_field(key).alias("_key"), pl.concat_str(fields, separator=SEPARATOR, ignore_nulls=True).alias("_row")]
    if not separator_free:  # more separators than fields: a text holds one
        present = len(fields) - pl.sum_horizontal(pl.col(c.name).is_null().cast(pl.Int32) for c in spec.columns)
        canonical.append(present.alias("_present"))
    untrusted = pl.lit(False) if separator_free else \
        pl.col("_row").str.count_matches(SEPARATOR, literal=True) != pl.col("_present") - 1
    # the digest once, as its own column: both halves of one expression would compute it twice (eager)
    digested = (_bucket(key, pl.col("_key")), plh.col("_row").nchash.md5().alias("_md5"), untrusted.alias("untrusted"))
    return tuple(canonical), digested, ("bucket", *_halves(pl.col("_md5")), "untrusted")


def needs_instants() -> bool:
    """Whether ``source_sums`` is faster given the timestamps' instants as the loader parsed them
    (``coerce(..., instants=True)``): without the C kernel, which reads them from the text itself."""
    return not row_md5.available()


@lru_cache(maxsize=64)
def _kernel_input(spec: TableSpec, parsed: bool) -> tuple[tuple[pl.Expr, ...], row_md5.Layout]:
    """``source_sums``' input for the C kernel, built once per spec: the fields (a timestamp's instant as
    Int64 microseconds if the frame has it, else its text; a numeric's or uuid's text, which the kernel
    checks and writes; texts as they are) and how the kernel writes them."""
    def kind(c: Column) -> int:
        if c.type == "timestamptz":
            return row_md5.AS_IS if parsed else row_md5.TIMESTAMPS
        return {"numeric": row_md5.NUMERICS, "uuid": row_md5.UUIDS}.get(c.type, row_md5.AS_IS)

    kinds = [kind(c) for c in spec.columns]
    fields = [(pl.col(c.name) if k != row_md5.AS_IS else _field(c, parsed, as_text=False)).alias(f"_f{i}")
              for i, (c, k) in enumerate(zip(spec.columns, kinds))]
    slot = {c.name: (g, bit) for g, group in enumerate(masks(spec)) for bit, c in enumerate(group)}
    key = spec.column(spec.primary_key)
    return tuple(fields), row_md5.Layout(
        kinds=tuple(kinds), scales=tuple(c.scale if c.type == "numeric" else 0 for c in spec.columns),
        wholes=tuple(c.precision - c.scale if c.type == "numeric" else 0 for c in spec.columns),
        mask_slots=tuple(slot.get(c.name, (-1, 0)) for c in spec.columns), n_masks=len(masks(spec)),
        key_column=spec.column_names.index(key.name), uuid_key=key.type == "uuid", bucket_bits=4 * BUCKET_DIGITS)


def source_sums(typed: pl.DataFrame, spec: TableSpec, into: Sums, *, separator_free: bool = False,
                kernel: bool = True, unchecked: bool = False) -> bool:
    """Fold a batch of typed rows (columns in spec order; others ignored) into ``into``; True once folded.
    ``separator_free``: the caller knows no value holds the separator (its bytes do not).
    ``kernel`` False: polars' expressions even where the C kernel is built (tests compare the two).
    ``unchecked``: the rows were typed without their uuids' and numerics' shapes checked
    (``cutover.coerce``'s ``unchecked_shapes``), which the kernel checks: False, and nothing folded, if
    one would have been rejected (the caller types the batch again by every rule)."""
    if typed.height == 0:
        return True
    parsed = all(instant_column(c.name) in typed.columns for c in spec.columns if c.type == "timestamptz")
    use_kernel = kernel and row_md5.available()
    if unchecked and not use_kernel:
        raise ValueError("rows typed without their shapes checked need the C kernel to check them")
    if use_kernel:
        fields, layout = _kernel_input(spec, parsed)
        found = row_md5.digest(typed.select(fields), layout, check_separators=not separator_free)
        if found is not None:  # else a value of a shape it does not read: polars reads them all
            into.add_rows(found.bucket, found.x0, found.x1, found.untrusted)
            return True
        if unchecked:
            return False
    canonical, digested, halves = _summing(spec, parsed, separator_free)
    rows = typed.select(canonical)
    # folded by numpy, not grouped by polars: a third of the time on a batch's ~15,000 rows
    summed = rows.select(digested).select(halves)
    into.add_rows(*(summed[c].to_numpy() for c in ("bucket", "x0", "x1", "untrusted")))
    return True


def in_buckets(typed: pl.DataFrame, spec: TableSpec, buckets: np.ndarray) -> pl.DataFrame:
    """The rows of ``typed`` whose key falls in one of ``buckets``."""
    key = spec.column(spec.primary_key)
    keys = typed.select(_field(key).alias("_key"))
    return typed.filter(keys.select(_bucket(key, pl.col("_key")).is_in(pl.Series(buckets).implode())).to_series())


def suspects(source: Sums, target: Sums) -> np.ndarray:
    """The buckets to compare row by row: their sums differ, or the CSV's side is untrusted. Sorted."""
    return np.nonzero((source.rows != target.rows) | (source.x0 != target.x0) | (source.x1 != target.x1)
                      | source.untrusted)[0]


def target_sums(rows: list[tuple]) -> Sums:
    """``table_digests.target_sql``'s rows as sums (the halves come back signed: the same 64 bits)."""
    sums = Sums.empty()
    if rows:
        frame = pl.DataFrame(rows, schema={"bucket": pl.Int64, "rows": pl.Int64, "x0": pl.Int64, "x1": pl.Int64},
                             orient="row")
        sums.add(frame.with_columns(pl.col("x0", "x1").reinterpret(signed=False)))
    return sums
