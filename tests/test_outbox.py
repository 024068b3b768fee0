"""The outbox: a durable SQLite queue of failed dual writes, shared by threads and processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import datetime
from pathlib import Path

import pytest

from cutover.outbox import MAX_ERROR_CHARS, Outbox, OutboxEntry

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def outbox(tmp_path) -> Outbox:
    return Outbox(tmp_path / "home" / "nested" / "outbox.sqlite3")  # directories are created


def test_record_pending_done_failed_again_count(outbox):
    a = outbox.record("leads", "k1", "upsert", "ConnectionError: server closed the connection")
    b = outbox.record("approvals", "k2", "delete", "timeout")
    c = outbox.record("leads", "k3", "delete", "x" * 5000)
    assert a < b < c
    assert outbox.count() == 3 and outbox.count("leads") == 2 and outbox.count("nope") == 0
    pending = outbox.pending()
    assert [e.id for e in pending] == [a, b, c]  # oldest first
    first = pending[0]
    assert isinstance(first, OutboxEntry)
    assert (first.table, first.key, first.op, first.attempts) == ("leads", "k1", "upsert", 1)
    assert first.error == "ConnectionError: server closed the connection"
    assert datetime.fromisoformat(first.recorded_at).utcoffset().total_seconds() == 0
    assert len(pending[2].error) == MAX_ERROR_CHARS
    assert [e.key for e in outbox.pending("leads")] == ["k1", "k3"]
    assert [e.id for e in outbox.pending(limit=2)] == [a, b]
    assert outbox.pending(limit=0) == []

    outbox.failed_again([a, c], "still down")
    outbox.failed_again([a], "still down, again")
    by_id = {e.id: e for e in outbox.pending()}
    assert (by_id[a].attempts, by_id[a].error) == (3, "still down, again")
    assert (by_id[c].attempts, by_id[c].error) == (2, "still down")
    assert by_id[b].attempts == 1

    outbox.done([a, b, 999_999])  # unknown ids are ignored
    assert [e.id for e in outbox.pending()] == [c]
    assert outbox.count() == 1
    outbox.done([])
    outbox.failed_again([], "nothing")


@pytest.mark.parametrize("table, key, op, message", [
    ("leads", "k", "update", "op must be one of upsert, delete"),
    ("", "k", "upsert", "table must be non-empty"),
    ("leads", "", "delete", "key must be non-empty"),
    ("leads", None, "delete", "key must be non-empty"),
])
def test_bad_entries_are_refused(outbox, table, key, op, message):
    with pytest.raises(ValueError, match=message):
        outbox.record(table, key, op, "e")
    assert outbox.count() == 0


def test_entries_survive_a_new_instance_and_ids_are_never_reused(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    first = Outbox(path)
    ids = [first.record("leads", f"k{i}", "upsert", "down") for i in range(3)]
    first.done([ids[-1]])
    again = Outbox(path)
    assert [(e.id, e.key) for e in again.pending()] == [(ids[0], "k0"), (ids[1], "k1")]
    assert again.record("leads", "k9", "upsert", "down") > ids[-1]  # the removed id stays retired
    with sqlite3.connect(path) as conn:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_threads_share_one_outbox(outbox):
    ids: list[int] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(10):
            new = outbox.record("leads", f"t{t}-{i}", "upsert", "down")
            with lock:
                ids.append(new)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 60 and outbox.count() == 60


_RECORDER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from cutover.outbox import Outbox
    path, worker, n, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    while not go.exists():
        time.sleep(0.002)
    outbox = Outbox(path)  # all of them create the schema at once
    ids = [outbox.record("leads", f"{worker}-{i}", "upsert" if i % 2 else "delete", f"down {i}") for i in range(n)]
    print(json.dumps(ids))
""")


def test_processes_record_concurrently(tmp_path):
    path, go = tmp_path / "home" / "outbox.sqlite3", tmp_path / "go"
    workers, n = 4, 25
    procs = [subprocess.Popen([sys.executable, "-c", _RECORDER, str(path), f"w{w}", str(n), str(go)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT) for w in range(workers)]
    go.touch()
    ids = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        ids += json.loads(out)
    assert len(ids) == len(set(ids)) == workers * n
    outbox = Outbox(path)
    entries = outbox.pending(limit=10_000)
    assert sorted(e.id for e in entries) == sorted(ids)
    assert {e.key for e in entries} == {f"w{w}-{i}" for w in range(workers) for i in range(n)}
    for w in range(workers):  # each process's entries in the order it recorded them
        mine = [e.key for e in entries if e.key.startswith(f"w{w}-")]
        assert mine == [f"w{w}-{i}" for i in range(n)]
