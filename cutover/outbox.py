"""Durable outbox of writes whose Supabase half failed during the dual-write phase.

The application writes the CSV store first; when the matching write to Supabase fails, it records
``(table, key, op, error)`` here, and a repair job later re-sends the current CSV row for each
pending entry (or the delete) and removes the entries it repaired with ``done`` — or bumps their
``attempts`` with ``failed_again``. The outbox names rows, not their values: the CSV store stays
the source of truth, so replaying an entry twice, or after a newer write, is harmless.

Contract: one SQLite file (created with its directories on first use) in WAL mode with
``synchronous=FULL``, so an entry is on disk before ``record`` returns and survives a crash.
Ids increase and are never reused (AUTOINCREMENT), so ``pending`` is oldest first and an id
a repair job holds cannot come to mean another entry. ``attempts`` counts failed attempts, the
original write included: 1 when recorded. ``error`` is stored as given (the caller scrubs secrets),
cut to 1000 characters; ``failed_again`` replaces it with the latest error.

Concurrency model: every call opens its own connection and closes it, so one ``Outbox`` may be
shared by threads and processes. Writers serialize on SQLite's lock, waiting up to
``busy_timeout_s`` (WAL lets readers proceed meanwhile); each write is one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MAX_ERROR_CHARS = 1000
OPS = ("upsert", "delete")

_SCHEMA = (
    """create table if not exists outbox (
        id          integer primary key autoincrement,
        tbl         text    not null,
        key         text    not null,
        op          text    not null check (op in ('upsert', 'delete')),
        error       text    not null,
        recorded_at text    not null,
        attempts    integer not null default 1
    )""",
    "create index if not exists outbox_by_table on outbox (tbl, id)",
)


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    table: str
    key: str
    op: str  # 'upsert' | 'delete'
    error: str
    recorded_at: str  # ISO 8601, UTC, microseconds
    attempts: int


class Outbox:
    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            # WAL is a property of the file: set once, every later connection uses it.
            mode = conn.execute("pragma journal_mode=wal").fetchone()[0]
            if mode.lower() != "wal":
                raise OSError(f"{self.path}: SQLite refused WAL mode (journal_mode={mode})")
        with self._transaction() as conn:  # several processes may create it at once: one does
            for statement in _SCHEMA:
                conn.execute(statement)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: no implicit transactions; each method says where its transaction is.
        with closing(sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)) as conn:
            conn.execute(f"pragma busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("pragma synchronous = full")  # fsync the WAL at every commit
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("begin immediate")  # take the write lock now, not at the first write (no upgrade deadlock)
            try:
                yield conn
            except BaseException:
                conn.execute("rollback")
                raise
            conn.execute("commit")

    def record(self, table: str, key: str, op: str, error: str) -> int:
        """Record a failed write; durable before it returns. Returns the entry's id."""
        for name, value in (("table", table), ("key", key)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"outbox: {name} must be non-empty text, not {value!r}")
        if op not in OPS:
            raise ValueError(f"outbox: op must be one of {', '.join(OPS)}, not {op!r}")
        error = str(error)[:MAX_ERROR_CHARS]
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        with self._transaction() as conn:
            cur = conn.execute("insert into outbox (tbl, key, op, error, recorded_at) values (?, ?, ?, ?, ?)",
                               (table, key, op, error, now))
            return int(cur.lastrowid)

    def pending(self, table: str | None = None, limit: int = 1000) -> list[OutboxEntry]:
        """Entries still to repair, oldest first."""
        if not isinstance(limit, int) or limit < 0:
            raise ValueError("outbox: limit must be a non-negative integer")
        query = "select id, tbl, key, op, error, recorded_at, attempts from outbox"
        params: tuple = ()
        if table is not None:
            query, params = query + " where tbl = ?", (table,)
        with self._connect() as conn:
            rows = conn.execute(query + " order by id limit ?", (*params, limit)).fetchall()
        return [OutboxEntry(*row) for row in rows]

    def done(self, ids: list[int]) -> None:
        """Remove repaired entries, all in one transaction (unknown ids are ignored)."""
        ids = self._ids(ids)
        if ids:
            with self._transaction() as conn:
                conn.executemany("delete from outbox where id = ?", [(i,) for i in ids])

    def failed_again(self, ids: list[int], error: str) -> None:
        """Another failed repair: attempts += 1 and the error becomes this one (one transaction)."""
        ids = self._ids(ids)
        if ids:
            error = str(error)[:MAX_ERROR_CHARS]
            with self._transaction() as conn:
                conn.executemany("update outbox set attempts = attempts + 1, error = ? where id = ?",
                                 [(error, i) for i in ids])

    def count(self, table: str | None = None) -> int:
        with self._connect() as conn:
            if table is None:
                return conn.execute("select count(*) from outbox").fetchone()[0]
            return conn.execute("select count(*) from outbox where tbl = ?", (table,)).fetchone()[0]

    @staticmethod
    def _ids(ids: list[int]) -> list[int]:
        ids = list(ids)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError("outbox: ids must be integers")
        return ids
