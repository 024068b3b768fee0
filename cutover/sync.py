"""Syncing one table from its CSV file: plan, begin, load batches, merge — or abort.

The steps are separate functions so that the CLI can run them in-process (``run_sync``) and the
Prefect flows can run each one as a task, mapping ``load_batch`` over the batches on any task
runner (threads, or a Dask cluster: every argument is picklable and each process opens its own
pool). The guarantees do not depend on who runs the steps:

- nothing reaches the target table before ``merge``, which applies everything in ONE transaction
  (inserts, updates, deletes, the run record, the table's version): a run that fails or is killed
  at any point leaves the target exactly as it was, and rerunning completes the work;
- every data row is counted once: ``read = loaded + rejected``, checked before commit;
- a run is merged only if no other merge or transition of the table happened since it began
  (optimistic version check under the table's advisory lock), so a slow run can never overwrite
  a newer one;
- each batch's load is one transaction, retried as a unit on transient errors, and idempotent;
- the run reads a frozen snapshot of the CSV: ``scan`` hard-links the file under a private name, so
  an application that replaces the CSV meanwhile (atomically, by rename) cannot shift the bytes
  under the batches' offsets; the link is removed when the run ends.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import polars as pl

from cutover import bootstrap, csvscan, merge, state
from cutover.atomic import atomic_write
from cutover.coerce import coerce
from cutover.db import Database
from cutover.errors import (ConcurrentChange, CutoverError, MassDeleteRefused, PhaseError, StagingLost,
                            StructuralError)
from cutover.spec import TableSpec

log = logging.getLogger("cutover.sync")
MAX_REJECT_VALUE = 500  # characters of a rejected value kept in the rejects table and file


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
    for path in (plan._snapshot_beside, plan._snapshot_aside):
        try:
            path.unlink(missing_ok=True)
        except OSError:  # never mask the error being reported; a later run reaps it
            pass


def drop_stale_snapshots(csv_path: Path, dead_runs: list[uuid.UUID], rejects_dir: Path | None = None) -> None:
    for run in dead_runs:
        for folder in (csv_path.parent, rejects_dir):
            if folder is not None:
                try:
                    (folder / f".{csv_path.name}.{run.hex[:12]}.snapshot").unlink(missing_ok=True)
                except OSError:
                    pass


def _as_source(plan: SyncPlan, exc: StructuralError) -> StructuralError:
    """Errors name the user's file, not the run's snapshot of it."""
    snapshots = (plan._snapshot_beside, plan._snapshot_aside)
    return dataclasses.replace(exc, path=plan.csv_path) if Path(exc.path) in snapshots else exc


def plan_sync(spec: TableSpec, specs: dict[str, TableSpec], csv_path: Path, *, rejects_dir: Path,
              batch_bytes: int, mass_delete_threshold: float, allow_mass_delete: bool = False,
              actor: str = "cutover") -> SyncPlan:
    run_id = uuid.uuid4()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return SyncPlan(
        spec=spec, specs=specs, csv_path=Path(csv_path).resolve(), run_id=run_id,
        staging=merge.staging_name(spec.name, run_id.hex),
        rejects_file=Path(rejects_dir) / f"{spec.name}-{stamp}-{run_id.hex[:8]}.csv",
        batch_bytes=batch_bytes, mass_delete_threshold=mass_delete_threshold,
        allow_mass_delete=allow_mass_delete, actor=actor)


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

    def as_dict(self) -> dict:
        return asdict(self)


def begin(db: Database, plan: SyncPlan, *, kind: str = "sync") -> int:
    """Check the phase, bootstrap if needed, record the run and create its staging table.
    Returns the table's version, which ``merge`` requires to be unchanged. A ``validate`` run
    stages the CSV in any phase (it is compared, never merged)."""

    def step(conn: psycopg.Connection) -> int:
        if not bootstrap.schema_is_ready(conn, plan.specs):
            bootstrap.bootstrap(conn, plan.specs)
        bootstrap.check_drift(conn, plan.spec)
        current = state.get_state(conn, plan.spec.name)
        if kind == "sync" and current.phase is not None and current.phase not in state.SYNCABLE:
            raise PhaseError(
                f"{plan.spec.name} is in phase {current.phase}: the database is the source of truth now,"
                " so the CSV is not synced into it")
        dead_runs = state.fail_stale_runs(conn, plan.spec.name)
        for stg in state.finished_staging(conn, plan.spec.name, merge.staging_name(plan.spec.name, "")):
            conn.execute(merge.drop_staging(stg))  # the dead runs' just failed, and any other run's that is over
        drop_stale_snapshots(plan.csv_path, dead_runs, plan.rejects_file.parent)
        state.start_run(conn, plan.run_id, plan.spec.name, kind, current.version, str(plan.csv_path))
        conn.execute(merge.create_staging(plan.spec, plan.staging))
        return current.version

    return db.run(step, what=f"begin sync of {plan.spec.name}")


def scan(plan: SyncPlan) -> csvscan.FileScan:
    take_snapshot(plan)
    try:
        return csvscan.scan_file(plan.snapshot, plan.spec.column_names, plan.batch_bytes)
    except StructuralError as exc:
        raise _as_source(plan, exc) from None


def _read(path: Path, batch: csvscan.Batch) -> bytes:
    with open(path, "rb") as f:
        f.seek(batch.start)
        return f.read(batch.end - batch.start)


def _truncated(col: str) -> pl.Expr:
    """A rejected value as stored: a 5 MB field is reported, not copied."""
    # a NUL (the very reason such a row is rejected) cannot be stored in PostgreSQL text: spell it out
    value = pl.col(col).str.replace_all("\x00", "\\x00", literal=True)
    length = value.str.len_chars()
    return (pl.when(length > MAX_REJECT_VALUE)
            .then(pl.format("{}… ({} characters)", value.str.slice(0, MAX_REJECT_VALUE), length))
            .otherwise(value).alias(col))


def parse_batch(plan: SyncPlan, header: csvscan.Header, batch: csvscan.Batch) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Pure CPU work for one batch: (typed good rows, rejects, rows read)."""
    buf = _read(plan.snapshot, batch)
    try:
        idx = csvscan.index_records(buf, batch.first_line, plan.snapshot)
    except StructuralError as exc:
        raise _as_source(plan, exc) from None
    ncols = len(header.names)
    counted = ~idx.blank
    good = counted & (idx.fields == ncols)
    ragged = [
        {"line": int(idx.lines[i]), "column": None,
         "value": buf[idx.starts[i]:idx.ends[i]].decode("utf-8"),
         "reason": f"expected {ncols} fields, found {int(idx.fields[i])}", "key": None}
        for i in (counted & ~good).nonzero()[0]
    ]
    if good.all():
        data = buf
    else:  # drop blank and ragged records so that polars sees exactly the good ones
        keep = good.nonzero()[0]
        data = b"".join(buf[idx.starts[i]:idx.stops[i]] + (b"" if buf[idx.stops[i] - 1:idx.stops[i]] == b"\n"
                                                            else b"\n") for i in keep)
    lines = pl.Series("_line", idx.lines[good], dtype=pl.Int64)
    if len(lines):
        raw = pl.read_csv(io.BytesIO(data), has_header=False, new_columns=list(header.names),
                          schema={n: pl.String for n in header.names}, quote_char='"')
        if raw.height != len(lines):  # the scanner and polars must agree on record boundaries
            raise CutoverError(f"{plan.csv_path}: internal error: {raw.height} rows parsed, {len(lines)} expected"
                               f" in lines {batch.first_line}..")
        raw = raw.select(plan.spec.column_names)
    else:
        raw = pl.DataFrame(schema={n: pl.String for n in plan.spec.column_names})
    typed, rejects = coerce(raw, plan.spec, lines)
    if ragged:
        rejects = pl.concat([rejects, pl.DataFrame(ragged, schema=rejects.schema)])
    return typed, rejects.with_columns(_truncated("value")), int(counted.sum())


