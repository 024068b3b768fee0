"""Load semantics against a real PostgreSQL: exactness, re-sync, idempotence, guards, atomicity."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import psycopg
import pytest

from cutover import sync as engine
from cutover.bootstrap import bootstrap
from cutover.errors import ConcurrentChange, MassDeleteRefused, PhaseError, StructuralError
from cutover.export import export_table
from tests.conftest import ROOT
from tests.csvdata import APPROVAL_COLUMNS, approval, lead, write_csv

EDGE_TEXT = [
    'quotes "inside", commas, and a trailing space ',
    "multi\nline\r\nwith CRLF",
    "\\.",  # COPY's end-of-data marker, alone
    "line\n\\.\nafter the marker",
    "ünïcødé ✓ 日本語 🏡, U+2028:\u2028end",
    "  leading spaces",
    "",  # empty string: not NULL
    "tab\tseparated",
]


def _plan(settings, specs, table, path, **kw):
    return engine.plan_sync(specs[table], specs, path, rejects_dir=settings.rejects_dir,
                            batch_bytes=settings.batch_bytes, mass_delete_threshold=settings.mass_delete_threshold,
                            **kw)


def _sync(db, settings, specs, path, table="leads", **kw):
    return engine.run_sync(db, _plan(settings, specs, table, path, **kw), workers=2)


def test_round_trip_is_exact_for_every_column_type(db, settings, specs, tmp_path, sql):
    rows = [lead(i, notes=text) for i, text in enumerate(EDGE_TEXT)]
    rows += [
        lead(100, notes=None, phone=None, budget=None, agent_id=None),  # NULLs
        lead(101, created_at="2025-03-01 12:00:00+02:00", updated_at="2025-03-01T10:00:00.123456Z"),
        lead(102, created_at="2025-03-01T10:00:00", updated_at="2025-03-01T10:00:00.000001-05:30"),
        lead(103, budget="1.5"), lead(104, budget="1.50"), lead(105, budget="9999999999.99"),
        lead(106, budget="0"), lead(107, budget="-0.01"), lead(108, budget="1.500"),
    ]
    src = write_csv(tmp_path / "leads.csv", rows)
    result = _sync(db, settings, specs, src)
    assert (result.loaded, result.rejected) == (len(rows), 0)

    out = tmp_path / "export.csv"
    assert export_table(db, specs["leads"], out) == len(rows)
    exported = {r["id"]: r for r in csv.DictReader(io.StringIO(out.read_bytes().decode("utf-8"), newline=""))}
    raw = {r["id"]: r for r in rows}
    for key, original in raw.items():
        got = exported[key]
        for col in ("first_name", "notes", "phone", "street", "agent_id"):
            assert got[col] == (original[col] or ""), col  # text byte-exact
        for col in ("created_at", "updated_at"):
            want = datetime.fromisoformat(original[col].replace("Z", "+00:00"))
            want = want if want.tzinfo else want.replace(tzinfo=timezone.utc)  # no offset means UTC
            assert datetime.fromisoformat(got[col]) == want, col  # same instant
        if original["budget"] is not None:
            assert Decimal(got["budget"]) == Decimal(original["budget"])  # same value

    # NULL and '' stay distinct, in the database and in the export.
    assert sql("select count(*) from public.leads where notes = ''") == [(1,)]
    assert sql("select count(*) from public.leads where notes is null") == [(len(rows) - len(EDGE_TEXT),)]
    assert '""' in out.read_text(encoding="utf-8")

    # Export -> sync is a no-op: the export is in the loader's own format.
    again = _sync(db, settings, specs, out)
    assert (again.inserted, again.updated, again.deleted, again.rejected) == (0, 0, 0, 0)


def test_timestamps_mean_the_same_instant_whichever_way_they_are_typed(db, settings, specs, tmp_path, sql):
    # the common shape goes to PostgreSQL as written, every other one in UTC (cutover.coerce)
    stamps = ["2025-03-01T10:00:00Z", "2025-03-01T10:00:00.5Z", "2025-03-01T10:00:00.000001+14:00",
              "2025-03-01T10:00:00-12:30", "2025-03-01T10:00:00+15:00", "2025-03-01T10:00:00+23:59",
              "2025-03-01T10:00:00-00:00", "2025-03-01 10:00:00+02:00", "2025-03-01T10:00:00",
              "0001-01-01T12:00:00Z", "9999-12-31T10:00:00Z", "0001-01-01T00:00:00+00:01", "2025-02-29T10:00:00Z"]
    rows = [lead(i, created_at=stamp) for i, stamp in enumerate(stamps)]
    result = _sync(db, settings, specs, write_csv(tmp_path / "leads.csv", rows))
    got = dict(sql("select first_name, created_at from public.leads"))
    reasons = dict(sql("select value, reason from cutover.rejects where run_id = %s", (result.run_id,)))
    assert reasons == {"0001-01-01T00:00:00+00:01": "out of range: the instant in UTC must fall in years 0001-9999",
                       "2025-02-29T10:00:00Z": "impossible date or time"}
    for row, stamp in zip(rows, stamps):
        if stamp not in reasons:
            want = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            assert got[row["first_name"]] == (want if want.tzinfo else want.replace(tzinfo=timezone.utc)), stamp


def test_a_key_shared_by_two_rows_rejects_both_even_when_one_is_rejected_for_another_reason(
        db, settings, specs, tmp_path, sql):
    rows = [lead(1), lead(2), lead(1, first_name="Twin"), lead(3), lead(3, budget="lots"), lead(4)]
    result = _sync(db, settings, specs, write_csv(tmp_path / "leads.csv", rows))  # lines 2..7
    assert (result.read, result.loaded, result.rejected) == (6, 2, 4)
    reasons = sql("select line, reason from cutover.rejects where run_id = %s order by line", (result.run_id,))
    assert reasons == [(2, "duplicate primary key: 2 rows of the file share it (lines 2, 4)"),
                       (4, "duplicate primary key: 2 rows of the file share it (lines 2, 4)"),
                       (5, "duplicate primary key: 2 rows of the file share it (lines 5, 6)"),
                       (6, "not a number (plain decimal notation, e.g. 1234.50)")]
    assert sql("select first_name from public.leads order by first_name") == [("Ana2",), ("Ana4",)]


def test_a_first_load_goes_straight_into_the_table_unless_the_file_needs_judging(db, settings, specs, tmp_path, sql):
    leads = [lead(i) for i in range(6)]
    first = _sync(db, settings, specs, write_csv(tmp_path / "leads.csv", leads + [lead(9, budget="lots")]))
    assert (first.method, first.read, first.loaded, first.rejected, first.inserted) == ("direct", 7, 6, 1, 6)
    assert sql("select count(*) from public.leads") == [(6,)]
    # the keys were dropped for the COPY and added back, exactly as bootstrap made them
    keys = """select conrelid::regclass::text, conname, pg_get_constraintdef(oid) from pg_constraint
              where contype in ('p', 'f') and connamespace = 'public'::regnamespace order by 1, 2"""
    expected = [("approvals", "approvals_lead_id_fkey",
                 "FOREIGN KEY (lead_id) REFERENCES leads(id) ON DELETE CASCADE"),
                ("approvals", "approvals_pkey", "PRIMARY KEY (id)"), ("leads", "leads_pkey", "PRIMARY KEY (id)")]
    assert sql(keys) == expected
    assert sql("select phase, version from cutover.table_state") == [("mirror", 1)]
    assert sql("select to_phase, reason from cutover.phase_history") == [("mirror", "first full load")]
    assert sql("select count(*) from pg_tables where schemaname = 'cutover' and tablename like 'stg_%%'") == [(0,)]

    orphan = approval(2, lead(99)["id"])  # its lead is not in the table: the foreign key refuses the COPY
    approvals = write_csv(tmp_path / "approvals.csv", [approval(1, leads[1]["id"]), orphan],
                          columns=APPROVAL_COLUMNS)
    judged = _sync(db, settings, specs, approvals, table="approvals")
    assert (judged.method, judged.loaded, judged.rejected) == ("staged", 1, 1)

    sql("truncate public.leads cascade; delete from cutover.table_state")
    for rows in ([lead(1), lead(2), lead(1, first_name="Twin")],  # a key twice: the primary key refuses it
                 [lead(1), lead(2), lead(1, budget="lots")]):  # a rejected row has a loaded row's key
        result = _sync(db, settings, specs, write_csv(tmp_path / "dups.csv", rows))
        assert (result.method, result.loaded, result.rejected) == ("staged", 1, 2), rows
        assert sql("select count(*) from public.leads") == [(1,)]
        assert sql(keys) == expected  # the refused direct load rolled its constraint changes back
        sql("truncate public.leads cascade; delete from cutover.table_state")


def _thawed_rows(sql) -> tuple[int, int, int]:
    """(pages, rows, rows not frozen) of public.leads, from the rows' header bits (pageinspect)."""
    frozen = 0x0300  # HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID
    [counts] = sql(
        "select count(distinct b), count(*), count(*) filter (where t_infomask & %s <> %s)"
        " from generate_series(0, pg_relation_size('public.leads') / current_setting('block_size')::int - 1) b,"
        " heap_page_items(get_raw_page('public.leads', b::int)) where t_xmin is not null", (frozen, frozen))
    return counts


