"""Who may do what, cell by cell: role × operation × object, in phase ``mirror`` and ``dual_write``.

Roles (as Supabase's API acts: ``SET LOCAL ROLE`` and ``request.jwt.claims``):
- ``anon``;
- ``owner``: ``authenticated`` whose ``sub`` is the agent owning the probed row (for an approval:
  owning its lead);
- ``other``: ``authenticated`` as another agent (one with rows of its own);
- ``service_role``: BYPASSRLS, with the select/insert/update/delete grants ``cutover.ddl.security``
  gives every API role on the migrated tables — so it reads and writes them in every phase —
  and no privilege at all on the private ``cutover`` schema.

Operations: select / insert / update / delete of ONE row of the owner's (a new row for insert).
Objects: every migrated table (``leads``, ``approvals``) and the private schema (``cutover.table_state``,
``cutover.change_log``).

Expected:
- mirror: the owner only reads its own rows; nobody but service_role writes a migrated table;
- dual_write: the transition installs the write policies, so the owner may also insert, update and
  delete its own rows — and still nothing of another agent's (nor give a row away);
- the ``cutover`` schema is closed to every API role, service_role included, in both phases.

A cell is *allowed* when the statement reaches exactly the probed row, *denied* when it is refused
with insufficient_privilege (42501: a missing grant or an RLS WITH CHECK) or reaches no row (RLS
USING). Any other outcome (a constraint error, several rows) means the probe is wrong and fails the
cell. Every probe runs in a transaction that is rolled back.
"""

from __future__ import annotations

import json
import os
import uuid

import psycopg
import pytest
from psycopg import errors as pgerr
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cutover import operate
from tests.csvdata import AGENT, APPROVAL_COLUMNS, OTHER_AGENT, approval, lead, write_csv

OWN_LEAD = lead(1)["id"]  # AGENT's: the probed lead
OTHERS_LEAD = lead(2)["id"]  # OTHER_AGENT's
OWN_APPROVAL = str(uuid.uuid5(uuid.NAMESPACE_URL, "approval-1"))  # on OWN_LEAD
NEW_LEAD = "0e3c4f6a-1b2c-4d5e-8f70-8192a3b4c5d6"
NEW_APPROVAL = "7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d"

ROLES = {  # name → (database role, JWT sub)
    "anon": ("anon", None),
    "owner": ("authenticated", AGENT),
    "other": ("authenticated", OTHER_AGENT),
    "service_role": ("service_role", None),
}
OPS = ("select", "insert", "update", "delete")
OBJECTS = ("leads", "approvals", "cutover.table_state", "cutover.change_log")
PHASES = ("mirror", "dual_write")


NEW_LEAD_SQL = ("insert into public.leads (id, created_at, updated_at, first_name, last_name, email, status, agent_id)"
                f" values ('{NEW_LEAD}', now(), now(), 'Probe', 'Row', 'probe@example.com', 'new', '{AGENT}')")
NEW_APPROVAL_SQL = ("insert into public.approvals (id, lead_id, channel, status, created_at, updated_at)"
                    f" values ('{NEW_APPROVAL}', '{OWN_LEAD}', 'sms', 'pending', now(), now())")

