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

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl

from cutover import fast_timestamps
from cutover.errors import CutoverError
from cutover.spec import Column, TableSpec

UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# digits are ASCII everywhere ([0-9]): the regex engine's \d admits any script's digits, which
# PostgreSQL refuses
TS_RE = (r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2})(:[0-9]{2})?(\.[0-9]{1,6})?"
         r"([Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?$")
NUM_RE = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)$"  # plain decimal notation, at least one digit
TS_OUT = "%Y-%m-%dT%H:%M:%S%.6f+00:00"

REJECT_SCHEMA = {"column": pl.String, "value": pl.String, "reason": pl.String}


def _error(cond: pl.Expr, reason: str | pl.Expr) -> pl.Expr:
    return pl.when(cond).then(reason if isinstance(reason, pl.Expr) else pl.lit(reason))


def _uuid(col: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    return col.str.to_lowercase(), _error(~col.str.contains(UUID_RE), "not a UUID (expected 8-4-4-4-12 hex digits)")


def instant_column(name: str) -> str:
    """The name of the column ``coerce(..., instants=True)`` adds for timestamptz column ``name``."""
    return f"_instant_{name}"


def _timestamptz(col: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    instant, reason = _general_instant(col)
    return instant.dt.strftime(TS_OUT), reason


def _general_instant(col: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
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
    return instant, reason


def _numeric(col: pl.Expr, c: Column) -> tuple[pl.Expr, pl.Expr]:
    max_int = c.precision - c.scale
    # a digit other than 0 past the scale: rounding; more significant digits before the point than fit
    rounded = rf"\.[0-9]{{{c.scale}}}[0-9]*[1-9]"
    too_large = rf"^[+-]?0*[1-9][0-9]{{{max_int}}}"
    reason = (
        pl.when(~col.str.contains(NUM_RE))
        .then(pl.lit("not a number (plain decimal notation, e.g. 1234.50)"))
        .when(col.str.contains(rounded))
        .then(pl.lit(f"more than {c.scale} decimal places: it would be rounded, and cutover never rounds"))
        .when(col.str.contains(too_large))
        .then(pl.lit(f"too large for numeric({c.precision},{c.scale}) (at most {max_int} digits before the point)"))
    )
    return col, reason


def numeric_pattern(c: Column) -> str:
    """One regex for exactly the values ``_numeric`` passes: plain notation, at least one digit, at most
    ``precision - scale`` significant digits before the point and only zeros past ``scale`` after it."""
    whole = "0+" if c.precision == c.scale else rf"0+|0*[1-9][0-9]{{0,{c.precision - c.scale - 1}}}"
    fraction = rf"[0-9]{{1,{c.scale}}}0*|0+" if c.scale else "0+"
    return rf"^[+-]?(?:(?:{whole})(?:\.(?:{fraction})?)?|\.(?:{fraction}))$"


def _text(col: pl.Expr, c: Column, nul: bool = True) -> tuple[pl.Expr, pl.Expr]:
    # ``nul`` False: the caller saw no NUL byte in the records, so no value needs searching for one
    reason = pl.when(col.str.contains("\x00", literal=True) if nul else pl.lit(False)).then(
        pl.lit("contains a NUL character, which PostgreSQL text cannot store"))
    if c.enum:
        reason = reason.when(~col.is_in(list(c.enum))).then(pl.lit(f"not one of: {', '.join(c.enum)}"))
    if c.length is not None:
        reason = reason.when(col.str.len_chars() != c.length).then(
            pl.lit(f"must be exactly {c.length} characters long"))
    return col, reason


# Types whose shape a caller may check itself (``coerce``'s ``unchecked_shapes``): their values pass as written.
SHAPES_CHECKED_BY_CALLER = ("uuid", "numeric")


def column_passes(c: Column, *, nul: bool = True, fast: bool = False, unchecked: bool = False) -> pl.Expr:
    """Whether ``column_rule``'s reason is null, more cheaply where it can be told so: the reasons are
    only worked out for the rows that fail (``fast``: the fast timestamp rule, see ``_typing``;
    ``unchecked``: see ``SHAPES_CHECKED_BY_CALLER``, a NULL is still checked)."""
    col = pl.col(c.name)
    if unchecked and c.type in SHAPES_CHECKED_BY_CALLER:
        return pl.lit(True) if c.nullable else col.is_not_null()
    if c.type == "uuid":
        passes = col.str.contains(UUID_RE)
    elif c.type == "numeric":
        passes = col.str.contains(numeric_pattern(c))
    elif c.type == "timestamptz" and fast:  # the shape was checked already
        return pl.lit(True) if c.nullable else col.is_not_null()
    else:
        return column_rule(c, nul=nul)[1].is_null()
    return passes.fill_null(c.nullable)


def column_rule(c: Column, *, nul: bool = True) -> tuple[pl.Expr, pl.Expr]:
    """(canonical value, reject reason or null) for one column of raw strings (``nul``: see ``_text``)."""
    col = pl.col(c.name)
    if c.type == "uuid":
        value, reason = _uuid(col)
    elif c.type == "timestamptz":
        value, reason = _timestamptz(col)
    elif c.type == "numeric":
        value, reason = _numeric(col, c)
    else:
        value, reason = _text(col, c, nul)
    if not c.nullable:
        reason = pl.when(col.is_null()).then(pl.lit("required value is missing")).otherwise(reason)
    else:
        reason = pl.when(col.is_null()).then(pl.lit(None, pl.String)).otherwise(reason)
    return value, reason


# The shape almost every timestamp in a real file has, checked by one regex that admits only real
# instants (a day the month has, a time of day) and sent to PostgreSQL as written (an explicit offset,
# so the same instant): no parse at all. Anything else — another shape, a year outside 1000..8999 —
# takes the general rule, whose reasons the rejects report. Digits are ASCII (see TS_RE).
# The 29th of February of leap years is fast too: one in ~1,500 days, it would otherwise send nearly
# every batch of a file through both rules (a fixed cost of ~10 ms a batch).
# Offsets stop at ±14:59: PostgreSQL refuses a displacement past ±15:59, which the general rule
# converts to UTC first.
# Two readers of the shape, held equal by tests: this regex, when the shape alone is asked (a load), and
# ``cutover.fast_timestamps``, which also reads each value's instant by position (parity, digests).
_LEAP_YEAR = (r"(?:[1-8][0-9](?:0[48]|[2468][048]|[13579][26])"  # divisible by 4, not by 100
              r"|(?:1[26]|2[048]|3[26]|4[048]|5[26]|6[048]|7[26]|8[048])00)")  # divisible by 400
_FAST_DATE = (r"(?:[1-8][0-9]{3}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
              r"|(?:0[13578]|1[02])-31)|" + _LEAP_YEAR + r"-02-29)")
FAST_TS_RE = (r"^" + _FAST_DATE + r"[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
              r"(?:Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])$")


def fast_timestamp(col: pl.Expr) -> pl.Expr:
    """Whether a value has the fast shape (see above); null stays null."""
    return col.str.contains(FAST_TS_RE)


@dataclass(frozen=True, eq=False)
class _Exprs:
    """One spec's typing expressions, built once: polars expressions are immutable and reusable, and
    building them is Python work (holding the GIL) that would otherwise be paid again on every batch."""

    checks: tuple[pl.Expr, ...]  # each column's reject reason or null, as ``_why_<i>`` (failing rows only)
    bad: pl.Expr  # whether a row has any reason, told by ``column_passes``
    values: tuple[pl.Expr, ...]  # each column's canonical value, then ``_line`` and the instants kept
    first: pl.Expr  # a failing row's first reason: struct of column, value, reason
    key: pl.Expr  # a failing row's key, as the rejects table keeps it


@lru_cache(maxsize=64)
def _typing(spec: TableSpec, fast: bool, nul: bool, instants: bool, unchecked: bool) -> _Exprs:
    rules = {c.name: column_rule(c, nul=nul) for c in spec.columns}
    if fast:  # see FAST_TS_RE: the value as written; a missing required one is still a reject
        rules = {c.name: (pl.col(c.name), pl.when(pl.col(c.name).is_null() & (not c.nullable))
                          .then(pl.lit("required value is missing")))
                 if c.type == "timestamptz" else rules[c.name] for c in spec.columns}
    why = [f"_why_{i}" for i in range(len(rules))]
    # the first failing column of each row (built on the few failing rows only)
    first = pl.coalesce([pl.when(pl.col(w).is_not_null()).then(pl.struct(
        column=pl.lit(name), value=pl.col(name), reason=pl.col(w))) for name, w in zip(rules, why)])
    pk = spec.primary_key
    key = pl.when(pl.col(pk).str.contains(UUID_RE)).then(pl.col(pk).str.to_lowercase()) \
        if spec.column(pk).type == "uuid" else pl.col(pk)
    return _Exprs(checks=tuple(reason.alias(w) for (_, reason), w in zip(rules.values(), why)),
                  bad=~pl.all_horizontal(column_passes(c, nul=nul, fast=fast, unchecked=unchecked)
                                         for c in spec.columns),
                  values=(*((pl.col(c.name) if unchecked and c.type in SHAPES_CHECKED_BY_CALLER else value)
                            .alias(c.name) for c, (value, _) in zip(spec.columns, rules.values())), pl.col("_line"),
                          *(_instants(spec, fast) if instants else [])),
                  first=first.alias("_reject"), key=key.alias("key"))


@lru_cache(maxsize=64)
def _fast_shape(spec: TableSpec) -> pl.Expr:
    """Whether a row's every timestamp has the fast shape."""
    return pl.all_horizontal([pl.col(c.name).is_null() | fast_timestamp(pl.col(c.name))
                              for c in spec.columns if c.type == "timestamptz"])


def _split_fast(raw: pl.DataFrame, spec: TableSpec, instants: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows whose every timestamp has the fast shape, the others); ``instants``: the fast rows carry
    each timestamp's instant (``instant_column``)."""
    if not any(c.type == "timestamptz" for c in spec.columns) or raw.height == 0:
        return raw.clear(), raw
    if instants:
        stamps = [c.name for c in spec.columns if c.type == "timestamptz"]
        read = {name: fast_timestamps.read(raw[name]) for name in stamps}
        fast = pl.Series(np.logical_and.reduce([shaped | raw[name].is_null().to_numpy()
                                                for name, (shaped, _) in read.items()]))
        raw = raw.with_columns(at.alias(instant_column(name)) for name, (_, at) in read.items())
    else:
        fast = raw.select(_fast_shape(spec)).to_series()
    if fast.all():
        return raw, raw.clear()
    general = raw.filter(~fast)
    return raw.filter(fast), general.drop([instant_column(c.name) for c in spec.columns if c.type == "timestamptz"]
                                          if instants else [])


def _instants(spec: TableSpec, fast: bool) -> list[pl.Expr]:
    """The timestamps' instants as ``coerce(..., instants=True)`` hands them back: the fast rows carry
    theirs already (``_split_fast``); the general rule parses its own."""
    stamps = [c.name for c in spec.columns if c.type == "timestamptz"]
    if fast:
        return [pl.col(instant_column(n)) for n in stamps]
    return [_general_instant(pl.col(n))[0].alias(instant_column(n)) for n in stamps]


def _typed(frame: pl.DataFrame, spec: TableSpec, fast: bool, nul: bool, instants: bool,
           unchecked: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    rules = _typing(spec, fast, nul, instants, unchecked)
    bad = frame.select(rules.bad).to_series()
    if not bad.any():  # the usual batch: no row to copy out
        return (frame.select(rules.values),
                pl.DataFrame(schema={"line": pl.Int64, **REJECT_SCHEMA, "key": pl.String}))
    good = frame.filter(~bad).select(rules.values)
    rejects = frame.filter(bad).with_columns(rules.checks).select(
        rules.first, rules.key, pl.col("_line").alias("line")).select(
        "line", pl.col("_reject").struct.field("column"), pl.col("_reject").struct.field("value"),
        pl.col("_reject").struct.field("reason"), "key")
    if rejects["reason"].null_count():  # column_passes and column_rule disagree: never drop the row
        lines = rejects.filter(pl.col("reason").is_null())["line"].head(5).to_list()
        raise CutoverError(f"internal error: rows failed typing without a reason, at lines {lines}")
    return good, rejects


def coerce(raw: pl.DataFrame, spec: TableSpec, lines: pl.Series, *, nul: bool = True, instants: bool = False,
           unchecked_shapes: bool = False) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``raw`` into (good rows in text PostgreSQL parses back exactly + ``_line``, rejects:
    line/column/value/reason/key). Rows whose timestamps all have the common shape skip the general
    timestamp rule (the costly part); the outcome is the same either way. ``nul=False`` promises that
    no value holds a NUL character (the caller checked the bytes): texts are not searched for one.
    ``instants``: the good rows also carry each timestamp as parsed (Datetime UTC, ``instant_column``),
    so that a caller needing the instant does not parse the text again. ``unchecked_shapes``: uuids and
    numerics pass as written, their shapes unchecked (``SHAPES_CHECKED_BY_CALLER``): a row that only they
    would reject is typed; the caller checks them (``cutover.row_md5`` does) and, if one fails, types the
    batch again without this. A rejected row's reason is still its first failing column, of any type."""
    typed, rejects, _ = coerce_noting_rewrites(raw, spec, lines, nul=nul, instants=instants,
                                               unchecked_shapes=unchecked_shapes)
    return typed, rejects


def coerce_noting_rewrites(raw: pl.DataFrame, spec: TableSpec, lines: pl.Series, *, nul: bool = True,
                           instants: bool = False, unchecked_shapes: bool = False
                           ) -> tuple[pl.DataFrame, pl.DataFrame, bool]:
    """``coerce``, and whether any value was rewritten: False when every row took the fast rule, which
    passes values on as written (PostgreSQL reads them as the canonical form would be read)."""
    fast, general = _split_fast(raw.with_columns(lines.alias("_line")), spec, instants)
    unchecked = unchecked_shapes
    if general.height == 0:
        return (*_typed(fast, spec, True, nul, instants, unchecked), False)
    if fast.height == 0:
        return (*_typed(general, spec, False, nul, instants, unchecked), True)
    (good_fast, rejects_fast), (good, rejects) = (_typed(fast, spec, True, nul, instants, unchecked),
                                                  _typed(general, spec, False, nul, instants, unchecked))
    return pl.concat([good_fast, good]), pl.concat([rejects_fast, rejects]), True
