"""Typing rules: what is accepted, its canonical form, and the reason for what is not."""

from __future__ import annotations

import polars as pl
import pytest

from cutover.coerce import column_rule
from cutover.spec import Column


def _apply(column: Column, values):
    value, reason = column_rule(column)
    df = pl.DataFrame({column.name: values}, schema={column.name: pl.String})
    out = df.select(value.alias("v"), reason.alias("r"))
    return list(zip(out["v"].to_list(), out["r"].to_list()))


TS = Column("t", "timestamptz", nullable=True)


@pytest.mark.parametrize("raw,canonical", [
    ("2025-03-01T10:00:00Z", "2025-03-01T10:00:00.000000+00:00"),
    ("2025-03-01 12:00:00+02:00", "2025-03-01T10:00:00.000000+00:00"),
    ("2025-03-01T05:30:00-0430", "2025-03-01T10:00:00.000000+00:00"),
    ("2025-03-01T12:00:00+02", "2025-03-01T10:00:00.000000+00:00"),
    ("2025-03-01T10:00:00.123456+00:00", "2025-03-01T10:00:00.123456+00:00"),
    ("2025-03-01T10:00:00.5Z", "2025-03-01T10:00:00.500000+00:00"),
    ("2025-03-01T10:00", "2025-03-01T10:00:00.000000+00:00"),
    ("2025-03-01T10:00:00", "2025-03-01T10:00:00.000000+00:00"),  # no offset: UTC
    ("2024-02-29 23:59:59.999999z", "2024-02-29T23:59:59.999999+00:00"),
])
def test_timestamps_keep_their_exact_instant(raw, canonical):
    assert _apply(TS, [raw]) == [(canonical, None)]


@pytest.mark.parametrize("raw,why", [
    ("2025-13-45T99:00:00Z", "impossible"),
    ("2025-02-29T10:00:00Z", "impossible"),
    ("0000-01-01T00:00:00Z", "impossible"),
    ("2025-03-01T10:00:00.1234567Z", "ISO 8601"),  # nanoseconds would be truncated
    ("2025-03-01", "ISO 8601"),
    ("now", "ISO 8601"),
    ("1740823200", "ISO 8601"),
    (" 2025-03-01T10:00:00Z", "ISO 8601"),
    ("\uff12\uff10\uff12\uff15-03-01T10:00:00Z", "ISO 8601"),  # full-width digits
    ("2025-03-01T10:00:00+\u0660\u0665:30", "ISO 8601"),
])
def test_bad_timestamps_are_rejected(raw, why):
    [(_, reason)] = _apply(TS, [raw])
    assert reason and why in reason


BUDGET = Column("budget", "numeric", precision=12, scale=2)


@pytest.mark.parametrize("raw,reason", [
    ("450000.00", None), ("1.5", None), ("1.500", None), ("-0.01", None), ("+3", None), (".5", None),
    ("9999999999.99", None), ("0000000001.00", None),
    ("100.005", "decimal places"), ("1.2345", "decimal places"),
    ("99999999999", "too large"), ("12,5oo", "not a number"), ("1e3", "not a number"), ("", "not a number"),
    (".", "not a number"), ("-", "not a number"), (" 1", "not a number"), ("NaN", "not a number"),
    ("0.00", None), ("-000.10", None), ("5.", None), ("+.50", None), ("0099999999.99", None),
    ("1.0000000", None), ("10000000000", "too large"), ("-10000000000.00", "too large"), ("1.001", "decimal places"),
    ("1.2.3", "not a number"), ("--1", "not a number"), ("1-", "not a number"),
    # digits of other scripts: the regex engine's \d admits them, PostgreSQL does not
    ("\u0661\u0662\u0663.\u0664\u0665", "not a number"), ("\uff11\uff12", "not a number"),
    ("12.\u0665", "not a number"),
])
def test_numerics_are_never_rounded(raw, reason):
    [(_, got)] = _apply(BUDGET, [raw])
    assert (got is None) if reason is None else (reason in got)


