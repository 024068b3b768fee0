"""Security checks that are part of every target validation.

Each probe runs as an API role (``SET LOCAL ROLE`` with Supabase's ``request.jwt.claims``) inside
a transaction that is always rolled back, so a check never leaves a row behind even when a write
it expected to be denied goes through. What is checked, per migrated table:

- RLS is enabled and the spec's read policy for ``authenticated`` exists;
- ``anon`` sees 0 rows, and its insert is refused (updates and deletes reach no row);
- ``authenticated`` with a given ``sub`` sees exactly that agent's rows (counted independently of
  the policy, from the spec's ownership rule) and none of another's, and cannot insert;
and once: the ``cutover`` schema is unreachable for ``anon`` and ``authenticated``.

The expected visibility is computed from the spec as the migration role, not from the policy:
a dropped or widened policy shows as a difference.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass

import psycopg
from psycopg import errors, sql

from cutover.ddl import ident, policy_name, target
from cutover.spec import TableSpec

API_ROLES = ("anon", "authenticated")


@dataclass(frozen=True)
class SecurityCheck:
    check: str
    table: str | None
    passed: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


class _Rollback(Exception):
    pass


def _as_role(conn: psycopg.Connection, role: str, sub: str | None, probe):
    """Run ``probe(conn)`` as ``role`` in a savepoint that is rolled back; return its result."""
    result = None
    try:
        with conn.transaction():
            conn.execute(sql.SQL("set local role {}").format(ident(role)))
            claims = {"role": role, **({"sub": sub} if sub else {})}
            conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
            result = probe(conn)
            raise _Rollback
    except _Rollback:
        pass
    return result


def _denied(conn: psycopg.Connection, statement: sql.Composable, params=None) -> tuple[bool, str]:
    """(denied?, what happened) for a statement that must be refused with insufficient_privilege."""
    try:
        with conn.transaction():
            cur = conn.execute(statement, params)
            return False, f"allowed ({cur.rowcount} rows)"
    except errors.InsufficientPrivilege as exc:
        return True, (exc.diag.message_primary or "permission denied")
    except psycopg.Error as exc:  # refused for another reason: RLS did not decide it
        return False, f"failed with {type(exc).__name__} instead of a permission error"


def _owner_filter(spec: TableSpec, specs: dict[str, TableSpec]) -> sql.Composable:
    """Rows of ``spec`` that the agent ``%(sub)s`` owns, per the spec (not the policy)."""
    if spec.rls.owner_column:
        return sql.SQL("{} = %(sub)s::uuid").format(ident(spec.rls.owner_column))
    fk = spec.column(spec.rls.via_parent)
    parent = specs[fk.references[0]]
    return sql.SQL("{fk} in (select {ppk} from {parent} where {owner} = %(sub)s::uuid)").format(
        fk=ident(fk.name), ppk=ident(parent.primary_key), parent=target(parent),
        owner=ident(parent.rls.owner_column))


def _probe_insert(spec: TableSpec) -> sql.Composed:
    # Values of the right type for every column; RLS's WITH CHECK is evaluated before constraints,
    # so a foreign key that matches nothing still yields the permission error being tested.
    def value(c):
        if c.type == "uuid":
            return sql.Literal(str(uuid.uuid4())) + sql.SQL("::uuid")
        if c.type == "timestamptz":
            return sql.SQL("now()")
        if c.type == "numeric":
            return sql.SQL("0")
        if c.enum:
            return sql.Literal(c.enum[0])
        return sql.Literal("x" * (c.length or 1))

    return sql.SQL("insert into {} ({}) values ({})").format(
        target(spec), sql.SQL(", ").join(ident(c.name) for c in spec.columns),
        sql.SQL(", ").join(value(c) for c in spec.columns))


def default_subject(conn: psycopg.Connection, specs: dict[str, TableSpec]) -> str:
    """The agent owning the most rows of the first owner-scoped table (a random one if none)."""
    for spec in specs.values():
        if spec.rls.owner_column:
            row = conn.execute(sql.SQL("select {c}::text from {t} where {c} is not null group by {c}"
                                       " order by count(*) desc, {c} limit 1").format(
                c=ident(spec.rls.owner_column), t=target(spec))).fetchone()
            if row:
                return row[0]
    return str(uuid.uuid4())


def check_table(conn: psycopg.Connection, spec: TableSpec, specs: dict[str, TableSpec], sub: str) -> list[SecurityCheck]:
    t = target(spec)
    out: list[SecurityCheck] = []
    rls = conn.execute("select relrowsecurity from pg_class where oid = %s::regclass", (spec.qualified,)).fetchone()
    out.append(SecurityCheck("rls_enabled", spec.name, bool(rls and rls[0]),
                             "row level security is enabled" if rls and rls[0] else "row level security is DISABLED"))
    policy = conn.execute(
        "select cmd, roles::text[] from pg_policies where schemaname = 'public' and tablename = %s and policyname = %s",
        (spec.name, policy_name(spec))).fetchone()
    ok = policy is not None and policy[0] in ("SELECT", "ALL") and "authenticated" in policy[1]
    out.append(SecurityCheck("policy_present", spec.name, ok,
                             f"policy {policy_name(spec)} for authenticated" + ("" if ok else " is MISSING or changed")))

    seen = _as_role(conn, "anon", None, lambda c: c.execute(sql.SQL("select count(*) from {}").format(t)).fetchone()[0])
    out.append(SecurityCheck("anon_reads_nothing", spec.name, seen == 0, f"anon sees {seen} rows"))
    for role in API_ROLES:
        denied, what = _as_role(conn, role, str(uuid.uuid4()), lambda c: _denied(c, _probe_insert(spec)))
        out.append(SecurityCheck(f"{role}_insert_denied", spec.name, denied, f"insert as {role}: {what}"))
    touched = _as_role(conn, "anon", None, lambda c: (
        c.execute(sql.SQL("update {} set {pk} = {pk}").format(t, pk=ident(spec.primary_key))).rowcount
        + c.execute(sql.SQL("delete from {}").format(t)).rowcount))
    out.append(SecurityCheck("anon_writes_nothing", spec.name, touched == 0,
                             f"anon's update and delete reached {touched} rows"))

    owned = sql.SQL("select count(*) from {} where {}").format(t, _owner_filter(spec, specs))
    expected = conn.execute(owned, {"sub": sub}).fetchone()[0]
    visible, foreign = _as_role(conn, "authenticated", sub, lambda c: c.execute(
        sql.SQL("select count(*), count(*) filter (where not coalesce({}, false)) from {}").format(_owner_filter(spec, specs), t),
        {"sub": sub}).fetchone())
    ok = visible == expected and foreign == 0
    out.append(SecurityCheck(
        "authenticated_sees_own_rows", spec.name, ok,
        f"agent {sub} sees {visible} rows, owns {expected}" + (f", {foreign} of them not theirs" if foreign else "")))
    return out


def check_private_schema(conn: psycopg.Connection) -> list[SecurityCheck]:
    out = []
    for role in API_ROLES:
        usage = conn.execute("select has_schema_privilege(%s, 'cutover', 'USAGE')", (role,)).fetchone()[0]
        denied, what = _as_role(conn, role, None, lambda c: _denied(c, sql.SQL("select 1 from cutover.table_state")))
        out.append(SecurityCheck(f"cutover_schema_closed_to_{role}", None, denied and not usage,
                                 f"{role}: {'has USAGE on schema cutover; ' if usage else ''}{what}"))
    return out


def check_all(conn: psycopg.Connection, specs: dict[str, TableSpec], tables: list[str], sub: str | None = None
              ) -> tuple[str, list[SecurityCheck]]:
    """All checks for ``tables`` (and the private schema), as agent ``sub`` (default: the largest owner)."""
    sub = sub or default_subject(conn, specs)
    checks = [c for name in tables for c in check_table(conn, specs[name], specs, sub)]
    return sub, checks + check_private_schema(conn)