def test_a_first_load_leaves_its_rows_frozen(db, settings, specs, tmp_path, sql):
    """COPY FREEZE: the table's first reader finds every row frozen, so it does not write each page
    again to set hint bits (8 KB of WAL a page under data checksums), and vacuum need not freeze them."""
    try:
        sql("create extension if not exists pageinspect")
    except psycopg.Error:
        pytest.skip("the server has no pageinspect to read the rows' header bits with")
    result = _sync(db, settings, specs, write_csv(tmp_path / "leads.csv", [lead(i) for i in range(3000)]))
    assert (result.method, result.loaded) == ("direct", 3000)
    pages, rows, thawed = _thawed_rows(sql)
    assert pages > 20 and (rows, thawed) == (3000, 0)


@pytest.mark.parametrize("watcher,frozen", [
    ("create table public.audit (op text); create function public.audit() returns trigger language plpgsql as"
     " $$ begin insert into public.audit values (tg_op); return null; end $$; create trigger audit after"
     " truncate on public.leads for each statement execute function public.audit()", False),
    ("create publication leads_feed for table public.leads", False),
    ("create publication everything for all tables", False),
    ("create publication changes for table public.leads with (publish = 'insert, update, delete')", True),
])
def test_a_first_load_is_frozen_only_where_no_truncate_watcher_would_see_it(db, settings, specs, tmp_path, sql,
                                                                             watcher, frozen):
    """Freezing takes a TRUNCATE of the empty table: never when a user's truncate trigger or a
    publication of truncates would see one (the load is then a plain COPY); a publication of other
    changes only does not stop it."""
    try:
        sql("create extension if not exists pageinspect")
    except psycopg.Error:
        pytest.skip("the server has no pageinspect to read the rows' header bits with")
    db.run(lambda conn: bootstrap(conn, specs))  # the tables, to watch
    sql(watcher)
    result = _sync(db, settings, specs, write_csv(tmp_path / "leads.csv", [lead(i) for i in range(300)]))
    assert (result.method, result.loaded) == ("direct", 300)
    assert _thawed_rows(sql)[1:] == (300, 0 if frozen else 300)
    if "audit" in watcher:
        assert sql("select count(*) from public.audit") == [(0,)]


