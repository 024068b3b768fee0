"""Typing rows by their spec, vectorised in polars, with a reason for every row that fails.

Input: a frame of raw strings (``None`` for an empty unquoted field, ``""`` for ``""``) in spec
column order. Output: the rows that pass, as the canonical text PostgreSQL parses back exactly,
and one reject per failing row (its first failing column, the value and why).

Rules (the README's reject policy):
- empty field = NULL; NULL in a NOT NULL column is rejected;
- uuid: 8-4-4-4-12 hex digits, stored lower-case;
- timestamptz: ISO 8601 ``YYYY-MM-DD[T ]HH:MM[:SS[.ffffff]][Z|±HH[:MM]]``; no offset means UTC;
  the instant is kept to the microsecond; more than 6 fractional digits, or an impossible date
  or time, is rejected;
- numeric(p,s): plain decimal notation; digits beyond the scale are rejected unless they are zeros
  (never rounded); more than p-s integer digits is rejected;
- text: any UTF-8 but NUL (PostgreSQL cannot store it); enum and exact length as the spec says.
Nothing here strips whitespace or changes text: text round-trips byte for byte.
"""

from __future__ import annotations

import polars as pl

from cutover.spec import Column, TableSpec

UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
TS_RE = (r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2})(:\d{2})?(\.\d{1,6})?"
         r"([Zz]|[+-]\d{2}(?::?\d{2})?)?$")
NUM_RE = r"^[+-]?(\d*)(?:\.(\d*))?$"
TS_OUT = "%Y-%m-%dT%H:%M:%S%.6f+00:00"

REJECT_SCHEMA = {"column": pl.String, "value": pl.String, "reason": pl.String}


def _error(cond: pl.Expr, reason: str | pl.Expr) -> pl.Expr:
    return pl.when(cond).then(reason if isinstance(reason, pl.Expr) else pl.lit(reason))


def _uuid(col: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    return col.str.to_lowercase(), _error(~col.str.contains(UUID_RE), "not a UUID (expected 8-4-4-4-12 hex digits)")


def _timestamptz(col: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    parts = col.str.extract_groups(TS_RE)
    date, hm, sec, frac, off = (parts.struct.field(str(i)) for i in range(1, 6))
    offset = (
        pl.when(off.is_null() | off.str.to_uppercase().eq("Z")).then(pl.lit("+00:00"))
        .when(off.str.len_chars() == 3).then(off + ":00")
        .when(off.str.len_chars() == 5).then(off.str.slice(0, 3) + ":" + off.str.slice(3, 2))
        .otherwise(off)
    )
    normal = date + "T" + hm + sec.fill_null(":00") + frac.fill_null("") + offset
    instant = normal.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", time_unit="us", time_zone="UTC", strict=False)
    bad_form = "not an ISO 8601 timestamp (expected YYYY-MM-DD HH:MM[:SS[.ffffff]][Z|±HH:MM])"
    reason = (pl.when(date.is_null()).then(pl.lit(bad_form))
              # year 0000 parses in polars but not in PostgreSQL, which has no year zero
              .when(instant.is_null() | date.str.starts_with("0000")).then(pl.lit("impossible date or time"))
              # PostgreSQL keeps instants of years 1..9999 (UTC): 0001-01-01T00:00+05:00 is year 0 in UTC
              .when(~instant.dt.year().is_between(1, 9999))
              .then(pl.lit("out of range: the instant in UTC must fall in years 0001-9999")))
    return instant.dt.strftime(TS_OUT), reason


def _numeric(col: pl.Expr, c: Column) -> tuple[pl.Expr, pl.Expr]:
    parts = col.str.extract_groups(NUM_RE)
    whole, frac = parts.struct.field("1"), parts.struct.field("2").fill_null("")
    int_digits = whole.str.strip_chars_start("0").str.len_chars()
    extra = frac.str.slice(c.scale).str.strip_chars_end("0")
    max_int = c.precision - c.scale
    reason = (
        pl.when(whole.is_null() | ((whole.str.len_chars() + frac.str.len_chars()) == 0))
        .then(pl.lit("not a number (plain decimal notation, e.g. 1234.50)"))
        .when(extra.str.len_chars() > 0)
        .then(pl.lit(f"more than {c.scale} decimal places: it would be rounded, and cutover never rounds"))
        .when(int_digits > max_int)
        .then(pl.lit(f"too large for numeric({c.precision},{c.scale}) (at most {max_int} digits before the point)"))
    )
    return col, reason


def _text(col: pl.Expr, c: Column) -> tuple[pl.Expr, pl.Expr]:
    reason = pl.when(col.str.contains("\x00", literal=True)).then(
        pl.lit("contains a NUL character, which PostgreSQL text cannot store"))
    if c.enum:
        reason = reason.when(~col.is_in(list(c.enum))).then(pl.lit(f"not one of: {', '.join(c.enum)}"))
    if c.length is not None:
        reason = reason.when(col.str.len_chars() != c.length).then(
            pl.lit(f"must be exactly {c.length} characters long"))
    return col, reason


def column_rule(c: Column) -> tuple[pl.Expr, pl.Expr]:
    """(canonical value, reject reason or null) for one column of raw strings."""
    col = pl.col(c.name)
    if c.type == "uuid":
        value, reason = _uuid(col)
    elif c.type == "timestamptz":
        value, reason = _timestamptz(col)
    elif c.type == "numeric":
        value, reason = _numeric(col, c)
    else:
        value, reason = _text(col, c)
    if not c.nullable:
        reason = pl.when(col.is_null()).then(pl.lit("required value is missing")).otherwise(reason)
    else:
        reason = pl.when(col.is_null()).then(pl.lit(None, pl.String)).otherwise(reason)
    return value, reason


def coerce(raw: pl.DataFrame, spec: TableSpec, lines: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``raw`` into (good rows in canonical text + ``_line``, rejects: line/column/value/reason/key)."""
    rules = {c.name: column_rule(c) for c in spec.columns}
    reasons = [pl.struct(column=pl.lit(name), value=pl.col(name), reason=reason).alias(name)
               for name, (_, reason) in rules.items()]
    first = pl.coalesce([pl.when(reason.is_not_null()).then(r) for (_, reason), r in zip(rules.values(), reasons)])
    pk = spec.primary_key
    key = pl.when(pl.col(pk).str.contains(UUID_RE)).then(pl.col(pk).str.to_lowercase()) \
        if spec.column(pk).type == "uuid" else pl.col(pk)
    checked = raw.with_columns(lines.alias("_line")).with_columns(
        first.alias("_reject"), key.alias("_key"))
    good = checked.filter(pl.col("_reject").is_null()).select(
        *[value.alias(name) for name, (value, _) in rules.items()], pl.col("_line"))
    rejects = checked.filter(pl.col("_reject").is_not_null()).select(
        pl.col("_line").alias("line"),
        pl.col("_reject").struct.field("column"),
        pl.col("_reject").struct.field("value"),
        pl.col("_reject").struct.field("reason"),
        pl.col("_key").alias("key"),
    )
    return good, rejects
