"""Make a database ready for cutover: Supabase-compatible roles and ``auth`` helpers, the private
``cutover`` bookkeeping schema, and every spec's target table with RLS.

Idempotent and safe against a real Supabase project: existing roles, schemas and ``auth``
functions are left as they are (Supabase owns them); only what is missing is created. Runs in one
transaction under an advisory lock, so concurrent bootstraps serialise instead of colliding.
"""

from __future__ import annotations

import psycopg

from cutover import ddl
from cutover.errors import SchemaDrift
from cutover.spec import TableSpec

BOOTSTRAP_LOCK = 0x6375746F  # 'cuto'
SCHEMA_VERSION = "4"

ROLES_SQL = """
do $$
begin
  if not exists (select from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;
grant anon, authenticated, service_role to authenticator;
create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;
grant usage on schema public to anon, authenticated, service_role;
"""

# Supabase's own definitions: claims come from the request.jwt.claims setting PostgREST sets.
AUTH_FUNCTIONS = {
    "uid": """create function auth.uid() returns uuid language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$""",
    "role": """create function auth.role() returns text language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$""",
    "jwt": """create function auth.jwt() returns jsonb language sql stable as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$""",
}

CUTOVER_SCHEMA_SQL = """
create schema if not exists cutover;
revoke all on schema cutover from public;
revoke all on schema cutover from anon, authenticated;
create table if not exists cutover.meta (key text primary key, value text not null);
create table if not exists cutover.table_state (
  table_name   text primary key,
  phase        text not null check (phase in ('mirror', 'dual_write', 'promoted', 'deprecated')),
  version      bigint not null default 0,  -- bumped by every merge and transition (optimistic locking)
  data_version bigint not null default 0,  -- bumped whenever the table's data changes
  updated_at   timestamptz not null default now()
);
create table if not exists cutover.phase_history (
  id          bigserial primary key,
  table_name  text not null,
  from_phase  text,
  to_phase    text,
  actor       text not null,
  reason      text,
  report_id   text,
  run_id      uuid,
  started_at  timestamptz not null,
  finished_at timestamptz not null default now()
);
create table if not exists cutover.runs (
  run_id        uuid primary key,
  table_name    text not null,
  kind          text not null,
  status        text not null check (status in ('running', 'succeeded', 'failed')),
  started_at    timestamptz not null default now(),
  heartbeat_at  timestamptz not null default now(),
  finished_at   timestamptz,
  base_version  bigint,
  csv_path      text,
  csv_sha256    text,
  csv_bytes     bigint,
  rows_read     bigint,
  rows_loaded   bigint,
  rows_rejected bigint,
  inserted      bigint,
  updated       bigint,
  deleted       bigint,
  rejects_file  text,
  error         text
);
create index if not exists runs_table_started_idx on cutover.runs (table_name, started_at desc);
create table if not exists cutover.rejects (
  run_id      uuid not null references cutover.runs on delete cascade,
  line        bigint not null,
  column_name text,
  value       text,
  reason      text not null,
  key         text  -- the row's primary key when it could be read: its old version is kept, not deleted
);
create index if not exists rejects_run_line_idx on cutover.rejects (run_id, line);
create table if not exists cutover.validation_reports (
  report_id    text primary key,
  table_name   text not null,
  phase        text,
  version      bigint not null,  -- the table_state versions the report checked
  data_version bigint not null,
  csv_sha256   text,             -- the CSV it compared with, when there was one
  passed       boolean not null,
  created_at   timestamptz not null default now(),
  report       jsonb not null
);
create index if not exists validation_reports_table_idx on cutover.validation_reports (table_name, created_at desc);
alter table cutover.phase_history add column if not exists outcome text not null default 'done';
alter table cutover.runs add column if not exists merged_version bigint;  -- the data_version a sync left
-- what else a sync's outcome depended on: the spec and the parents' data (see cutover.sync.basis)
alter table cutover.runs add column if not exists basis text;
create table if not exists cutover.change_log (
  id          bigserial primary key,
  table_name  text not null,
  key         text not null,
  op          text not null check (op in ('insert', 'update', 'delete')),
  row         jsonb,           -- the new row (the old one for a delete)
  txid        bigint not null default txid_current(),
  actor       text,            -- the JWT sub of the writer, when there is one
  changed_at  timestamptz not null default now()
);
create index if not exists change_log_table_id_idx on cutover.change_log (table_name, id);
create table if not exists cutover.backup_state (
  table_name  text primary key,
  change_id   bigint not null,  -- every change up to this id is in the CSV backup
  rows        bigint,
  updated_at  timestamptz not null default now()
);
-- A write by the application names the phase it believes the table is in; if a transition has
-- moved the table meanwhile, the write fails (SQLSTATE CUTPH) and the application retries on the
-- right path: a write can never land in a store that is no longer written.
create or replace function cutover.capture_change() returns trigger
language plpgsql security definer set search_path = '' as $fn$
declare
  expected text := nullif(current_setting('cutover.expected_phase', true), '');
  actual text;
  changed jsonb := case when tg_op = 'DELETE' then to_jsonb(old) else to_jsonb(new) end;
begin
  if expected is not null then
    select phase into actual from cutover.table_state where table_name = tg_table_name;
    if actual is distinct from expected then
      raise exception 'cutover: % is in phase %, not %: retry the write', tg_table_name, actual, expected
        using errcode = 'CUTPH';
    end if;
  end if;
  insert into cutover.change_log (table_name, key, op, row, actor)
  values (tg_table_name, changed ->> tg_argv[0], lower(tg_op), changed,
          nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub');
  return null;
end
$fn$;
create or replace function cutover.bump_data_version() returns trigger
language plpgsql security definer set search_path = '' as $fn$
begin
  update cutover.table_state set data_version = data_version + 1, updated_at = now()
  where table_name = tg_table_name;
  return null;
end
$fn$;
revoke all on function cutover.capture_change() from public;
revoke all on function cutover.bump_data_version() from public;
-- What the application may ask about the migration: a table's phase, and nothing else.
create schema if not exists cutover_app;
revoke all on schema cutover_app from public;
grant usage on schema cutover_app to authenticated;
create or replace function cutover_app.phase(t text) returns text
language sql stable security definer set search_path = '' as $fn$
  select phase from cutover.table_state where table_name = t
$fn$;
revoke all on function cutover_app.phase(text) from public;
grant execute on function cutover_app.phase(text) to authenticated;
revoke all on all tables in schema cutover from public, anon, authenticated;
revoke all on all sequences in schema cutover from public, anon, authenticated;
"""


