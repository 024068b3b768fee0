"""Binary COPY (``cutover.copy_binary``) against CSV text: the same rows, loaded both ways into one server,
hold the same values — for any values the loader's typing passes on."""

from __future__ import annotations

import datetime as dt

import polars as pl
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cutover import batches, copy_binary
from cutover.copy_binary import INT8, KINDS, Layout

COLUMNS = {  # name: (SQL type, kind, scale)
    "t": ("text", KINDS["text"], 0),
    "u": ("uuid", KINDS["uuid"], 0),
    "ts": ("timestamptz", KINDS["timestamptz"], 0),
    "n12_2": ("numeric(12,2)", KINDS["numeric"], 2),
    "n5_0": ("numeric(5,0)", KINDS["numeric"], 0),
    "n20_8": ("numeric(20,8)", KINDS["numeric"], 8),
    "_line": ("bigint", INT8, 0),
}
LAYOUT = Layout(tuple(k for _, k, _ in COLUMNS.values()), tuple(s for _, _, s in COLUMNS.values()))
SCHEMA = {name: pl.Int64 if name == "_line" else pl.String for name in COLUMNS}


def test_the_kernel_is_built():
    assert copy_binary.available(), "cutover._copy_binary was not built: is a C compiler installed?"


def _load_both_ways(url: str, rows: list[dict]) -> None:
    """COPY the rows as CSV (as the loader writes it) and as binary into two tables; they must hold the same."""
    frame = pl.DataFrame(rows, schema=SCHEMA)
    tuples = copy_binary.encode(frame, LAYOUT, len(batches.csv_bytes(frame)))
    assert tuples is not None
    columns = ", ".join(f"{name} {typ}" for name, (typ, _, _) in COLUMNS.items())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("set timezone = 'America/New_York'")  # no value may lean on the session's zone
        for table in ("as_text", "as_binary"):
            conn.execute(f"drop table if exists {table}; create table {table} ({columns})")
        with conn.cursor().copy("copy as_text from stdin (format csv)") as cp:
            cp.write(batches.csv_bytes(frame))
        with conn.cursor().copy("copy as_binary from stdin (format binary)") as cp:
            cp.write(copy_binary.SIGNATURE + bytes(tuples) + copy_binary.TRAILER)
        # as text, not by equality: 1.5 = 1.50 and -0 = 0, but they print apart
        differ = conn.execute("select count(*) from ((select a::text from as_text a except all select b::text from"
                              " as_binary b) union all (select b::text from as_binary b except all select a::text"
                              " from as_text a)) d").fetchone()[0]
        counts = conn.execute("select (select count(*) from as_text), (select count(*) from as_binary)").fetchone()
    assert counts == (len(rows), len(rows)) and differ == 0, rows


TEXTS = st.none() | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
UUIDS = st.none() | st.builds(lambda u, upper: str(u).upper() if upper else str(u), st.uuids(), st.booleans())


@st.composite
def timestamps(draw):
    """The shapes the loader passes on: YYYY-MM-DD[T ]HH:MM:SS[.f], then Z or +-HH:MM."""
    at = draw(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)))
    digits = draw(st.integers(0, 6))
    fraction = "." + f"{at.microsecond:06d}"[:digits] if digits else ""
    offset = draw(st.sampled_from(["Z", "+00:00"]) | st.builds(
        lambda sign, h, m: f"{sign}{h:02d}:{m:02d}", st.sampled_from("+-"), st.integers(0, 15), st.integers(0, 59)))
    day, time = f"{at.year:04d}-{at.month:02d}-{at.day:02d}", f"{at.hour:02d}:{at.minute:02d}:{at.second:02d}"
    return f"{day}{draw(st.sampled_from('T '))}{time}{fraction}{offset}"


def numerics(precision: int, scale: int):
    """Plain decimals the loader passes on: at most precision - scale digits before the point (leading zeros
    aside), and none but zeros past the scale."""
    whole = st.text("0123456789", max_size=precision - scale).map(lambda s: s.lstrip("0"))
    return st.none() | st.builds(
        lambda sign, zeros, w, f, tail, point: sign + zeros + w + (("." + f + tail) if (f or tail or point) else ""),
        st.sampled_from(["", "-", "+"]), st.sampled_from(["", "0", "00"]), whole, st.text("0123456789", max_size=scale),
        st.sampled_from(["", "0", "000"]), st.booleans(),
    ).filter(lambda s: any(c.isdigit() for c in s))


ROWS = st.lists(st.fixed_dictionaries({"t": TEXTS, "u": UUIDS, "ts": st.none() | timestamps(),
                                       "n12_2": numerics(12, 2), "n5_0": numerics(5, 0), "n20_8": numerics(20, 8)}),
                min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ROWS)
def test_any_typed_rows_load_as_their_text_does(db_url, rows):
    _load_both_ways(db_url, [dict(r, _line=i + 2) for i, r in enumerate(rows)])


@pytest.mark.parametrize("value", ["0", "-0", "+0.00", "-0.000", "0000.", ".0", "00.10", "-.5", "5.", "999999999.99",
                                   "-999999999.99", "10000", "100000000", "0.01", "1.00000000", "12345678.9"])
def test_numerics_at_the_edges(db_url, value):
    _load_both_ways(db_url, [{"n12_2": value, "n20_8": value, "_line": 2}])


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+15:59", "9999-12-31 23:59:59.999999-15:59",
                                   "2000-01-01T00:00:00Z", "1999-12-31T23:59:59.999999Z", "2024-02-29 12:00:00.5+05:30",
                                   "1969-12-31T23:59:59.000001+00:00"])
def test_timestamps_at_the_edges(db_url, value):
    _load_both_ways(db_url, [{"ts": value, "_line": 2}])


@pytest.mark.parametrize("column, value", [
    ("ts", "2024-07-06T06:44:41"),  # no offset: the session's zone would decide, so the loader writes one
    ("ts", "2024-07-06t06:44:41z"), ("ts", "2024-02-30T00:00:00Z"), ("u", "cc7ab9e6-0b6f-44c9-9547-e5115fe15fd"),
    ("u", "cc7ab9e6+0b6f-44c9-9547-e5115fe15fd1"), ("n12_2", "1.5e3"), ("n12_2", "1.005"), ("n12_2", "."),
])
def test_a_value_of_another_shape_makes_the_batch_go_as_text(column, value):
    frame = pl.DataFrame([{column: value, "_line": 2}], schema=SCHEMA)
    assert copy_binary.encode(frame, LAYOUT, 100) is None


def test_a_small_guess_of_room_costs_a_second_pass_not_a_failure(db_url):
    long = "é" * 5000
    _load_both_ways(db_url, [{"t": long, "_line": i} for i in range(50)])
    frame = pl.DataFrame([{"t": long, "_line": 1}], schema=SCHEMA)
    assert len(copy_binary.encode(frame, LAYOUT, 1)) == 2 + 7 * 4 + len(long.encode()) + 8  # count, lengths, values
