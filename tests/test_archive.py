"""Archiving a deprecated table's CSV and restoring it: real files, real gzip, real HTTP."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest

from cutover import archive as archive_mod
from cutover.archive import ArchiveError, Manifest, archive_csv, latest_manifest, read_manifest, restore_csv, upload
from cutover.samples import generate
from cutover.settings import Settings
from cutover.spec import PROJECT_SPEC_DIR, load_spec, parse_spec

NOW = datetime(2024, 5, 17, 9, 30, 5, tzinfo=timezone.utc)
KEY = "sb-test-key-7f3c9a1d2e4b6f80"  # a fake key: must never appear in any message
HISTORY = [{"phase": "mirror", "at": NOW - timedelta(days=3), "by": "ops", "report": uuid.UUID(int=1)},
           {"phase": "deprecated", "at": NOW, "by": "ops"}]
REPORTS = ["r-1", "r-2"]

# header + 3 data records, one of them spanning three physical lines, with quotes and non-ASCII
TINY = ('id,note\n'
        '1,"first line\nsecond, with a comma\nthird ""quoted"" ü"\n'
        '2,plain\n'
        '3,"€ crlf\r\ninside"\n').encode("utf-8")


@pytest.fixture
def leads_spec():
    return load_spec(PROJECT_SPEC_DIR / "leads.yaml")


@pytest.fixture
def leads_csv(tmp_path) -> Path:
    path = tmp_path / "data" / "leads.csv"
    path.parent.mkdir()
    generate("leads", 5000, path)
    return path


def _archive(csv_path: Path, tmp_path: Path, spec, now=NOW):
    return archive_csv(csv_path, tmp_path / "archive", spec, history=HISTORY, report_ids=REPORTS, now=now)


def _csv_module_rows(data: bytes) -> int:
    """Oracle: Python's csv module, blank lines skipped, header not counted."""
    rows = [r for r in csv.reader(io.StringIO(data.decode("utf-8"), newline=""))]
    return max(sum(1 for r in rows if r) - 1, 0)


# ------------------------------------------------------------------------------ archive + restore

def test_round_trip_is_byte_exact_on_a_realistic_file(leads_csv, leads_spec, tmp_path):
    original = leads_csv.read_bytes()
    assert b'"' in original and max(original) > 0x7F  # quoting and non-ASCII text
    physical_lines = original.count(b"\n") - 1
    manifest_path, manifest = _archive(leads_csv, tmp_path, leads_spec)

    assert leads_csv.read_bytes() == original  # the CSV is kept: the caller deletes it
    assert manifest_path == tmp_path / "archive" / "leads-20240517T093005Z.manifest.json"
    assert manifest.archive == "leads-20240517T093005Z.csv.gz"
    gz_path = manifest_path.parent / manifest.archive
    assert gzip.decompress(gz_path.read_bytes()) == original

    assert manifest.table == "leads"
    assert manifest.csv_sha256 == hashlib.sha256(original).hexdigest()
    assert manifest.gz_sha256 == hashlib.sha256(gz_path.read_bytes()).hexdigest()
    assert manifest.bytes == len(original)
    assert manifest.rows == 5000
    assert manifest.rows == pl.scan_csv(leads_csv, infer_schema=False).select(pl.len()).collect().item()
    assert physical_lines > manifest.rows  # the file does have multi-line quoted fields
    assert manifest.created_at == "2024-05-17T09:30:05Z"

    dest = tmp_path / "restored" / "leads.csv"
    assert restore_csv(manifest_path, dest) == manifest
    assert dest.read_bytes() == original
    # restoring over an existing (different) file replaces it whole
    dest.write_bytes(b"something else\n")
    restore_csv(manifest_path, dest)
    assert dest.read_bytes() == original
    assert not [p for p in dest.parent.iterdir() if p.name != "leads.csv"]  # no temp files left


def test_manifest_contents(leads_spec, tmp_path):
    src = tmp_path / "leads.csv"
    src.write_bytes(TINY)
    manifest_path, manifest = _archive(src, tmp_path, leads_spec)

    assert manifest.rows == 3 == _csv_module_rows(TINY)
    assert manifest.csv_sha256 == hashlib.sha256(TINY).hexdigest()
    assert manifest.bytes == len(TINY)
    assert manifest.report_ids == REPORTS
    # history keeps every entry; datetimes and UUIDs are stored as text
    assert manifest.phase_history == [
        {"phase": "mirror", "at": str(NOW - timedelta(days=3)), "by": "ops", "report": str(uuid.UUID(int=1))},
        {"phase": "deprecated", "at": str(NOW), "by": "ops"}]
    # the spec is the YAML's raw dict, and parses back to the very same spec
    raw_yaml = __import__("yaml").safe_load((PROJECT_SPEC_DIR / "leads.yaml").read_text())
    assert manifest.spec == json.loads(json.dumps(raw_yaml))
    assert parse_spec(manifest.spec) == leads_spec
    # what archive_csv returns is what read_manifest reads, and the file is plain JSON of as_dict()
    assert read_manifest(manifest_path) == manifest
    assert json.loads(manifest_path.read_text()) == manifest.as_dict()
    assert set(manifest.as_dict()) == {"table", "archive", "csv_sha256", "gz_sha256", "rows", "bytes", "spec",
                                       "phase_history", "report_ids", "created_at"}