def _ensure_auth_functions(conn: psycopg.Connection) -> None:
    existing = {r[0] for r in conn.execute(
        "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'auth'")}
    for name, body in AUTH_FUNCTIONS.items():
        if name not in existing:
            conn.execute(body)


def check_drift(conn: psycopg.Connection, spec: TableSpec) -> None:
    """Refuse to work on a table whose columns differ from its spec."""
    rows = conn.execute(
        """select a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
           from pg_attribute a where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped
           order by a.attnum""", (spec.qualified,)).fetchall()
    actual = {name: (typ, notnull) for name, typ, notnull in rows}
    expected = {c.name: (c.sql_type.replace("timestamptz", "timestamp with time zone"), not c.nullable)
                for c in spec.columns}
    problems = []
    for name, (typ, notnull) in expected.items():
        if name not in actual:
            problems.append(f"column {name} is missing")
        elif actual[name] != (typ, notnull):
            problems.append(f"column {name} is {actual[name][0]}{' not null' if actual[name][1] else ''},"
                            f" spec says {typ}{' not null' if notnull else ''}")
    problems += [f"column {name} is not in the spec" for name in actual if name not in expected]
    if problems:
        raise SchemaDrift(f"table {spec.qualified} does not match its spec: " + "; ".join(problems))


def bootstrap(conn: psycopg.Connection, specs: dict[str, TableSpec]) -> None:
    """Run inside a transaction (``Database.run``)."""
    conn.execute("select pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK,))
    conn.execute(ROLES_SQL)
    _ensure_auth_functions(conn)
    conn.execute(CUTOVER_SCHEMA_SQL)
    conn.execute("insert into cutover.meta values ('schema_version', %s) on conflict (key) do update"
                 " set value = excluded.value", (SCHEMA_VERSION,))
    for spec in specs.values():  # parents first
        conn.execute(ddl.create_table(spec))
        check_drift(conn, spec)
        for stmt in ddl.fk_indexes(spec):
            conn.execute(stmt)
        for stmt in ddl.security(spec, specs):
            conn.execute(stmt)
        conn.execute(ddl.write_version(spec))


def is_bootstrapped(conn: psycopg.Connection) -> bool:
    row = conn.execute("select to_regclass('cutover.meta') is not null").fetchone()
    return bool(row[0]) and conn.execute(
        "select value from cutover.meta where key = 'schema_version'").fetchone() == (SCHEMA_VERSION,)


def schema_is_ready(conn: psycopg.Connection, specs: dict[str, TableSpec]) -> bool:
    if not is_bootstrapped(conn):
        return False
    return all(conn.execute("select to_regclass(%s)", (s.qualified,)).fetchone()[0] for s in specs.values())

