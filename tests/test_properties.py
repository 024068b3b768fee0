"""Property-based round trips through a real PostgreSQL: random leads rows (arbitrary Unicode text,
aware timestamps at any offset and to the microsecond, numerics of numeric(12,2) in every plain
spelling) → CSV → ``cutover.sync`` → ``cutover.export`` → the export loaded again.

What must hold for every example:
- rows read = loaded + rejected; every unrepresentable row (a NUL in text, non-zero digits beyond
  the scale, a timestamp that cannot be parsed) is rejected with a reason, never crashes the sync;
- the exported text of every value is the canonical form of its input: the same instant in UTC,
  the same number at scale 2, text byte for byte, NULL and '' distinct, UUIDs lower-case;
- export → sync changes nothing, loading the export into an empty table gives an identical table,
  and exporting that table again gives the same bytes (a fixpoint).

One database for the whole module (created here, dropped at the end); each example truncates it.
"""

from __future__ import annotations

import os
import random
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import psycopg_pool.base
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cutover import sync as engine
from cutover.export import export_table
from tests.csvdata import LEAD_COLUMNS, write_csv

TEXT_COLUMNS = ("first_name", "last_name", "email", "phone", "street", "city", "zip", "source", "notes")
REQUIRED_TEXT = ("first_name", "last_name", "email")
STATUSES = ("new", "contacted", "qualified", "won", "lost")
SPECIAL = ['"', '""', ",", "\n", "\r\n", "\r", "\\.", "\\.\n", "\n\\.\n", "\u2028", "\u2029", " ", "  ", "\t",
           "\\", "\\N", "NULL", "\ufeff", "é", "日本語", "🏡", "e\u0301", "\x7f", "\x01", "'", ";"]
EXAMPLES = int(os.environ.get("CUTOVER_PROPERTY_EXAMPLES", "40"))  # raise it for a longer hunt
PROPS = hsettings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                         HealthCheck.data_too_large])


# --- the module's database -------------------------------------------------------------------------

_GLOBAL_STATE = {"seed", "getstate", "setstate"}  # what Hypothesis itself does with the global ``random``


@pytest.fixture(scope="module")
def world(pg_server, tmp_path_factory):
    """(settings, db, specs, workdir, conninfo) on one database shared by every example of the module."""
    name = f"cutover_props_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    conninfo = make_conninfo("", **{**conninfo_to_dict(pg_server), "dbname": name})
    work = tmp_path_factory.mktemp("props")
    (work / "data").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUPABASE_DB_URL", conninfo)
        mp.setenv("CUTOVER_HOME", str(work / "home"))
        mp.setenv("CUTOVER_DATA_DIR", str(work / "data"))
        from cutover.db import connect
        from cutover.settings import Settings
        from cutover.spec import load_specs

        # Threads of their own draw from the global ``random`` while Hypothesis draws an example, which
        # it takes for its strategy's use of it (HypothesisDeprecationWarning): the pool, for the expiry
        # jitter of the connections it opens and replaces, and others once it no longer did (Prefect's
        # observers, say, which earlier modules' flows may leave running, back off with random.uniform).
        # Their draws come from a Random of their own; the global state, which Hypothesis seeds and
        # checks, is left to it.
        private = random.Random()
        mp.setattr(psycopg_pool.base, "random", private.random)  # bound at import: ``from random import random``
        for name in random.__all__:
            if getattr(getattr(random, name), "__self__", None) is random._inst and name not in _GLOBAL_STATE:
                mp.setattr(random, name, getattr(private, name))
        settings = Settings()
        specs = load_specs(settings.spec_dir)
        db = connect(settings)
        try:
            yield settings, db, specs, work, conninfo
        finally:
            db.close()
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def _sync(world, path: Path, batch_bytes: int | None = None):
    settings, db, specs, _, _ = world
    plan = engine.plan_sync(specs["leads"], specs, path, rejects_dir=settings.rejects_dir,
                            batch_bytes=batch_bytes or settings.batch_bytes, mass_delete_threshold=settings.mass_delete_threshold,
                            allow_mass_delete=True, actor="hypothesis")
    return engine.run_sync(db, plan, workers=2)


def _sql(world, query, params=None):
    with psycopg.connect(world[4], autocommit=True) as conn:
        conn.execute("set timezone = 'UTC'")
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else cur.rowcount


def _truncate(world) -> None:
    _sql(world, "do $$ begin if to_regclass('public.leads') is not null then"
                " truncate public.leads cascade; end if; end $$")