def test_spec_without_its_yaml_is_rebuilt(leads_spec, tmp_path):
    approvals = load_spec(PROJECT_SPEC_DIR / "approvals.yaml")
    for spec in (leads_spec, approvals):
        detached = parse_spec(__import__("yaml").safe_load(spec.source.read_text()), source=None)
        src = tmp_path / f"{spec.name}.csv"
        src.write_bytes(TINY)
        _, manifest = _archive(src, tmp_path, detached)
        assert parse_spec(manifest.spec) == spec


@pytest.mark.parametrize("data", [
    b"",
    b"a,b\n",
    b"a,b",
    b"a,b\n1,2",
    b"a,b\n1,2\n",
    b"a,b\r\n1,2\r\n3,4\r\n",
    b"a,b\n1,2\n\n3,4\n\n\n",  # blank lines are not rows
    b"a,b\r\n1,2\r\n\r\n3,4\r\n\r\n",
    b'a,b\n1,"x\n\ny"\n2,"""\n"""\n',  # a blank line *inside* a quoted field is data
    b'a,b\n"1\r\n",""\n',
    b'\xef\xbb\xbfa,b\n1,"\xc3\xa9\n"\n',
    TINY,
])
@pytest.mark.parametrize("block", [1, 2, 3, 7, 1 << 20])
def test_row_count_is_csv_aware_across_block_boundaries(data, block, leads_spec, tmp_path, monkeypatch):
    monkeypatch.setattr(archive_mod, "BLOCK", block)
    src = tmp_path / "leads.csv"
    src.write_bytes(data)
    manifest_path, manifest = _archive(src, tmp_path, leads_spec)
    assert manifest.rows == _csv_module_rows(data)
    dest = tmp_path / "back.csv"
    restore_csv(manifest_path, dest)
    assert dest.read_bytes() == data


def test_missing_csv_is_an_archive_error(leads_spec, tmp_path):
    with pytest.raises(ArchiveError, match="nothing to archive") as err:
        _archive(tmp_path / "nope.csv", tmp_path, leads_spec)
    assert "nope.csv" in str(err.value)
    assert err.value.exit_code == 1
    assert not (tmp_path / "archive").exists() or not list((tmp_path / "archive").iterdir())


def test_same_second_archives_do_not_overwrite_each_other(leads_spec, tmp_path):
    src = tmp_path / "leads.csv"
    src.write_bytes(TINY)
    first, _ = _archive(src, tmp_path, leads_spec)
    src.write_bytes(TINY + b"4,more\n")
    second, manifest = _archive(src, tmp_path, leads_spec)
    assert first != second and second.name == "leads-20240517T093005Z-1.manifest.json"
    assert manifest.rows == 4
    assert read_manifest(first).rows == 3  # the first archive is intact
    assert latest_manifest(tmp_path / "archive", "leads") == second


def test_latest_manifest_picks_the_newest(leads_spec, tmp_path):
    archive_dir = tmp_path / "archive"
    assert latest_manifest(archive_dir, "leads") is None  # no directory yet
    src = tmp_path / "leads.csv"
    src.write_bytes(TINY)
    paths = {}
    for days in (0, 40, 3):  # written out of order
        paths[days], _ = _archive(src, tmp_path, leads_spec, now=NOW + timedelta(days=days))
    # another table with a name that starts the same, newer still, is not a candidate
    approvals = load_spec(PROJECT_SPEC_DIR / "approvals.yaml")
    _archive(src, tmp_path, approvals, now=NOW + timedelta(days=400))
    (archive_dir / "leads_old-20991231T000000Z.manifest.json").write_text("{}")
    assert latest_manifest(archive_dir, "leads") == paths[40]
    assert latest_manifest(archive_dir, "approvals").name.startswith("approvals-2025")
    assert latest_manifest(archive_dir, "nothing") is None


