"""Skipping a sync that has nothing to do.

A CSV identical (sha256) to the one the table's last successful sync merged, under the same
``basis``, with no write to the table since — every write, in every phase, bumps its data_version
(the ``cutover_write_version`` trigger) — would load to exactly the rows the table has. Such a run
is recorded, with the previous run's counts and rejects, and nothing is loaded. This module imports
neither polars nor numpy, so ``cutover sync`` of an unchanged file costs little more than a sha256.
"""

from __future__ import annotations

import time

import psycopg

from cutover import bootstrap, state
from cutover.db import Database
from cutover.fingerprint import basis, file_sha256
from cutover.spec import TableSpec
from cutover.syncplan import (SyncPlan, SyncResult, drop_snapshot, reap_dead_runs, take_snapshot,
                              write_rejects_file)

LAST_MERGE = """select r.run_id, r.csv_sha256, r.csv_bytes, r.basis, r.merged_version, r.rows_read, r.rows_loaded,
                      r.rows_rejected
                 from cutover.runs r
                where r.table_name = %s and r.kind = 'sync' and r.status = 'succeeded'
                order by r.finished_at desc limit 1"""


def still_merged(conn: psycopg.Connection, spec: TableSpec, current: state.TableState) -> tuple | None:
    """The last successful sync's ``LAST_MERGE`` row while the table still holds exactly what it merged
    — no write since (``current.data_version``) and the same basis — else None. The one rule for
    skipping a sync, for diffing against its file and for a transition's pre-sync."""
    row = conn.execute(LAST_MERGE, (spec.name,)).fetchone()
    if row is None or row[4] != current.data_version or row[3] != basis(conn, spec):
        return None
    return row


def skip_unchanged(db: Database, plan: SyncPlan, started: float | None = None) -> SyncResult | None:
    """The result of a sync that has nothing to do, recorded as a run; None when there is work.

    Cheap checks first (the file's size, without reading it), then the file's sha256, then — in one
    transaction under the table's lock — that the table's data_version is still the one the last
    merge left and the basis is the same. The new run copies the last one's counts and rejects
    (the same bytes under the same rules are rejected for the same reasons, on the same lines)."""
    started = time.time() if started is None else started
    spec = plan.spec

    def last(conn: psycopg.Connection):
        if not bootstrap.schema_is_ready(conn, plan.specs):
            return None
        return conn.execute(LAST_MERGE, (spec.name,)).fetchone()

    prior = db.run(last, what=f"last sync of {spec.name}")
    try:
        if prior is None or prior[2] != plan.csv_path.stat().st_size:
            return None
    except FileNotFoundError:
        return None  # the full path reports it
    try:
        take_snapshot(plan)
        sha = file_sha256(plan.snapshot)
    finally:
        drop_snapshot(plan)
    if sha != prior[1]:
        return None

    def step(conn: psycopg.Connection) -> SyncResult | None:
        state.table_lock(conn, spec.name)
        reap_dead_runs(conn, plan)  # as any run start does: a skipped sync must not let a dead run linger
        current = state.get_state(conn, spec.name, for_update=True)
        row = still_merged(conn, spec, current)
        if current.phase not in state.SYNCABLE or row is None or row[1] != sha:
            return None
        prior_run, read, loaded, rejected = row[0], row[5], row[6], row[7]
        state.start_run(conn, plan.run_id, spec.name, "sync", current.version, str(plan.csv_path))
        conn.execute("""insert into cutover.rejects (run_id, line, column_name, value, reason, key)
                        select %s, line, column_name, value, reason, key from cutover.rejects where run_id = %s""",
                     (plan.run_id, prior_run))
        rejects_file = write_rejects_file(conn, plan) if rejected else None
        conn.execute(
            """update cutover.runs set status = 'succeeded', finished_at = now(), csv_sha256 = %s, csv_bytes = %s,
                 rows_read = %s, rows_loaded = %s, rows_rejected = %s, inserted = 0, updated = 0, deleted = 0,
                 rejects_file = %s, merged_version = %s, basis = %s where run_id = %s""",
            (sha, row[2], read, loaded, rejected, str(rejects_file) if rejects_file else None,
             current.data_version, row[3], plan.run_id))
        return SyncResult(table=spec.name, read=read, loaded=loaded, rejected=rejected, inserted=0, updated=0,
                          deleted=0, rejects_file=str(rejects_file) if rejects_file else None,
                          duration_s=round(max(0.0, time.time() - started), 3), run_id=str(plan.run_id),
                          phase=current.phase, method="unchanged")

    return db.run(step, what=f"record unchanged sync of {spec.name}")
