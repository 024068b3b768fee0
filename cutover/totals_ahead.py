"""A table's digest totals, started ahead: PostgreSQL sums the table while the command still loads.

Contract: ``TotalsAhead.start(db, spec, alone=...)`` runs ``table_digests.totals`` at once, on one pooled
connection in a transaction of its own, on a daemon thread; ``result()`` waits for (rows, x0, x1) as of
that transaction's snapshot, or gives None if they could not be had (no such table yet, a table that
differs from its spec, a lost connection, a cancel: the caller then sums the table itself — nothing here
is ever the only way). ``cancel()`` cancels the server's statement and waits for the thread; leaving the
context manager does the same, so an error never leaves the server summing for nobody. ``alone``, called
on the thread before the query (a hint that may read a file): whether the table's sums are likely the
only work, the CSV's being kept (``cutover.digest_memo``) — PostgreSQL then uses its parallel workers;
otherwise one server process, the command's own work needing the other cores.

The snapshot is the totals' own, not the caller's. Totals that agree with the CSV's prove the CSV equals
the table as of that instant. Totals that do not are no proof of where they differ: the table may have
changed since. The caller then sums the table again in its own transaction (``cutover.digest_parity``).

Start it only where it pays: a command whose next second is imports, with a connection to spare. A pool
of fewer than ``MIN_POOL`` connections is left alone (the run needs one for its work and one for its
heartbeat), and ``start`` then returns an object whose ``result()`` is None.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from cutover import table_digests
from cutover.db import Database
from cutover.spec import TableSpec

log = logging.getLogger(__name__)

MIN_POOL = 3


class TotalsAhead:
    def __init__(self) -> None:
        self._totals: tuple[int, int, int] | None = None
        self._conn: psycopg.Connection | None = None
        self._cancelled = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, db: Database, spec: TableSpec, *, alone: Callable[[], bool] = lambda: False) -> TotalsAhead:
        ahead = cls()
        if db.pool.max_size >= MIN_POOL:
            ahead._thread = threading.Thread(target=ahead._run, args=(db, spec, alone), name="cutover-totals-ahead",
                                             daemon=True)
            ahead._thread.start()
        return ahead

    def _run(self, db: Database, spec: TableSpec, alone: Callable[[], bool]) -> None:
        def step(conn: psycopg.Connection) -> tuple[int, int, int]:
            with self._lock:
                if self._cancelled:
                    raise psycopg.errors.QueryCanceled("cancelled before it started")
                self._conn = conn
            try:
                return table_digests.totals(conn, spec, parallel=parallel)
            finally:
                with self._lock:
                    self._conn = None

        try:
            parallel = alone()
        except Exception:  # a hint: one server process is always safe
            parallel = False
        try:
            self._totals = db.run(step, what=f"sums of {spec.name}, ahead")
        except Exception as exc:  # never the only way: the caller sums the table itself
            if not self._cancelled:
                log.info("the table's sums ahead were not had (%s); the run sums it itself",
                         db.scrub(str(exc)).strip() or type(exc).__name__)

    def result(self) -> tuple[int, int, int] | None:
        if self._thread is not None:
            self._thread.join()
        return self._totals

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._conn is not None:
                self._conn.cancel_safe()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> TotalsAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()
