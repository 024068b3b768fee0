"""Repairing dual writes whose Supabase half failed.

In ``dual_write`` the CSV is written first and is the truth; when the database write then fails,
the application records the key in the outbox (``cutover.outbox``). ``drain`` makes the table
agree with the CSV for each recorded key — the row as the CSV holds it now, or no row if the CSV
no longer has it — in one transaction per batch, then removes the entries. It is idempotent: an
entry applied twice, or a key written again since, converges to the CSV's current row. It runs as
the migration role (an operator's repair, like a sync), never on the application path.
"""

from __future__ import annotations

from psycopg import sql

from cutover.csvstore import CsvStore
from cutover.db import Database
from cutover.ddl import ident, target, upsert_row
from cutover.outbox import Outbox
from cutover.spec import TableSpec

BATCH = 500


def drain(db: Database, spec: TableSpec, store: CsvStore, outbox: Outbox) -> int:
    """Apply every pending outbox entry of ``spec``'s table; returns how many were repaired."""
    repaired = 0
    while entries := outbox.pending(spec.name, limit=BATCH):
        keys = sorted({e.key for e in entries})
        found = store.get_many(keys)  # one pass over the file, whatever the number of keys
        rows = {k: found.get(k) for k in keys}

        def step(conn):
            for key, row in rows.items():
                if row is None:
                    conn.execute(sql.SQL("delete from {} where {}::text = %s").format(
                        target(spec), ident(spec.primary_key)), (key,))
                else:
                    conn.execute(upsert_row(spec), [row[c] for c in spec.column_names])

        db.run(step, what=f"repair {len(keys)} {spec.name} rows from the outbox")
        outbox.done([e.id for e in entries])
        repaired += len(entries)
    return repaired
