"""``cutover.fast_timestamps`` reads by position exactly what ``coerce.FAST_TS_RE`` admits, at the
instant the general rule parses. The regex and the general rule are the reference; these tests try
every byte position of the shape with characters that could confuse a positional reader."""

import calendar
import random

import polars as pl
import pytest

from cutover import fast_timestamps
from cutover.coerce import _general_instant, fast_timestamp


def _agrees(values: list[str | None]) -> int:
    """Assert read() against the references on ``values``; returns how many have the shape."""
    frame = pl.DataFrame({"t": values}, schema={"t": pl.String})
    instant, _ = _general_instant(pl.col("t"))
    expected = frame.select(fast_timestamp(pl.col("t")).fill_null(False).alias("fast"), instant.alias("at"))
    shaped, instants = fast_timestamps.read(frame["t"])
    assert shaped.tolist() == expected["fast"].to_list(), [
        v for v, got, want in zip(values, shaped.tolist(), expected["fast"].to_list()) if got != want][:5]
    assert instants.dtype == pl.Datetime("us", "UTC") and instants.name == "t"
    assert instants.is_null().to_list() == [not s for s in shaped.tolist()]
    assert instants.filter(expected["fast"]).to_list() == expected.filter("fast")["at"].to_list()
    return int(shaped.sum())


VALID = ["2024-02-29T23:59:59.999999Z", "1000-01-01 00:00:00Z", "8999-12-31T23:59:59+14:59",
         "2025-05-12T18:49:26.030071Z", "2024-11-12T00:45:33Z", "1970-01-01T00:00:00.5-14:59",
         "2000-02-29T12:00:00.000001+00:00", "1999-12-31T23:59:59.123456-03:30", "2023-06-30 06:07:08.1+05:45"]


def test_every_valid_shape_is_read_at_its_instant():
    assert _agrees(VALID) == len(VALID)


@pytest.mark.parametrize("seed", range(3))
def test_a_changed_byte_anywhere_is_judged_as_the_regex_judges_it(seed):
    rng = random.Random(seed)
    confusing = list("0123456789:-+.TtZz ") + ["é", "١", "\x00", "/", "\x7f", "ÿ"]
    values = []
    for base in VALID:
        for at in range(len(base)):
            for ch in rng.sample(confusing, 8):
                values.append(base[:at] + ch + base[at + 1:])  # replaced
                values.append(base[:at] + ch + base[at:])  # inserted
            values.append(base[:at] + base[at + 1:])  # deleted
    assert 0 < _agrees(values) < len(values)


def test_lengths_nulls_and_wide_characters():
    values = [None, "", "Z", "2024-01-01T00:00:00", "2024-01-01T00:00:00.Z", "2024-01-01T00:00:00.1234567Z",
              "2024-01-01T00:00:00.123456+14:59",  # 32 bytes, the longest
              "2024-01-01T00:00:00.123456+14:59x", "2024-01-01T00:00:00.123456+14:5", "x" * 40,
              "2024-01-01T00:00:00Zé", "é" * 16, "2024-01-01T00:00:00+1400", "2024-01-01T00:00:00+14",
              "2024-01-01T00:00:00+15:00", "2024-01-01T24:00:00Z", "2024-01-01T00:60:00Z", "2024-01-01T00:00:60Z",
              "0999-12-31T23:59:59Z", "9000-01-01T00:00:00Z", "2024-00-01T00:00:00Z", "2024-13-01T00:00:00Z",
              "2024-04-31T00:00:00Z", "2024-04-30T00:00:00Z", "2024-01-00T00:00:00Z", "2024-01-32T00:00:00Z"]
    assert _agrees(values) == 2  # the longest, and the 30th of April


def test_every_day_of_the_shape_s_calendar():
    values = [f"{y}-{m:02d}-{d:02d}T12:00:00Z" for y in (1000, 1600, 1700, 1900, 2000, 2023, 2024, 2100, 8996)
              for m in range(1, 13) for d in range(1, 32)]
    valid = sum(1 for y in (1000, 1600, 1700, 1900, 2000, 2023, 2024, 2100, 8996) for m in range(1, 13)
                for _ in range(calendar.monthrange(y, m)[1]))
    assert _agrees(values) == valid
    years = range(1000, 9000)
    shaped, _ = fast_timestamps.read(pl.Series("t", [f"{y}-02-29T00:00:00Z" for y in years]))
    assert shaped.tolist() == [calendar.isleap(y) for y in years]


def test_random_instants_and_offsets():
    rng = random.Random(7)
    values = []
    for _ in range(20_000):
        y, mo = rng.randint(1000, 8999), rng.randint(1, 12)
        d = rng.randint(1, calendar.monthrange(y, mo)[1])
        frac = rng.choice(["", "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6)))])
        zone = rng.choice(["Z", f"{rng.choice('+-')}{rng.randint(0, 14):02d}:{rng.randint(0, 59):02d}"])
        values.append(f"{y:04d}-{mo:02d}-{d:02d}{rng.choice('T ')}{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
                      f":{rng.randint(0, 59):02d}{frac}{zone}")
    assert _agrees(values) == len(values)
