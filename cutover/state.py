"""Phases and run history in the ``cutover`` schema. Functions take a connection inside a
transaction (``Database.run``/``tx``) and do only what their name says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

PHASES = ("mirror", "dual_write", "promoted", "deprecated")
SYNCABLE = ("mirror", "dual_write")  # phases in which the CSV is the source of truth
STALE_AFTER = "15 minutes"  # a running run with no heartbeat for this long is dead


@dataclass(frozen=True)
class TableState:
    table: str
    phase: str | None
    version: int
    data_version: int


def table_lock(conn: psycopg.Connection, table: str) -> None:
    """Serialise merges and phase transitions of one table until the transaction ends."""
    conn.execute("select pg_advisory_xact_lock(hashtext('cutover.table'), hashtext(%s))", (table,))


def get_state(conn: psycopg.Connection, table: str, *, for_update: bool = False) -> TableState:
    row = conn.execute(
        "select phase, version, data_version from cutover.table_state where table_name = %s"
        + (" for update" if for_update else ""), (table,)).fetchone()
    if row is None:
        return TableState(table, None, 0, 0)
    return TableState(table, row[0], row[1], row[2])


def record_merge(conn: psycopg.Connection, table: str, *, data_changed: bool) -> TableState:
    """Bump the table's versions after a merge; a first merge puts it in phase ``mirror``."""
    row = conn.execute(
        """insert into cutover.table_state as s (table_name, phase, version, data_version)
           values (%(t)s, 'mirror', 1, 1)
           on conflict (table_name) do update
             set version = s.version + 1,
                 data_version = s.data_version + %(d)s,
                 updated_at = now()
           returning phase, version, data_version""", {"t": table, "d": int(data_changed)}).fetchone()
    return TableState(table, *row)


def set_phase(conn: psycopg.Connection, table: str, from_phase: str | None, to_phase: str | None, *,
              actor: str, reason: str, started_at: datetime, report_id: str | None = None,
              run_id: UUID | None = None) -> TableState:
    if to_phase is None:
        conn.execute("delete from cutover.table_state where table_name = %s", (table,))
    else:
        conn.execute(
            """insert into cutover.table_state as s (table_name, phase) values (%s, %s)
               on conflict (table_name) do update set phase = excluded.phase, version = s.version + 1,
                 updated_at = now()""", (table, to_phase))
    append_history(conn, table, from_phase, to_phase, actor=actor, reason=reason, started_at=started_at,
                   report_id=report_id, run_id=run_id)
    return get_state(conn, table)