def _snapshot(world) -> list[tuple]:
    """The whole table, every value as PostgreSQL's own text (NULL stays None)."""
    cols = ", ".join(f"{c}::text" for c in LEAD_COLUMNS)
    return _sql(world, f"select {cols} from public.leads order by id")


# --- an exact CSV reader: unquoted empty field = NULL, "" = empty string ------------------------

def parse_csv(text: str) -> list[list[str | None]]:
    records, fields, i, n = [], [], 0, len(text)
    while i < n:
        if text[i] == '"':
            i += 1
            parts = []
            while True:
                j = text.index('"', i)
                parts.append(text[i:j])
                i = j + 1
                if text[i:i + 1] == '"':
                    parts.append('"')
                    i += 1
                    continue
                break
            fields.append("".join(parts))
        else:
            j = i
            while j < n and text[j] not in ",\r\n":
                j += 1
            fields.append(text[i:j] or None)
            i = j
        if i >= n:
            records.append(fields)
            break
        if text[i] == ",":
            i += 1
            if i == n:  # a trailing comma: one more, empty field
                fields.append(None)
                records.append(fields)
            continue
        i += 2 if text[i:i + 2] == "\r\n" else 1
        records.append(fields)
        fields = []
    return records


def test_the_csv_reader_tells_null_from_empty():
    assert parse_csv('a,b,c\n"",,"x""y\r\nz"\n') == [["a", "b", "c"], ["", None, 'x"y\r\nz']]


# --- canonical forms -------------------------------------------------------------------------------

def canonical_timestamp(value: datetime) -> str:
    """PostgreSQL's text of a timestamptz in UTC (DateStyle ISO): trailing zeros of the fraction dropped."""
    u = value.astimezone(timezone.utc)
    text = f"{u.year:04d}-{u.month:02d}-{u.day:02d} {u.hour:02d}:{u.minute:02d}:{u.second:02d}"
    if u.microsecond:
        text += f".{u.microsecond:06d}".rstrip("0")
    return text + "+00"


def canonical_numeric(value: Decimal) -> str:
    q = value.quantize(Decimal("0.01"))
    return "0.00" if q == 0 else f"{q:f}"


# --- strategies ------------------------------------------------------------------------------------

CHARS = st.characters(codec="utf-8", exclude_characters="\x00")  # no surrogates, no NUL
texts = st.lists(st.one_of(st.sampled_from(SPECIAL), st.text(CHARS, max_size=6)), max_size=6).map("".join)
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
# Kept a day inside 0001..9999 so that the instant in UTC is too (the edge is tested on its own below).
instants = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets)
budgets = st.decimals(min_value=Decimal("-9999999999.99"), max_value=Decimal("9999999999.99"), places=2,
                      allow_nan=False, allow_infinity=False)


