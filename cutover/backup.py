"""Keeping the CSV up to date from the database once the database is the source of truth.

From ``dual_write`` on, every write to a migrated table is logged in ``cutover.change_log`` by a
trigger. ``apply_changes`` brings the CSV up to date: it takes the keys changed after the table's
backup mark, reads their *current* rows (a key deleted since is absent, so it is removed from the
CSV), rewrites the CSV once (atomically, under the store's lock), and advances the mark. Rows are
read as text in the export's format (UTC timestamps, numerics at scale), so a later sync of the
CSV changes nothing.

Crash safety: the CSV is replaced before the mark advances (both inside the caller's transaction
when the mark is committed): a crash in between re-applies the same changes next time, which is
idempotent. Run it inside a transaction that locks the table against writes (``LOCK ... IN
EXCLUSIVE MODE``) when the result must include every write up to the commit (a rollback), or
without the lock for the periodic backup (it then includes every write committed before it read).
The periodic backup is ``back_up`` (the ``backup`` flow's task and ``cutover backup`` both run it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psycopg
from psycopg import sql

from cutover import bootstrap, state
from cutover.csvstore import CsvStore
from cutover.ddl import ident, target
from cutover.errors import PhaseError
from cutover.spec import TableSpec


@dataclass(frozen=True)
class BackupResult:
    table: str
    from_change: int
    to_change: int
    upserted: int
    deleted: int

    def as_dict(self) -> dict:
        return asdict(self)


def mark(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute("select change_id from cutover.backup_state where table_name = %s", (table,)).fetchone()
    return row[0] if row else 0


def set_mark(conn: psycopg.Connection, table: str, change_id: int) -> None:
    conn.execute("""insert into cutover.backup_state (table_name, change_id) values (%s, %s)
                    on conflict (table_name) do update set change_id = excluded.change_id, updated_at = now()""",
                 (table, change_id))


def latest_change(conn: psycopg.Connection, table: str) -> int:
    return conn.execute("select coalesce(max(id), 0) from cutover.change_log where table_name = %s",
                        (table,)).fetchone()[0]


def _rows_as_text(conn: psycopg.Connection, spec: TableSpec, keys: list[str]) -> list[dict[str, str | None]]:
    # ::text under the session's UTC time zone is exactly what COPY ... TO (the export) writes.
    query = sql.SQL("select {} from {} where {} = any(%s::{}[])").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(ident(c)) for c in spec.column_names), target(spec),
        ident(spec.primary_key), sql.SQL(spec.column(spec.primary_key).sql_type))
    conn.execute("select set_config('TimeZone', 'UTC', true)")
    return [dict(zip(spec.column_names, row)) for row in conn.execute(query, (keys,))]


def apply_changes(conn: psycopg.Connection, spec: TableSpec, store: CsvStore) -> BackupResult:
    """Apply every change logged after the mark to the CSV, then advance the mark (caller commits)."""
    since = mark(conn, spec.name)
    keys, upto = [], since
    for key, last in conn.execute(
            "select key, max(id) from cutover.change_log where table_name = %s and id > %s group by key",
            (spec.name, since)):
        keys.append(key)
        upto = max(upto, last)
    if not keys:
        return BackupResult(spec.name, since, since, 0, 0)
    rows = _rows_as_text(conn, spec, keys)
    present = {r[spec.primary_key] for r in rows}
    gone = [k for k in keys if k not in present]
    store.apply(rows, gone)
    set_mark(conn, spec.name, upto)
    return BackupResult(spec.name, since, upto, len(rows), len(gone))


def back_up(conn: psycopg.Connection, spec: TableSpec, store: CsvStore) -> BackupResult:
    """The periodic backup of a promoted table (caller commits). It holds the table's advisory lock,
    so it never interleaves with a transition or another backup of the table (application writes
    go on), and refuses a table that is not (or no longer) ``promoted``."""
    if not bootstrap.is_bootstrapped(conn):  # nothing was ever mirrored here
        raise PhaseError(f"{spec.name} is not mirrored yet (the database has no cutover schema): nothing to back up")
    state.table_lock(conn, spec.name)
    phase = state.get_state(conn, spec.name).phase
    if phase != "promoted":
        raise PhaseError(f"{spec.name} is in phase {phase or '(none)'}, not promoted: its CSV is the source of"
                         " truth, there is nothing to back up")
    return apply_changes(conn, spec, store)
