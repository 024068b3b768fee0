"""The ``sync`` flow: bring the mirror of every table up to date with its CSV (scheduled).

A table is synced only while the CSV is its source of truth (phases ``mirror`` and
``dual_write``); a table not mirrored yet is left to the ``mirror`` flow, and one the database
owns is never overwritten from the CSV. Parents are synced before children, so an approval is
checked against the leads of the same run.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, unmapped

from cutover.spec import select_tables
from cutover.state import SYNCABLE
from tasks import resources
from tasks.artifacts import publish_counts
from tasks.sync import (abort_sync, begin_sync, load_batch, merge_sync, plan_sync, scan_csv, skip_unchanged,
                        sync_changes, table_phases)


@flow(name="sync-table", flow_run_name="sync {table}")
def sync_table(table: str, csv: str | None = None, allow_mass_delete: bool = False) -> dict:
    """One table: plan, begin, scan, then merge only the records that changed since the last merged file
    or, when there is no such file to diff against, load the batches (mapped) and merge them — each in
    one transaction; nothing at all when the CSV is the one already merged."""
    started = time.time()
    plan = plan_sync(table, csv, allow_mass_delete)
    result = skip_unchanged(plan, started)
    if result is None:
        base_version = begin_sync(plan)
        try:
            fscan = scan_csv(plan)
            result = sync_changes(plan, fscan, base_version, started) if base_version else None
            if result is None:
                loads = load_batch.map(unmapped(plan), unmapped(fscan.header), fscan.batches)
                result = merge_sync(plan, fscan, loads.result(), base_version, started)
        except BaseException as exc:
            abort_sync(plan, f"{type(exc).__name__}: {exc}")
            raise
    get_run_logger().info("%s: read %d, loaded %d, rejected %d; +%d ~%d -%d", table, result.read, result.loaded,
                          result.rejected, result.inserted, result.updated, result.deleted)
    return result.as_dict()


def table_flow(flow_fn=None):
    """``sync_table`` on the configured task runner: threads, or the Dask cluster of CUTOVER_DASK_ADDRESS
    (each Dask worker reads its own environment and opens its own pool; the tasks do not change)."""
    flow_fn = flow_fn or sync_table
    address = resources.settings().dask_address
    if not address:
        return flow_fn
    from prefect_dask import DaskTaskRunner

    return flow_fn.with_options(task_runner=DaskTaskRunner(address=address))


@flow(name="sync")
def sync(tables: list[str] | None = None, allow_mass_delete: bool = False) -> dict[str, dict]:
    """Incremental sync of every table (or ``tables``) whose CSV is the source of truth."""
    names = select_tables(resources.specs(), tables)
    phases = table_phases(names)
    results, skipped = {}, {}
    for table in names:
        if phases[table] in SYNCABLE:
            results[table] = table_flow()(table, allow_mass_delete=allow_mass_delete)
        else:
            skipped[table] = ("not mirrored yet: run the mirror flow first" if phases[table] is None
                              else f"phase {phases[table]}: the database is the source of truth")
            get_run_logger().info("%s skipped: %s", table, skipped[table])
    publish_counts("sync-counts", results, skipped)
    return results
