"""SQL derived from table specs: tables, constraints, RLS policies, grants. Pure functions only.

Every statement is idempotent, so the bootstrap can run against a fresh embedded server, an
existing mirror, or a real Supabase project that already has roles, schemas and policies.
"""

from __future__ import annotations

from psycopg import sql

from cutover.spec import Column, SpecError, TableSpec

APP_ROLES = ("anon", "authenticated", "service_role")


def ident(*parts: str) -> sql.Identifier:
    return sql.Identifier(*parts)


def target(spec: TableSpec) -> sql.Identifier:
    return ident("public", spec.name)


def column_check(spec: TableSpec, col: Column) -> sql.Composable | None:
    name = ident(col.name)
    if col.enum:
        return sql.SQL("{} in ({})").format(name, sql.SQL(", ").join(sql.Literal(v) for v in col.enum))
    if col.length is not None:
        return sql.SQL("char_length({}) = {}").format(name, sql.Literal(col.length))
    return None


def create_table(spec: TableSpec) -> sql.Composed:
    items: list[sql.Composable] = []
    for col in spec.columns:
        parts = [ident(col.name), sql.SQL(col.sql_type)]
        if not col.nullable:
            parts.append(sql.SQL("not null"))
        items.append(sql.SQL(" ").join(parts))
    items.append(sql.SQL("constraint {} primary key ({})").format(
        ident(f"{spec.name}_pkey"), ident(spec.primary_key)))
    for col in spec.columns:
        check = column_check(spec, col)
        if check is not None:
            items.append(sql.SQL("constraint {} check ({})").format(ident(f"{spec.name}_{col.name}_check"), check))
    for col in spec.foreign_keys:
        parent, parent_col = col.references
        # CSV is the truth in mirror: a parent deleted there takes its children with it here;
        # children left behind in the child CSV are then rejected as orphans and reported.
        items.append(sql.SQL("constraint {} foreign key ({}) references {} ({}) on delete cascade").format(
            ident(f"{spec.name}_{col.name}_fkey"), ident(col.name), ident("public", parent), ident(parent_col)))
    return sql.SQL("create table if not exists {} (\n  {}\n)").format(
        target(spec), sql.SQL(",\n  ").join(items))


def fk_indexes(spec: TableSpec) -> list[sql.Composed]:
    return [sql.SQL("create index if not exists {} on {} ({})").format(
        ident(f"{spec.name}_{c.name}_idx"), target(spec), ident(c.name)) for c in spec.foreign_keys]


def rls_predicate(spec: TableSpec, specs: dict[str, TableSpec]) -> sql.Composable:
    """Who may see a row as ``authenticated``: the agent that owns it, or owns its parent row."""
    if spec.rls.owner_column:
        return sql.SQL("{} = (select auth.uid())").format(ident(spec.rls.owner_column))
    fk = spec.column(spec.rls.via_parent)
    parent = specs[fk.references[0]]
    if not parent.rls.owner_column:
        raise SpecError(f"{spec.name}: rls.via_parent must point at a table with rls.owner_column")
    return sql.SQL("exists (select 1 from {} p where p.{} = {}.{} and p.{} = (select auth.uid()))").format(
        target(parent), ident(parent.primary_key), target(spec), ident(fk.name), ident(parent.rls.owner_column))


def policy_name(spec: TableSpec) -> str:
    return f"{spec.name}_select_own"


def security(spec: TableSpec, specs: dict[str, TableSpec]) -> list[sql.Composed]:
    """RLS on, one read policy for authenticated, Supabase-like grants minus what RLS cannot guard."""
    t = target(spec)
    roles = sql.SQL(", ").join(ident(r) for r in APP_ROLES)
    return [
        sql.SQL("alter table {} enable row level security").format(t),
        sql.SQL("drop policy if exists {} on {}").format(ident(policy_name(spec)), t),
        sql.SQL("create policy {} on {} as permissive for select to authenticated using ({})").format(
            ident(policy_name(spec)), t, rls_predicate(spec, specs)),
        # Supabase grants these to every API role and lets RLS decide; we do the same ...
        sql.SQL("grant select, insert, update, delete on {} to {}").format(t, roles),
        # ... except TRUNCATE/REFERENCES/TRIGGER, which row-level security does not govern.
        sql.SQL("revoke truncate, references, trigger on {} from anon, authenticated").format(t),
    ]