@pytest.mark.parametrize("tail,line", [(b'\xff,broken\n', 42), (b'"an unterminated quote\n', 42)])
def test_a_first_load_found_broken_after_its_first_batches_applies_nothing(db, settings, specs, tmp_path, sql,
                                                                            tail, line):
    """The COPY starts while the scan is still reading: a structural error found in the file's last
    line (after batches went to the COPY) still names the user's file and line, and leaves no trace."""
    src = write_csv(tmp_path / "leads.csv", [lead(i) for i in range(40)])
    src.write_bytes(src.read_bytes() + tail)
    plan = engine.plan_sync(specs["leads"], specs, src, rejects_dir=settings.rejects_dir, batch_bytes=512,
                            mass_delete_threshold=settings.mass_delete_threshold)  # a batch a row or two
    with pytest.raises(StructuralError) as e:
        engine.run_sync(db, plan, workers=2)
    assert e.value.path == src and e.value.line == line
    assert sql("select count(*) from public.leads") == [(0,)]
    assert sql("select count(*) from cutover.table_state where phase is not null") == [(0,)]
    assert sql("select status from cutover.runs where table_name = 'leads'") == [("failed",)]
    assert sql("select count(*) from pg_constraint where conrelid = 'public.leads'::regclass and contype = 'p'") \
        == [(1,)]


