"""The end every merge shares, staged or diff: the lock and checks before it, the guard against a
truncated file, and, inside its transaction, the table's versions, history, rejects file and run record.

Contract: ``lock_for_merge`` first, in the merge's transaction (it takes the table's advisory lock and
refuses if another merge or transition came first); ``finish`` last, in the same transaction;
``keep_baseline`` after it commits. Nothing here reads the CSV.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from cutover import baseline, csvscan, merge, state
from cutover.errors import ConcurrentChange, MassDeleteRefused, PhaseError
from cutover.fingerprint import basis
from cutover.syncplan import SyncPlan, SyncResult, drop_snapshot, drop_stale_snapshots, write_rejects_file


def lock_for_merge(conn: psycopg.Connection, plan: SyncPlan, base_version: int) -> state.TableState:
    """Take the table's lock and check that nothing merged or moved it since the run began."""
    spec = plan.spec
    state.table_lock(conn, spec.name)
    current = state.get_state(conn, spec.name, for_update=True)
    if current.version != base_version:
        raise ConcurrentChange(
            f"{spec.name} changed while this sync was loading (another sync or a phase transition"
            " finished first); nothing was applied — rerun the sync")
    if current.phase is not None and current.phase not in state.SYNCABLE:
        raise PhaseError(f"{spec.name} moved to phase {current.phase} during the sync; nothing was applied")
    return current


def refuse_mass_delete(plan: SyncPlan, to_delete: int, total: int) -> None:
    """The guard against a truncated CSV: deleting more than the threshold's share needs a flag."""
    if total and to_delete > plan.mass_delete_threshold * total and not plan.allow_mass_delete:
        raise MassDeleteRefused(
            f"sync would delete {to_delete} of {total} rows of {plan.spec.name} ({to_delete / total:.0%}, more than"
            f" the {plan.mass_delete_threshold:.0%} allowed): is {plan.csv_path.name} truncated?"
            " Nothing was applied. If the deletions are intended, rerun with --allow-mass-delete.")


def keep_baseline(plan: SyncPlan, fscan: csvscan.FileScan, rows: int,
                  records: tuple[Path, str, tuple[int, int]] | None = None) -> None:
    """After a merge commits: its snapshot of the CSV becomes the table's baseline (``cutover.delta``),
    with the file's record hashes when the merge spilled them (``baseline.keep``)."""
    if plan.snapshot.exists():
        baseline.keep(plan.snapshot, plan.spec.name, fscan, rows, plan.rejects_file.parent, records)
    elif records is not None:
        records[0].unlink(missing_ok=True)
    drop_snapshot(plan)  # a link to the baseline's own inode survives the rename: rename(2) leaves both


def find_baseline(plan: SyncPlan) -> baseline.Baseline | None:
    return baseline.find(plan.spec.name, plan.rejects_file.parent)


def finish(conn: psycopg.Connection, plan: SyncPlan, fscan: csvscan.FileScan, current: state.TableState,
            started: float, *, read: int, loaded: int, rejected: int, inserted: int, updated: int,
            deleted: int, method: str = "staged") -> SyncResult:
    """The end of a merge, inside its transaction: versions, history, rejects file, the run's record,
    reaping dead runs and this run's staging."""
    spec = plan.spec
    new_state = state.record_merge(conn, spec.name, data_changed=bool(deleted or updated or inserted))
    if current.phase is None:  # record_merge put the table in mirror: say so in its history
        state.append_history(conn, spec.name, None, "mirror", actor=plan.actor, reason="first full load",
                             started_at=datetime.fromtimestamp(started, timezone.utc), run_id=plan.run_id)
    rejects_file = write_rejects_file(conn, plan) if rejected else None
    conn.execute(
        """update cutover.runs set status = 'succeeded', finished_at = now(), csv_sha256 = %s, csv_bytes = %s,
             rows_read = %s, rows_loaded = %s, rows_rejected = %s, inserted = %s, updated = %s, deleted = %s,
             rejects_file = %s, merged_version = %s, basis = %s where run_id = %s""",
        (fscan.sha256, fscan.size, read, loaded, rejected, inserted, updated, deleted,
         str(rejects_file) if rejects_file else None, new_state.data_version, basis(conn, spec), plan.run_id))
    dead_runs = state.fail_stale_runs(conn, spec.name, before=plan.run_id)
    for dead, _ in dead_runs:
        conn.execute(merge.drop_staging(merge.staging_name(spec.name, dead.hex)))
    drop_stale_snapshots(dead_runs, plan.rejects_file.parent)
    conn.execute(merge.drop_staging(plan.staging))
    return SyncResult(table=spec.name, read=read, loaded=loaded, rejected=rejected, inserted=inserted,
                      updated=updated, deleted=deleted, rejects_file=str(rejects_file) if rejects_file else None,
                      duration_s=round(max(0.0, time.time() - started), 3), run_id=str(plan.run_id),
                      phase=new_state.phase, method=method)
