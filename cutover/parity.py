"""Exact row-level parity between a staged CSV and its target table.

The CSV is staged by the loader itself (``cutover.sync``: same typing, same reject rules) into a
table with exactly the target's column types, so both sides are already in one canonical form:
comparing them with ``IS DISTINCT FROM`` column by column is exact — NULL differs from '', an
instant is an instant whatever offset the CSV wrote, ``1.5`` equals ``1.50`` in a numeric(12,2)
column, and text is compared byte for byte. Nothing is hashed, so nothing depends on a hash
function's version.

Source rows the loader cannot represent (typing rejects) and keys the file holds more than once
are counted as ``rejected_in_source`` and their keys left out of the comparison: the table cannot
be "right" about a row the file does not state unambiguously. Parity passes only when every count
is zero.

First the source side alone (staging and the run's rejects, which only this run writes): its row
count and the keys it is ambiguous about, in one pass over the staged keys. Then the counts are
one statement over both sides (one snapshot of the target, one full hash join); when the source
is unambiguous (the usual case) that statement is a bare full join, without the anti-joins that
leave excluded keys out. Examples (up to ``EXAMPLES`` keys of each kind, with the names of the
columns that differ) are fetched only for non-zero counts: one more join for all three kinds of
difference, and a query of the run's rejects.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from uuid import UUID

import psycopg
from psycopg import sql

from cutover.ddl import ident, target
from cutover.table_digests import key_bucket_sql
from cutover.spec import TableSpec

EXAMPLES = 20


@dataclass(frozen=True)
class Parity:
    source_rows: int
    target_rows: int
    missing_in_target: int
    extra_in_target: int
    changed: int
    rejected_in_source: int
    examples: dict[str, list] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not (self.missing_in_target or self.extra_in_target or self.changed or self.rejected_in_source)

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _target(spec: TableSpec, restricted: bool) -> sql.Composable:
    """The target table, or only its rows in the buckets ``%(buckets)s`` (``cutover.table_digests``) when the
    staging table holds only the CSV's rows of those buckets."""
    if not restricted:
        return target(spec)
    # int4[] as the bucket is: psycopg sends a list of small ints as int2[], and int4 = any(int2[]) is not
    # hashed — a linear search of the array for every row (11.4 s instead of 0.35 s at 1M rows, 4,096 buckets)
    return sql.SQL("(select * from {t} where {b} = any(%(buckets)s::int4[]))").format(
        t=target(spec), b=key_bucket_sql(spec))


def _compared(spec: TableSpec, staging: str, restricted: bool = False, ambiguous: bool = True) -> sql.Composed:
    """CTEs ``s`` and ``t``: both sides without the keys the source is ambiguous about (``ambiguous`` False:
    the caller knows there are none, and the sides are taken whole)."""
    pk = ident(spec.primary_key)
    stg = ident("cutover", staging)
    if not ambiguous:
        return sql.SQL("with s as (select * from {stg}), t as (select * from {t} x)\n").format(
            stg=stg, t=_target(spec, restricted))
    return sql.SQL("""
with excluded as materialized (
  select key from cutover.rejects where run_id = %(run)s and key is not null
  union
  select {pk}::text from {stg} group by {pk} having count(*) > 1),
s as (select * from {stg} x where not exists (select 1 from excluded e where e.key = x.{pk}::text)),
t as (select * from {t} x where not exists (select 1 from excluded e where e.key = x.{pk}::text))
""").format(pk=pk, stg=stg, t=_target(spec, restricted))


def _differs(spec: TableSpec) -> sql.Composed:
    cols = [ident(c) for c in spec.column_names if c != spec.primary_key]
    return sql.SQL("({}) is distinct from ({})").format(
        sql.SQL(", ").join(sql.SQL("s.") + c for c in cols), sql.SQL(", ").join(sql.SQL("t.") + c for c in cols))


def count_query(spec: TableSpec, staging: str, restricted: bool = False) -> sql.Composed:
    pk = ident(spec.primary_key)
    return _compared(spec, staging, restricted) + sql.SQL("""
select count(*) filter (where t.{pk} is null),
       count(*) filter (where s.{pk} is null),
       count(*) filter (where s.{pk} is not null and t.{pk} is not null and {differs}),
       (select count(*) from {stg}),
       (select count(*) from {t}),
       (select count(*) from cutover.rejects where run_id = %(run)s)
         + (select coalesce(sum(n), 0)::bigint from (select count(*) n from {stg} group by {pk} having count(*) > 1) d)
from s full join t on s.{pk} = t.{pk}""").format(
        pk=pk, differs=_differs(spec), stg=ident("cutover", staging), t=_target(spec, restricted))


