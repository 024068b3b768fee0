"""The table's totals started ahead (``cutover.totals_ahead``): used only when they prove parity,
never the only way, and never left running."""

from __future__ import annotations

import dataclasses
import threading
import time

import psycopg

from cutover import digest_parity, sync as engine, table_digests, validate as validation
from cutover.db import connect
from cutover.totals_ahead import TotalsAhead
from tests.csvdata import lead, write_csv


def _plan(settings, specs):
    return validation.plan_validation(specs["leads"], specs, settings.csv_path("leads"),
                                      rejects_dir=settings.rejects_dir, batch_bytes=settings.batch_bytes,
                                      suites_dir=settings.expectations_dir, reports_dir=settings.reports_dir)


def _synced(db, settings, specs, rows):
    write_csv(settings.csv_path("leads"), rows)
    plan = engine.plan_sync(specs["leads"], specs, settings.csv_path("leads"), rejects_dir=settings.rejects_dir,
                            batch_bytes=settings.batch_bytes, mass_delete_threshold=1.0)
    assert engine.run_sync(db, plan, workers=1).rejected == 0


def _first_pass(db, settings, specs, ahead):
    """``digest_parity.first_pass`` of the leads CSV against its table, as ``cutover parity`` runs it."""
    vplan = _plan(settings, specs)
    plan = vplan.staging
    engine.begin(db, plan, kind="validate")
    try:
        return db.run(lambda conn: digest_parity.first_pass(conn, plan, lambda: engine.scan_stream(plan), 1, ahead=ahead),
                      snapshot=True)
    finally:
        db.run(lambda conn: validation._end_staging(conn, vplan))
        engine.drop_snapshot(plan)


def test_totals_ahead_are_the_tables_totals_whatever_the_hint_says(db, settings, specs):
    """With one server process or all of them (``alone``), and when the hint itself fails."""
    _synced(db, settings, specs, [lead(i) for i in range(50)])
    expected = db.run(lambda conn: table_digests.totals(conn, specs["leads"]))
    asked = []

    def broken() -> bool:
        raise OSError("no such file")

    for alone in (lambda: asked.append(threading.current_thread().name) or True, lambda: False, broken):
        with TotalsAhead.start(db, specs["leads"], alone=alone) as ahead:
            assert ahead.result() == expected and expected[0] == 50
    assert asked == ["cutover-totals-ahead"]  # asked on its thread, not the command's


def test_stale_totals_ahead_are_set_aside_and_the_table_summed_in_the_comparing_transaction(db, settings, specs,
                                                                                         sql):
    """The table changed after the totals ahead were taken, to match the CSV: parity is exact, and the
    row count is the comparing transaction's."""
    rows = [lead(i) for i in range(40)]
    _synced(db, settings, specs, rows)
    sql("delete from public.leads where id = %s", (rows[3]["id"],))
    with TotalsAhead.start(db, specs["leads"]) as ahead:
        assert ahead.result()[0] == 39
        _synced(db, settings, specs, rows)  # the table matches the CSV again
        suspects, counts, target_rows = _first_pass(db, settings, specs, ahead)
    assert len(suspects) == 0 and counts.loaded == 40 and target_rows == 40


def test_totals_ahead_that_agree_prove_parity_as_of_their_instant(db, settings, specs, sql):
    """The contract, pinned: totals that agree with the CSV's are the proof, whatever the table does
    after their snapshot (a later run sees the later table)."""
    rows = [lead(i) for i in range(30)]
    _synced(db, settings, specs, rows)
    with TotalsAhead.start(db, specs["leads"]) as ahead:
        assert ahead.result()[0] == 30
        sql("delete from public.leads where id = %s", (rows[0]["id"],))
        suspects, counts, target_rows = _first_pass(db, settings, specs, ahead)
        assert len(suspects) == 0 and target_rows == 30
    suspects, _, target_rows = _first_pass(db, settings, specs, None)
    assert len(suspects) > 0 and target_rows == 29


def test_parity_runs_whole_when_the_totals_ahead_could_not_be_had(db, settings, specs):
    """A table that is not there yet (the run's begin creates it) gives no totals and no error; the
    parity run sums the table itself."""
    write_csv(settings.csv_path("leads"), [lead(i) for i in range(20)])
    missing = dataclasses.replace(specs["leads"], name="no_such_table")
    with TotalsAhead.start(db, missing) as ahead:
        assert ahead.result() is None
        result = validation.parity_only(db, _plan(settings, specs), workers=1, ahead=ahead)
    assert result["missing_in_target"] == 20 and result["target_rows"] == 0 and not result["passed"]


def test_leaving_cancels_the_servers_statement(db, settings, specs, db_url):
    """Totals that wait on a lock are cancelled when the command leaves: the thread ends at once,
    nothing is left running on the server, and there is no result."""
    _synced(db, settings, specs, [lead(i) for i in range(10)])
    with psycopg.connect(db_url) as holder:
        holder.execute("lock table public.leads in access exclusive mode")
        ahead = TotalsAhead.start(db, specs["leads"])
        deadline = time.monotonic() + 10
        while ahead._conn is None and time.monotonic() < deadline:  # its statement is on the server
            time.sleep(0.01)
        time.sleep(0.1)
        started = time.monotonic()
        with ahead:
            pass
        assert time.monotonic() - started < 5
        assert not ahead._thread.is_alive() and ahead.result() is None
        holder.rollback()
    waiting = db.run(lambda conn: conn.execute(
        "select count(*) from pg_stat_activity where query like %s and pid <> pg_backend_pid()",
        ("%bit_xor%",)).fetchone()[0])
    assert waiting == 0


def test_a_pool_without_a_connection_to_spare_starts_nothing(settings, specs, monkeypatch):
    monkeypatch.setenv("CUTOVER_POOL_MAX", "2")
    from cutover.settings import Settings

    with connect(Settings()) as small:
        before = {t.name for t in threading.enumerate()}
        with TotalsAhead.start(small, specs["leads"]) as ahead:
            assert "cutover-totals-ahead" not in {t.name for t in threading.enumerate()} - before
            assert ahead.result() is None
