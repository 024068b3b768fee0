"""Exporting a table as CSV, streamed from ``COPY ... TO STDOUT`` into an atomically replaced file.

The format is the loader's: spec column order, header line, NULL as an empty field, '' as ``""``,
timestamps as ISO 8601 in UTC, numerics at the column's scale — so export → sync is a no-op.
"""

from __future__ import annotations

from pathlib import Path

from psycopg import sql

from cutover.atomic import atomic_write
from cutover.db import Database
from cutover.ddl import ident, target
from cutover.spec import TableSpec


def export_table(db: Database, spec: TableSpec, out: Path) -> int:
    query = sql.SQL("copy (select {cols} from {t} order by {pk}) to stdout (format csv, header)").format(
        cols=sql.SQL(", ").join(ident(c) for c in spec.column_names), t=target(spec), pk=ident(spec.primary_key))

    def step(conn) -> int:
        with atomic_write(Path(out)) as f, conn.cursor() as cur:
            with cur.copy(query) as cp:
                for chunk in cp:
                    f.write(chunk)
            return cur.rowcount

    return db.run(step, what=f"export {spec.name}")