def source_query(spec: TableSpec, staging: str) -> sql.Composed:
    """The source side alone: (rows staged, rows sharing a key, keys shared, rejects of the run,
    rejects with a key)."""
    return sql.SQL("""
select coalesce(sum(n), 0)::bigint, coalesce(sum(n) filter (where n > 1), 0)::bigint, count(*) filter (where n > 1),
       (select count(*) from cutover.rejects where run_id = %(run)s),
       (select count(*) from cutover.rejects where run_id = %(run)s and key is not null)
from (select count(*) n from {stg} group by {pk}) k""").format(pk=ident(spec.primary_key),
                                                             stg=ident("cutover", staging))


def unambiguous_count_query(spec: TableSpec, staging: str, restricted: bool = False) -> sql.Composed:
    """``count_query`` for a source with no key to leave out: every key is once in each side."""
    pk = ident(spec.primary_key)
    return sql.SQL("""
select count(*) filter (where t.{pk} is null),
       count(*) filter (where s.{pk} is null),
       count(*) filter (where s.{pk} is not null and t.{pk} is not null and {differs}),
       count(t.{pk})
from {stg} s full join {t} t on s.{pk} = t.{pk}""").format(
        pk=pk, differs=_differs(spec), stg=ident("cutover", staging), t=_target(spec, restricted))


def examples_query(spec: TableSpec, staging: str, restricted: bool = False, ambiguous: bool = True) -> sql.Composed:
    """Up to ``EXAMPLES`` keys of each kind of difference, in key order, by one join of both sides (not one
    a kind: at 1M rows each join is seconds): rows of (kind, key, the names of the columns that differ —
    for ``changed`` only)."""
    pk = ident(spec.primary_key)
    flags = sql.SQL(", ").join(
        sql.SQL("case when s.{c} is distinct from t.{c} then {name} end").format(c=ident(c), name=sql.Literal(c))
        for c in spec.column_names if c != spec.primary_key)
    return _compared(spec, staging, restricted, ambiguous) + sql.SQL("""
select kind, key::text, columns from (
  select kind, key, columns, row_number() over (partition by kind order by key) n
  from (select case when t.{pk} is null then 'missing_in_target' when s.{pk} is null then 'extra_in_target'
                    else 'changed' end kind,
               coalesce(s.{pk}, t.{pk}) key,
               case when s.{pk} is not null and t.{pk} is not null then array_remove(array[{flags}], null) end columns
        from s full join t on s.{pk} = t.{pk}
        where s.{pk} is null or t.{pk} is null or {differs}) d) e
where n <= {n}
order by kind, n""").format(pk=pk, flags=flags, differs=_differs(spec), n=sql.Literal(EXAMPLES))


def rejects_query(spec: TableSpec, staging: str) -> sql.Composed:
    """Up to ``EXAMPLES`` of the run's rejects, then of the keys the file repeats: (key, why)."""
    return sql.SQL(
        "(select key, 'line ' || line || coalesce(' (' || column_name || ')', '') || ': ' || reason"
        " from cutover.rejects where run_id = %(run)s order by line limit {n})"
        " union all (select {pk}::text, 'duplicate key: ' || count(*) || ' rows' from {stg} group by {pk}"
        " having count(*) > 1 order by {pk} limit {n})").format(
        pk=ident(spec.primary_key), stg=ident("cutover", staging), n=sql.Literal(EXAMPLES))


def compare(conn: psycopg.Connection, spec: TableSpec, staging: str, run_id: UUID,
            buckets: list[int] | None = None) -> Parity:
    """Compare the staged file (run ``run_id``) with the target, inside the caller's transaction.
    ``buckets``: staging holds only the CSV's rows of these key buckets; compare the target's rows of
    the same buckets (the counts of rows are then those of the buckets)."""
    restricted = buckets is not None
    params = {"run": run_id, "buckets": buckets}
    source_rows, duplicate_rows, duplicate_keys, rejects, keyed_rejects = conn.execute(
        source_query(spec, staging), params).fetchone()
    ambiguous = bool(duplicate_keys or keyed_rejects)
    if ambiguous:
        missing, extra, changed, source_rows, target_rows, rejected = conn.execute(
            count_query(spec, staging, restricted), params).fetchone()
    else:
        missing, extra, changed, target_rows = conn.execute(
            unambiguous_count_query(spec, staging, restricted), params).fetchone()
        rejected = rejects + duplicate_rows
    counts = {"missing_in_target": missing, "extra_in_target": extra, "changed": changed,
              "rejected_in_source": rejected}
    found: dict[str, list] = {}
    if missing or extra or changed:
        for kind, key, columns in conn.execute(examples_query(spec, staging, restricted, ambiguous), params).fetchall():
            found.setdefault(kind, []).append({"key": key, "columns": list(columns)} if kind == "changed" else key)
    examples = {kind: found[kind] for kind in counts if kind in found}
    if rejected:
        rows = conn.execute(rejects_query(spec, staging), params).fetchall()
        examples["rejected_in_source"] = [{"key": k, "reason": why} for k, why in rows][:EXAMPLES]
    return Parity(source_rows=source_rows, target_rows=target_rows, examples=examples, **counts)
