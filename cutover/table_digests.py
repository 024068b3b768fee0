"""The table's side of ``cutover.digests``: the SQL that sums a table's rows, and its running.

Contract: for the same rows, ``target_sql`` and ``target_totals_sql`` give the sums that
``cutover.digests.source_sums`` gives for a CSV (the canonical text, the digest and the buckets are
described there, and both sides share the constants below). This module imports no polars or numpy,
so that a command can start PostgreSQL's sums before it loads them (``cutover.totals_ahead``).

Concurrency: ``aggregate`` runs in the caller's transaction and connection, and changes its settings
only for the one statement.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from cutover.ddl import ident, target
from cutover.spec import Column, TableSpec

# 4,096 buckets: a one-row difference stages 1/4,096 of the file. More would cost PostgreSQL's sums
# more than they save (at 65,536, a quarter more time: the hash table no longer fits the CPU's cache).
BUCKET_DIGITS = 3
BUCKETS = 16 ** BUCKET_DIGITS
SEPARATOR = "\x1f"
MASK_BITS = 62  # NULL flags per int8 field of the bitmask


def masks(spec: TableSpec) -> list[list[Column]]:
    """The nullable columns, grouped by the int8 fields of the canonical text's bitmask."""
    nullable = [c for c in spec.columns if c.nullable]
    return [nullable[i:i + MASK_BITS] for i in range(0, len(nullable), MASK_BITS)]


# ``date_part('epoch', t)`` is a float8: t's microseconds since 1970 (an exact integer n), divided by 10^6 and
# rounded once. Times 10^6, rounded again, then to the nearest integer, it gives n back exactly while |n| <
# 2^51 (the two roundings err by at most |n|·2^-52 together, under one half): from 1898 to 2041. Inside this
# window, which most data falls in, it costs half of ``extract``'s numeric arithmetic, exact everywhere.
FLOAT_EXACT = ("1900-01-01 00:00:00+00", "2040-01-01 00:00:00+00")
# From PostgreSQL 18, bytea casts to int8: a timestamptz's binary form, its microseconds since 2000, read as
# a number costs less than either (1M rows, two timestamp columns: ~0.25 s less of the server's ~3 s).
BYTEA_TO_INT8 = 180_000  # server_version_num
MICROS_1970_TO_2000 = 946_684_800_000_000


def sql_field(c: Column, version: int = 0) -> sql.Composable:
    """A field of the canonical text, for a server of ``version`` (``server_version_num``; 0: any)."""
    col = ident(c.name)
    if c.type == "timestamptz" and version >= BYTEA_TO_INT8:
        return sql.SQL("case when isfinite({c}) then (timestamptz_send({c})::int8 + {shift})::text"
                       " else {c}::text end").format(c=col, shift=sql.Literal(MICROS_1970_TO_2000))
    if c.type == "timestamptz":
        return sql.SQL("case when {c} >= {lo}::timestamptz and {c} < {hi}::timestamptz"
                       " then round(date_part('epoch', {c}) * 1000000)::int8::text"
                       " when isfinite({c}) then (extract(epoch from {c}) * 1000000)::int8::text"
                       " else {c}::text end").format(c=col, lo=sql.Literal(FLOAT_EXACT[0]),
                                                     hi=sql.Literal(FLOAT_EXACT[1]))
    return sql.SQL("{}::text").format(col) if c.type != "text" else col


def _mask(columns: list[Column]) -> sql.Composable:
    return sql.SQL("({})::text").format(sql.SQL(" + ").join(
        sql.SQL("({} is null)::int * {}::int8").format(ident(c.name), sql.Literal(1 << i)) for i, c in enumerate(columns)))


def key_bucket_sql(spec: TableSpec) -> sql.Composable:
    """The bucket of a table row's key, in SQL: the MD5's first hex digits; for a uuid, cheaper, the top
    bits of its first two bytes XOR its last two (random in v4 and v7, time and counter bits in v1),
    read from its binary form. A poor spread would only make a difference stage more rows, never change
    a result."""
    key = spec.column(spec.primary_key)
    bits = sql.Literal(4 * BUCKET_DIGITS)
    if key.type == "uuid":
        byte = [sql.SQL("get_byte(uuid_send({}), {})").format(ident(key.name), sql.Literal(i)) for i in (0, 14, 1, 15)]
        return sql.SQL("((({} # {}) << 8 | ({} # {})) >> {})").format(*byte, sql.Literal(16 - 4 * BUCKET_DIGITS))
    return sql.SQL("('x' || left(md5({}), {}))::bit({})::int").format(sql_field(key), sql.Literal(BUCKET_DIGITS), bits)


def row_sql(spec: TableSpec, version: int) -> sql.Composed:
    """A row's canonical text (see the module docstring), for a server of ``version`` (``sql_field``)."""
    fields = [sql_field(c, version) for c in spec.columns] + [_mask(m) for m in masks(spec)]
    return sql.SQL("concat_ws({}, {})").format(sql.Literal(SEPARATOR), sql.SQL(", ").join(fields))


def target_sql(spec: TableSpec, version: int) -> sql.Composed:
    """(bucket, rows, x0, x1) of the whole table, aggregated in PostgreSQL (run it with ``enable_sort``
    off: the planner cannot know how few buckets there are); ``version``: see ``sql_field``."""
    return sql.SQL("""
select b, n, substring(x from 1 for 64)::int8, substring(x from 65 for 64)::int8
from (select b, count(*)::int8 n, bit_xor(d) x
      from (select {bucket} b, ('x' || md5({row}))::bit(128) d from {t}) r
      group by b) g""").format(bucket=key_bucket_sql(spec), row=row_sql(spec, version), t=target(spec))


def target_totals_sql(spec: TableSpec, version: int) -> sql.Composed:
    """(rows, the XOR of every row's digest as a bit(128)) of the whole table: ``target_sql`` without its
    buckets, whose hashing and grouping are a third of its cost (see ``Sums.totals``)."""
    return sql.SQL("select count(*)::int8, bit_xor(('x' || md5({row}))::bit(128)) from {t}").format(
        row=row_sql(spec, version), t=target(spec))


def totals_of(row: tuple[int, str | None]) -> tuple[int, int, int]:
    """``target_totals_sql``'s row as ``cutover.digests.Sums.totals`` gives the CSV's (an empty table XORs to NULL)."""
    count, bits = row
    xor = int(bits, 2) if bits else 0
    return count, xor >> 64, xor & (1 << 64) - 1


def aggregate(conn: psycopg.Connection, query: sql.Composed, *, parallel: bool) -> list[tuple]:
    """``query``'s rows, aggregated over the table. ``parallel`` False: one server process does it (its
    parallel workers would take the cores from work this one overlaps with)."""
    settings = ("enable_sort", "work_mem", "max_parallel_workers_per_gather")
    before = conn.execute("select " + ", ".join(f"current_setting('{s}')" for s in settings)).fetchone()
    # the planner cannot know there are only 4,096 buckets: left alone, it sorts the whole table
    during = ("off", "64MB", before[2] if parallel else "0")
    conn.execute("select " + ", ".join(f"set_config('{s}', %s, true)" for s in settings), during)
    rows = conn.execute(query).fetchall()
    conn.execute("select " + ", ".join(f"set_config('{s}', %s, true)" for s in settings), before)
    return rows


def totals(conn: psycopg.Connection, spec: TableSpec, *, parallel: bool = True) -> tuple[int, int, int]:
    """The table's sums, all buckets together (``cutover.digests.Sums.totals``)."""
    [row] = aggregate(conn, target_totals_sql(spec, conn.info.server_version), parallel=parallel)
    return totals_of(row)
