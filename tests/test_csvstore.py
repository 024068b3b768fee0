"""The CSV store: exact values, reads, atomic rewrites, bounded memory and real concurrent processes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from cutover import csvstore
from cutover.csvstore import CsvStore, InvalidRow, StoreLocked
from cutover.errors import CutoverError, StructuralError
from cutover.spec import load_specs
from tests.csvdata import LEAD_COLUMNS, field, lead

ROOT = Path(__file__).resolve().parent.parent
SPECS = load_specs()
LEADS = SPECS["leads"]

TRICKY = {
    "quotes": 'He said "hi", then ""twice""',
    "comma": "a,b,,c,",
    "lf": "line 1\nline 2\n",
    "crlf": "line 1\r\nline 2\r\n",
    "cr": "old mac\rline",
    "non_ascii": "Zoë Øvergaard 李 «hablar» 👍",
    "u2028": "before\u2028after\u2029end",
    "empty": "",
    "backslash_dot": "\\.",
    "looks_null": "NULL",
    "spaces": "  padded  ",
    "lone_quote": '"',
}


def _line(row: dict) -> str:
    return ",".join(field(row[c]) for c in LEAD_COLUMNS)


def _expected_file(rows: list[dict]) -> bytes:
    return ("".join(line + "\n" for line in [",".join(LEAD_COLUMNS), *map(_line, rows)])).encode("utf-8")


@pytest.fixture(params=[64, 1 << 20], ids=["tiny-batches", "one-batch"])
def batch_bytes(request, monkeypatch):
    """Run a test with batches so small that records straddle every boundary, and with one batch."""
    monkeypatch.setattr(csvstore, "BATCH_BYTES", request.param)
    return request.param


@pytest.fixture
def store(tmp_path) -> CsvStore:
    return CsvStore(tmp_path / "leads.csv", LEADS)


def test_polars_tells_an_empty_string_from_null():
    """The finding the store relies on: with String columns, polars 2.1 reads an empty unquoted field
    as null and a quoted "" as '', and non_numeric quoting writes them back the same way."""
    data = b'a,b,c\n"1","",\n"2",,""\n'
    want = [{"a": "1", "b": "", "c": None}, {"a": "2", "b": None, "c": ""}]
    assert pl.read_csv(io.BytesIO(data), schema={c: pl.String for c in "abc"}).to_dicts() == want
    assert pl.read_csv(io.BytesIO(data), infer_schema=False).to_dicts() == want
    out = io.BytesIO()
    pl.DataFrame(want).write_csv(out, quote_style="non_numeric", line_terminator="\n")
    assert out.getvalue() == data.replace(b"a,b,c", b'"a","b","c"')


def test_tricky_values_round_trip_byte_exactly(store, batch_bytes):
    rows = [lead(i, notes=v, street=None if i % 2 else "") for i, v in enumerate(TRICKY.values())]
    rows.append(lead(99, notes=None, phone=None, street=None, budget=None, agent_id=None))
    store.apply(rows)
    assert store.path.read_bytes() == _expected_file(rows)  # the loader's format, nothing else
    for r in rows:
        assert store.get(r["id"]) == r
    by_key = sorted(rows, key=lambda r: r["id"])
    assert store.scan() == by_key
    # '' and NULL stay apart in filters too
    assert [r["id"] for r in store.scan({"street": ""})] == sorted(r["id"] for r in rows[:-1:2])
    assert store.scan({"notes": None}) == [rows[-1]]
    assert store.scan({"notes": ""}) == [rows[list(TRICKY).index("empty")]]
    # ... and survive rewrites of other rows
    changed = dict(rows[0], first_name="Changed")
    store.apply([changed], [rows[1]["id"]])
    expected = [changed, *rows[2:]]
    assert store.path.read_bytes() == _expected_file(expected)
    assert store.scan() == sorted(expected, key=lambda r: r["id"])


def test_reads_what_the_loader_accepts(store, batch_bytes):
    """A file from elsewhere: BOM, header in another order, unquoted values, CRLF, a blank line."""
    cols = list(reversed(LEAD_COLUMNS))
    a = lead(1, notes="multi\r\nline")
    b = lead(2, notes="", phone=None)
    body = "\r\n".join([",".join(cols),
                        ",".join(a[c] if c != "notes" else field(a[c]) for c in cols),
                        "",
                        ",".join(field(b[c]) for c in cols)]) + "\r\n"
    store.path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    assert store.get(a["id"]) == a and store.get(b["id"]) == b
    assert store.keys() == {a["id"], b["id"]}
    c = lead(3)
    store.apply([c])  # rewritten in the canonical format, rows in file order, the new one last
    assert store.path.read_bytes() == _expected_file([a, b, c])


def test_scan_filters_and_keyset_pagination(store, batch_bytes):
    statuses = ["new", "contacted", "won"]
    rows = [lead(i, status=statuses[i % 3], notes=None if i % 4 == 0 else f"n{i % 2}") for i in range(40)]
    store.apply(rows)
    ordered = sorted(rows, key=lambda r: r["id"])
    assert store.scan() == ordered
    assert store.scan({"status": "won"}) == [r for r in ordered if r["status"] == "won"]
    assert store.scan({"status": "won", "notes": None}) == [r for r in ordered
                                                             if r["status"] == "won" and r["notes"] is None]
    assert store.scan({"status": "nope"}) == []
    pages, after = [], None
    while page := store.scan({"notes": "n1"}, after=after, limit=3):
        assert len(page) <= 3
        pages.append(page)
        after = page[-1]["id"]
    matching = [r for r in ordered if r["notes"] == "n1"]
    assert [r for p in pages for r in p] == matching
    assert len(pages) == -(-len(matching) // 3)
    assert store.scan(after=ordered[-1]["id"]) == []
    assert store.get_many([rows[3]["id"], rows[7]["id"], "missing"]) == {r["id"]: r for r in (rows[3], rows[7])}
    assert store.get_many([]) == {}
    assert store.scan(limit=0) == []
    with pytest.raises(InvalidRow, match="unknown column"):
        store.scan({"nope": "x"})


def test_a_killed_rewrite_s_temporary_file_is_removed_by_the_next_writer(store):
    store.apply([lead(1)])
    dead, live = (store.path.parent / f".{store.path.name}.{tag}.tmp" for tag in ("dead1234", "live5678"))
    for tmp in (dead, live):
        tmp.write_bytes(b"half a file")
    old = time.time() - csvstore.DEAD_TEMPORARY_S - 60
    os.utime(dead, (old, old))
    store.apply([lead(2)])
    assert not dead.exists() and live.exists()  # a fresh one may belong to a live writer


def test_apply_replaces_in_place_appends_and_deletes_in_one_rewrite(store, monkeypatch):
    rows = [lead(i) for i in range(6)]
    store.apply(rows)
    renames = []
    real = csvstore.atomic_write
    monkeypatch.setattr(csvstore, "atomic_write", lambda p: (renames.append(p), real(p))[1])
    inode = store.path.stat().st_ino
    replaced = dict(rows[2], status="won", notes="")
    new = lead(50, notes=None)
    store.apply([new, replaced], [rows[0]["id"], rows[4]["id"], "not-there"])
    assert renames == [store.path] and store.path.stat().st_ino != inode
    assert store.path.read_bytes() == _expected_file([rows[1], replaced, rows[3], rows[5], new])
    assert store.delete([rows[1]["id"], rows[1]["id"] + "x"]) == 1
    store.upsert([dict(rows[3], first_name="Upserted")])
    assert store.get(rows[3]["id"])["first_name"] == "Upserted"
    # nothing to change: the file is not rewritten at all
    before = store.path.stat()
    assert store.delete(["missing"]) == 0
    assert (store.path.stat().st_ino, store.path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["leads.csv", "leads.csv.lock"]


def test_a_duplicated_key_is_healed_by_an_upsert(store, batch_bytes):
    a, b = lead(1), lead(2)
    store.path.write_bytes(_expected_file([a, b, dict(a, first_name="Dup")]))
    assert store.get(a["id"]) == a  # the first occurrence
    store.upsert([dict(a, first_name="One")])
    assert store.path.read_bytes() == _expected_file([dict(a, first_name="One"), b])


def test_a_missing_file(store):
    assert store.get(lead(1)["id"]) is None
    assert store.scan() == [] and store.keys() == set() and store.get_many([lead(1)["id"]]) == {}
    assert store.delete([lead(1)["id"]]) == 0
    store.apply([])
    assert store.path.read_bytes() == (",".join(LEAD_COLUMNS) + "\n").encode()
    store.path.unlink()
    store.upsert([lead(1)])
    assert store.path.read_bytes() == _expected_file([lead(1)])


def test_a_rewrite_keeps_the_file_permissions(store):
    store.upsert([lead(1)])
    store.path.chmod(0o640)
    store.upsert([lead(2)])
    assert store.path.stat().st_mode & 0o7777 == 0o640


GOOD = lead(1)


@pytest.mark.parametrize("upserts, deletes, message", [
    ([{k: v for k, v in GOOD.items() if k != "email"}], [], "missing email"),
    ([dict(GOOD, extra="x")], [], "unknown extra"),
    ([dict(GOOD, id=None)], [], "primary key id must be non-empty"),
    ([dict(GOOD, id="")], [], "primary key id must be non-empty"),
    ([dict(GOOD, budget=12)], [], "budget must be text or None"),
    ([dict(GOOD, notes="a\x00b")], [], "NUL"),
    ([dict(GOOD, notes="\ud800")], [], "UTF-8"),
    ([GOOD, dict(GOOD)], [], "upserted twice"),
    ([GOOD], [GOOD["id"]], "both upserted and deleted"),
    ([], [""], "must be non-empty"),
    (["not a row"], [], "not a mapping"),
    (GOOD, [], "must be a list, not a single dict"),
    ([], GOOD["id"], "must be a list, not a single str"),
])
def test_bad_input_is_rejected_and_the_file_is_unchanged(store, upserts, deletes, message):
    store.upsert([lead(2)])
    before = store.path.read_bytes()
    with pytest.raises(InvalidRow, match=message) as info:
        store.apply(upserts, deletes)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CutoverError)
    assert "leads" in str(info.value)
    if isinstance(upserts, list) and upserts and isinstance(upserts[0], dict) and upserts[0].get("id"):
        assert GOOD["id"] in str(info.value)  # names the key
    assert store.path.read_bytes() == before


def test_a_failure_mid_rewrite_leaves_the_old_file_byte_identical(store, monkeypatch, batch_bytes):
    store.upsert([lead(i, notes=v) for i, v in enumerate(TRICKY.values())])
    before, inode = store.path.read_bytes(), store.path.stat().st_ino
    calls = []
    real = csvstore._write_rows

    def failing(f, frame):
        calls.append(frame.height)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real(f, frame)

    monkeypatch.setattr(csvstore, "_write_rows", failing)
    with pytest.raises(OSError, match="simulated"):
        store.apply([lead(100)], [lead(3)["id"]])
    assert store.path.read_bytes() == before and store.path.stat().st_ino == inode
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["leads.csv", "leads.csv.lock"]
    monkeypatch.setattr(csvstore, "_write_rows", real)
    store.apply([lead(100)])  # the lock was released
    assert store.get(lead(100)["id"]) == lead(100)


@pytest.mark.parametrize("body, message", [
    (_line(lead(1)) + ',"extra"\n', "expected 16 fields, found 17"),
    ('"a"b' + _line(lead(1))[3:] + "\n", "quote"),
    (_line(lead(1)) + "\n" + '"unterminated,\n', "unterminated"),
])
def test_a_structurally_broken_file_is_refused_not_rewritten(store, body, message, batch_bytes):
    store.path.write_bytes((",".join(LEAD_COLUMNS) + "\n" + body).encode())
    before = store.path.read_bytes()
    with pytest.raises(StructuralError, match=message):
        store.apply([lead(5)])
    with pytest.raises(StructuralError):
        store.scan()
    assert store.path.read_bytes() == before


def test_a_wrong_header_is_refused(store):
    store.path.write_bytes(b"id,name\n\"1\",\"x\"\n")
    with pytest.raises(StructuralError, match="does not name the columns"):
        store.get("1")


_HOLD_LOCK = """
import fcntl, sys
fd = open(sys.argv[1], "a")
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_the_lock_times_out_with_a_clear_error_and_is_reentrant(store):
    store.upsert([lead(1)])
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(store.lock_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        quick = CsvStore(store.path, LEADS, lock_timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(StoreLocked, match="leads.csv.lock") as info:
            quick.upsert([lead(2)])
        assert 0.3 <= time.monotonic() - started < 5
        assert isinstance(info.value, CutoverError) and str(store.path) in str(info.value)
        assert store.keys() == {lead(1)["id"]}  # readers need no lock
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    with store.locked():
        with CsvStore(store.path, LEADS, lock_timeout_s=0.3).locked():  # re-entrant in this thread
            store.upsert([lead(2)])
    assert store.keys() == {lead(1)["id"], lead(2)["id"]}


# --- bounded memory -----------------------------------------------------------------------------------

# Peak RSS since exec: VmHWM. (getrusage's ru_maxrss would do, except that Linux carries it over from the
# parent at fork, so a child of a 200 MiB pytest reports at least 200 MiB whatever it does itself.)
_PEAK = """
def _peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
"""

_REWRITE = _PEAK + """
import sys
from pathlib import Path
from cutover.csvstore import CsvStore
from cutover.spec import load_specs
store = CsvStore(Path(sys.argv[1]), load_specs()["leads"])
first = store.scan(limit=2)
new = dict(first[0], id="ffffffff-ffff-4fff-bfff-ffffffffffff", notes="appended")
store.apply([dict(first[0], notes="replaced"), new], [first[1]["id"]])
print(_peak())
"""

_LIST_OF_DICTS = _PEAK + """
import csv, sys
with open(sys.argv[1], newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
print(_peak())
"""


def _peak_rss(code: str, path: Path) -> int:
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300, check=True)
    return int(out.stdout.split()[-1])


def test_a_rewrite_of_a_large_file_streams_in_bounded_memory(tmp_path):
    from cutover.samples import generate

    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    generate("leads", 1_000, small)
    generate("leads", 200_000, big)
    size = big.stat().st_size
    baseline = _peak_rss(_REWRITE, small)  # the interpreter, polars and its thread pools
    peak = _peak_rss(_REWRITE, big)
    naive = _peak_rss(_LIST_OF_DICTS, big)
    mib = 1 << 20
    print(f"file {size / mib:.0f} MiB; peak RSS: rewrite of 1k rows {baseline / mib:.0f} MiB, of 200k rows"
          f" {peak / mib:.0f} MiB; list of dicts {naive / mib:.0f} MiB")
    # The rewrite holds a batch, not the file: its growth over the small-file baseline stays under the
    # file's size, while holding the rows as a list of dicts costs several times it (checked, so the
    # bound is known to discriminate).
    assert peak - baseline < size
    assert naive - baseline > 2 * size
    store = CsvStore(big, LEADS)
    assert store.get("ffffffff-ffff-4fff-bfff-ffffffffffff")["notes"] == "appended"
    assert len(store.keys()) == 200_000


# --- real concurrent processes --------------------------------------------------------------------------

_INCREMENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from cutover.csvstore import CsvStore
    from cutover.spec import load_specs
    path, shared, mine, n, go = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
    store = CsvStore(path, load_specs()["leads"])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    for _ in range(n):
        with store.locked():
            rows = [store.get(shared), store.get(mine)]
            store.apply([dict(r, notes=str(int(r["notes"]) + 1)) for r in rows])
""")

_READER = textwrap.dedent("""
    import csv, io, json, sys, time
    from pathlib import Path
    from cutover.csvstore import CsvStore
    from cutover.spec import load_specs
    path, shared, rows_expected, stop = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    spec = load_specs()["leads"]
    store = CsvStore(path, spec)
    reads, torn, seen = 0, [], []
    while not stop.exists():
        with open(path, "rb") as f:  # an independent parser: the csv module over the whole file
            data = f.read()
        records = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        if (tuple(records[0]) != spec.column_names or len(records) - 1 != rows_expected
                or any(len(r) != len(spec.column_names) for r in records) or not data.endswith(b"\\n")):
            torn.append(len(data))
        row = store.get(shared)  # and through the store
        seen.append(int(row["notes"]))
        reads += 1
        time.sleep(0.002)  # leave the writers some CPU
    print(json.dumps({"reads": reads, "torn": torn, "seen": seen}))
""")


def test_concurrent_read_modify_writes_lose_no_update_and_readers_never_see_a_torn_file(tmp_path):
    import json

    workers, increments, filler = 4, 50, 60
    store = CsvStore(tmp_path / "leads.csv", LEADS)
    shared = lead(0, notes="0")
    mine = [lead(1 + w, notes="0") for w in range(workers)]
    store.apply([*(lead(100 + i, notes="x" * 200) for i in range(filler)), shared, *mine])
    go, stop = tmp_path / "go", tmp_path / "stop"
    # Five processes on a small machine: polars' per-process thread pool would only oversubscribe the CPUs.
    env = {**os.environ, "POLARS_MAX_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _INCREMENT, str(store.path), shared["id"], m["id"],
                               str(increments), str(go)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
             for m in mine]
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(store.path), shared["id"],
                               str(filler + 1 + workers), str(stop)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        for p in procs:  # all imported and waiting: then they start together
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        for p in procs:
            assert p.wait(timeout=120) == 0
    finally:
        stop.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
        out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0
    assert store.get(shared["id"])["notes"] == str(workers * increments)
    assert [store.get(m["id"])["notes"] for m in mine] == [str(increments)] * workers
    observed = json.loads(out)
    assert observed["torn"] == []
    assert observed["reads"] > 10
    assert observed["seen"] == sorted(observed["seen"])  # committed values only, never going back
    assert len(set(observed["seen"])) > 2  # it did read while the writers ran
    assert len(store.keys()) == filler + 1 + workers