def test_text_rules():
    status = Column("status", "text", nullable=False, enum=("new", "won"))
    assert [r for _, r in _apply(status, ["new", "New", None, ""])] == [
        None, "not one of: new, won", "required value is missing", "not one of: new, won"]
    state = Column("state", "text", length=2)
    assert [r is None for _, r in _apply(state, ["TX", "T", "ÑY", None])] == [True, False, True, True]
    notes = Column("notes", "text")
    assert _apply(notes, ["a\x00b"])[0][1].startswith("contains a NUL")
    assert _apply(notes, ["  keep  spaces\r\n"]) == [("  keep  spaces\r\n", None)]


def test_uuids_are_lower_cased():
    col = Column("id", "uuid", nullable=False)
    assert _apply(col, ["00AEABBC-54D4-5830-8A36-9308A3EE5BFA", "not-a-uuid"]) == [
        ("00aeabbc-54d4-5830-8a36-9308a3ee5bfa", None), ("not-a-uuid", "not a UUID (expected 8-4-4-4-12 hex digits)")]


def test_the_29th_of_february_has_the_fast_shape_in_leap_years_only():
    import calendar

    from cutover.coerce import fast_timestamp

    years = range(1000, 9000)
    frame = pl.DataFrame({"t": [f"{y}-02-29T12:00:00Z" for y in years]})
    assert frame.select(fast_timestamp(pl.col("t"))).to_series().to_list() == [calendar.isleap(y) for y in years]


@pytest.mark.parametrize("seed", range(4))
def test_the_fast_timestamp_shape_decides_as_the_general_rule_does(seed):
    """A value the fast regex admits is passed on as written: it must be one the general rule accepts,
    at the same instant; anything else goes to the general rule. Random values near every edge."""
    import random

    from cutover import fast_timestamps
    from cutover.coerce import _general_instant, fast_timestamp

    rng = random.Random(seed)
    values = []
    for _ in range(4000):
        year = rng.choice([1, 999, 1000, 1600, 1700, 1999, 2000, 2023, 2024, 2100, 8800, 8996, 8999, 9000, 9999])
        edge = rng.random() < 0.2  # mostly valid parts, sometimes one past the edge
        month = rng.choice([0, 13]) if edge else rng.randint(1, 12)
        day = rng.choice([0, 32]) if edge else rng.choice([1, 15, 28, 29, 30, 31])
        hh, mm, ss = rng.choice([0, 9, 23, 24]), rng.choice([0, 59, 59, 60]), rng.choice([0, 30, 59, 59, 60])
        frac = rng.choice(["", ".5", ".05", ".0102", ".123456", ".1234567"])
        off = rng.choice(["Z", "Z", "z", "+00:00", "-14:59", "+02:00", "+15:00", "+05", "+0530", "", "+5:30"])
        sep = rng.choice(["T", " "])
        value = f"{year:04d}-{month:02d}-{day:02d}{sep}{hh:02d}:{mm:02d}:{ss:02d}{frac}{off}"
        values.append(value.replace("1", "١", 1) if rng.random() < 0.02 else value)  # an Arabic-Indic one
    frame = pl.DataFrame({"t": values})
    instant, reason = _general_instant(pl.col("t"))
    general = frame.select(fast_timestamp(pl.col("t")).alias("fast"), instant.alias("at"),
                           reason.alias("why"))
    fast = general.filter("fast")
    assert fast.height > 150 and general.height - fast.height > 150
    assert fast["why"].null_count() == fast.height  # every fast value is accepted by the general rule
    # PostgreSQL reads the value as written: the instant polars reads from it is the general rule's,
    # and so is the one the fast rule reads by position (what parity's digests hash)
    written = fast.with_columns(t=pl.Series(values).filter(general["fast"]))
    as_written = written.select(
        pl.col("t").str.replace(" ", "T").str.replace("Z", "+00:00").str.to_datetime(
            "%Y-%m-%dT%H:%M:%S%.f%:z", time_unit="us", time_zone="UTC"))
    assert as_written.to_series().to_list() == fast["at"].to_list()
    shaped, instants = fast_timestamps.read(frame["t"])
    assert shaped.tolist() == general["fast"].to_list()
    assert instants.filter(general["fast"]).to_list() == fast["at"].to_list()


