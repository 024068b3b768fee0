"""Scheduled upkeep while a migration is under way: ``reconcile`` (dual writes whose database half
failed are repaired from the CSV) and ``backup`` (the CSV of a promoted table is brought up to
date from the change log)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from cutover.spec import select_tables
from tasks import resources
from tasks.sync import table_phases
from tasks.transitions import backup_table, drain_outbox


@flow(name="reconcile")
def reconcile(tables: list[str] | None = None) -> dict[str, int]:
    names = select_tables(resources.specs(), tables)
    phases = table_phases(names)
    repaired = {t: drain_outbox(t) for t in names if phases[t] == "dual_write"}
    get_run_logger().info("repaired: %s", repaired)
    create_table_artifact(key="reconcile", table=[{"table": t, "repaired": n} for t, n in repaired.items()] or
                          [{"table": "-", "repaired": 0}], description="dual writes repaired from the outbox")
    return repaired


@flow(name="backup")
def backup(tables: list[str] | None = None) -> dict[str, dict]:
    names = select_tables(resources.specs(), tables)
    phases = table_phases(names)
    results = {t: backup_table(t) for t in names if phases[t] == "promoted"}
    create_table_artifact(key="backup", table=list(results.values()) or [{"table": "-"}],
                          description="CSV backups brought up to date from the change log")
    return results
