"""The ``mirror`` flow: phase 1. Bootstrap the database, then load every table's CSV in full;
the first successful load records the table in phase ``mirror`` (with a history row).

Idempotent: rerunning it re-syncs tables already mirrored (a no-op when nothing changed) and
leaves alone tables in a later phase, whose source of truth is the database.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from cutover.spec import select_tables
from cutover.state import SYNCABLE
from flows.sync import table_flow
from tasks import resources
from tasks.artifacts import publish_counts
from tasks.sync import bootstrap_database, table_phases


@flow(name="mirror")
def mirror(tables: list[str] | None = None) -> dict[str, dict]:
    names = select_tables(resources.specs(), tables)
    bootstrap_database()
    phases = table_phases(names)
    results, skipped = {}, {}
    for table in names:
        if phases[table] is None or phases[table] in SYNCABLE:
            results[table] = table_flow()(table)
        else:
            skipped[table] = f"phase {phases[table]}: already past the mirror"
            get_run_logger().info("%s skipped: %s", table, skipped[table])
    publish_counts("mirror-counts", results, skipped)
    return results
