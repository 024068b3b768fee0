"""The application's data access in every phase: ``LeadsRepository``, ``ApprovalsRepository``.

A repository acts for one agent (``subject``, the JWT ``sub``) and routes by the table's phase,
read from the database (``cutover_app.phase``) and cached for ``phase_ttl_s``:

| phase      | writes                                              | reads                       |
|------------|-----------------------------------------------------|-----------------------------|
| mirror     | the CSV store (atomic rewrite under its lock)       | CSV                         |
| dual_write | CSV first, then the table in one transaction; if    | CSV (+ optional shadow read |
|            | that fails the key goes to the outbox (reconcile)   | of the table, mismatches    |
|            |                                                     | counted)                    |
| promoted   | the table                                           | the table                   |
| deprecated | the table; the CSV is refused                       | the table                   |

Database access acts as ``authenticated`` with the agent's claims, so RLS decides what it sees
and writes — no service-role key on this path. CSV access applies the same ownership rule (the
spec's), so results do not change with the phase. A write to the table states the phase it was
routed by (``cutover.expected_phase``); if a transition moved the table meanwhile, the database
refuses the write (SQLSTATE ``CUTPH``) and the repository re-reads the phase and writes again on
the right path — a write is never left in a store that is no longer the truth.

Concurrency: CSV writes of one table are serialised across processes by the store's lock, and in
``dual_write`` the table write happens under that same lock, so the CSV and the table see writes
in the same order. ``update(id, fn)`` is a read-modify-write under that lock (CSV phases) or a
row lock (database phases): concurrent updates are never lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from cutover import codec
from cutover.csvstore import CsvStore
from cutover.db import Database
from cutover.ddl import ident, target, upsert_row
from cutover.errors import CutoverError, PhaseError
from cutover.outbox import Outbox
from cutover.spec import TableSpec

log = logging.getLogger("cutover.repository")
PHASE_CHANGED = "CUTPH"
CSV_PHASES = ("mirror", "dual_write")


class NotVisible(CutoverError):
    """The row does not exist or belongs to another agent (the same answer, as RLS gives)."""


class Repository:
    table: ClassVar[str]

    def __init__(self, *, specs: dict[str, TableSpec], store: CsvStore, db: Database, outbox: Outbox,
                 subject: str, parent_stores: dict[str, CsvStore] | None = None, shadow_reads: bool = False,
                 phase_ttl_s: float = 2.0):
        self.spec = specs[self.table]
        self.specs = specs
        self.store, self.db, self.outbox, self.subject = store, db, outbox, str(subject)
        self.parent_stores = parent_stores or {}
        self.shadow_reads, self.phase_ttl_s = shadow_reads, phase_ttl_s
        self.shadow_mismatches = 0
        self._phase: tuple[float, str | None] | None = None

    # --- phase ---------------------------------------------------------------------------------

    def phase(self, *, fresh: bool = False) -> str | None:
        now = time.monotonic()
        if fresh or self._phase is None or now - self._phase[0] > self.phase_ttl_s:
            value = self.db.run(lambda conn: self._as_agent(conn).execute(
                "select cutover_app.phase(%s)", (self.table,)).fetchone()[0], what=f"phase of {self.table}")
            self._phase = (now, value)
        return self._phase[1]

    def _routed(self, fn: Callable[[str | None], Any]) -> Any:
        """Run ``fn(phase)``; if the database says the phase moved under it, re-read and run again."""
        for _ in range(3):
            phase = self.phase()
            if phase is None:
                raise PhaseError(f"{self.table} is not migrated yet (no phase): nothing to route to")
            try:
                return fn(phase)
            except psycopg.Error as exc:
                if exc.sqlstate != PHASE_CHANGED:
                    raise
                self.phase(fresh=True)
        raise PhaseError(f"{self.table}: the phase kept changing during the write; try again")

    # --- database, as the agent ------------------------------------------------------------------

    def _as_agent(self, conn: psycopg.Connection, expected_phase: str | None = None) -> psycopg.Connection:
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)",
                     (json.dumps({"sub": self.subject, "role": "authenticated"}),))
        if expected_phase:
            conn.execute("select set_config('cutover.expected_phase', %s, true)", (expected_phase,))
        return conn

    def _db_get(self, key: Any) -> dict | None:
        query = sql.SQL("select * from {} where {} = %s").format(target(self.spec), ident(self.spec.primary_key))
        return self.db.run(lambda conn: self._as_agent(conn).cursor(row_factory=dict_row).execute(
            query, (str(key),)).fetchone(), what=f"get {self.table}")

    def _db_write(self, phase: str, upserts: list[codec.TextRow], deletes: list[str]) -> None:
        spec = self.spec

        def step(conn):
            self._as_agent(conn, phase)
            for row in upserts:
                cur = conn.execute(upsert_row(spec), [row[c] for c in spec.column_names])
                if cur.rowcount == 0 and self._db_get_in(conn, row[spec.primary_key]) is None:
                    raise NotVisible(f"{self.table} {row[spec.primary_key]}: not yours to write")
            for key in deletes:
                conn.execute(sql.SQL("delete from {} where {} = %s").format(target(spec), ident(spec.primary_key)),
                             (key,))

        self.db.run(step, what=f"write {self.table}")

    def _db_get_in(self, conn, key):
        return conn.execute(sql.SQL("select 1 from {} where {} = %s").format(
            target(self.spec), ident(self.spec.primary_key)), (key,)).fetchone()

    # --- ownership in the CSV phases (what RLS does for the table) -------------------------------

    def _owns(self, row: codec.TextRow) -> bool:
        rls = self.spec.rls
        if rls.owner_column:
            return row.get(rls.owner_column) == self.subject
        parent = self.specs[self.spec.column(rls.via_parent).references[0]]
        parent_row = self.parent_stores[parent.name].get(row[rls.via_parent]) if row.get(rls.via_parent) else None
        return parent_row is not None and parent_row.get(parent.rls.owner_column) == self.subject

    # --- API ---------------------------------------------------------------------------------------

    def get(self, key: Any) -> dict | None:
        def run(phase):
            if phase in CSV_PHASES:
                row = self.store.get(str(key))
                found = codec.decode(self.spec, row) if row is not None and self._owns(row) else None
                if phase == "dual_write" and self.shadow_reads:
                    self._shadow(key, found)
                return found
            return self._db_get(key)

        return self._routed(run)

    def _shadow(self, key: Any, expected: dict | None) -> None:
        try:
            actual = self._db_get(key)
        except Exception as exc:  # a shadow read must never break the real read
            log.warning("%s shadow read of %s failed: %s", self.table, key, self.db.scrub(str(exc)))
            return
        if actual != expected:
            self.shadow_mismatches += 1
            log.warning("%s shadow read mismatch for key %s (%d so far)", self.table, key, self.shadow_mismatches)

    def list(self, filters: dict[str, Any] | None = None, *, after: Any = None, limit: int = 100) -> list[dict]:
        """Rows matching every ``column = value`` filter, by primary key, after the key ``after``."""
        filters = filters or {}
        unknown = set(filters) - set(self.spec.column_names)
        if unknown:
            raise ValueError(f"{self.table}: unknown filter columns {sorted(unknown)}")

        def run(phase):
            if phase in CSV_PHASES:
                return self._csv_list(filters, after, limit)
            where = [sql.SQL("{} is not distinct from %s").format(ident(c)) for c in filters]
            params = [None if v is None else str(v) for v in filters.values()]
            if after is not None:
                where.append(sql.SQL("{} > %s").format(ident(self.spec.primary_key)))
                params.append(str(after))
            query = sql.SQL("select * from {} where {} order by {} limit %s").format(
                target(self.spec), sql.SQL(" and ").join(where) if where else sql.SQL("true"),
                ident(self.spec.primary_key))
            return self.db.run(lambda conn: self._as_agent(conn).cursor(row_factory=dict_row).execute(
                query, [*params, limit]).fetchall(), what=f"list {self.table}")

        return self._routed(run)

    def _csv_list(self, filters: dict[str, Any], after: Any, limit: int) -> list[dict]:
        text_filters = {c: codec._encode(self.spec.column(c), v) for c, v in filters.items()}
        if self.spec.rls.owner_column:
            text_filters[self.spec.rls.owner_column] = self.subject
        out: list[dict] = []
        cursor = None if after is None else str(after)
        while len(out) < limit:
            page = self.store.scan(text_filters, after=cursor, limit=limit)
            if not page:
                break
            out += [codec.decode(self.spec, r) for r in page if self._owns(r)]
            cursor = page[-1][self.spec.primary_key]
        return out[:limit]

    def upsert(self, rows: list[dict]) -> int:
        encoded = [codec.encode(self.spec, r) for r in rows]
        self._write(encoded, [])
        return len(encoded)

    def delete(self, key: Any) -> bool:
        if self.get(key) is None:
            return False
        self._write([], [str(key)])
        return True

    def update(self, key: Any, change: Callable[[dict], dict]) -> dict:
        """Read-modify-write of one row; concurrent updates of it are serialised, never lost."""
        def run(phase):
            if phase in CSV_PHASES:
                with self.store.locked():
                    current = self.get(key)
                    if current is None:
                        raise NotVisible(f"{self.table} {key}: no such row")
                    new = codec.encode(self.spec, change(dict(current)))
                    self._write_csv_phase(phase, [new], [])
                    return codec.decode(self.spec, new)
            spec = self.spec

            def step(conn):
                self._as_agent(conn, phase)
                current = conn.cursor(row_factory=dict_row).execute(
                    sql.SQL("select * from {} where {} = %s for update").format(target(spec), ident(spec.primary_key)),
                    (str(key),)).fetchone()
                if current is None:
                    raise NotVisible(f"{self.table} {key}: no such row")
                new = codec.encode(spec, change(dict(current)))
                conn.execute(upsert_row(spec), [new[c] for c in spec.column_names])
                return codec.decode(spec, new)

            return self.db.run(step, what=f"update {self.table}")

        return self._routed(run)

    # --- routing of writes -------------------------------------------------------------------------

    def _write(self, upserts: list[codec.TextRow], deletes: list[str]) -> None:
        def run(phase):
            if phase in CSV_PHASES:
                self._write_csv_phase(phase, upserts, deletes)
            else:
                self._db_write(phase, upserts, deletes)

        self._routed(run)

    def _write_csv_phase(self, phase: str, upserts: list[codec.TextRow], deletes: list[str]) -> None:
        for row in upserts:
            if not self._owns(row):
                raise NotVisible(f"{self.table} {row[self.spec.primary_key]}: not yours to write")
        for key in deletes:
            row = self.store.get(key)
            if row is not None and not self._owns(row):
                raise NotVisible(f"{self.table} {key}: not yours to delete")
        if phase == "mirror":
            self.store.apply(upserts, deletes)
            return
        # dual_write: the CSV (the truth) first, then the table, both under the store's (re-entrant) lock
        with self.store.locked():
            self._dual(upserts, deletes)

    def _dual(self, upserts: list[codec.TextRow], deletes: list[str]) -> None:
        self.store.apply(upserts, deletes)
        try:
            self._db_write("dual_write", upserts, deletes)
        except Exception as exc:  # the write stands (the CSV is the truth): the table is repaired later
            if isinstance(exc, psycopg.Error) and exc.sqlstate == PHASE_CHANGED:
                raise  # _routed re-reads the phase; writing the CSV again is idempotent
            self._to_outbox(upserts, deletes, exc)

    def _to_outbox(self, upserts, deletes, exc: BaseException) -> None:
        message = self.db.scrub(f"{type(exc).__name__}: {exc}")
        for row in upserts:
            self.outbox.record(self.table, row[self.spec.primary_key], "upsert", message)
        for key in deletes:
            self.outbox.record(self.table, key, "delete", message)
        log.warning("%s: the database half of %d writes failed (%s); queued for reconcile", self.table,
                    len(upserts) + len(deletes), message)


class LeadsRepository(Repository):
    table = "leads"


class ApprovalsRepository(Repository):
    table = "approvals"
