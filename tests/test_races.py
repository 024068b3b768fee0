"""Races between cutover's commands, and between a sync and the application, with real processes and
a real PostgreSQL. Each interleaving is made certain with a lock the test holds (the command waits on
it), never with sleeps:

- a sync and a rollback of the same table (dual_write → mirror): one proceeds, the other is refused
  with a clear message (exit 6), the phase is whole and CSV and table agree exactly;
- an application write (through the repositories, to both stores) made while a dual_write sync runs
  is never reverted by the sync's older snapshot of the CSV.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from cutover import operate
from cutover.app import repositories
from cutover.csvstore import CsvStore
from tests.test_faults import (_cli_env, _connect, _phase_is_whole, _result, _rows, _run, _start, _wait_for,
                               _waiting)

TABLE_LOCK = "select pg_advisory_lock(hashtext('cutover.table'), hashtext('leads'))"  # what merges and transitions take
TABLE_UNLOCK = "select pg_advisory_unlock(hashtext('cutover.table'), hashtext('leads'))"
SEED = 606


@pytest.fixture
def dual_write(env, settings, specs, db):
    """leads (2000 generated rows) in dual_write, CSV and table equal."""
    from cutover.samples import generate

    generate("leads", 2000, settings.csv_path("leads"), seed=SEED)
    operate.run_sync(settings, db, specs, "leads", actor="test")
    assert operate.advance(settings, db, specs, "leads").to_phase == "dual_write"
    with open(settings.csv_path("leads"), "a") as f:
        f.write("\n")  # other bytes, the same rows: a sync has a file to load (an unchanged one is skipped)
    return _cli_env(env, CUTOVER_BATCH_BYTES=str(64 << 10))  # several batches: a COPY to block


def _exact(run_env) -> None:
    code, out, err = _run(["parity", "--table", "leads"], run_env)
    assert code == 0 and out["passed"], (out, err[-2000:])


def _settled(mon) -> None:
    assert _rows(mon, "select count(*) from cutover.runs where status = 'running'") == [(0,)]
    assert _rows(mon, "select count(*) from pg_tables where schemaname = 'cutover' and tablename like 'stg%%'") \
        == [(0,)]


def test_a_sync_that_merges_first_makes_a_waiting_rollback_plan_again(dual_write, db_url, tmp_path):
    run_env = dual_write
    mon, holder = _connect(db_url), _connect(db_url)
    procs = []
    try:
        holder.execute(TABLE_LOCK)
        procs.append(sync := _start(["sync", "--table", "leads"], run_env, tmp_path / "logs"))
        _wait_for(lambda: _waiting(mon, "%advisory%"), 120, "the sync's merge to wait for the table lock", sync)
        procs.append(rollback := _start(["rollback", "--table", "leads"], run_env, tmp_path / "logs"))
        _wait_for(lambda: len(_waiting(mon, "%advisory%")) == 2, 120, "the rollback to queue behind it", rollback)
        holder.execute(TABLE_UNLOCK)  # the sync was first in the queue: it merges, then the rollback decides
        assert sync.wait(120) == 0, _result(sync)
        assert rollback.wait(120) == 6, _result(rollback)
        assert "plan again" in _result(rollback)["error"], _result(rollback)
        _settled(mon)
        _phase_is_whole(mon, "dual_write", 2, "the rollback was refused")
        _exact(run_env)
        code, out, err = _run(["rollback", "--table", "leads"], run_env)  # planned again, it completes
        assert code == 0 and out["to_phase"] == "mirror" and out["parity_passed"] is True, (out, err[-2000:])
        _phase_is_whole(mon, "mirror", 3, "rolled back")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        mon.close()
        holder.close()


def test_a_rollback_that_commits_first_makes_a_loading_sync_apply_nothing(dual_write, db_url, tmp_path):
    run_env = dual_write
    mon, holder = _connect(db_url), _connect(db_url)
    before = _rows(mon, "select md5(string_agg(l::text, '|' order by id)) from public.leads l")
    sync = None
    try:
        holder.autocommit = False
        # its COPYs wait for the test's lock while a whole rollback runs: longer than the default lock timeout
        sync = _start(["sync", "--table", "leads"], {**run_env, "CUTOVER_LOCK_TIMEOUT_S": "600"}, tmp_path / "logs")
        stg = _wait_for(lambda: _rows(mon, "select 'stg_leads_' || left(replace(run_id::text, '-', ''), 12)"
                                           " from cutover.runs where kind = 'sync' and status = 'running'"),
                        120, "the sync to begin", sync, every=0.002)[0][0]
        holder.execute(f"lock table cutover.{stg} in access exclusive mode")  # its COPYs wait
        _wait_for(lambda: _waiting(mon, "copy%"), 120, "a COPY blocked on staging", sync)
        code, out, err = _run(["rollback", "--table", "leads"], run_env)
        assert code == 0 and out["to_phase"] == "mirror" and out["parity_passed"] is True, (out, err[-2000:])
        holder.rollback()
        assert sync.wait(120) == 6, _result(sync)
        assert "nothing was applied" in _result(sync)["error"], _result(sync)
        _settled(mon)
        _phase_is_whole(mon, "mirror", 3, "rolled back while the sync loaded")
        assert _rows(mon, "select md5(string_agg(l::text, '|' order by id)) from public.leads l") == before
        _exact(run_env)
        assert _run(["sync", "--table", "leads"], run_env)[0] == 0  # rerun in mirror: it completes
        _exact(run_env)
    finally:
        if sync is not None and sync.poll() is None:
            sync.kill()
            sync.wait()
        mon.close()
        holder.close()


def test_a_dual_write_sync_never_reverts_an_application_write_made_while_it_ran(dual_write, db_url, settings,
                                                                                specs, tmp_path):
    """The sync froze the CSV before the application's write; the write reaches both stores while the
    sync waits to merge; the merge must not put the snapshot's older row back over it."""
    from cutover.samples import agent_ids

    run_env = dual_write
    agent = agent_ids(SEED)[0]
    key = CsvStore(settings.csv_path("leads"), specs["leads"]).scan({"agent_id": agent}, limit=1)[0]["id"]
    mon, holder = _connect(db_url), _connect(db_url)
    app = repositories(settings, agent, specs=specs)
    sync = None
    try:
        holder.execute(TABLE_LOCK)
        sync = _start(["sync", "--table", "leads"], run_env, tmp_path / "logs")
        _wait_for(lambda: _waiting(mon, "%advisory%"), 120, "the sync's merge to wait for the table lock", sync)
        new = app.leads.update(key, lambda r: {**r, "budget": (r["budget"] or Decimal(0)) + 1})["budget"]
        holder.execute(TABLE_UNLOCK)
        assert sync.wait(120) == 0, _result(sync)
        assert _rows(mon, "select budget from public.leads where id = %s", (key,)) == [(new,)], \
            "the sync reverted the application's write"
        assert Decimal(CsvStore(settings.csv_path("leads"), specs["leads"]).get(key)["budget"]) == new
        _settled(mon)
        _exact(run_env)
    finally:
        if sync is not None and sync.poll() is None:
            sync.kill()
            sync.wait()
        app.close()
        mon.close()
        holder.close()


def test_a_sync_that_waits_too_long_for_the_table_lock_says_so(dual_write, db_url, tmp_path):
    """Past CUTOVER_LOCK_TIMEOUT_S behind another holder of the table's lock, the merge gives up with a
    clear reason and exit 6 (not a bare LockNotAvailable), having applied nothing."""
    mon, holder = _connect(db_url), _connect(db_url)
    try:
        version = _rows(mon, "select version from cutover.table_state")
        holder.execute(TABLE_LOCK)
        code, out, err = _run(["sync", "--table", "leads"], {**dual_write, "CUTOVER_LOCK_TIMEOUT_S": "2"})
        assert code == 6, (out, err[-2000:])
        assert "CUTOVER_LOCK_TIMEOUT_S" in out["error"] and "nothing was done" in out["error"], out
        assert _rows(mon, "select version from cutover.table_state") == version
        _settled(mon)
    finally:
        mon.close()
        holder.close()