PROBES = {  # (object, operation) → statement touching one row of AGENT's (or the private schema)
    ("leads", "select"): f"select id from public.leads where id = '{OWN_LEAD}'",
    ("leads", "insert"): NEW_LEAD_SQL,
    ("leads", "update"): f"update public.leads set notes = 'probe' where id = '{OWN_LEAD}'",
    ("leads", "delete"): f"delete from public.leads where id = '{OWN_LEAD}'",
    ("approvals", "select"): f"select id from public.approvals where id = '{OWN_APPROVAL}'",
    ("approvals", "insert"): NEW_APPROVAL_SQL,
    ("approvals", "update"): f"update public.approvals set draft = 'probe' where id = '{OWN_APPROVAL}'",
    ("approvals", "delete"): f"delete from public.approvals where id = '{OWN_APPROVAL}'",
    ("cutover.table_state", "select"): "select table_name from cutover.table_state where table_name = 'leads'",
    ("cutover.table_state", "insert"): "insert into cutover.table_state (table_name, phase) values ('probe', 'mirror')",
    ("cutover.table_state", "update"): "update cutover.table_state set version = version where table_name = 'leads'",
    ("cutover.table_state", "delete"): "delete from cutover.table_state where table_name = 'leads'",
    ("cutover.change_log", "select"): "select id from cutover.change_log where key = 'seeded-probe-row'",
    ("cutover.change_log", "insert"): "insert into cutover.change_log (table_name, key, op) values ('leads', 'x', 'insert')",
    ("cutover.change_log", "update"): "update cutover.change_log set actor = 'probe' where key = 'seeded-probe-row'",
    ("cutover.change_log", "delete"): "delete from cutover.change_log where key = 'seeded-probe-row'",
}


def expected(phase: str, role: str, op: str, obj: str) -> bool:
    """The whole policy, in one place: True = allowed."""
    if obj.startswith("cutover."):
        return False  # closed to every API role
    if role == "service_role":
        return True  # BYPASSRLS + table grants
    if role == "owner":
        return op == "select" or phase == "dual_write"
    return False  # anon, and another agent, never touch AGENT's rows


@pytest.fixture(scope="module", params=PHASES)
def phased(request, pg_server, tmp_path_factory):
    """A database whose leads and approvals are in the phase ``request.param``: (phase, conninfo)."""
    phase = request.param
    name = f"cutover_matrix_{os.getpid()}_{phase}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    conninfo = make_conninfo("", **{**conninfo_to_dict(pg_server), "dbname": name})
    work = tmp_path_factory.mktemp(f"matrix-{phase}")
    (work / "data").mkdir()
    leads = [lead(1), lead(2, agent_id=OTHER_AGENT), lead(3), lead(4, agent_id=OTHER_AGENT)]
    write_csv(work / "data" / "leads.csv", leads)
    write_csv(work / "data" / "approvals.csv",
              [approval(1, OWN_LEAD), approval(2, OTHERS_LEAD), approval(3, lead(3)["id"])],
              columns=APPROVAL_COLUMNS)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"SUPABASE_DB_URL": conninfo, "CUTOVER_HOME": str(work / "home"),
                     "CUTOVER_DATA_DIR": str(work / "data")}.items():
            mp.setenv(k, v)
        from cutover.db import connect
        from cutover.settings import Settings
        from cutover.spec import load_specs

        settings = Settings()
        specs = load_specs(settings.spec_dir)
        with connect(settings) as db:
            for table in ("leads", "approvals"):
                result = operate.run_sync(settings, db, specs, table, actor="test")
                assert result.rejected == 0
            if phase == "dual_write":
                for table in ("leads", "approvals"):
                    moved = operate.advance(settings, db, specs, table, reason="security matrix")
                    assert (moved.to_phase, moved.outcome) == ("dual_write", "done"), moved
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.execute("select table_name, phase from cutover.table_state order by 1").fetchall() == \
            [("approvals", phase), ("leads", phase)]
        conn.execute("insert into cutover.change_log (table_name, key, op) values ('leads', 'seeded-probe-row',"
                     " 'update')")  # a row for the change-log probes to reach, in every phase
    yield phase, conninfo
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="module")
def conn(phased):
    with psycopg.connect(phased[1]) as c:
        yield c


class _Rollback(Exception):
    pass


def probe(conn: psycopg.Connection, role: str | None, sub: str | None, statement: str) -> tuple[bool, str]:
    """(allowed?, what happened) for ``statement`` run as ``role``, in a transaction rolled back."""
    outcome: tuple[bool, str] | None = None
    try:
        with conn.transaction():
            if role:
                conn.execute(f"set local role {role}")
                claims = {"role": role, **({"sub": sub} if sub else {})}
                conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
            try:
                with conn.transaction():  # a savepoint: the error is caught, the outer one rolled back
                    cur = conn.execute(statement)
                    n = len(cur.fetchall()) if cur.description else cur.rowcount
            except pgerr.InsufficientPrivilege as exc:
                outcome = (False, f"refused: {exc.diag.message_primary}")
            else:
                assert n in (0, 1), f"{statement!r} reached {n} rows: the probe is wrong"
                outcome = (n == 1, f"reached {n} row(s)")
            raise _Rollback
    except _Rollback:
        pass
    assert outcome is not None
    return outcome