@st.composite
def timestamp_text(draw, value: datetime) -> str:
    """One of the ISO 8601 spellings the loader accepts, for ``value``."""
    sep = draw(st.sampled_from("Tt "))
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d}{sep}{value.hour:02d}:{value.minute:02d}"
    if value.second or value.microsecond or draw(st.booleans()):
        text += f":{value.second:02d}"
        if value.microsecond:
            frac = f"{value.microsecond:06d}"
            text += "." + (frac.rstrip("0") if draw(st.booleans()) else frac)
        elif draw(st.booleans()):
            text += "." + "0" * draw(st.integers(1, 6))
    minutes = int(value.utcoffset().total_seconds() // 60)
    if minutes == 0:
        text += draw(st.sampled_from(["Z", "z", "+00:00", "+0000", "+00", "-00:00", ""]))  # none: UTC
    else:
        sign, m = ("+" if minutes > 0 else "-"), abs(minutes)
        forms = [f"{sign}{m // 60:02d}:{m % 60:02d}", f"{sign}{m // 60:02d}{m % 60:02d}"]
        if m % 60 == 0:
            forms.append(f"{sign}{m // 60:02d}")
        text += draw(st.sampled_from(forms))
    return text


@st.composite
def numeric_text(draw, value: Decimal) -> str:
    """A plain-decimal spelling of ``value`` (sign, leading zeros, trailing zeros, bare point)."""
    sign = "-" if value < 0 else draw(st.sampled_from(["", "+"]))
    whole, frac = f"{abs(value):f}".split(".")
    frac = frac.rstrip("0") + "0" * draw(st.integers(0, 3)) if draw(st.booleans()) else frac
    if whole == "0" and frac and draw(st.booleans()):
        whole = ""  # ".5"
    whole = "0" * draw(st.integers(0, 3)) + whole
    point = "." if frac or draw(st.booleans()) else ""
    if not whole and not frac:
        whole = "0"
    return f"{sign}{whole}{point}{frac}"


@st.composite
def valid_lead(draw, key: uuid.UUID) -> tuple[dict, dict]:
    """(the CSV row as text, the expected exported text of every column)."""
    created, updated = draw(instants), draw(instants)
    budget = draw(st.none() | budgets)
    agent = draw(st.none() | st.uuids())
    row: dict[str, str | None] = {
        "id": str(key).upper() if draw(st.booleans()) else str(key),
        "created_at": draw(timestamp_text(created)),
        "updated_at": draw(timestamp_text(updated)),
        "state": draw(st.none() | st.text(CHARS, min_size=2, max_size=2)),
        "budget": None if budget is None else draw(numeric_text(budget)),
        "status": draw(st.sampled_from(STATUSES)),
        "agent_id": None if agent is None else (str(agent).upper() if draw(st.booleans()) else str(agent)),
    }
    for col in TEXT_COLUMNS:
        row[col] = draw(texts) if col in REQUIRED_TEXT else draw(st.none() | texts)
    expected = {**row, "id": str(key), "agent_id": None if agent is None else str(agent),
                "created_at": canonical_timestamp(created), "updated_at": canonical_timestamp(updated),
                "budget": None if budget is None else canonical_numeric(budget)}
    return row, expected


BAD_TIMESTAMPS = ["2025-13-01T00:00:00Z", "2025-02-30 10:00", "2023-02-29T00:00", "2025-04-31T00:00",
                  "2025-01-01T25:00", "2025-01-01T10:60", "2025-01-01T10:00:61", "2025-01-01T10:00:00.1234567Z",
                  "0000-06-01T00:00:00Z", "yesterday", "2025/01/01 10:00", "2025-01-01", "1735725600",
                  "2025-01-01T10:00:00+25:00", " 2025-01-01T10:00:00Z", "2025-01-01T10:00:00Z ", "2025-1-1T10:00"]


@st.composite
def invalid_lead(draw, key: uuid.UUID, kinds: tuple[str, ...]) -> tuple[dict, str, tuple[str, ...]]:
    """(a row with exactly one unrepresentable value, its column, words one of which its reason contains)."""
    row, _ = draw(valid_lead(key))
    kind = draw(st.sampled_from(kinds))
    if kind == "nul":
        column = draw(st.sampled_from(TEXT_COLUMNS))
        row[column] = draw(texts) + "\x00" + draw(texts)
        return row, column, ("nul",)
    if kind == "scale":
        base = canonical_numeric(draw(budgets))
        row["budget"] = base + draw(st.text("0123456789", max_size=3)) + draw(st.sampled_from("123456789"))
        return row, "budget", ("decimal places",)
    column = draw(st.sampled_from(["created_at", "updated_at"]))
    row[column] = draw(st.sampled_from(BAD_TIMESTAMPS))
    return row, column, ("iso 8601 timestamp", "impossible date")


@st.composite
def lead_files(draw, kinds: tuple[str, ...] = ("scale", "timestamp", "nul")):
    keys = draw(st.lists(st.uuids(), min_size=1, max_size=12, unique=True))
    n_bad = draw(st.integers(0, min(3, len(keys) - 1)))
    good = [draw(valid_lead(k)) for k in keys[n_bad:]]
    bad = [draw(invalid_lead(k, kinds)) for k in keys[:n_bad]]
    order = draw(st.permutations(range(len(keys))))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    # tiny batches cut the file between records that span lines: the scanner must find the boundaries
    batch_bytes = draw(st.sampled_from([None, 97, 1024]))
    return good, bad, order, newline, batch_bytes


# --- the property ----------------------------------------------------------------------------------

@PROPS
@given(case=lead_files())
def test_csv_sync_export_round_trip_is_exact(world, case):
    good, bad, order, newline, batch_bytes = case
    settings, db, specs, work, _ = world
    rows = [r for r, _ in good] + [r for r, _, _ in bad]
    ordered = [rows[i] for i in order]
    src = write_csv(work / "src.csv", ordered, newline=newline)
    starts, line = {}, 2  # the source line each record starts on (the header is line 1)
    for row in ordered:
        starts[row["id"].lower()] = line
        line += 1 + sum((row[c] or "").count("\n") for c in LEAD_COLUMNS)
    _truncate(world)

    # 1. load: every row counted, the bad ones rejected with a reason, none crashes the sync
    result = _sync(world, src, batch_bytes)
    assert (result.read, result.loaded, result.rejected) == (len(rows), len(good), len(bad))
    assert result.read == result.loaded + result.rejected
    if bad:
        rejects = {key: (line, col, reason) for key, line, col, reason in _sql(
            world, "select key, line, column_name, reason from cutover.rejects where run_id = %s", (result.run_id,))}
        assert set(rejects) == {r["id"].lower() for r, _, _ in bad}
        for row, column, words in bad:
            line, got_col, reason = rejects[row["id"].lower()]
            assert (line, got_col) == (starts[row["id"].lower()], column) and reason, (row, rejects[row["id"].lower()])
            assert any(w in reason.lower() for w in words), (row[column], reason)
        assert result.rejects_file and Path(result.rejects_file).is_file()
    else:
        assert result.rejects_file is None

    # 2. export: the canonical text of every input value, in key order, NULL and '' kept apart
    out = work / "export.csv"
    assert export_table(db, specs["leads"], out) == len(good)
    exported = parse_csv(out.read_bytes().decode("utf-8"))
    assert tuple(exported[0]) == LEAD_COLUMNS
    expected = sorted((e for _, e in good), key=lambda e: e["id"])
    assert [r[0] for r in exported[1:]] == [e["id"] for e in expected]
    for record, want in zip(exported[1:], expected):
        got = dict(zip(LEAD_COLUMNS, record))
        for col in LEAD_COLUMNS:
            assert got[col] == want[col], (col, got[col], want[col])
    before = _snapshot(world)

    # 3. export → sync over the same table changes nothing
    again = _sync(world, out, batch_bytes)
    assert (again.read, again.loaded, again.rejected) == (len(good), len(good), 0)
    assert (again.inserted, again.updated, again.deleted) == (0, 0, 0)

    # 4. the export loaded into an empty table gives the identical table, and re-exports identically
    _truncate(world)
    fresh = _sync(world, out)
    assert (fresh.loaded, fresh.rejected, fresh.inserted) == (len(good), 0, len(good))
    assert _snapshot(world) == before
    out2 = work / "export2.csv"
    export_table(db, specs["leads"], out2)
    assert out2.read_bytes() == out.read_bytes()


# --- rows the loader must reject, never crash on ------------------------------------------------

@pytest.mark.parametrize("where", ["a text column", "a ragged record"])
def test_a_nul_is_rejected_with_a_reason_not_a_crash(world, where):
    from tests.csvdata import lead

    _truncate(world)
    src = write_csv(world[3] / "nul.csv", [lead(1), lead(2, notes="before\x00after")])
    if where == "a ragged record":  # one field too many: the whole record is the reject's value
        src.write_bytes(src.read_bytes().replace(b'"before\x00after"', b'"before\x00after",""'))
    result = _sync(world, src)
    assert (result.read, result.loaded, result.rejected) == (2, 1, 1)
    reason = _sql(world, "select reason from cutover.rejects where run_id = %s", (result.run_id,))[0][0]
    assert ("NUL" if where == "a text column" else "expected 16 fields") in reason


# instants whose UTC form leaves years 1..9999 (PostgreSQL's range)

@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_an_instant_outside_years_1_to_9999_in_utc_is_rejected_not_a_crash(world, stamp):
    from tests.csvdata import lead

    _truncate(world)
    src = write_csv(world[3] / "edge.csv", [lead(1), lead(2, created_at=stamp)])
    result = _sync(world, src)
    assert (result.read, result.loaded, result.rejected) == (2, 1, 1)


def test_canonical_forms_are_postgresql_s():
    assert canonical_timestamp(datetime(2025, 3, 1, 12, 0, 0, 100000, tzinfo=timezone(timedelta(hours=2)))) \
        == "2025-03-01 10:00:00.1+00"
    assert canonical_timestamp(datetime(1, 1, 2, 0, 0, tzinfo=timezone.utc)) == "0001-01-02 00:00:00+00"
    assert canonical_numeric(Decimal("-0.00")) == "0.00" and canonical_numeric(Decimal("1.5")) == "1.50"
