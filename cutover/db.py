"""Connections: one psycopg pool per process, a retry policy and a circuit breaker.

Contract:
- ``Database.tx()`` yields a pooled connection inside one transaction with this run's statement
  and lock timeouts set *locally* (``SET LOCAL``), so nothing leaks into a pooled server session —
  which is what makes cutover safe behind Supavisor's transaction mode.
- ``Database.run(fn)`` calls ``fn(conn)`` in such a transaction and retries it, with exponential
  backoff and full jitter, only for errors that are transient by nature: a lost connection,
  a serialization failure (40001) or a deadlock (40P01). Callers make ``fn`` a whole unit of work
  so that a retry can never apply anything twice.
- After ``breaker_threshold`` consecutive transient failures the breaker opens and calls fail fast
  with ``DatabaseUnavailable`` until ``breaker_cooldown_s`` has passed; one trial call then decides.
- A call that finds every connection of the pool checked out by this process's other threads waits
  up to the pool's timeout, then raises ``PoolExhausted``: retried like a transient error (so the
  wait is bounded by the attempts × the pool's timeout), but not counted by the breaker — the
  database answers; this process asked more of its pool than ``CUTOVER_POOL_MAX``. A pool that could
  not connect at all raises ``PoolUnreachable`` with the server's own reason (e.g. "too many
  clients"), retried and counted.
- A statement that waits longer than the lock timeout for another session's lock raises
  ``LockTimeout`` (exit 6, not retried: the other work may take long; the caller reruns).

Concurrency: a ``Database`` is safe to share between threads (the pool is); processes each build
their own through ``connect``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg
from psycopg import errors as pgerr
from psycopg_pool import ConnectionPool, PoolTimeout
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential

from cutover.errors import DatabaseUnavailable, LockTimeout, PoolExhausted, PoolUnreachable
from cutover.redact import display_dsn, scrub
from cutover.settings import Settings

log = logging.getLogger("cutover.db")
T = TypeVar("T")

TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006", "08001"}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (pgerr.SerializationFailure, pgerr.DeadlockDetected, PoolTimeout, PoolExhausted,
                        PoolUnreachable)):
        return True
    if isinstance(exc, psycopg.OperationalError):
        sqlstate = getattr(exc, "sqlstate", None)
        return sqlstate is None or sqlstate in TRANSIENT_SQLSTATES
    return False


@dataclass
class CircuitBreaker:
    threshold: int = 5
    cooldown_s: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    last_error: str = ""  # scrubbed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self) -> None:
        with self._lock:
            if self.opened_at is None:
                return
            waited = time.monotonic() - self.opened_at
            if waited < self.cooldown_s:
                last = f" (last: {self.last_error})" if self.last_error else ""
                raise DatabaseUnavailable(
                    f"database unreachable after {self.failures} consecutive failures{last}; "
                    f"not retrying for another {self.cooldown_s - waited:.0f}s (circuit open)")
            self.opened_at = None  # half-open: let one call through

    def record(self, ok: bool, error: str = "") -> None:
        with self._lock:
            if ok:
                self.failures, self.opened_at = 0, None
            else:
                self.failures += 1
                self.last_error = error[:300]
                if self.failures >= self.threshold:
                    self.opened_at = time.monotonic()


@dataclass(frozen=True)
class ServerLimits:
    version: str
    max_connections: int
    reserved: int
    role_limit: int | None
    database_limit: int | None
    superuser: bool

    @property
    def allowed(self) -> int:
        """Connections this role may hold at once."""
        n = self.max_connections - (0 if self.superuser else self.reserved)
        for limit in (self.role_limit, self.database_limit):
            if limit is not None and limit >= 0:
                n = min(n, limit)
        return max(1, n)

    @property
    def default_pool_max(self) -> int:
        return max(1, int(self.allowed * 0.8))


LIMITS_SQL = """
select current_setting('server_version'),
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int
         + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0),
       nullif(r.rolconnlimit, -1), nullif(d.datconnlimit, -1), r.rolsuper
