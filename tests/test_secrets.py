"""No secret escapes: the database password, the anon key and the service-role key never appear in
anything cutover prints, logs, stores or publishes — through every CLI command and every flow,
failures included.

The embedded server uses trust authentication, so a password in SUPABASE_DB_URL is accepted and
unused: every command really runs with it. The password holds URL-special characters so that a DSN
re-rendered as a URL (GX's SQLAlchemy URL) would show it percent-encoded; both spellings, and a
distinctive fragment of every secret, are searched for.

Searched: every stdout/stderr; every file under CUTOVER_HOME, the data dir (gzip archives
decompressed) and PREFECT_HOME; every row of the private ``cutover`` schema; and for the flows, the
Prefect API's flow runs (parameters, every state and its message), task runs and their states, logs
and artifacts — and, as a catch-all, the Prefect server's own database file.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, quote_plus

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import CORPUS
from tests.csvdata import AGENT, lead, write_csv

PASSWORD = "pw:Sup3r/S3cret@cut#over!"
ANON_KEY = "anon-KEY.e7f3a9c1DoNotLeak.eyJyb2xlIjoiYW5vbiJ9"
SERVICE_KEY = "service-ROLE-KEY.b81d2e44DoNotLeak.eyJyb2xlIjoic2VydmljZV9yb2xlIn0"


def _forms(secret: str) -> set[str]:
    """Every spelling of ``secret`` worth searching for: as is, percent-encoded, and a fragment."""
    middle = secret[len(secret) // 2 - 6: len(secret) // 2 + 6]
    return {secret, quote(secret, safe=""), quote_plus(secret), middle}


NEEDLES = {form: name for name, secret in (("password", PASSWORD), ("anon key", ANON_KEY),
                                           ("service-role key", SERVICE_KEY)) for form in _forms(secret)}


def leaks(text: str | bytes, where: str) -> list[str]:
    if isinstance(text, bytes):
        found = [f"{where}: the {name} ({form!r})" for form, name in NEEDLES.items() if form.encode() in text]
    else:
        found = [f"{where}: the {name} ({form!r})" for form, name in NEEDLES.items() if form in text]
    return found


def file_leaks(*roots: Path) -> tuple[list[str], int]:
    """(leaks, files searched) for every file under ``roots`` (gzip files searched decompressed too)."""
    found, searched = [], 0
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            try:
                data = path.read_bytes()
            except OSError:  # a socket or a file that vanished
                continue
            searched += 1
            found += leaks(data, str(path))
            if path.suffix == ".gz":
                found += leaks(gzip.decompress(data), f"{path} (decompressed)")
    return found, searched


def schema_leaks(conninfo: str) -> list[str]:
    """Every row of every table of the private schema, as text."""
    found = []
    with psycopg.connect(conninfo) as conn:
        tables = [r[0] for r in conn.execute(
            "select tablename from pg_tables where schemaname = 'cutover' order by 1")]
        for table in tables:
            for (row,) in conn.execute(f'select t::text from cutover."{table}" t'):
                found += leaks(row, f"cutover.{table}")
    return found


def with_password(conninfo: str, *, as_url: bool = False) -> str:
    params = conninfo_to_dict(conninfo)
    if not as_url:
        return make_conninfo("", **{**params, "password": PASSWORD})
    query = "&".join(f"{k}={quote(str(params[k]), safe='')}" for k in ("host", "port") if params.get(k))
    return (f"postgresql://{quote(params.get('user') or 'postgres', safe='')}:{quote(PASSWORD, safe='')}@"
            f"/{quote(params['dbname'], safe='')}?{query}")


# --- a Supabase Storage stand-in that echoes the credentials it received into its error -----------

class _EchoingStorage(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def _reply(self):
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        type(self).seen.append({"method": self.command, "path": self.path, **headers})
        body = json.dumps({"statusCode": "403", "error": "Unauthorized",  # a proxy that echoes what it got
                           "message": f"bad credentials apikey={headers.get('apikey')}"
                                      f" authorization={headers.get('authorization')}"}).encode()
        self.send_response(403)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_GET = _reply

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def storage():
    _EchoingStorage.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingStorage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _EchoingStorage.seen
    server.shutdown()
    server.server_close()


def test_the_search_finds_every_spelling_a_secret_can_take():
    from cutover.gx_runner import sqlalchemy_url

    url = sqlalchemy_url(make_conninfo("", host="/tmp/x", dbname="d", user="u", password=PASSWORD))
    assert PASSWORD not in url and leaks(url, "url")  # percent-encoded, and still found
    assert leaks(b"..." + SERVICE_KEY[10:40].encode() + b"...", "bytes") and not leaks("nothing here", "text")


# --- the CLI ---------------------------------------------------------------------------------------

def test_no_secret_in_any_cli_output_file_or_table(cli, env, tmp_path, monkeypatch, capfd, storage):
    secret_env = {"SUPABASE_DB_URL": with_password(env["SUPABASE_DB_URL"]),
                  "SUPABASE_ANON_KEY": ANON_KEY, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY}
    data, home = Path(env["CUTOVER_DATA_DIR"]), Path(env["CUTOVER_HOME"])
    leads_csv = data / "leads.csv"
    runs: list[tuple[str, object]] = []

    def run(*args, expect: int | tuple[int, ...] = 0, extra: dict | None = None):
        proc = cli(*args, extra_env={**secret_env, **(extra or {})}, timeout=300)
        runs.append((" ".join(args), proc))
        codes = expect if isinstance(expect, tuple) else (expect,)
        assert proc.returncode in codes, f"cutover {' '.join(args)} → {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return json.loads(proc.stdout.strip().splitlines()[-1]) if "--json" in args and proc.stdout.strip() else None

    run("generate", "--table", "leads", "--rows", "60", "--seed", "11", "--out", str(leads_csv), "--json")
    run("generate", "--table", "approvals", "--rows", "40", "--seed", "11", "--leads-rows", "60",
        "--out", str(tmp_path / "approvals-sample.csv"), "--json")
    clean = leads_csv.read_bytes()
    run("bootstrap", "--json")
    run("suites", "--json", expect=(0, 1))  # 1 only if a spec changed without its suite: not our concern

    # a sync with a reject, the failing validation it causes, and syncs that fail outright
    bad = tmp_path / "bad.csv"
    write_csv(bad, [lead(999, budget="100.005")])
    leads_csv.write_bytes(clean + bad.read_bytes().split(b"\n", 1)[1])
    out = run("sync", "--table", "leads", "--json")
    assert (out["rejected"], out["loaded"]) == (1, 60) and Path(out["rejects_file"]).is_file()
    failed = run("validate", "--table", "leads", "--json", expect=1)
    assert not failed["passed"]
    run("sync", "--table", "leads", "--csv", str(CORPUS / "leads_unterminated_quote.csv"), "--json", expect=2)
    run("sync", "--table", "leads", "--csv", str(CORPUS / "leads_latin1.csv"), expect=2)
    run("sync", "--table", "nope", "--json", expect=1)

    # fixed, then passing; the read-only commands
    leads_csv.write_bytes(clean)
    run("sync", "--table", "leads", "--json")
    assert run("validate", "--table", "leads", "--json")["passed"]
    run("validate", "--table", "leads")  # the human form too
    run("status", "--json")
    run("status")
    run("health", "--json")
    run("health")
    run("export", "--table", "leads", "--csv", str(tmp_path / "export.csv"), "--json")
    run("plan", "--table", "leads", "--to", "dual_write", "--json")
    run("plan", "--table", "leads", "--to", "promoted", "--json", expect=5)

    # mirror → dual_write; the application writes, and one database half fails into the outbox
    run("advance", "--table", "leads", "--to", "dual_write", "--json")
    for k, v in secret_env.items():
        monkeypatch.setenv(k, v)
    from cutover.app import repositories
    from cutover.settings import Settings

    app = repositories(Settings(), AGENT)
    try:
        from cutover import codec
        from cutover.spec import load_specs

        new = lead(500, agent_id=AGENT)
        typed = codec.decode(load_specs()["leads"], new)
        app.leads.upsert([typed])
        app.db.pool.close()  # the application's connection drops: the next table write fails
        app.leads.update(new["id"], lambda r: {**r, "status": "contacted"})
        assert app.leads.outbox.count("leads") == 1
    finally:
        app.close()
    run("plan", "--table", "leads", "--to", "promoted")
    run("advance", "--table", "leads", "--to", "promoted", "--json", expect=1)  # no approver
    run("advance", "--table", "leads", "--to", "promoted", "--approve-as", "Dana", "--reason", "checked",
        "--json")

    # promoted → deprecated, uploading the archive with the service-role key to a Storage that
    # echoes the credentials into its error: the archive stays, the message is scrubbed
    url, seen = storage
    refused = run("advance", "--table", "leads", "--to", "deprecated", "--json", expect=1,
                  extra={"SUPABASE_URL": url})
    assert seen and seen[0]["apikey"] == SERVICE_KEY  # the upload really carried the key ...
    assert "apikey=***" in refused["error"], refused  # ... and the echo of it was masked
    assert list((data / "archive").glob("*.gz"))

    run("rollback", "--table", "leads", "--reason", "back", "--json")  # deprecated → promoted (restore)
    back = run("rollback", "--table", "leads", "--json")  # promoted → dual_write
    assert back["parity_passed"] is True
    run("health", "--json", expect=4, extra={
        "SUPABASE_DB_URL": f"postgresql://postgres:{quote(PASSWORD, safe='')}@/x?host=/nonexistent",
        "CUTOVER_CONNECT_TIMEOUT_S": "1"})

    found = []
    for name, proc in runs:
        found += leaks(proc.stdout, f"cutover {name}: stdout") + leaks(proc.stderr, f"cutover {name}: stderr")
    captured = capfd.readouterr()
    found += leaks(captured.out, "test process stdout") + leaks(captured.err, "test process stderr")
    searched_found, searched = file_leaks(home, data)
    found += searched_found + schema_leaks(env["SUPABASE_DB_URL"])
    assert searched >= 10 and list((home / "reports").glob("*.html")) and (home / "outbox.sqlite3").exists()
    assert not found, "\n".join(found)


MALFORMED = {  # a password pasted into a URL unencoded: libpq echoes it, or reads pieces of it as other fields
    "percent-not-encoded": ("postgresql://postgres:Leak%zzMe42@/x?host=/nonexistent", ["Leak%zzMe42"]),
    "space-not-encoded": ("postgresql://postgres:Leak Me42@/x?host=/nonexistent", ["Leak Me42"]),
    "slash-not-encoded": ("postgresql://postgres:Leak/Me42@/x?host=/nonexistent", ["Leak", "Me42"]),
    "at-not-encoded": ("postgresql://postgres:Leak@Me42@/x?host=/nonexistent", ["Leak", "Me42"]),
    "keyword-form-typo": ("host=/nonexistent password='Leak Me42' dbname=x bogus=1", ["Leak Me42"]),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_dsn_never_echoes_its_password(cli, name):
    from cutover.redact import display_dsn

    dsn, pieces = MALFORMED[name]
    procs = [cli(*args, extra_env={"SUPABASE_DB_URL": dsn, "CUTOVER_CONNECT_TIMEOUT_S": "1"})
             for args in (("health", "--json"), ("status",))]
    for proc in procs:
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert "cannot connect" in proc.stdout + proc.stderr
        for piece in pieces:
            assert piece not in proc.stdout + proc.stderr, (piece, proc.stdout + proc.stderr)
    for piece in pieces:
        assert piece not in display_dsn(dsn)


# --- the flows -------------------------------------------------------------------------------------

def _api_dump(since: datetime) -> tuple[str, dict]:
    """Everything the Prefect API holds about the flow runs started since ``since``, as one text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter,
                                                FlowRunFilterId, FlowRunFilterStartTime, LogFilter,
                                                LogFilterFlowRunId)

    def every(read, **kw):  # the API pages by at most 200
        out, offset = [], 0
        while True:
            page = read(**kw, limit=200, offset=offset)
            out += page
            offset += len(page)
            if len(page) < 200:
                return out

    parts: list[str] = []
    with get_client(sync_client=True) as client:
        runs = every(client.read_flow_runs, flow_run_filter=FlowRunFilter(
            start_time=FlowRunFilterStartTime(after_=since)))
        ids = [r.id for r in runs]
        for r in runs:
            parts.append(r.model_dump_json())
            parts += [s.model_dump_json() for s in client.read_flow_run_states(r.id)]
        tasks = every(client.read_task_runs, flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        for t in tasks:
            parts.append(t.model_dump_json())
            parts += [s.model_dump_json() for s in client.read_task_run_states(t.id)]
        logs = every(client.read_logs, log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        parts += [log.model_dump_json() for log in logs]
        artifacts = every(client.read_artifacts,
                          artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
        parts += [a.model_dump_json() for a in artifacts]
    counts = {"flow_runs": len(runs), "task_runs": len(tasks), "logs": len(logs), "artifacts": len(artifacts),
              "failed_flow_runs": sum(1 for r in runs if r.state and r.state.is_failed()),
              "artifact_keys": {a.key for a in artifacts}, "log_text": "\n".join(log.message for log in logs)}
    return "\n".join(parts), counts


@pytest.fixture
def info_run_logs():
    """Send the flows' INFO logs to the API too (the suite runs Prefect at WARNING)."""
    import prefect.main  # noqa: F401 -- configures logging on first import: before the levels are set

    names = ("prefect.flow_runs", "prefect.task_runs")
    before = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.INFO)
    yield
    for n, level in before.items():
        logging.getLogger(n).setLevel(level)


@pytest.mark.usefixtures("prefect_api", "info_run_logs")
def test_no_secret_in_any_flow_log_artifact_state_or_file(env, monkeypatch, capfd, tmp_path):
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_DATABASE_CONNECTION_URL

    from cutover.samples import generate
    from tasks import resources

    data, home = Path(env["CUTOVER_DATA_DIR"]), Path(env["CUTOVER_HOME"])
    secret_url = with_password(env["SUPABASE_DB_URL"], as_url=True)
    for k, v in {"SUPABASE_DB_URL": secret_url, "SUPABASE_ANON_KEY": ANON_KEY,
                 "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CUTOVER_GX_DB_URL", "")  # gx_runner sets it (password included): unset it afterwards
    monkeypatch.delenv("CUTOVER_GX_DB_URL")
    resources.close_databases()
    generate("leads", 60, data / "leads.csv", seed=5)
    generate("approvals", 40, data / "approvals.csv", seed=5, leads_rows=60)
    clean = (data / "leads.csv").read_bytes()
    since = datetime.now(timezone.utc) - timedelta(seconds=1)

    from flows.advance import advance
    from flows.mirror import mirror
    from flows.rollback import rollback
    from flows.sync import sync, sync_table
    from flows.validate import ValidationFailed, validate

    try:
        assert set(mirror()) == {"leads", "approvals"}
        bad = tmp_path / "bad.csv"
        write_csv(bad, [lead(999, budget="100.005")])
        (data / "leads.csv").write_bytes(clean + bad.read_bytes().split(b"\n", 1)[1])
        assert sync()["leads"]["rejected"] == 1
        with pytest.raises(ValidationFailed):  # a failed flow run: the rejected row
            validate(["leads"])
        (data / "leads.csv").write_bytes(clean + b'"unterminated\n')
        with pytest.raises(Exception, match="unterminated"):  # a failed subflow: structural error
            sync_table("leads")
        (data / "leads.csv").write_bytes(clean)
        sync()
        assert all(s["passed"] for s in validate().values())
        assert advance("leads", reason="start dual writes")["to_phase"] == "dual_write"
        assert rollback("leads", reason="and back")["parity_passed"] is True
        # a flow that cannot reach its database: the DSN with the password is in its error path
        monkeypatch.setenv("SUPABASE_DB_URL", f"postgresql://postgres:{quote(PASSWORD, safe='')}@/x"
                                              "?host=/nonexistent")
        monkeypatch.setenv("CUTOVER_CONNECT_TIMEOUT_S", "1")
        with pytest.raises(Exception, match="cannot connect"):
            mirror()
    finally:
        resources.close_databases()
    APILogHandler().flush()  # send what is queued, and wait

    deadline, previous = time.monotonic() + 30, None
    while True:  # logs and states reach the API asynchronously: wait until nothing new arrives
        dump, counts = _api_dump(since)
        stable = previous is not None and (counts["logs"], counts["task_runs"]) == previous
        if (stable and counts["failed_flow_runs"] >= 3) or time.monotonic() > deadline:
            break
        previous = (counts["logs"], counts["task_runs"])
        time.sleep(2)
    # the search is only as good as what it searched: all of it is there
    assert counts["flow_runs"] >= 10 and counts["task_runs"] >= 20 and counts["failed_flow_runs"] >= 3, counts
    assert counts["logs"] >= 50 and "PASSED" in counts["log_text"] and "cannot connect" in dump, counts
    assert {"mirror-counts", "sync-counts", "validation-leads", "validation-leads-failures",
            "transition-leads"} <= counts["artifact_keys"], counts

    found = leaks(dump, "Prefect API")
    captured = capfd.readouterr()
    found += leaks(captured.out, "stdout") + leaks(captured.err, "stderr")
    file_found, searched = file_leaks(home, data, Path(PREFECT_HOME.value()))
    found += file_found + schema_leaks(env["SUPABASE_DB_URL"])
    db_file = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    for path in (db_file, db_file.with_name(db_file.name + "-wal")):  # the server's own store: events too
        if path.exists():
            found += leaks(path.read_bytes(), f"Prefect server database {path.name}")
    assert searched >= 5 and db_file.exists()
    assert not found, "\n".join(found)


# --- the application's Supabase client -------------------------------------------------------------

def _jwt(role: str) -> str:
    """A JWT-shaped key with the given role claim (unsigned: the client never verifies it)."""
    import base64

    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'iss': 'supabase', 'role': role, 'n': 'DoNotLeak42'})}.c2ln"


