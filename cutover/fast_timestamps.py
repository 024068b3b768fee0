"""Timestamps of the common shape read by position, in numpy: which values have it, and their instants.

Contract: ``read(values)`` takes a polars String Series and returns ``(shaped, instants)``.
``shaped[i]`` is True exactly where ``cutover.coerce.FAST_TS_RE`` matches ``values[i]`` (False for a
null), and ``instants[i]`` is then the instant the value names — the one ``cutover.coerce``'s general
rule parses — as Datetime("us", "UTC"); null where the value lacks the shape. A pure function with no
state: threads may call it at once.

Why: the CSV's digests (parity, a validation) need every timestamp's instant. Each value is laid out as one
row of a byte matrix, padded to the shape's longest length (32 bytes), so the shape's checks and the
calendar arithmetic are a few dozen array operations over the whole batch instead of a regex and a
parse per value: ~40% less time than polars' regex and ``str.to_datetime``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

WIDTH = 32  # YYYY-MM-DDTHH:MM:SS (19) + .ffffff (7) + ±HH:MM (6)
SHORTEST = 20  # YYYY-MM-DDTHH:MM:SSZ

_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])  # of YYYY-MM-DD?HH:MM:SS
_WEIGHTS = np.array([1000, 100, 10, 1] + [10, 1] * 5, np.int32)
_FIELDS = [(0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14)]  # year, month, day, hour, minute, second
_FRACTION = np.array([100_000, 10_000, 1_000, 100, 10, 1], np.int32)

# The calendar as tables, from numpy's own (proleptic Gregorian, as PostgreSQL's): the shape's years
# are 1000-8999, and a table lookup costs less than the divisions of a days-from-date formula.
FIRST_YEAR, END_YEAR = 1000, 9000
_YEAR_STARTS = np.arange(str(FIRST_YEAR), str(END_YEAR + 1), dtype="datetime64[Y]").astype("datetime64[D]").astype(np.int64)
_LEAP = (np.diff(_YEAR_STARTS) == 366).astype(np.intp)
# by 14 * leap + month; month 0 and 13 have no days
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 0,
                        0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 0], np.int32)
_DAYS_BEFORE = np.concatenate([np.cumsum(_MONTH_DAYS[:14]) - _MONTH_DAYS[:14], np.cumsum(_MONTH_DAYS[14:]) - _MONTH_DAYS[14:]])


def _matrix(values: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(the values as rows of WIDTH bytes: zero-padded, cut at WIDTH; their lengths in bytes, 0 for a null)."""
    v = pl.col(values.name)
    rows, lengths = values.to_frame().select(
        v.fill_null("").str.pad_end(WIDTH, "\x00").cast(pl.Binary).bin.head(WIDTH)
        .bin.reinterpret(dtype=pl.Array(pl.UInt8, WIDTH)),
        v.str.len_bytes().fill_null(0).alias("_length")).get_columns()
    return rows.to_numpy(), lengths.to_numpy().astype(np.intp)


def read(values: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """See the module docstring."""
    # Every operation runs over one byte position of all values at once (a row of ``digit``): numpy
    # loops over a short last axis ten times slower than over a long one.
    b, length = _matrix(values)
    digit = np.ascontiguousarray(b[:, :WIDTH - 6].T) - np.uint8(48)  # uint8 wraps below '0': a digit is <= 9
    fixed = digit[_DIGITS]
    weighted = fixed * _WEIGHTS[:, None]
    year, month, day, hour, minute, second = (weighted[a:z].sum(axis=0) for a, z in _FIELDS)
    shaped = ((length >= SHORTEST) & (length <= WIDTH) & (np.maximum.reduce(fixed, axis=0) <= 9)
              & (b[:, 4] == ord("-")) & (b[:, 7] == ord("-")) & (b[:, 13] == ord(":")) & (b[:, 16] == ord(":"))
              & ((b[:, 10] == ord("T")) | (b[:, 10] == ord(" ")))
              & (year >= FIRST_YEAR) & (year < END_YEAR) & (hour <= 23) & (minute <= 59) & (second <= 59))
    # out-of-range rows index the tables harmlessly; their results are never used
    year_at, month_at = np.clip(year - FIRST_YEAR, 0, END_YEAR - FIRST_YEAR - 1), np.clip(month, 0, 13)
    leap_month = _LEAP[year_at] * 14 + month_at
    shaped &= (day >= 1) & (day <= _MONTH_DAYS[leap_month])  # month 0 or 13+ has no day

    # the zone: the last byte "Z", or the last six "±HH:MM" (at most ±14:59)
    sign, h1, h2, colon, m1, m2 = b.reshape(-1)[np.arange(-6, 0)[:, None] + (np.arange(len(b)) * WIDTH
                                                                             + np.clip(length, 6, WIDTH))]
    zone = np.array([h1, h2, m1, m2]) - np.uint8(48)
    zone_hours, zone_minutes = (zone[0] * 10 + zone[1]).astype(np.int32), (zone[2] * 10 + zone[3]).astype(np.int32)
    zulu = m2 == ord("Z")
    shaped &= zulu | (((sign == ord("+")) | (sign == ord("-"))) & (colon == ord(":"))
                      & (np.maximum.reduce(zone, axis=0) <= 9) & (zone_hours <= 14) & (zone_minutes <= 59))

    # the fraction: nothing, or "." and 1-6 digits, between the seconds and the zone
    fraction = length - 19 - np.where(zulu, 1, 6)
    fraction_digits = digit[20:26] * (np.arange(20, 26)[:, None] < 19 + fraction)
    shaped &= ((fraction == 0) | ((fraction >= 2) & (fraction <= 7) & (b[:, 19] == ord("."))))
    shaped &= np.maximum.reduce(fraction_digits, axis=0) <= 9
    micros = (fraction_digits * _FRACTION[:, None]).sum(axis=0)

    days = _YEAR_STARTS[year_at] + _DAYS_BEFORE[leap_month] + (day - 1)
    offset = np.where(zulu, 0, np.where(sign == ord("-"), -60, 60) * (zone_hours * 60 + zone_minutes))
    seconds = days * 86_400 + (hour * 3_600 + minute * 60 + second - offset)
    instants = pl.select(pl.when(pl.Series(shaped)).then(pl.Series(seconds * 1_000_000 + micros))).to_series()
    return shaped, instants.cast(pl.Datetime("us", "UTC")).alias(values.name)