def append_history(conn: psycopg.Connection, table: str, from_phase: str | None, to_phase: str | None, *,
                   actor: str, reason: str, started_at: datetime, report_id: str | None = None,
                   run_id: UUID | None = None, outcome: str = "done") -> None:
    """``outcome``: done, or rejected / timed_out for a promotion that was not approved (phase unchanged)."""
    conn.execute(
        """insert into cutover.phase_history
             (table_name, from_phase, to_phase, actor, reason, report_id, run_id, started_at, outcome)
           values (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (table, from_phase, to_phase, actor, reason, report_id, run_id, started_at, outcome))


def start_run(conn: psycopg.Connection, run_id: UUID, table: str, kind: str, base_version: int,
              csv_path: str | None) -> None:
    conn.execute(
        """insert into cutover.runs (run_id, table_name, kind, status, base_version, csv_path)
           values (%s, %s, %s, 'running', %s, %s)""", (run_id, table, kind, base_version, csv_path))


def heartbeat(conn: psycopg.Connection, run_id: UUID) -> None:
    conn.execute("update cutover.runs set heartbeat_at = now() where run_id = %s", (run_id,))


def fail_run(conn: psycopg.Connection, run_id: UUID, error: str) -> None:
    conn.execute(
        """update cutover.runs set status = 'failed', error = %s, finished_at = now()
           where run_id = %s and status = 'running'""", (error, run_id))


def _update_running(conn: psycopg.Connection, run_id: UUID, change: str, counts: dict) -> None:
    from psycopg import sql

    sets = sql.SQL("").join(sql.SQL(", {} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in counts)
    conn.execute(sql.SQL("update cutover.runs set {}{} where run_id = %(run)s and status = 'running'").format(
        sql.SQL(change), sets), {**counts, "run": run_id})


def record_counts(conn: psycopg.Connection, run_id: UUID, **counts: int | str | None) -> None:
    """Store a running run's counts (columns of ``cutover.runs``); it stays running, and is heartbeaten."""
    _update_running(conn, run_id, "heartbeat_at = now()", counts)


def finish_run(conn: psycopg.Connection, run_id: UUID, **counts: int | str | None) -> None:
    """Mark a run succeeded with its counts (columns of ``cutover.runs``)."""
    _update_running(conn, run_id, "status = 'succeeded', finished_at = now()", counts)


def restarted_since(conn: psycopg.Connection, run_id: UUID) -> bool:
    """Whether the server started after the run began (a crash restart resets UNLOGGED tables)."""
    row = conn.execute("select pg_postmaster_start_time() > started_at from cutover.runs where run_id = %s",
                       (run_id,)).fetchone()
    return bool(row and row[0])


def fail_stale_runs(conn: psycopg.Connection, table: str, *,
                    before: UUID | None = None) -> list[tuple[UUID, str | None]]:
    """Mark dead runs of ``table`` failed and return them, each with the CSV it read: those without a
    recent heartbeat, and, when ``before`` is given, every sync still running that started before it
    (a later merge has made their data stale, so they could never succeed)."""
    rows = conn.execute(
        """update cutover.runs r set status = 'failed', finished_at = now(),
             error = case when %(before)s::uuid is not null and r.kind = 'sync' and r.started_at <= b.started_at
                          then 'interrupted: superseded by run ' || %(before)s::text
                          else 'interrupted: no heartbeat since ' || r.heartbeat_at::text end
           from (select coalesce((select started_at from cutover.runs where run_id = %(before)s::uuid),
                                 '-infinity'::timestamptz) as started_at) b
           where r.table_name = %(table)s and r.status = 'running'
             and r.run_id is distinct from %(before)s::uuid
             and (r.heartbeat_at < now() - %(stale)s::interval
                  or (%(before)s::uuid is not null and r.kind = 'sync' and r.started_at <= b.started_at))
           returning r.run_id, r.csv_path""",
        {"table": table, "before": before, "stale": STALE_AFTER}).fetchall()
    return [(r[0], r[1]) for r in rows]


def runs_long_over(conn: psycopg.Connection, runs: list[str]) -> list[str]:
    """Which of ``runs`` (the first 12 hex digits of their ids) ended more than ``STALE_AFTER`` ago: their
    files belong to nobody. Not one that has just ended: it may still be making its snapshot the
    table's baseline. An id no run has (another database's run, or one whose record is gone) is not."""
    rows = conn.execute(
        """select left(replace(run_id::text, '-', ''), 12) r from cutover.runs
           where left(replace(run_id::text, '-', ''), 12) = any(%(runs)s)
           group by 1 having bool_and(status <> 'running' and finished_at < now() - %(stale)s::interval)""",
        {"runs": runs, "stale": STALE_AFTER}).fetchall()
    return [r[0] for r in rows]


def finished_staging(conn: psycopg.Connection, table: str, prefix: str) -> list[str]:
    """Staging tables of ``table`` (named ``prefix`` + 12 hex digits of the run) whose run is over: a
    running run drops its staging in the very transaction that ends it, so these belong to nobody (a
    run reaped by ``fail_stale_runs``, or older versions' leftovers). A table whose run this
    transaction cannot see (a run just begun) is left alone."""
    rows = conn.execute(
        """select t.tablename from pg_tables t join cutover.runs r
             on t.tablename = %(prefix)s || left(replace(r.run_id::text, '-', ''), 12)
           where t.schemaname = 'cutover' and r.table_name = %(table)s and r.status <> 'running'""",
        {"table": table, "prefix": prefix}).fetchall()
    return [r[0] for r in rows]


def last_runs(conn: psycopg.Connection) -> dict[str, dict]:
    rows = conn.cursor(row_factory=dict_row).execute(
        """select distinct on (table_name) table_name, run_id, kind, status, started_at, finished_at,
                  rows_read, rows_loaded, rows_rejected, inserted, updated, deleted, rejects_file, error
           from cutover.runs order by table_name, started_at desc""").fetchall()
    return {r.pop("table_name"): r for r in rows}


def phases(conn: psycopg.Connection) -> dict[str, dict]:
    rows = conn.cursor(row_factory=dict_row).execute(
        "select table_name, phase, version, data_version, updated_at from cutover.table_state").fetchall()
    return {r.pop("table_name"): r for r in rows}


def history(conn: psycopg.Connection, table: str | None = None) -> list[dict]:
    return conn.cursor(row_factory=dict_row).execute(
        """select table_name, from_phase, to_phase, outcome, actor, reason, report_id, run_id, started_at,
                  finished_at
           from cutover.phase_history where %(t)s::text is null or table_name = %(t)s order by id""",
        {"t": table}).fetchall()
