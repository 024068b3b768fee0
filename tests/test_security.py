"""RLS and secrets, checked as the roles Supabase's API uses, in rolled-back transactions."""

from __future__ import annotations

import json
import re
import uuid

import psycopg
import pytest
from psycopg import errors as pgerr
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import CORPUS
from tests.csvdata import AGENT, OTHER_AGENT, lead, write_csv


@pytest.fixture
def loaded(cli):
    for table, name in (("leads", "leads_base.csv"), ("approvals", "approvals_base.csv")):
        proc = cli("sync", "--table", table, "--csv", str(CORPUS / name), "--json")
        assert proc.returncode == 0, proc.stderr


def _as(db_url, role, sub=None):
    """A connection whose transaction acts as ``role`` (and JWT subject ``sub``), like PostgREST."""
    conn = psycopg.connect(db_url)
    conn.execute(f"set local role {role}")
    if sub:
        conn.execute("select set_config('request.jwt.claims', %s, true)",
                     (json.dumps({"sub": sub, "role": role}),))
    return conn


def _denied(conn, statement, params=None) -> bool:
    """True when the statement raises a permission/RLS error or touches no row."""
    try:
        with conn.transaction():
            cur = conn.execute(statement, params)
            return cur.rowcount == 0
    except (pgerr.InsufficientPrivilege, pgerr.CheckViolation):
        return True


def test_rls_is_enabled_with_a_policy_on_every_migrated_table(loaded, sql, specs):
    for name in specs:
        assert sql("select relrowsecurity from pg_class where oid = %s::regclass", (f"public.{name}",)) == [(True,)]
        assert sql("select count(*) from pg_policies where schemaname = 'public' and tablename = %s",
                   (name,))[0][0] >= 1


def test_anon_sees_nothing_and_writes_nothing(loaded, db_url, specs):
    conn = _as(db_url, "anon")
    try:
        for name in specs:
            assert conn.execute(f"select count(*) from public.{name}").fetchone() == (0,)
        assert _denied(conn, "insert into public.leads (id, created_at, updated_at, first_name, last_name, email,"
                             " status) values (gen_random_uuid(), now(), now(), 'x', 'y', 'z', 'new')")
        assert _denied(conn, "update public.leads set notes = 'pwned'")
        assert _denied(conn, "delete from public.approvals")
        assert _denied(conn, "truncate public.leads")
    finally:
        conn.rollback()
        conn.close()


def test_authenticated_sees_only_its_own_rows(loaded, db_url, sql):
    own_leads = sql("select id from public.leads where agent_id = %s", (AGENT,))
    own_approvals = sql("select a.id from public.approvals a join public.leads l on l.id = a.lead_id"
                        " where l.agent_id = %s", (AGENT,))
    assert own_leads and sql("select count(*) from public.leads")[0][0] > len(own_leads)
    conn = _as(db_url, "authenticated", sub=AGENT)
    try:
        assert sorted(conn.execute("select id from public.leads").fetchall()) == sorted(own_leads)
        assert sorted(conn.execute("select id from public.approvals").fetchall()) == sorted(own_approvals)
        assert _denied(conn, "update public.leads set notes = 'mine now'")
        assert _denied(conn, "delete from public.leads")
    finally:
        conn.rollback()
        conn.close()
    stranger = _as(db_url, "authenticated", sub=str(uuid.uuid4()))
    try:
        assert stranger.execute("select count(*) from public.leads").fetchone() == (0,)
    finally:
        stranger.rollback()
        stranger.close()


def test_the_cutover_schema_is_unreachable_for_api_roles(loaded, db_url):
    for role in ("anon", "authenticated"):
        conn = _as(db_url, role, sub=AGENT)
        try:
            with pytest.raises(pgerr.InsufficientPrivilege):
                conn.execute("select * from cutover.runs")
        finally:
            conn.rollback()
            conn.close()


def test_bootstrap_is_idempotent_and_keeps_existing_auth_functions(cli, sql):
    assert cli("bootstrap", "--json").returncode == 0
    # A Supabase project already has auth.uid(); cutover must not replace it.
    sql("create or replace function auth.uid() returns uuid language sql stable as"
        " $$ select '00000000-0000-0000-0000-000000000001'::uuid $$")
    assert cli("bootstrap", "--json").returncode == 0
    assert sql("select auth.uid()") == [(uuid.UUID("00000000-0000-0000-0000-000000000001"),)]
    assert sql("select rolbypassrls from pg_roles where rolname = 'service_role'") == [(True,)]
    assert sql("select rolcanlogin from pg_roles where rolname in ('anon', 'authenticated')") == [(False,), (False,)]


def test_no_password_from_the_dsn_appears_in_any_output(cli, env, tmp_path, pg_server):
    password = "Sup3r-S3cret-pw!"
    params = conninfo_to_dict(env["SUPABASE_DB_URL"])
    with_password = make_conninfo("", **{**params, "password": password})  # trust auth: accepted, unused
    extra = {"SUPABASE_DB_URL": with_password}
    write_csv(tmp_path / "data" / "leads.csv", [lead(1, agent_id=OTHER_AGENT), lead(2, budget="bad")])
    outputs = [
        cli("sync", "--table", "leads", "--json", extra_env=extra),
        cli("sync", "--table", "leads", "--json", extra_env=extra),
        cli("status", "--json", extra_env=extra),
        cli("health", "--json", extra_env=extra),
        cli("validate", "--table", "leads", "--json", extra_env=extra),  # fails: the rejected row; a report
        cli("sync", "--table", "leads", "--csv", str(CORPUS / "leads_latin1.csv"), extra_env=extra),  # fails
        cli("sync", "--table", "nope", extra_env=extra),  # fails
        # an unreachable server: the connection error must not echo the DSN
        cli("health", "--json", extra_env={"SUPABASE_DB_URL": make_conninfo(
            "", host="127.0.0.1", port="1", user="postgres", password=password, dbname="x"),
            "CUTOVER_CONNECT_TIMEOUT_S": "1"}),
        cli("sync", "--table", "leads", extra_env={
            "SUPABASE_DB_URL": f"postgresql://postgres:{password}@/x?host=/nonexistent", "CUTOVER_CONNECT_TIMEOUT_S": "1"}),
    ]
    assert outputs[0].returncode == 0 and outputs[-2].returncode == 4 and outputs[4].returncode == 1
    assert list((tmp_path / "home" / "reports").glob("*.html"))
    for proc in outputs:
        assert password not in proc.stdout + proc.stderr
    files = [p for p in (tmp_path / "home").rglob("*") if p.is_file() and p.stat().st_size < 10_000_000]
    assert files  # the rejects file, at least
    for path in files:
        assert password.encode() not in path.read_bytes(), path
    assert re.search(r"host=/\S+", json.loads(outputs[2].stdout)["database"])  # the DSN shown, minus password
