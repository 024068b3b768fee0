"""What tasks share within one worker process: its settings and one connection pool per database.

Tasks never receive a DSN as a parameter (parameters are stored by the Prefect API); each process
reads its settings from its own environment, so a Dask worker or a process worker on another
machine connects with its own configuration. The pool is created on first use, reused by every
task of the process (thread-safe), and closed at exit.
"""

from __future__ import annotations

import atexit
import threading

from cutover.db import Database, connect, resolve_conninfo
from cutover.redact import install_log_scrubber
from cutover.settings import Settings
from cutover.spec import TableSpec, load_specs

_lock = threading.Lock()
_databases: dict[str, Database] = {}


def settings() -> Settings:
    current = Settings()
    install_log_scrubber(current.secrets)
    return current


def specs(current: Settings | None = None) -> dict[str, TableSpec]:
    return load_specs((current or settings()).spec_dir)


def database(current: Settings | None = None) -> Database:
    """This process's pool for the configured database (opened once, then shared)."""
    current = current or settings()
    key = resolve_conninfo(current)
    with _lock:
        db = _databases.get(key)
        if db is None:
            db = _databases[key] = connect(current)
        return db


@atexit.register
def close_databases() -> None:
    with _lock:
        while _databases:
            _databases.popitem()[1].close()
