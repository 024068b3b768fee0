"""The connection layer against a real server: retries, circuit breaker, pool modes."""

from __future__ import annotations

import pytest
from psycopg import errors as pgerr

from cutover.db import CircuitBreaker, connect
from cutover.errors import DatabaseUnavailable
from cutover.settings import Settings


def _raise_once(sqlstate: str, calls: list[int]):
    def fn(conn):
        calls.append(1)
        if len(calls) == 1:
            conn.execute(f"do $$ begin raise exception 'injected' using errcode = '{sqlstate}'; end $$")
        return conn.execute("select 42").fetchone()[0]
    return fn


@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
def test_serialization_failures_and_deadlocks_are_retried(db, sqlstate):
    calls: list[int] = []
    assert db.run(_raise_once(sqlstate, calls)) == 42
    assert len(calls) == 2


def test_other_errors_are_not_retried(db):
    calls: list[int] = []
    with pytest.raises(pgerr.UniqueViolation):
        db.run(_raise_once("23505", calls))
    assert len(calls) == 1


def test_a_retried_unit_of_work_is_rolled_back_before_the_retry(db, sql):
    sql("create table t (x int)")
    calls: list[int] = []

    def fn(conn):
        calls.append(1)
        conn.execute("insert into t values (1)")
        if len(calls) == 1:
            conn.execute("do $$ begin raise exception 'x' using errcode = '40001'; end $$")

    db.run(fn)
    assert sql("select count(*) from t") == [(1,)]


def test_circuit_breaker_opens_after_repeated_failures_and_half_opens_after_cooldown(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("cutover.db.time.monotonic", lambda: clock[0])
    breaker = CircuitBreaker(threshold=3, cooldown_s=30)
    for _ in range(3):
        breaker.check()
        breaker.record(ok=False)
    with pytest.raises(DatabaseUnavailable, match="circuit open"):
        breaker.check()
    clock[0] += 31
    breaker.check()  # half-open: one trial call
    breaker.record(ok=True)
    assert breaker.failures == 0 and breaker.opened_at is None


def test_a_dead_server_fails_fast_with_its_cause(monkeypatch, tmp_path):
    monkeypatch.setenv("SUPABASE_DB_URL", "postgresql://postgres:pw@127.0.0.1:1/postgres")
    monkeypatch.setenv("CUTOVER_CONNECT_TIMEOUT_S", "1")
    monkeypatch.setenv("CUTOVER_HOME", str(tmp_path))
    with pytest.raises(DatabaseUnavailable, match="Connection refused") as e:
        connect(Settings())
    assert "pw" not in str(e.value)


def test_transaction_pool_mode_keeps_no_session_state(env, monkeypatch, sql):
    monkeypatch.setenv("CUTOVER_POOL_MODE", "transaction")
    monkeypatch.setenv("CUTOVER_POOL_MAX", "1")  # one server session: state would leak between calls
    db = connect(Settings())
    try:
        assert db.pool.kwargs["prepare_threshold"] is None
        assert db.pool.max_size == 1
        for _ in range(10):  # would create prepared statements after 5 runs in session mode
            db.run(lambda conn: conn.execute("select %s::int", (1,)).fetchone())
        with db.pool.connection() as conn:  # outside our transactions, the session is pristine
            assert conn.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)
            assert conn.execute("show statement_timeout").fetchone() == ("0",)
    finally:
        db.close()
