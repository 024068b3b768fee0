"""Parity by digests (``cutover parity``) against the staged comparison the gate runs, as the oracle.

Every scenario compares the same CSV with the same table both ways and requires the same result:
counts, examples (keys, changed columns) and rejects. Beside that: a CSV that matches its table
stages nothing (every bucket's sums agree), a difference stages only its own bucket, and a text
holding the digest's separator is compared row by row.
"""

from __future__ import annotations

import json
import random

import numpy as np
import psycopg
import pytest

from cutover import batches, csvscan, digest_parity, digests, parity, sync as engine, table_digests, validate as validation
from cutover.totals_ahead import TotalsAhead
from tests.conftest import CORPUS
from tests.csvdata import AGENT, OTHER_AGENT, approval, lead, write_csv

APPROVAL_COLUMNS = ("id", "lead_id", "channel", "draft", "status", "reviewer", "decided_at", "created_at",
                    "updated_at")


def _plan(settings, specs, table, csv=None):
    return validation.plan_validation(specs[table], specs, csv or settings.csv_path(table),
                                      rejects_dir=settings.rejects_dir, batch_bytes=settings.batch_bytes,
                                      suites_dir=settings.expectations_dir, reports_dir=settings.reports_dir)


def _sync(db, settings, specs, table="leads"):
    plan = engine.plan_sync(specs[table], specs, settings.csv_path(table), rejects_dir=settings.rejects_dir,
                            batch_bytes=settings.batch_bytes, mass_delete_threshold=1.0)
    return engine.run_sync(db, plan, workers=1)


def _staged(db, settings, specs, table):
    """The oracle: the whole file staged, compared in SQL (what the gate does)."""
    plan = _plan(settings, specs, table)
    validation.stage_source(db, plan, engine.thread_map(1))
    result = validation.compare(db, plan)
    db.run(lambda conn: validation._end_staging(conn, plan))
    return result


def _both(db, settings, specs, table="leads", workers=1):
    """Parity by digests, with and without the table's totals started ahead, against the oracle."""
    by_digests = validation.parity_only(db, _plan(settings, specs, table), workers=workers)
    with TotalsAhead.start(db, specs[table]) as ahead:
        assert ahead.result() is not None
        with_ahead = validation.parity_only(db, _plan(settings, specs, table), workers=workers, ahead=ahead)
    staged = _staged(db, settings, specs, table)
    assert by_digests == with_ahead == staged
    return by_digests


def _suspects(db, settings, specs, table="leads"):
    """The buckets a digest comparison of the table's CSV would stage."""
    plan = _plan(settings, specs, table).staging
    fscan = engine.scan(plan)
    try:
        source, _ = digest_parity.csv_sums(plan, csvscan.ScanStream.of(fscan), workers=1)
        target = db.run(lambda conn: digest_parity.target_sums(conn, plan))
        return digests.suspects(source, target)
    finally:
        engine.drop_snapshot(plan)


def test_a_matching_file_agrees_bucket_for_bucket_whatever_its_spelling(db, settings, specs):
    rows = [lead(1, created_at="2025-03-01T12:00:00.123456+02:00", budget="1.5", notes='a "quoted",\nmulti-line ü',
                 phone="", street=None, id=lead(1)["id"].upper()),
            lead(2, created_at="2025-03-01 10:00:00-05:30", updated_at="2025-03-02T11:30Z", budget="-0.00"),
            lead(3, budget="007.10", notes="", city="a,b", zip=None, agent_id=None),
            lead(4, created_at="0001-01-01T00:00:00Z", budget="+12"),
            lead(5, notes="tab\tand emoji 🏠 and a \\ backslash", budget=None)]
    write_csv(settings.csv_path("leads"), rows)
    assert _sync(db, settings, specs).rejected == 0
    # the same values, spelled otherwise
    write_csv(settings.csv_path("leads"), [
        {**rows[0], "created_at": "2025-03-01T10:00:00.123456Z", "budget": "1.50", "id": lead(1)["id"]},
        {**rows[1], "created_at": "2025-03-01T15:30:00+00:00", "updated_at": "2025-03-02 11:30:00.000000Z",
         "budget": "0"},
        {**rows[2], "budget": "7.1"}, {**rows[3], "budget": "12.00"}, rows[4]])
    assert len(_suspects(db, settings, specs)) == 0
    result = _both(db, settings, specs)
    assert result["passed"] and result["source_rows"] == result["target_rows"] == 5