def test_resync_applies_inserts_updates_and_deletes_then_rerun_touches_nothing(db, settings, specs, tmp_path, sql):
    rows = [lead(i) for i in range(40)]
    src = write_csv(tmp_path / "leads.csv", rows)
    first = _sync(db, settings, specs, src)
    assert (first.inserted, first.updated, first.deleted) == (40, 0, 0)

    rows[3]["status"] = "contacted"
    rows[7]["notes"] = "now with notes"
    del rows[10]
    rows.append(lead(1000))
    write_csv(src, rows)
    second = _sync(db, settings, specs, src)
    assert (second.inserted, second.updated, second.deleted) == (1, 2, 1)
    assert sql("select status from public.leads where id = %s", (rows[3]["id"],)) == [("contacted",)]
    assert sql("select count(*) from public.leads") == [(40,)]

    xmin_before = sql("select sum(xmin::text::bigint) from public.leads")
    write_csv(src, rows[::-1])  # other bytes, same rows: a full load that changes nothing
    third = _sync(db, settings, specs, src)
    assert (third.inserted, third.updated, third.deleted, third.loaded) == (0, 0, 0, 40)
    assert sql("select sum(xmin::text::bigint) from public.leads") == xmin_before  # no row rewritten
    versions = sql("select version, data_version from cutover.table_state where table_name = 'leads'")
    assert versions[0][0] == 3  # every merge bumps version

    fourth = _sync(db, settings, specs, src)  # the very bytes merged last: nothing is loaded
    assert (fourth.read, fourth.loaded, fourth.inserted, fourth.updated, fourth.deleted) == (40, 40, 0, 0, 0)
    assert sql("select version, data_version from cutover.table_state where table_name = 'leads'") == versions
    assert sql("select sum(xmin::text::bigint) from public.leads") == xmin_before
    assert sql("select count(*), count(*) filter (where status = 'succeeded' and merged_version = %s)"
               " from cutover.runs where table_name = 'leads'", (versions[0][1],)) == [(4, 2)]


