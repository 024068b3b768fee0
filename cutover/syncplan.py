"""A sync run's plan and results: plain values, built with no I/O, that every step receives.

A plan names everything a run will touch — its staging table, its rejects file, its frozen snapshot
of the CSV — so that steps running in different threads, processes or Dask workers agree without
talking to each other. The snapshot helpers are here because the plan names the snapshot: writers
replace the CSV by rename, so a hard link keeps exactly the bytes a run reads.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from cutover import digest_memo, merge, state
from cutover.atomic import atomic_write, unlink_quietly
from cutover.errors import StructuralError
from cutover.spec import TableSpec


@dataclass(frozen=True)
class SyncPlan:
    """What a sync will do; built with no I/O."""

    spec: TableSpec
    specs: dict[str, TableSpec]
    csv_path: Path
    run_id: uuid.UUID
    staging: str
    rejects_file: Path
    batch_bytes: int
    mass_delete_threshold: float
    allow_mass_delete: bool
    actor: str
    diff_index_bytes: int = 64 << 20  # see Settings.diff_index_mb
    csv_digests: Path | None = None  # a validation's: where the CSV's digest sums are kept (cutover.digest_memo)

    @property
    def snapshot(self) -> Path:
        """The run's frozen view of the CSV (see ``take_snapshot``)."""
        beside = self._snapshot_beside
        return beside if beside.exists() else self._snapshot_aside

    @property
    def _snapshot_beside(self) -> Path:
        return self.csv_path.parent / f".{self.csv_path.name}.{self.run_id.hex[:12]}.snapshot"

    @property
    def _snapshot_aside(self) -> Path:  # in cutover's own home, for a read-only CSV store
        return self.rejects_file.parent / f".{self.csv_path.name}.{self.run_id.hex[:12]}.snapshot"

    @property
    def records_spill(self) -> Path:
        """Where this run spills its file's record hashes, in cutover's home, to keep them with its
        baseline (``cutover.baseline``)."""
        return self.rejects_file.parent / f".{self.csv_path.name}.{self.run_id.hex[:12]}.records"


def take_snapshot(plan: SyncPlan) -> None:
    """Freeze the CSV for this run: writers replace the file by rename, so a hard link beside it keeps
    exactly the bytes the scan sees. Where the store cannot take a link (read-only, no hard links),
    a copy goes to cutover's home instead."""
    if plan._snapshot_beside.exists() or plan._snapshot_aside.exists():
        return
    try:
        os.link(plan.csv_path, plan._snapshot_beside)
        return
    except FileNotFoundError:
        raise
    except OSError:
        pass
    plan._snapshot_aside.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plan.csv_path, plan._snapshot_aside)


def drop_snapshot(plan: SyncPlan) -> None:
    unlink_quietly(plan._snapshot_beside, plan._snapshot_aside)


LEFTOVERS = ("snapshot", "records")  # a run's snapshot of the CSV; its record hashes (SyncPlan.records_spill)


def drop_stale_snapshots(dead_runs: list[tuple[uuid.UUID, str | None]], rejects_dir: Path | None = None) -> None:
    """Unlink the files of dead runs (``state.fail_stale_runs``), named after the CSV each of them read."""
    for run, csv_path in dead_runs:
        if csv_path is None:
            continue
        csv = Path(csv_path)
        unlink_quietly(*(folder / f".{csv.name}.{run.hex[:12]}.{leftover}"
                         for folder in (csv.parent, rejects_dir) if folder is not None for leftover in LEFTOVERS))


def leftover_files(csv_path: Path, rejects_dir: Path) -> dict[str, list[Path]]:
    """The run files named after ``csv_path`` (see ``LEFTOVERS``), beside it and in cutover's home, by
    the first 12 hex digits of their run's id."""
    found: dict[str, list[Path]] = {}
    for folder in {csv_path.parent, rejects_dir}:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            head, _, kind = name.rpartition(".")
            stem, _, run = head.rpartition(".")
            if kind in LEFTOVERS and stem == f".{csv_path.name}" and len(run) == 12 \
                    and all(c in "0123456789abcdef" for c in run):
                found.setdefault(run, []).append(folder / name)
    return found


def _as_source(plan: SyncPlan, exc: StructuralError) -> StructuralError:
    """Errors name the user's file, not the run's snapshot of it."""
    snapshots = (plan._snapshot_beside, plan._snapshot_aside)
    return dataclasses.replace(exc, path=plan.csv_path) if Path(exc.path) in snapshots else exc


def plan_sync(spec: TableSpec, specs: dict[str, TableSpec], csv_path: Path, *, rejects_dir: Path,
              batch_bytes: int, mass_delete_threshold: float, allow_mass_delete: bool = False,
              actor: str = "cutover", diff_index_mb: int = 64, keep_csv_digests: bool = False) -> SyncPlan:
    run_id = uuid.uuid4()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return SyncPlan(
        spec=spec, specs=specs, csv_path=Path(csv_path).resolve(), run_id=run_id,
        staging=merge.staging_name(spec.name, run_id.hex),
        rejects_file=Path(rejects_dir) / f"{spec.name}-{stamp}-{run_id.hex[:8]}.csv",
        batch_bytes=batch_bytes, mass_delete_threshold=mass_delete_threshold,
        allow_mass_delete=allow_mass_delete, actor=actor, diff_index_bytes=diff_index_mb << 20,
        csv_digests=digest_memo.kept_at(rejects_dir, spec.name, keep_csv_digests))


@dataclass(frozen=True)
class BatchResult:
    index: int
    read: int
    staged: int
    rejected: int
    bytes: int


@dataclass(frozen=True)
class SyncResult:
    table: str
    read: int
    loaded: int
    rejected: int
    inserted: int
    updated: int
    deleted: int
    rejects_file: str | None
    duration_s: float
    run_id: str
    phase: str
    # how the rows got there: "staged" (staging table, then one merge), "direct" (the first load of an
    # empty table, one COPY), "diff" (only the records that differ from the last merged file were typed and
    # staged), "unchanged" (the file merged last time: nothing loaded)
    method: str = "staged"

    def as_dict(self) -> dict:
        return asdict(self)


def write_rejects_file(conn: psycopg.Connection, plan: SyncPlan) -> Path:
    # Written inside the merge transaction, before commit: a committed run always has its file.
    with atomic_write(plan.rejects_file) as f, conn.cursor() as cur:
        with cur.copy(merge.export_rejects().format(run=psycopg.sql.Literal(str(plan.run_id)))) as cp:
            for chunk in cp:
                f.write(chunk)
    return plan.rejects_file


def reap_dead_runs(conn: psycopg.Connection, plan: SyncPlan) -> None:
    """Fail the table's runs whose heartbeat stopped, and drop every staging table and snapshot whose run
    is over (theirs, and any other finished run's: the snapshots of those long over, named after this
    run's CSV). Every run start does this, skipped syncs included."""
    dead_runs = state.fail_stale_runs(conn, plan.spec.name)
    for stg in state.finished_staging(conn, plan.spec.name, merge.staging_name(plan.spec.name, "")):
        conn.execute(merge.drop_staging(stg))
    drop_stale_snapshots(dead_runs, plan.rejects_file.parent)
    # a run killed after its commit, before unlinking its snapshot, is over but left it; listed before
    # the query: a snapshot's run is recorded before the snapshot is taken (``sync.begin``), so it is seen
    found = leftover_files(plan.csv_path, plan.rejects_file.parent)
    for run in state.runs_long_over(conn, list(found)) if found else ():
        unlink_quietly(*found[run])