def _client_settings(monkeypatch, **values):
    from cutover.settings import Settings

    for k in ("SUPABASE_URL", "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY"):
        monkeypatch.delenv(k, raising=False)
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return Settings()


@pytest.mark.parametrize("keys", [
    pytest.param({"SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY}, id="only-the-service-role-key"),
    pytest.param({"SUPABASE_ANON_KEY": SERVICE_KEY, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY},
                 id="anon-key-is-the-service-role-key"),
    pytest.param({"SUPABASE_ANON_KEY": f" {SERVICE_KEY}\n", "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY},
                 id="anon-key-is-the-service-role-key-with-whitespace"),
    pytest.param({"SUPABASE_ANON_KEY": "  ", "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY},
                 id="blank-anon-key"),
    pytest.param({"SUPABASE_ANON_KEY": _jwt("service_role")}, id="anon-key-is-a-service-role-jwt"),
    pytest.param({"SUPABASE_ANON_KEY": "sb_secret_" + SERVICE_KEY.replace(".", "_")}, id="anon-key-is-a-secret-key"),
])
def test_the_application_client_refuses_the_service_role_key(monkeypatch, keys):
    from cutover.app import ServiceRoleRefused, supabase_client

    settings = _client_settings(monkeypatch, SUPABASE_URL="https://abcdefghijklmnop.supabase.co", **keys)
    with pytest.raises(ServiceRoleRefused) as refused:
        supabase_client(settings)
    message = str(refused.value)
    assert "anon key" in message
    assert not leaks(message, "refusal"), message
    for value in keys.values():
        assert not value.strip() or value.strip() not in message


@pytest.mark.parametrize("anon", [ANON_KEY, _jwt("anon")], ids=["opaque-anon-key", "anon-jwt"])
def test_the_application_client_is_built_with_the_anon_key(monkeypatch, anon):
    from cutover.app import supabase_client

    settings = _client_settings(monkeypatch, SUPABASE_URL="https://abcdefghijklmnop.supabase.co",
                                SUPABASE_ANON_KEY=anon, SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY)
    client = supabase_client(settings)
    assert client.supabase_key == anon
    assert SERVICE_KEY not in json.dumps({k: str(v) for k, v in client.options.headers.items()})