def _csv_bytes(df: pl.DataFrame) -> bytes:
    out = io.BytesIO()
    # non_numeric quotes every string, so '' stays '' and NULL stays an empty unquoted field.
    df.write_csv(out, include_header=False, quote_style="non_numeric")
    return out.getvalue()


def load_batch(db: Database, plan: SyncPlan, header: csvscan.Header, batch: csvscan.Batch) -> BatchResult:
    typed, rejects, read = parse_batch(plan, header, batch)
    rows = _csv_bytes(typed)
    rejects_csv = _csv_bytes(rejects.select(pl.lit(str(plan.run_id)).alias("run_id"), pl.all()))
    attempts = 0

    def step(conn: psycopg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            conn.execute(merge.forget_batch(plan.staging),
                         {"first": batch.first_line, "end": batch.end_line, "run": plan.run_id})
        with conn.cursor() as cur:
            with cur.copy(merge.copy_into_staging(plan.spec, plan.staging)) as cp:
                for i in range(0, len(rows), 1 << 20):
                    cp.write(rows[i:i + (1 << 20)])
            if rejects.height:
                with cur.copy(merge.COPY_REJECTS) as cp:
                    cp.write(rejects_csv)
        state.heartbeat(conn, plan.run_id)

    db.run(step, what=f"load batch {batch.index} of {plan.spec.name}")
    return BatchResult(batch.index, read, typed.height, rejects.height, batch.end - batch.start)


def merge_run(db: Database, plan: SyncPlan, fscan: csvscan.FileScan, results: Iterable[BatchResult],
              base_version: int, started: float) -> SyncResult:
    """Apply the staged file to the target in one transaction (see ``cutover.merge``).

    ``started`` is the run's wall-clock start (``time.time()``): the steps may run in different
    processes, whose monotonic clocks do not agree."""
    read = sum(r.read for r in results)
    params = {"run": plan.run_id}
    spec, stg = plan.spec, plan.staging

    def step(conn: psycopg.Connection) -> SyncResult:
        state.table_lock(conn, spec.name)
        current = state.get_state(conn, spec.name, for_update=True)
        if current.version != base_version:
            raise ConcurrentChange(
                f"{spec.name} changed while this sync was loading (another sync or a phase transition"
                " finished first); nothing was applied — rerun the sync")
        if current.phase is not None and current.phase not in state.SYNCABLE:
            raise PhaseError(f"{spec.name} moved to phase {current.phase} during the sync; nothing was applied")
        conn.execute(merge.analyze_staging(stg))
        conn.execute(merge.reject_duplicates(spec, stg), params)
        for stmt in merge.reject_orphans(spec, stg, plan.specs):
            conn.execute(stmt, params)
        loaded = conn.execute(merge.count_staged(stg)).fetchone()[0]
        rejected = conn.execute("select count(*) from cutover.rejects where run_id = %(run)s", params).fetchone()[0]
        if read != loaded + rejected:
            if state.restarted_since(conn, plan.run_id):
                raise StagingLost(
                    f"the database restarted during the sync of {spec.name} and its staging was lost"
                    f" ({loaded + rejected} of {read} rows left); nothing was applied — rerun the sync")
            raise CutoverError(f"internal error: read {read} rows but loaded {loaded} + rejected {rejected}")
        conn.execute(merge.keep_newer_writes(spec, stg), params)  # never revert a write made during the run
        to_delete, total = conn.execute(merge.count_deletes(spec, stg), params).fetchone()
        if total and to_delete > plan.mass_delete_threshold * total and not plan.allow_mass_delete:
            raise MassDeleteRefused(
                f"sync would delete {to_delete} of {total} rows of {spec.name} ({to_delete / total:.0%}, more than"
                f" the {plan.mass_delete_threshold:.0%} allowed): is {plan.csv_path.name} truncated?"
                " Nothing was applied. If the deletions are intended, rerun with --allow-mass-delete.")
        deleted = conn.execute(merge.delete_missing(spec, stg), params).rowcount
        updated = conn.execute(merge.update_changed(spec, stg)).rowcount
        inserted = conn.execute(merge.insert_new(spec, stg)).rowcount
        new_state = state.record_merge(conn, spec.name, data_changed=bool(deleted or updated or inserted))
        if current.phase is None:  # record_merge put the table in mirror: say so in its history
            state.append_history(conn, spec.name, None, "mirror", actor=plan.actor, reason="first full load",
                            started_at=datetime.fromtimestamp(started, timezone.utc), run_id=plan.run_id)
        rejects_file = _write_rejects(conn, plan) if rejected else None
        conn.execute(
            """update cutover.runs set status = 'succeeded', finished_at = now(), csv_sha256 = %s, csv_bytes = %s,
                 rows_read = %s, rows_loaded = %s, rows_rejected = %s, inserted = %s, updated = %s, deleted = %s,
                 rejects_file = %s, merged_version = %s where run_id = %s""",
            (fscan.sha256, fscan.size, read, loaded, rejected, inserted, updated, deleted,
             str(rejects_file) if rejects_file else None, new_state.data_version, plan.run_id))
        dead_runs = state.fail_stale_runs(conn, spec.name, before=plan.run_id)
        for dead in dead_runs:
            conn.execute(merge.drop_staging(merge.staging_name(spec.name, dead.hex)))
        drop_stale_snapshots(plan.csv_path, dead_runs, plan.rejects_file.parent)
        conn.execute(merge.drop_staging(stg))
        return SyncResult(table=spec.name, read=read, loaded=loaded, rejected=rejected, inserted=inserted,
                          updated=updated, deleted=deleted,
                          rejects_file=str(rejects_file) if rejects_file else None,
                          duration_s=round(max(0.0, time.time() - started), 3), run_id=str(plan.run_id),
                          phase=new_state.phase)

    result = db.run(step, what=f"merge {spec.name}")
    drop_snapshot(plan)
    return result


def _write_rejects(conn: psycopg.Connection, plan: SyncPlan) -> Path:
    # Written inside the merge transaction, before commit: a committed run always has its file.
    with atomic_write(plan.rejects_file) as f, conn.cursor() as cur:
        with cur.copy(merge.export_rejects().format(run=psycopg.sql.Literal(str(plan.run_id)))) as cp:
            for chunk in cp:
                f.write(chunk)
    return plan.rejects_file


def abort(db: Database, plan: SyncPlan, error: BaseException) -> None:
    """Record the run as failed and drop its staging table. Best effort: if the database is down,
    the next sync of the table reaps the run (no heartbeat) and its staging table."""
    message = db.scrub(str(error) or type(error).__name__)
    drop_snapshot(plan)

    def step(conn: psycopg.Connection) -> None:
        state.fail_run(conn, plan.run_id, message)
        conn.execute(merge.drop_staging(plan.staging))

    try:
        db.run(step, what=f"record failure of {plan.spec.name} sync")
    except Exception as exc:  # the original error matters more
        log.warning("could not record the failed run %s: %s", plan.run_id, db.scrub(str(exc)))


MapBatches = Callable[[Callable[[csvscan.Batch], BatchResult], list[csvscan.Batch]], Iterable[BatchResult]]


def thread_map(workers: int) -> MapBatches:
    def run(fn, batches):
        if workers <= 1 or len(batches) <= 1:
            return [fn(b) for b in batches]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cutover-batch") as pool:
            return list(pool.map(fn, batches))
    return run


def run_sync(db: Database, plan: SyncPlan, *, workers: int = 2,
             on_scan: Callable[[csvscan.FileScan], None] | None = None,
             on_batch: Callable[[BatchResult], None] | None = None) -> SyncResult:
    """The whole sync in this process (what ``cutover sync`` runs)."""
    started = time.time()
    base_version = begin(db, plan)
    try:
        fscan = scan(plan)
        if on_scan:
            on_scan(fscan)

        def one(batch: csvscan.Batch) -> BatchResult:
            result = load_batch(db, plan, fscan.header, batch)
            if on_batch:
                on_batch(result)
            return result

        results = list(thread_map(workers)(one, list(fscan.batches)))
        return merge_run(db, plan, fscan, results, base_version, started)
    except BaseException as exc:
        abort(db, plan, exc)
        raise
