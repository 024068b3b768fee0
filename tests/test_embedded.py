"""The embedded server comes back after an unclean stop: ``ensure_running`` waits out its recovery."""

from __future__ import annotations

import signal

import psutil
import psycopg

from cutover import embedded


def test_a_killed_embedded_server_recovers_and_serves_its_data(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    home = tmp_path / "home"
    uri = embedded.ensure_running(home)
    try:
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("create table kept as select g from generate_series(1, 50000) g")
        lines, ready = embedded._postmaster(embedded._pgdata(home))
        assert ready
        postmaster = psutil.Process(int(lines[0]))
        postmaster.send_signal(signal.SIGKILL)  # no shutdown checkpoint: the next start replays the WAL
        psutil.wait_procs([postmaster], timeout=30)
        uri = embedded.ensure_running(home)
        with psycopg.connect(uri) as conn:
            assert conn.execute("select count(*) from kept").fetchone()[0] == 50000
        assert embedded._await_ready(embedded._pgdata(home), 1.0) == uri
    finally:
        embedded.stop(home)
    assert embedded._await_ready(embedded._pgdata(home), 5.0) is None  # no server: no wait