def test_an_unchanged_csv_is_loaded_again_after_any_write_to_the_table(db, settings, specs, tmp_path, sql):
    rows = [lead(i) for i in range(10)]
    rows[4]["budget"] = "not money"
    src = write_csv(tmp_path / "leads.csv", rows)
    first = _sync(db, settings, specs, src)
    again = _sync(db, settings, specs, src)
    assert (again.read, again.loaded, again.rejected) == (first.read, first.loaded, first.rejected) == (10, 9, 1)
    assert again.rejects_file != first.rejects_file
    with open(first.rejects_file) as a, open(again.rejects_file) as b:  # same reasons, same lines
        assert a.read() == b.read()
    assert sql("select count(*) from cutover.rejects r join cutover.runs u using (run_id)"
               " where u.run_id = %s", (again.run_id,)) == [(1,)]

    for write in ("delete from public.leads where id = %s", "update public.leads set notes = 'edited' where id = %s"):
        sql(write, (rows[2]["id"],))  # behind cutover's back (the owner may)
        fixed = _sync(db, settings, specs, src)
        assert (fixed.inserted + fixed.updated, fixed.loaded) == (1, 9), write
        assert sql("select notes from public.leads where id = %s", (rows[2]["id"],)) == [(rows[2]["notes"],)]
    sql("truncate public.leads cascade")
    assert _sync(db, settings, specs, src).inserted == 9


def test_an_unchanged_child_csv_is_loaded_again_when_its_parent_changed(db, settings, specs, tmp_path, sql):
    leads = [lead(i) for i in range(3)]
    leads_csv = write_csv(tmp_path / "leads.csv", leads)
    approvals_csv = write_csv(tmp_path / "approvals.csv", [approval(i, leads[i]["id"]) for i in range(3)],
                              columns=APPROVAL_COLUMNS)
    _sync(db, settings, specs, leads_csv)
    assert _sync(db, settings, specs, approvals_csv, table="approvals").loaded == 3
    write_csv(leads_csv, leads[:2])
    _sync(db, settings, specs, leads_csv, allow_mass_delete=True)
    # the same approvals file: its third row lost its lead, which only a real load can tell
    again = _sync(db, settings, specs, approvals_csv, table="approvals")
    assert (again.loaded, again.rejected) == (2, 1)


def test_a_rejected_row_keeps_its_previous_version(db, settings, specs, tmp_path, sql):
    rows = [lead(i) for i in range(20)]
    src = write_csv(tmp_path / "leads.csv", rows)
    _sync(db, settings, specs, src)
    rows[5]["budget"] = "not money"
    write_csv(src, rows)
    result = _sync(db, settings, specs, src)
    assert (result.rejected, result.deleted, result.updated) == (1, 0, 0)
    assert sql("select budget from public.leads where id = %s", (rows[5]["id"],)) == [(Decimal("450000.00"),)]


def test_mass_delete_guard_refuses_a_truncated_csv(db, settings, specs, tmp_path, sql, cli):
    rows = [lead(i) for i in range(50)]
    src = write_csv(tmp_path / "data" / "leads.csv", rows)
    _sync(db, settings, specs, src)
    write_csv(src, rows[:30])  # truncated: 40% gone
    with pytest.raises(MassDeleteRefused, match="would delete 20 of 50 rows"):
        _sync(db, settings, specs, src)
    assert sql("select count(*) from public.leads") == [(50,)]

    proc = cli("sync", "--table", "leads", "--json")
    assert proc.returncode == 3 and "--allow-mass-delete" in json.loads(proc.stdout)["error"]
    proc = cli("sync", "--table", "leads", "--json", "--allow-mass-delete")
    assert proc.returncode == 0 and json.loads(proc.stdout)["deleted"] == 20
    assert sql("select count(*) from public.leads") == [(30,)]

    write_csv(src, rows[:28])  # 2 of 30 = 6.7%: under the default 10% threshold
    assert _sync(db, settings, specs, src).deleted == 2


def test_sync_is_refused_once_the_database_is_the_source_of_truth(db, settings, specs, tmp_path, sql):
    src = write_csv(tmp_path / "leads.csv", [lead(1)])
    _sync(db, settings, specs, src)
    sql("update cutover.table_state set phase = 'promoted' where table_name = 'leads'")
    write_csv(src, [lead(2)])
    with pytest.raises(PhaseError, match="promoted"):
        _sync(db, settings, specs, src)
    assert sql("select first_name from public.leads") == [("Ana1",)]