# --- from dual_write on: the application writes the table (as authenticated), and every write is logged

WRITE_COMMANDS = ("insert", "update", "delete")


def write_policy_name(spec: TableSpec, command: str) -> str:
    return f"{spec.name}_{command}_own"


def write_policies(spec: TableSpec, specs: dict[str, TableSpec]) -> list[sql.Composed]:
    """An agent may insert, update and delete its own rows (the read rule, as USING and WITH CHECK)."""
    t, own = target(spec), rls_predicate(spec, specs)
    stmts = drop_write_policies(spec)
    for command in WRITE_COMMANDS:
        using = sql.SQL(" using ({})").format(own) if command != "insert" else sql.SQL("")
        check = sql.SQL(" with check ({})").format(own) if command != "delete" else sql.SQL("")
        stmts.append(sql.SQL("create policy {} on {} as permissive for {} to authenticated{}{}").format(
            ident(write_policy_name(spec, command)), t, sql.SQL(command), using, check))
    return stmts


def drop_write_policies(spec: TableSpec) -> list[sql.Composed]:
    return [sql.SQL("drop policy if exists {} on {}").format(ident(write_policy_name(spec, c)), target(spec))
            for c in WRITE_COMMANDS]


def change_capture(spec: TableSpec) -> list[sql.Composed]:
    """Row triggers logging every write into cutover.change_log, and a statement trigger that bumps
    the table's data_version (so a validation report goes stale on any write)."""
    t = target(spec)
    return drop_change_capture(spec) + [
        sql.SQL("create trigger cutover_capture after insert or update or delete on {} for each row"
                " execute function cutover.capture_change({})").format(t, sql.Literal(spec.primary_key)),
        sql.SQL("create trigger cutover_data_version after insert or update or delete on {} for each statement"
                " execute function cutover.bump_data_version()").format(t),
    ]


def write_version(spec: TableSpec) -> sql.Composed:
    """A statement trigger, present in every phase, that bumps the table's data_version on any write.
    A sync may then skip a CSV it has already merged: no write can have reached the table unseen.
    (From dual_write on, change capture bumps it too; a version counts writes, so twice is harmless.)"""
    return sql.SQL("create or replace trigger cutover_write_version after insert or update or delete or truncate"
                   " on {} for each statement execute function cutover.bump_data_version()").format(target(spec))


def drop_change_capture(spec: TableSpec) -> list[sql.Composed]:
    t = target(spec)
    return [sql.SQL("drop trigger if exists cutover_capture on {}").format(t),
            sql.SQL("drop trigger if exists cutover_data_version on {}").format(t)]


def upsert_row(spec: TableSpec) -> sql.Composed:
    """Insert one row given as text (cast by PostgreSQL), or update it where it differs."""
    others = [ident(c) for c in spec.column_names if c != spec.primary_key]
    return sql.SQL("insert into {t} ({cols}) values ({values}) on conflict ({pk}) do update set ({others}) = ({ex})"
                   " where ({tothers}) is distinct from ({ex})").format(
        t=target(spec), cols=sql.SQL(", ").join(ident(c) for c in spec.column_names),
        values=sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(c.sql_type)) for c in spec.columns),
        pk=ident(spec.primary_key), others=sql.SQL(", ").join(others),
        ex=sql.SQL(", ").join(sql.SQL("excluded.") + c for c in others),
        tothers=sql.SQL(", ").join(sql.SQL("{}.{}").format(target(spec), c) for c in others))