CELLS = [(obj, op, role) for obj in OBJECTS for op in OPS for role in ROLES]


@pytest.mark.parametrize(("obj", "op", "role"), CELLS, ids=[f"{o}-{op}-{r}" for o, op, r in CELLS])
def test_matrix(phased, conn, obj, op, role):
    phase = phased[0]
    db_role, sub = ROLES[role]
    allowed, what = probe(conn, db_role, sub, PROBES[(obj, op)])
    want = expected(phase, role, op, obj)
    assert allowed == want, (f"{phase}: {role} {op} on {obj} should be {'ALLOWED' if want else 'DENIED'}, but the"
                             f" statement {what}")


@pytest.mark.parametrize(("obj", "op"), list(PROBES), ids=[f"{o}-{op}" for o, op in PROBES])
def test_every_probe_reaches_its_row_as_the_table_owner(phased, conn, obj, op):
    """A denial above means the policy refused: the same statement as the migration role succeeds."""
    allowed, what = probe(conn, None, None, PROBES[(obj, op)])
    assert allowed, what


GIVEAWAYS = {  # an owner's write that would hand a row to another agent (WITH CHECK must refuse it)
    "lead-reassigned": f"update public.leads set agent_id = '{OTHER_AGENT}' where id = '{OWN_LEAD}'",
    "lead-inserted-for-another": NEW_LEAD_SQL.replace(f"'{AGENT}')", f"'{OTHER_AGENT}')"),
    "approval-moved-to-anothers-lead": f"update public.approvals set lead_id = '{OTHERS_LEAD}'"
                                       f" where id = '{OWN_APPROVAL}'",
    "approval-inserted-on-anothers-lead": NEW_APPROVAL_SQL.replace(f"'{OWN_LEAD}'", f"'{OTHERS_LEAD}'"),
    "anothers-lead-claimed": f"update public.leads set agent_id = '{AGENT}' where id = '{OTHERS_LEAD}'",
}


@pytest.mark.parametrize("name", list(GIVEAWAYS))
def test_an_owner_cannot_write_outside_its_own_rows(phased, conn, name):
    allowed, what = probe(conn, "authenticated", AGENT, GIVEAWAYS[name])
    assert not allowed, f"{phased[0]}: {name} {what}"


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
def test_the_api_roles_have_no_privilege_on_the_cutover_schema(phased, conn, role):
    usage, create = conn.execute("select has_schema_privilege(%s, 'cutover', 'USAGE'),"
                                 " has_schema_privilege(%s, 'cutover', 'CREATE')", (role, role)).fetchone()
    assert (usage, create) == (False, False)
    grants = conn.execute("select table_name, privilege_type from information_schema.role_table_grants"
                          " where table_schema = 'cutover' and grantee = %s", (role,)).fetchall()
    assert grants == []


def test_the_write_policies_exist_exactly_in_dual_write(phased, conn):
    phase = phased[0]
    rows = conn.execute("select tablename, cmd from pg_policies where schemaname = 'public'"
                        " and roles::text[] = array['authenticated'] order by 1, 2").fetchall()
    writes = {(t, c) for t, c in rows if c != "SELECT"}
    assert {(t, "SELECT") for t in ("approvals", "leads")} <= set(rows)
    if phase == "dual_write":
        assert writes == {(t, c) for t in ("approvals", "leads") for c in ("INSERT", "UPDATE", "DELETE")}
    else:
        assert writes == set()
    assert conn.execute("select count(*) from pg_policies where schemaname = 'public'"
                        " and not roles::text[] <@ array['authenticated']").fetchone() == (0,)