@pytest.mark.parametrize("precision,scale", [(12, 2), (5, 0), (3, 3), (1, 0), (20, 7)])
def test_the_one_regex_of_passing_numerics_passes_what_the_three_rules_pass(precision, scale):
    """Typing tells the rows that pass by ``column_passes`` and works out the reasons of the others only:
    the two must agree on every value. Random strings of the characters that matter, near the limits."""
    import random

    from cutover.coerce import column_passes

    rng = random.Random(precision * 100 + scale)
    values = [None, "", ".", "+", "-", "+.", "0", "-0", ".0", "0.", "00.00", "5.", ".5", "1e3", " 1"]
    for _ in range(20_000):
        whole = "".join(rng.choice("0000123456789") for _ in range(rng.randint(0, precision - scale + 2)))
        frac = "".join(rng.choice("00001239") for _ in range(rng.randint(0, scale + 3)))
        value = rng.choice(["", "", "+", "-"]) + whole + rng.choice(["", ".", ".", "."]) + frac
        if rng.random() < 0.05:
            at = rng.randint(0, len(value))
            value = value[:at] + rng.choice("+-.x٣ ") + value[at:]
        values.append(value)
    for nullable in (True, False):
        col = Column("n", "numeric", nullable=nullable, precision=precision, scale=scale)
        frame = pl.DataFrame({"n": values}, schema={"n": pl.String})
        got = frame.select(column_passes(col).alias("passes"), column_rule(col)[1].is_null().alias("no_reason"))
        assert got.filter(pl.col("passes") != pl.col("no_reason")).height == 0, got.filter(
            pl.col("passes") != pl.col("no_reason")).with_columns(frame["n"]).head(5)
        assert 0.1 < got["passes"].mean() < 0.9  # both kinds, in numbers


@pytest.mark.parametrize("table", ["leads", "approvals"])
def test_typing_tells_the_failing_rows_as_their_reasons_do(table, specs):
    """``_typing``'s ``bad`` (by ``column_passes``) must flag exactly the rows some column gives a reason,
    in both rules and whether or not texts may hold a NUL: a row flagged without one would be lost."""
    import random

    from cutover.coerce import _typing
    from tests.csvdata import approval, lead

    spec = specs[table]
    pool = {"uuid": ["00AEABBC-54D4-5830-8A36-9308A3EE5BFA", "00aeabbc-54d4-5830-8a36-9308a3ee5bfa", "0aeabbc-54d4",
                     "x"],
            "numeric": ["1.50", "12,5", "1.005", "99999999999", ".", "-0"],
            "text": ["new", "pending", "TX", "T", "a\x00b", "sms", "email", "approved"],
            "timestamptz": ["2025-01-01T00:00:00Z", "2025-02-30 10:00", "yesterday", "2025-01-01T10:00"]}
    rng = random.Random(7)
    for fast in (False, True):
        for nul in (True, False):
            valid = [lead(i) if table == "leads" else approval(i, lead(i)["id"]) for i in range(3000)]
            rows = {c.name: [(rng.choice([None, "", *pool[c.type]][:3] if fast and c.type == "timestamptz"
                                         else [None, "", *pool[c.type]]) if rng.random() < 0.02 else row[c.name])
                             for row in valid]
                    for c in spec.columns}
            if fast:  # the fast rule sees fast-shaped timestamps only
                rows = {n: [None if v == "" and spec.column(n).type == "timestamptz" else v for v in vs]
                        for n, vs in rows.items()}
            if not nul:
                rows = {n: [v if v is None or "\x00" not in v else "y" for v in vs] for n, vs in rows.items()}
            frame = pl.DataFrame(rows, schema={c.name: pl.String for c in spec.columns})
            rules = _typing(spec, fast, nul, False, False)
            bad = frame.select(rules.bad).to_series()
            reasons = frame.with_columns(rules.checks).select(
                pl.any_horizontal(pl.col(f"_why_{i}").is_not_null() for i in range(len(spec.columns)))).to_series()
            assert 0 < bad.sum() < len(bad)
            assert (bad == reasons).all(), (fast, nul, frame.filter(bad != reasons).head(3).rows())