from pg_roles r, pg_database d
where r.rolname = current_user and d.datname = current_database()
"""


class Database:
    def __init__(self, settings: Settings, conninfo: str):
        self.settings = settings
        self.display = display_dsn(conninfo)
        self.breaker = CircuitBreaker()
        transaction_mode = settings.pool_mode == "transaction"
        kwargs = {
            "connect_timeout": max(1, int(settings.connect_timeout_s)),
            "application_name": "cutover",
            # Supavisor transaction mode multiplexes server sessions: no prepared statements.
            "prepare_threshold": None if transaction_mode else 5,
        }
        self._conninfo, self._kwargs = conninfo, kwargs
        self.pool = ConnectionPool(
            conninfo, min_size=1, max_size=settings.pool_max or 4, kwargs=kwargs, open=False,
            timeout=max(settings.connect_timeout_s, 30.0), name="cutover", check=ConnectionPool.check_connection,
        )
        self.limits: ServerLimits | None = None
        self._busy = 0  # connections this process's threads hold right now (tx)
        self._busy_lock = threading.Lock()

    def open(self) -> Database:
        """Connect once directly (retrying transient failures for up to the connect timeout), so a
        dead server is reported with its real cause; then measure the server's limits and size the pool."""
        try:
            for attempt in Retrying(retry=retry_if_exception(is_transient), reraise=True,
                                    wait=wait_random_exponential(multiplier=0.25, max=2),
                                    stop=stop_after_delay(self.settings.connect_timeout_s)):
                with attempt, psycopg.connect(self._conninfo, **self._kwargs) as conn:
                    self.limits = ServerLimits(*conn.execute(LIMITS_SQL).fetchone())
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"cannot connect to {self.display}: {self.scrub(str(exc)).strip()}") from None
        self.pool.resize(min_size=1, max_size=self.settings.pool_max or self.limits.default_pool_max)
        self.pool.open(wait=False)
        return self

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def conninfo(self) -> str:
        """The connection string, secret included: only for handing to another client (GX)."""
        return self._conninfo

    def scrub(self, text: str) -> str:
        return scrub(text, self.settings.secrets)

    @contextmanager
    def tx(self, *, snapshot: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled connection in one transaction; ``snapshot``: REPEATABLE READ, every statement sees the
        database as the first one did."""
        with self.pool.connection() as conn:
            with self._busy_lock:
                self._busy += 1
            try:
                with conn.transaction():
                    if snapshot:  # must come before the transaction's first query
                        conn.execute("set transaction isolation level repeatable read")
                    s = self.settings
                    conn.execute(
                        "select set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true),"
                        " set_config('TimeZone', 'UTC', true)",
                        (f"{int(s.statement_timeout_s * 1000)}", f"{int(s.lock_timeout_s * 1000)}"),
                    )
                    yield conn
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def run(self, fn: Callable[[psycopg.Connection], T], *, what: str = "database call", snapshot: bool = False) -> T:
        """Run ``fn`` in one transaction (``tx``), retrying transient failures (see module docstring)."""
        for attempt in Retrying(
            retry=retry_if_exception(is_transient),
            wait=wait_random_exponential(multiplier=0.25, max=8),
            stop=stop_after_attempt(self.settings.retry_attempts),
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "%s failed (%s), retry %d", what, self.scrub(str(rs.outcome.exception())).strip(), rs.attempt_number),
        ):
            with attempt:
                self.breaker.check()
                try:
                    with self.tx(snapshot=snapshot) as conn:
                        result = fn(conn)
                except PoolTimeout as exc:
                    if self._busy >= self.pool.max_size:  # all ours and busy: saturated, not unreachable
                        raise PoolExhausted(
                            f"{what}: no free database connection within {self.pool.timeout:g}s — all"
                            f" {self.pool.max_size} connections of this process's pool (CUTOVER_POOL_MAX) are"
                            " busy with its other work; nothing was done. Run less at once (CUTOVER_WORKERS)"
                            " or raise CUTOVER_POOL_MAX.") from exc
                    unreachable = PoolUnreachable(
                        f"{what}: no connection to {self.display} within {self.pool.timeout:g}s:"
                        f" {self._why_not_connected()}; nothing was done")
                    self.breaker.record(ok=False, error=str(unreachable))
                    raise unreachable from exc
                except pgerr.LockNotAvailable as exc:
                    raise LockTimeout(
                        f"{what}: gave up after waiting {self.settings.lock_timeout_s:g}s (CUTOVER_LOCK_TIMEOUT_S)"
                        " for a lock another session holds (a sync or transition of the same table, or an"
                        " application transaction); nothing was done — rerun it") from exc
                except BaseException as exc:
                    if is_transient(exc):
                        self.breaker.record(ok=False, error=self.scrub(str(exc)).strip())
                    raise
                self.breaker.record(ok=True)
                return result
        raise AssertionError("unreachable")

    def _why_not_connected(self) -> str:
        """The server's own reason for refusing a connection now (the pool only logs it)."""
        try:  # a short probe: the pool has already waited its timeout
            with psycopg.connect(self._conninfo, **{**self._kwargs, "connect_timeout": 3}):
                return "the server accepts connections again"
        except psycopg.Error as exc:
            return self.scrub(str(exc)).strip().replace("\n", " ")

    def stats(self) -> dict[str, int]:
        s = self.pool.get_stats()
        return {
            "pool_max": self.pool.max_size,
            "pool_size": s.get("pool_size", 0),
            "pool_available": s.get("pool_available", 0),
            "requests_waiting": s.get("requests_waiting", 0),
        }


def resolve_conninfo(settings: Settings) -> str:
    if settings.db_url is not None:
        return settings.db_url.get_secret_value()
    from cutover import embedded

    return embedded.ensure_running(settings.home)


def connect(settings: Settings) -> Database:
    """Open the pool (starting the embedded server first when no SUPABASE_DB_URL is set)."""
    return Database(settings, resolve_conninfo(settings)).open()