@pytest.mark.parametrize("change, column", [
    (dict(created_at="2025-03-01T10:00:00.000001Z"), "created_at"),
    (dict(phone=None), "phone"),  # '' → NULL
    (dict(notes=""), "notes"),  # NULL → ''
    (dict(budget="450000.01"), "budget"),
    (dict(agent_id=OTHER_AGENT), "agent_id"),
    (dict(notes="a\r\nb"), "notes"),
])
def test_one_changed_value_is_found_in_its_bucket_alone(db, settings, specs, change, column):
    rows = [lead(i, notes="a\nb" if i == 3 else None) for i in range(40)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    rows[3] = {**rows[3], **change}
    write_csv(settings.csv_path("leads"), rows)
    assert len(_suspects(db, settings, specs)) == 1
    result = _both(db, settings, specs)
    assert result["changed"] == 1 and result["examples"]["changed"] == [{"key": rows[3]["id"], "columns": [column]}]


def test_missing_extra_rejected_and_duplicate_rows_match_the_staged_comparison(db, settings, specs):
    rows = [lead(i) for i in range(30)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    write_csv(settings.csv_path("leads"),
              rows[2:20] + [lead(20, budget="12.345"), lead(21, created_at="yesterday"), rows[22], rows[22],
                            lead(23, city="Elsewhere"), rows[23]] + rows[24:] + [lead(100), lead(101, status="nope")]
              # shapes the C kernel checks in place of the typing: the batch is typed again by every rule
              + [lead(102, agent_id="not-a-uuid"), lead(103, budget="12345678901.00")])
    result = _both(db, settings, specs)
    assert (result["missing_in_target"], result["extra_in_target"]) == (1, 2)
    assert result["rejected_in_source"] == 9  # five untypable rows, two keys twice each
    assert not result["passed"]


@pytest.mark.parametrize("ambiguous", [False, True])
def test_examples_are_the_first_keys_of_each_kind_of_difference(db, settings, specs, ambiguous):
    """More differences of each kind than ``parity.EXAMPLES``: the first keys of each, in key order, from
    the one join of both sides; with a key the file repeats (its keys left out) or without."""
    rows = [lead(i) for i in range(120)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    changed = [{**r, "city": "Elsewhere"} for r in rows[30:55]]
    new = [lead(i) for i in range(200, 226)]
    twice = [rows[60]] if ambiguous else []  # its key twice in the file
    write_csv(settings.csv_path("leads"), changed + rows[55:] + new + twice)
    result = _both(db, settings, specs)
    assert (result["missing_in_target"], result["extra_in_target"], result["changed"]) == (26, 30, 25)
    assert result["rejected_in_source"] == (2 if ambiguous else 0)
    first = parity.EXAMPLES
    assert result["examples"]["missing_in_target"] == sorted(r["id"] for r in new)[:first]
    assert result["examples"]["extra_in_target"] == sorted(r["id"] for r in rows[:30])[:first]
    assert result["examples"]["changed"] == [{"key": k, "columns": ["city"]}
                                             for k in sorted(r["id"] for r in changed)[:first]]
    assert list(result["examples"]) == ["missing_in_target", "extra_in_target", "changed",
                                        *(["rejected_in_source"] if ambiguous else [])]


def test_the_tables_rows_of_some_buckets_are_picked_by_a_hashed_lookup(db, settings, specs):
    """The buckets go as ``int4[]``, the bucket's own type: a list of small ints would go as ``int2[]``, and
    ``int4 = any(int2[])`` is not hashed — every row would search the array (30x slower at 4,096)."""
    write_csv(settings.csv_path("leads"), [lead(1)])
    _sync(db, settings, specs)
    query = psycopg.sql.SQL("explain select count(*) from ") + parity._target(specs["leads"], restricted=True)
    plan = "\n".join(r[0] for r in db.run(lambda conn: conn.execute(query, {"buckets": [1, 2, 3]}).fetchall()))
    assert "::integer[]" in plan and "smallint" not in plan


@pytest.mark.parametrize("newline", ["\n", "\r\n"])  # a batch sent as written, or re-encoded
def test_a_text_holding_the_separator_is_compared_row_by_row(db, settings, specs, newline):
    rows = [lead(i) for i in range(10)]
    rows[1] = lead(1, first_name="a\x1fb", last_name="c")
    write_csv(settings.csv_path("leads"), rows, newline=newline)
    _sync(db, settings, specs)
    assert len(_suspects(db, settings, specs)) == 1  # its bucket, though its sums agree
    assert _both(db, settings, specs)["passed"]
    # the same joined text from other fields: equal digests, yet a change
    rows[1] = lead(1, first_name="a", last_name="b\x1fc")
    write_csv(settings.csv_path("leads"), rows, newline=newline)
    result = _both(db, settings, specs)
    assert result["changed"] == 1 and result["examples"]["changed"][0]["columns"] == ["first_name", "last_name"]


def test_a_value_only_the_table_can_hold_differs(db, settings, specs, sql):
    rows = [lead(i) for i in range(5)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    sql("update public.leads set updated_at = 'infinity' where id = %s", (rows[2]["id"],))
    result = _both(db, settings, specs)
    assert result["examples"]["changed"] == [{"key": rows[2]["id"], "columns": ["updated_at"]}]


def test_a_child_table_with_an_orphan_matches(db, settings, specs):
    leads = [lead(i) for i in range(5)]
    write_csv(settings.csv_path("leads"), leads)
    _sync(db, settings, specs)
    approvals = [approval(i, leads[i % 5]["id"], reviewer=AGENT if i % 2 else None) for i in range(8)]
    write_csv(settings.csv_path("approvals"), approvals, columns=APPROVAL_COLUMNS)
    _sync(db, settings, specs, "approvals")
    write_csv(settings.csv_path("approvals"),
              approvals[1:] + [approval(50, lead(99)["id"]), {**approvals[0], "draft": "changed"}],
              columns=APPROVAL_COLUMNS)
    result = _both(db, settings, specs, "approvals")
    assert result["changed"] == 1 and not result["passed"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_edits_match_the_staged_comparison(db, settings, specs, seed):
    rng = random.Random(seed)
    rows = [lead(i, notes=rng.choice([None, "", "x", "multi\nline"])) for i in range(300)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    for _ in range(rng.randint(1, 12)):
        i = rng.randrange(len(rows))
        op = rng.choice(["edit", "drop", "add", "dup", "bad"])
        if op == "edit":
            rows[i] = {**rows[i], rng.choice(["city", "notes", "budget", "phone"]): rng.choice([None, "", "9.50", "z"])}
        elif op == "drop":
            rows.pop(i)
        elif op == "add":
            rows.append(lead(1000 + i))
        elif op == "dup":
            rows.append(rows[i])
        else:
            rows[i] = {**rows[i], "created_at": "not a time"}
    rng.shuffle(rows)
    write_csv(settings.csv_path("leads"), rows)
    _both(db, settings, specs, workers=2)


def test_batches_summed_apart_fold_into_the_tables_sums(db, settings, specs):
    """Each worker sums its own batches; folded together they are the table's sums, bucket for bucket."""
    write_csv(settings.csv_path("leads"), [lead(i) for i in range(400)])
    _sync(db, settings, specs)
    plan = validation.plan_validation(specs["leads"], specs, settings.csv_path("leads"),
                                      rejects_dir=settings.rejects_dir, batch_bytes=4096,
                                      suites_dir=settings.expectations_dir, reports_dir=settings.reports_dir).staging
    fscan = engine.scan(plan)
    try:
        apart = {workers: digest_parity.csv_sums(plan, csvscan.ScanStream.of(fscan), workers)
                 for workers in (1, 2, 3)}
        target = db.run(lambda conn: digest_parity.target_sums(conn, plan))
        assert len(list(fscan.batches)) > 20
    finally:
        engine.drop_snapshot(plan)
    for sums, counts in apart.values():
        assert counts == digest_parity.SourceCounts(read=400, loaded=400, rejected=0)
        assert len(digests.suspects(sums, target)) == 0 and sums.total == target.total == 400


def _batch_sums(settings, specs):
    """Each batch of the table's CSV summed as parity sums it."""
    plan = _plan(settings, specs, "leads").staging
    fscan = engine.scan(plan)
    try:
        return [digest_parity._batch_sums(plan, fscan.header, b) for b in fscan.batches]
    finally:
        engine.drop_snapshot(plan)


def test_records_with_the_wrong_number_of_fields_are_rejected_as_the_loader_does(db, settings, specs):
    rows = [lead(i, notes="a, b, and c" if i % 3 else None, street="1 Main St, Apt 2") for i in range(40)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    rows[7] = lead(7, budget="1,000", notes="x,y")  # rejected values holding commas, in several types
    rows[8] = lead(8, created_at="2025-01-01, noon")
    write_csv(settings.csv_path("leads"), rows)
    [(_, counts)] = _batch_sums(settings, specs)
    assert counts.rejected == 2 and _both(db, settings, specs)["rejected_in_source"] == 2

    text = settings.csv_path("leads").read_text().splitlines(keepends=True)
    # one record a field short and one a field long: the batch's commas add up as if both were right
    text[4] = text[4].rstrip("\n").rsplit(",", 1)[0] + "\n"
    text[10] = text[10].rstrip("\n") + ",extra\n"
    settings.csv_path("leads").write_text("".join(text))
    [(_, counts)] = _batch_sums(settings, specs)
    assert counts.rejected == 4
    del text[10]  # one field short alone
    settings.csv_path("leads").write_text("".join(text))
    [(_, counts)] = _batch_sums(settings, specs)
    assert counts.rejected == 3
    # and a field long in a last record that no line feed ends, which polars would truncate unasked
    text[-1] = text[-1].rstrip("\n") + ","
    settings.csv_path("leads").write_text("".join(text))
    [(_, counts)] = _batch_sums(settings, specs)
    assert counts.rejected == 4
    result = _both(db, settings, specs)
    assert result["rejected_in_source"] == 4 and not result["passed"]


LOADABLE = sorted(name for name, case in json.loads((CORPUS / "manifest.json").read_text())["files"].items()
                  if case["expect"] != "error")


@pytest.mark.parametrize("name", LOADABLE)
def test_every_loadable_corpus_file_sums_as_polars_sums_its_typed_rows(name, settings, specs):
    """Parity's batch sums (shapes left to the C kernel, which digests) against the loader's typing by every
    rule and polars' digests, batch by batch."""
    table = json.loads((CORPUS / "manifest.json").read_text())["files"][name]["table"]
    plan = _plan(settings, specs, table, CORPUS / name).staging
    fscan = engine.scan(plan)
    try:
        for b in fscan.batches:
            sums, counts = digest_parity._batch_sums(plan, fscan.header, b)
            rb = batches.read_raw(plan, fscan.header, b)
            typed, rejects = batches.type_rows(plan, rb.raw, rb.lines, rb.ragged, nul=rb.nul)
            expected = digests.Sums.empty()
            assert digests.source_sums(typed, plan.spec, expected, kernel=False)
            assert counts == digest_parity.SourceCounts(rb.read, typed.height, rejects.height)
            assert sums.totals() == expected.totals() and (sums.untrusted == expected.untrusted).all()
    finally:
        engine.drop_snapshot(plan)


def test_parity_leaves_no_staging_and_records_a_finished_run(db, settings, specs, sql):
    rows = [lead(i) for i in range(5)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    write_csv(settings.csv_path("leads"), rows[:4] + [lead(7, budget="x")])
    result = validation.parity_only(db, _plan(settings, specs, "leads"), workers=1)
    assert not result["passed"]
    run = sql("select status, rows_read, rows_loaded, rows_rejected from cutover.runs where kind = 'validate'")
    assert run == [("succeeded", 5, 4, 1)]
    assert sql("select count(*) from pg_tables where schemaname = 'cutover' and tablename like 'stg_%'") == [(0,)]
    assert sql("select line, column_name from cutover.rejects") == [(6, "budget")]


def test_a_file_the_scan_finds_broken_fails_the_parity_run_and_names_file_and_line(db, settings, specs, sql):
    """The file is scanned while PostgreSQL sums the table, inside the comparison's transaction: a
    structural error still names the file and line, and the run is recorded failed, leaving nothing."""
    from cutover.errors import StructuralError

    rows = [lead(i) for i in range(5)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    path = settings.csv_path("leads")
    path.write_bytes(path.read_bytes() + b'"never closed\n')
    with pytest.raises(StructuralError) as e:
        validation.parity_only(db, _plan(settings, specs, "leads"), workers=1)
    assert e.value.path == path and e.value.line == 7 and "unterminated" in str(e.value)
    assert sql("select status from cutover.runs where kind = 'validate'") == [("failed",)]
    assert sql("select count(*) from pg_tables where schemaname = 'cutover' and tablename like 'stg_%'") == [(0,)]
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".snapshot")] == []


def test_the_digest_transaction_sees_one_snapshot(db):
    assert db.run(lambda conn: conn.execute("show transaction_isolation").fetchone()[0],
                  snapshot=True) == "repeatable read"


def test_buckets_agree_between_polars_and_sql_for_every_key(db, settings, specs, sql):
    rows = [lead(i) for i in range(200)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    spec = specs["leads"]
    in_sql = dict(sql(f"select id::text, {table_digests.key_bucket_sql(spec).as_string()} from public.leads"))
    import polars as pl

    typed = pl.DataFrame({c: [r[c] for r in rows] for c in spec.column_names})
    for bucket in np.unique(list(in_sql.values())):
        picked = digests.in_buckets(typed, spec, np.array([bucket]))["id"].to_list()
        assert sorted(picked) == sorted(k for k, b in in_sql.items() if b == bucket)


@pytest.mark.parametrize("precision, scale", [(12, 2), (12, 0), (40, 5), (60, 0)])
def test_numbers_are_written_as_postgresql_prints_them(sql, precision, scale):
    """Both rules for a numeric's canonical text (polars' Decimal up to 38 digits, string surgery past
    it) against PostgreSQL's own output for the column type."""
    import polars as pl

    from cutover.coerce import coerce
    from cutover.spec import Column, Rls, TableSpec

    col = Column(name="n", type="numeric", precision=precision, scale=scale)
    spec = TableSpec(name="t", primary_key="n", columns=(col,), rls=Rls(owner_column=None))
    spellings = ["0", "-0", "+0.000", "1.5", "-1.50", "007.10", ".5", "5.", "-.25", "+12", "10",
                 "9" * (precision - scale), "-" + "9" * (precision - scale) + ("." + "9" * scale if scale else "")]
    typed, _ = coerce(pl.DataFrame({"n": spellings}), spec, pl.Series(range(len(spellings))))
    assert typed.height >= 8  # with scale 0, the spellings with non-zero decimals are the loader's rejects
    ours = typed.select(digests._field(col)).to_series().to_list()
    theirs = [sql(f"select %s::numeric({precision},{scale})::text", (v,))[0][0] for v in typed["n"].to_list()]
    assert ours == theirs


def test_a_text_key_is_bucketed_by_its_md5_and_every_type_agrees(sql, db_url):
    """A table keyed by text (the MD5 bucket, not the uuid one), with every column type and NULLs:
    polars' sums of the typed rows equal PostgreSQL's of the same rows, and one changed value makes
    exactly its bucket differ."""
    import polars as pl
    import psycopg

    from cutover import ddl
    from cutover.coerce import coerce
    from cutover.spec import Column, Rls, TableSpec

    spec = TableSpec(name="things", primary_key="code", rls=Rls(owner_column=None), columns=(
        Column(name="code", type="text", nullable=False), Column(name="ref", type="uuid"),
        Column(name="at", type="timestamptz"), Column(name="amount", type="numeric", precision=50, scale=3),
        Column(name="note", type="text")))
    raw = pl.DataFrame({
        "code": [f"K-{i:04d}" for i in range(300)],
        "ref": [None if i % 7 == 0 else f"{i:08X}-0000-4000-8000-{i:012x}" for i in range(300)],
        "at": [None if i % 5 == 0 else f"2025-0{1 + i % 9}-1{i % 10} 0{i % 10}:30-0{i % 6}" if i % 4 == 3
               else f"2025-0{1 + i % 9}-1{i % 10}T0{i % 10}:30:00.{i:06d}+0{i % 6}:00"
               for i in range(300)],  # (no seconds, a short offset: the loader's general rule)
        "amount": [None if i % 11 == 0 else f"{'-' if i % 2 else ''}{i}.{i % 10}" for i in range(300)],
        "note": [None if i % 3 == 0 else ("" if i % 3 == 1 else f"line\n{i}, \"q\"") for i in range(300)]})
    typed, rejects = coerce(raw, spec, pl.Series(range(300)))
    assert rejects.height == 0
    sql(ddl.create_table(spec).as_string())
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        with cur.copy("copy public.things (code, ref, at, amount, note) from stdin (format csv)") as cp:
            cp.write(typed.drop("_line").write_csv(include_header=False, quote_style="non_numeric"))
    source = digests.Sums.empty()
    digests.source_sums(typed, spec, source)
    # the instants as the loader parsed them (both of its timestamp rules) give the same sums
    parsed, _ = coerce(raw, spec, pl.Series(range(300)), instants=True)
    assert parsed.select("_instant_at").null_count().item() == 60
    again = digests.Sums.empty()
    digests.source_sums(parsed, spec, again)
    assert len(digests.suspects(again, source)) == 0 and again.total == 300

    def table_sums():
        with psycopg.connect(db_url) as conn:
            return digests.target_sums(conn.execute(table_digests.target_sql(spec, conn.info.server_version)).fetchall())

    assert source.total == table_sums().total == 300
    assert len(digests.suspects(source, table_sums())) == 0
    sql("update public.things set amount = amount + 0.001 where code = 'K-0042'")
    [bucket] = digests.suspects(source, table_sums())
    assert digests.in_buckets(typed, spec, np.array([bucket]))["code"].to_list().count("K-0042") == 1


@pytest.mark.parametrize("version", [0, table_digests.BYTEA_TO_INT8])
def test_timestamps_in_the_float_window_print_as_extract_does(sql, version):
    """The table's timestamps take ``date_part``'s float8 inside ``table_digests.FLOAT_EXACT`` and ``extract``'s
    numeric outside it (from PostgreSQL 18, their binary form): all give the same microseconds, at the
    window's edges and at random instants to the microsecond across years 1..9999 (the loader's range);
    an infinity prints as itself."""
    from datetime import datetime, timedelta, timezone

    from cutover.spec import Column

    if int(sql("show server_version_num")[0][0]) < version:
        pytest.skip("the server is older than this form of the field")

    rng = random.Random(5)
    epoch, micro = datetime(1970, 1, 1, tzinfo=timezone.utc), timedelta(microseconds=1)
    edges = [datetime.fromisoformat(bound) + d * micro for bound in table_digests.FLOAT_EXACT for d in (-1, 0, 1)]
    # |µs since 1970| near 2^51, where the float rule would first fail, lies outside the window
    edges += [epoch + s * (2 ** 51 + d) * micro for s in (-1, 1) for d in (-1, 0, 1)]
    spans = [(datetime(1, 1, 1, tzinfo=timezone.utc), datetime(9999, 12, 31, tzinfo=timezone.utc)),
             (datetime(1899, 1, 1, tzinfo=timezone.utc), datetime(2041, 1, 1, tzinfo=timezone.utc))]
    randoms = [lo + rng.randrange((hi - lo) // micro) * micro for lo, hi in spans for _ in range(20000)]
    field = table_digests.sql_field(Column(name="t", type="timestamptz"), version).as_string()
    rows = sql(f"select {field}, (extract(epoch from t) * 1000000)::int8::text from unnest(%s::timestamptz[]) t",
               (edges + randoms,))
    assert len(rows) == len(edges) + 40000 and all(ours == exact for ours, exact in rows)
    assert sql(f"select {field} from unnest('{{infinity,-infinity}}'::timestamptz[]) t") == [("infinity",), ("-infinity",)]


def test_the_tables_totals_are_its_buckets_folded(db, settings, specs, sql):
    """``table_digests.totals`` (one aggregate, no buckets) equals the bucket sums folded, for the whole table
    and for an empty one, and so does the CSV's side."""
    write_csv(settings.csv_path("leads"), [lead(i) for i in range(300)])
    _sync(db, settings, specs)
    plan = _plan(settings, specs, "leads").staging
    fscan = engine.scan(plan)
    try:
        source, _ = digest_parity.csv_sums(plan, csvscan.ScanStream.of(fscan), workers=2)
    finally:
        engine.drop_snapshot(plan)
    buckets = db.run(lambda conn: digest_parity.target_sums(conn, plan))
    totals = db.run(lambda conn: table_digests.totals(conn, plan.spec))
    assert totals == buckets.totals() == source.totals() and totals[0] == 300 and totals[1] and totals[2]
    sql("update public.leads set notes = coalesce(notes, '') || '.' where id = %s", (lead(7)["id"],))
    assert db.run(lambda conn: table_digests.totals(conn, plan.spec)) != source.totals()
    sql("delete from public.leads")
    assert db.run(lambda conn: table_digests.totals(conn, plan.spec)) == digests.Sums.empty().totals() == (0, 0, 0)