def test_a_run_that_lost_the_race_applies_nothing(db, settings, specs, tmp_path, sql):
    src = write_csv(tmp_path / "leads.csv", [lead(i) for i in range(5)])
    _sync(db, settings, specs, src)
    slow = _plan(settings, specs, "leads", src)
    base = engine.begin(db, slow)
    fscan = engine.scan(slow)
    results = [engine.load_batch(db, slow, fscan.header, b) for b in fscan.batches]
    write_csv(src, [lead(i) for i in range(6)])
    assert _sync(db, settings, specs, src).inserted == 1  # a newer sync merges first
    with pytest.raises(ConcurrentChange):
        engine.merge_run(db, slow, fscan, results, base, time.time())
    assert sql("select count(*) from public.leads") == [(6,)]


def test_sigkill_between_staging_and_merge_leaves_the_target_unchanged(db, settings, specs, tmp_path, sql, env):
    from cutover.samples import generate

    src = tmp_path / "data" / "leads.csv"
    generate("leads", 200, src, seed=1)
    _sync(db, settings, specs, src)
    before = sql("select md5(string_agg(l::text, '|' order by id)) from public.leads l")

    generate("leads", 120_000, src, seed=2)  # a different file: every row would change
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "cutover"), "sync", "--table", "leads", "--json", "--allow-mass-delete"],
        env={**os.environ, **env, "CUTOVER_BATCH_BYTES": str(256 * 1024), "CUTOVER_WORKERS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # never read: pipes would be left open
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the run has staged some batches
            rows = sql("select run_id from cutover.runs where status = 'running'")
            if rows:
                staged = sql(f"select count(*) from cutover.stg_leads_{rows[0][0].hex[:12]}")[0][0]
                if staged > 5_000:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the sync never staged a batch")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert sql("select md5(string_agg(l::text, '|' order by id)) from public.leads l") == before
    killed = sql("select run_id from cutover.runs where status = 'running'")
    assert len(killed) == 1

    result = _sync(db, settings, specs, src, allow_mass_delete=True)  # rerunning completes it
    assert (result.read, result.loaded, result.rejected) == (120_000, 120_000, 0)
    assert sql("select count(*) from public.leads") == [(120_000,)]
    assert sql("select status, error like 'interrupted%%' from cutover.runs where run_id = %s",
               (killed[0][0],)) == [("failed", True)]
    assert sql("select count(*) from pg_tables where schemaname = 'cutover' and tablename like 'stg_%%'") == [(0,)]


def test_a_run_start_unlinks_the_files_of_runs_long_over_whatever_csv_they_read(db, settings, specs, tmp_path, sql):
    """A run killed after its commit leaves its snapshot and record hashes; a dead run may have read another
    file than the next one reads. The next run's start unlinks both. The files of a running run, of one that
    has just ended (it may still be keeping its snapshot as the baseline), and of a run this database does
    not know (another database's) stay."""
    src = write_csv(tmp_path / "data" / "leads.csv", [lead(i) for i in range(3)])
    (tmp_path / "elsewhere").mkdir()
    other = write_csv(tmp_path / "elsewhere" / "leads.csv", [lead(i) for i in range(3)])
    _sync(db, settings, specs, src)
    home = settings.rejects_dir

    def files_of(run: uuid.UUID, csv_path) -> list:
        files = [csv_path.parent / f".{csv_path.name}.{run.hex[:12]}.snapshot",
                 home / f".{csv_path.name}.{run.hex[:12]}.records"]
        for f in files:
            f.write_bytes(b"left over")
        return files

    def run(csv_path, kind: str, status: str, *, quiet_for: str) -> list:
        run_id = uuid.uuid4()
        ended = None if status == "running" else quiet_for
        sql("""insert into cutover.runs (run_id, table_name, kind, status, base_version, csv_path, started_at,
                                          heartbeat_at, finished_at)
               values (%s, 'leads', %s, %s, 0, %s, now() - %s::interval, now() - %s::interval,
                       now() - %s::interval)""", (run_id, kind, status, str(csv_path), quiet_for, quiet_for, ended))
        return files_of(run_id, csv_path)

    gone = [*run(src, "sync", "succeeded", quiet_for="20 minutes"),  # killed after its commit
            *run(src, "validate", "failed", quiet_for="16 minutes"),
            *run(other, "validate", "running", quiet_for="20 minutes")]  # dead, and read another file
    kept = [*run(src, "sync", "succeeded", quiet_for="1 minute"),
            *run(src, "validate", "running", quiet_for="1 minute"),
            *files_of(uuid.uuid4(), src)]

    _sync(db, settings, specs, src)
    assert [f for f in gone if f.exists()] == []
    assert [f for f in kept if not f.exists()] == []
    assert sql("select count(*) from cutover.runs where csv_path = %s and status = 'running'", (str(other),)) == [(0,)]


def test_batches_agree_with_a_single_pass(db, settings, specs, tmp_path, sql):
    from cutover.samples import generate

    src = tmp_path / "leads.csv"
    generate("leads", 5000, src, seed=3)
    small = engine.plan_sync(specs["leads"], specs, src, rejects_dir=settings.rejects_dir, batch_bytes=64 * 1024,
                             mass_delete_threshold=0.1)
    fscan = engine.scan(small)
    assert len(fscan.batches) > 5
    result = engine.run_sync(db, small, workers=2)
    assert (result.read, result.loaded) == (5000, 5000)
    digest = sql("select md5(string_agg(l::text, '|' order by id)) from public.leads l")
    sql("truncate public.leads cascade")
    big = engine.plan_sync(specs["leads"], specs, src, rejects_dir=settings.rejects_dir, batch_bytes=1 << 30,
                           mass_delete_threshold=0.1)
    assert len(engine.scan(big).batches) == 1
    engine.run_sync(db, big, workers=1)
    assert sql("select md5(string_agg(l::text, '|' order by id)) from public.leads l") == digest


def test_cli_sync_defaults_to_the_data_dir_and_reports_json(cli, env, tmp_path):
    write_csv(tmp_path / "data" / "leads.csv", [lead(i) for i in range(3)])
    proc = cli("sync", "--table", "leads", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= {"table", "read", "loaded", "rejected", "inserted", "updated", "deleted", "rejects_file",
                        "duration_s"}
    assert (out["read"], out["inserted"]) == (3, 3)
    status = json.loads(cli("status", "--json").stdout)
    assert status["tables"]["leads"]["phase"] == "mirror"
    assert status["tables"]["leads"]["last_run"]["status"] == "succeeded"
    assert status["tables"]["approvals"]["phase"] is None
    health = json.loads(cli("health", "--json").stdout)
    assert health["ok"] and health["pool"]["pool_max"] >= 1 and health["server_version"]


def test_pool_max_is_measured_from_the_server(db, sql):
    max_conn = int(sql("show max_connections")[0][0])
    assert db.pool.max_size == int(max_conn * 0.8)  # superuser here: nothing reserved from it
    assert db.limits.allowed == max_conn


def test_counting_deletes_is_planned_as_anti_joins_not_a_per_row_subplan(db, settings, specs, tmp_path, db_url):
    # A correlated subplan here made a 1M-row re-sync quadratic (it hung); the plan shape is the guard.
    from psycopg import sql as q

    from cutover import merge

    _sync(db, settings, specs, write_csv(tmp_path / "leads.csv", [lead(i) for i in range(50)]))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(merge.create_staging(specs["leads"], "stg_leads_plancheck"))
        conn.execute(merge.analyze_staging("stg_leads_plancheck"))
        query = q.SQL("explain ") + merge.count_deletes(specs["leads"], "stg_leads_plancheck")
        plan = "\n".join(r[0] for r in conn.execute(query, {"run": "00000000-0000-0000-0000-000000000000"}))
    assert "SubPlan" not in plan, plan
    assert plan.count("Anti Join") == 2, plan


def test_a_csv_replaced_during_the_sync_does_not_shift_under_its_batches(db, settings, specs, tmp_path, sql):
    from cutover.atomic import atomic_write

    src = write_csv(tmp_path / "leads.csv", [lead(i) for i in range(300)])
    plan = engine.plan_sync(specs["leads"], specs, src, rejects_dir=settings.rejects_dir, batch_bytes=64 * 1024,
                            mass_delete_threshold=0.1)
    started = time.time()
    version = engine.begin(db, plan)
    fscan = engine.scan(plan)
    assert len(fscan.batches) > 1 and plan.snapshot.exists()
    # the application rewrites its store (atomically, by rename) while the sync is loading
    with atomic_write(src) as f:
        f.write(b"id,created_at\n" + b"x" * 200_000)
    results = [engine.load_batch(db, plan, fscan.header, b) for b in fscan.batches]
    result = engine.merge_run(db, plan, fscan, results, version, started)
    assert (result.read, result.loaded, result.rejected) == (300, 300, 0)
    assert sql("select count(*) from public.leads") == [(300,)]
    assert not plan.snapshot.exists()
    assert not list(tmp_path.glob(".leads.csv.*"))


@pytest.mark.parametrize("sent", ["binary", "as written", "binary and text by turns"])
def test_a_first_load_sending_batches_as_written_matches_the_staged_load(db, settings, specs, tmp_path, sql,
                                                                          monkeypatch, sent):
    """The first load sends batches in binary COPY format; without the binary kernel, batches that need no
    rewrite go as the file has them; a batch the kernel cannot read goes as CSV, in a COPY of its own. The
    table must be what the staged path (which re-encodes every row as CSV) makes of the same file."""
    import itertools

    from cutover import baseline, copy_binary

    if sent == "as written":
        monkeypatch.setattr(copy_binary, "available", lambda: False)
    elif sent == "binary and text by turns":
        encode, calls = copy_binary.encode, itertools.count()
        monkeypatch.setattr(copy_binary, "encode", lambda *a: encode(*a) if next(calls) % 2 else None)

    rows = [lead(i, notes=text, budget=budget, updated_at=stamp) for i, (text, budget, stamp) in enumerate([
        ("a\n\\.\nb", "1.500", "2025-03-02T11:30:00.5+05:30"),  # COPY's end marker on a line of a quoted value
        ("\\.", "0", "2025-03-02T11:30:00Z"), ("", None, "2025-03-02T11:30:00-00:00"), (None, "-0.01",
        "2025-03-02T11:30:00.123456Z"), ('"quoted", and, commas', "12", "2025-03-02T11:30:00+14:00")])]
    rows.append(lead(9, id=lead(9)["id"].upper()))  # PostgreSQL stores the canonical lower case either way
    rows += [lead(i) for i in range(10, 16)]
    src = write_csv(tmp_path / "leads.csv", rows)
    lines = src.read_bytes().split(b"\n")
    lines[8] += b"\r"  # one line ended CRLF among LF ones
    lines.insert(10, b"")  # a blank line: skipped, not a row
    src.write_bytes(b"\n".join(lines))
    dump = "select md5(string_agg(l::text, '|' order by id)), count(*) from public.leads l"
    small = engine.plan_sync(specs["leads"], specs, src, rejects_dir=settings.rejects_dir, batch_bytes=256,
                             mass_delete_threshold=settings.mass_delete_threshold)  # a batch a row or two
    assert engine.run_sync(db, small, workers=2).method == "direct"
    direct = sql(dump)
    baseline.discard("leads", settings.rejects_dir)
    sql("delete from public.leads")
    again = _sync(db, settings, specs, src)
    assert (again.method, again.inserted) == ("staged", 12)
    assert sql(dump) == direct