# ------------------------------------------------------------------------------ integrity failures

def test_corrupted_archive_is_refused_and_dest_untouched(leads_csv, leads_spec, tmp_path):
    manifest_path, manifest = _archive(leads_csv, tmp_path, leads_spec)
    gz_path = manifest_path.parent / manifest.archive
    raw = bytearray(gz_path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    gz_path.write_bytes(bytes(raw))
    bad_digest = hashlib.sha256(raw).hexdigest()

    dest = tmp_path / "current.csv"
    dest.write_bytes(b"keep me\n")
    with pytest.raises(ArchiveError) as err:
        restore_csv(manifest_path, dest)
    message = str(err.value)
    assert str(gz_path) in message and bad_digest in message and manifest.gz_sha256 in message
    assert dest.read_bytes() == b"keep me\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".current.csv")] == []

    missing = tmp_path / "absent.csv"
    with pytest.raises(ArchiveError):
        restore_csv(manifest_path, missing)
    assert not missing.exists()


def test_tampered_csv_sha256_is_refused(leads_spec, tmp_path):
    src = tmp_path / "leads.csv"
    src.write_bytes(TINY)
    manifest_path, manifest = _archive(src, tmp_path, leads_spec)
    wrong = hashlib.sha256(b"not the data").hexdigest()
    data = manifest.as_dict() | {"csv_sha256": wrong}
    manifest_path.write_text(json.dumps(data))

    dest = tmp_path / "dest.csv"
    dest.write_bytes(b"old\n")
    with pytest.raises(ArchiveError) as err:
        restore_csv(manifest_path, dest)
    message = str(err.value)
    assert manifest.archive in message and wrong in message and manifest.csv_sha256 in message
    assert dest.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive", "dest.csv", "leads.csv"]


def test_gzip_with_matching_digest_but_bad_content_is_an_archive_error(leads_spec, tmp_path):
    """A manifest whose gz digest matches a truncated gzip (both rewritten): decompression fails."""
    src = tmp_path / "leads.csv"
    src.write_bytes(TINY * 50)
    manifest_path, manifest = _archive(src, tmp_path, leads_spec)
    gz_path = manifest_path.parent / manifest.archive
    truncated = gz_path.read_bytes()[:-12]
    gz_path.write_bytes(truncated)
    manifest_path.write_text(json.dumps(manifest.as_dict() | {"gz_sha256": hashlib.sha256(truncated).hexdigest()}))
    dest = tmp_path / "dest.csv"
    with pytest.raises(ArchiveError, match="cannot restore"):
        restore_csv(manifest_path, dest)
    assert not dest.exists()


@pytest.mark.parametrize("text, match", [
    ("not json", "not valid JSON"),
    ("[]", "not an archive manifest"),
    ('{"table": "leads"}', "missing"),
])
def test_malformed_manifest(text, match, tmp_path):
    path = tmp_path / "leads-20240101T000000Z.manifest.json"
    path.write_text(text)
    with pytest.raises(ArchiveError, match=match) as err:
        read_manifest(path)
    assert str(path) in str(err.value)


def test_manifest_cannot_point_outside_its_directory(leads_spec, tmp_path):
    src = tmp_path / "leads.csv"
    src.write_bytes(TINY)
    manifest_path, manifest = _archive(src, tmp_path, leads_spec)
    manifest_path.write_text(json.dumps(manifest.as_dict() | {"archive": "../leads.csv"}))
    with pytest.raises(ArchiveError, match="file name"):
        restore_csv(manifest_path, tmp_path / "x.csv")


def test_manifest_is_a_dataclass_with_the_documented_fields():
    m = Manifest(table="t", archive="t.csv.gz", csv_sha256="0" * 64, gz_sha256="1" * 64, rows=0, bytes=0,
                 spec={}, phase_history=[], report_ids=[], created_at="2024-01-01T00:00:00Z")
    assert m.as_dict()["archive"] == "t.csv.gz"


# ------------------------------------------------------------------------------------------ upload

@pytest.fixture
def supabase_env(monkeypatch, tmp_path):
    """No Supabase configuration, whatever the outer environment or a .env file says."""
    for name in ("SUPABASE_URL", "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_DB_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # Settings reads .env from the working directory
    return monkeypatch


@pytest.fixture
def archived(leads_spec, tmp_path):
    src = tmp_path / "leads.csv"
    src.write_bytes(TINY)
    manifest_path, manifest = _archive(src, tmp_path, leads_spec)
    return manifest_path.parent / manifest.archive, manifest_path


def test_upload_not_configured_is_skipped(supabase_env, archived):
    assert upload(*archived, Settings()) is None


def test_upload_url_without_key(supabase_env, archived):
    supabase_env.setenv("SUPABASE_URL", "https://example.supabase.co")
    with pytest.raises(ArchiveError, match="SUPABASE_URL is set but no Supabase key") as err:
        upload(*archived, Settings())
    assert "SUPABASE_SERVICE_ROLE_KEY" in str(err.value)


@pytest.mark.parametrize("var", ["SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY"])
def test_upload_key_without_url(supabase_env, archived, var):
    supabase_env.setenv(var, KEY)
    with pytest.raises(ArchiveError, match="SUPABASE_URL is not") as err:
        upload(*archived, Settings())
    assert KEY not in str(err.value) and KEY not in repr(err.value)


@pytest.mark.parametrize("url", ["example.supabase.co", "ftp://example.supabase.co", "https://", KEY,
                                 "http://host:notaport"])
def test_upload_invalid_url(supabase_env, archived, url):
    supabase_env.setenv("SUPABASE_URL", url)
    supabase_env.setenv("SUPABASE_ANON_KEY", KEY)
    with pytest.raises(ArchiveError, match="not a valid http") as err:
        upload(*archived, Settings())
    assert KEY not in str(err.value)


def test_upload_unreachable_url(supabase_env, archived):
    supabase_env.setenv("SUPABASE_URL", "http://127.0.0.1:9")
    supabase_env.setenv("SUPABASE_ANON_KEY", KEY)
    with pytest.raises(ArchiveError, match="upload of .* failed") as err:
        upload(*archived, Settings())
    assert "127.0.0.1" in str(err.value)
    assert KEY not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__


class _StorageStandIn(BaseHTTPRequestHandler):
    """A local HTTP server speaking the two bits of the Storage API that upload uses."""

    received: list[tuple[str, dict, bytes]]
    fail_with: str | None = None

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, dict(self.headers), body))
        if self.fail_with is not None:
            reply, status = {"statusCode": "403", "error": "Unauthorized", "message": self.fail_with}, 403
        else:
            reply, status = {"Key": self.path.removeprefix("/storage/v1/object/")}, 200
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def storage_server():
    handler = type("Handler", (_StorageStandIn,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def test_upload_sends_archive_then_manifest(supabase_env, archived, storage_server):
    server, handler = storage_server
    supabase_env.setenv("SUPABASE_URL", f"http://127.0.0.1:{server.server_port}")
    supabase_env.setenv("SUPABASE_ANON_KEY", "anon-not-used")
    supabase_env.setenv("SUPABASE_SERVICE_ROLE_KEY", KEY)
    gz_path, manifest_path = archived
    paths = upload(gz_path, manifest_path, Settings(), bucket="archives")
    assert paths == [f"leads/{gz_path.name}", f"leads/{manifest_path.name}"]
    assert [r[0] for r in handler.received] == [f"/storage/v1/object/archives/{p}" for p in paths]
    headers = {k.lower(): v for k, v in handler.received[0][1].items()}
    assert headers["apikey"] == KEY  # the service-role key wins over the anon key
    assert gz_path.read_bytes() in handler.received[0][2]
    assert manifest_path.read_bytes() in handler.received[1][2]


def test_upload_error_is_scrubbed(supabase_env, archived, storage_server):
    server, handler = storage_server
    handler.fail_with = f"invalid signature for key {KEY}"
    supabase_env.setenv("SUPABASE_URL", f"http://127.0.0.1:{server.server_port}")
    supabase_env.setenv("SUPABASE_ANON_KEY", KEY)
    with pytest.raises(ArchiveError) as err:
        upload(*archived, Settings())
    message = str(err.value)
    assert "invalid signature for key ***" in message and archived[0].name in message
    assert KEY not in message


def test_upload_refuses_a_mismatched_pair(supabase_env, archived, tmp_path):
    supabase_env.setenv("SUPABASE_URL", "http://127.0.0.1:9")
    supabase_env.setenv("SUPABASE_ANON_KEY", KEY)
    other = tmp_path / "other.csv.gz"
    other.write_bytes(b"")
    with pytest.raises(ArchiveError, match="describes"):
        upload(other, archived[1], Settings())


def test_failed_archive_leaves_nothing_behind(leads_spec, tmp_path):
    not_a_file = tmp_path / "leads.csv"
    not_a_file.mkdir()
    with pytest.raises(ArchiveError, match="nothing was archived") as err:
        _archive(not_a_file, tmp_path, leads_spec)
    assert str(not_a_file) in str(err.value)
    assert list((tmp_path / "archive").iterdir()) == []
