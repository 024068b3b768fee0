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
  under the batches' offsets; the link is removed when the run ends;
- a CSV identical (sha256) to the one the table's last successful sync merged, under the same
  ``basis`` (spec, parents' data), with no write to the table since (every write bumps its
  data_version), is not loaded again: ``skip_unchanged`` records a run that changed nothing, with
  the previous run's counts and rejects, in one transaction under the table's lock.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import polars as pl
from psycopg import errors as pgerr

from cutover import bootstrap, copy_binary, csvscan, delta, merge, state
from cutover.batches import as_strings, copy_staged, csv_bytes, index_batch, parse_batch, read_bytes, stored_value
from cutover.coerce import coerce_noting_rewrites
from cutover.copy_runs import CopyRuns
from cutover.commit import find_baseline, finish, keep_baseline, lock_for_merge, refuse_mass_delete
from cutover.pipeline import in_order
from cutover.db import Database
from cutover.errors import ConcurrentChange, CutoverError, PhaseError, StagingLost
# the plan and results are the steps' API: callers name them through this module too
from cutover.syncplan import (BatchResult, SyncPlan, SyncResult, _as_source, drop_snapshot,  # noqa: F401
                              plan_sync, reap_dead_runs, take_snapshot)
from cutover.unchanged import skip_unchanged

log = logging.getLogger("cutover.sync")


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
        reap_dead_runs(conn, plan)
        state.start_run(conn, plan.run_id, plan.spec.name, kind, current.version, str(plan.csv_path))
        conn.execute(merge.create_staging(plan.spec, plan.staging))
        return current.version

    return db.run(step, what=f"begin sync of {plan.spec.name}")


def scan(plan: SyncPlan) -> csvscan.FileScan:
    return scan_stream(plan).finish()


def scan_stream(plan: SyncPlan) -> csvscan.ScanStream:
    """The scan of a snapshot of the run's CSV, batch by batch; its errors name the CSV."""
    take_snapshot(plan)
    return csvscan.ScanStream.start(plan.snapshot, plan.spec.column_names, plan.batch_bytes,
                                    name_errors=lambda exc: _as_source(plan, exc))


def load_batch(db: Database, plan: SyncPlan, header: csvscan.Header, batch: csvscan.Batch) -> BatchResult:
    typed, rejects, read = parse_batch(plan, header, batch)
    rows = csv_bytes(typed)
    attempts = 0

    def step(conn: psycopg.Connection) -> None:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            conn.execute(merge.forget_batch(plan.staging),
                         {"first": batch.first_line, "end": batch.end_line, "run": plan.run_id})
        copy_staged(conn, plan, rows, rejects)
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
        current = lock_for_merge(conn, plan, base_version)
        conn.execute(merge.analyze_join_keys(spec, stg))
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
        refuse_mass_delete(plan, *conn.execute(merge.count_deletes(spec, stg), params).fetchone())
        deleted = conn.execute(merge.delete_missing(spec, stg), params).rowcount
        updated = conn.execute(merge.update_changed(spec, stg)).rowcount
        inserted = conn.execute(merge.insert_new(spec, stg)).rowcount
        return finish(conn, plan, fscan, current, started, read=read, loaded=loaded, rejected=rejected,
                       inserted=inserted, updated=updated, deleted=deleted)

    result = db.run(step, what=f"merge {spec.name}")
    keep_baseline(plan, fscan, result.read)
    return result


class _NeedsStaging(Exception):
    """The direct load gives way to the staged path: the file has rows it cannot judge, or the table
    has rows after all (see ``load_into_empty_target``)."""


def _parsed_in_order(plan: SyncPlan, header: csvscan.Header, batches: Iterable[csvscan.Batch], workers: int,
                     seeds: tuple[int, int] | None = None):
    """(batch, COPY data, whether it is binary, rows typed, rejects, rows read, record hashes) in file order
    (see ``cutover.pipeline``); the records hashed by bytes (``delta.record_rows``) with ``seeds``, if any.
    The rows go in binary COPY format where the kernel is built and reads every value, else as CSV."""
    in_spec_order = tuple(header.names) == plan.spec.column_names
    layout = copy_binary.Layout.of(plan.spec) if copy_binary.available() else None

    def parse(batch: csvscan.Batch):
        buf = read_bytes(plan, batch)
        idx = index_batch(plan, buf, batch.first_line)
        raw, lines, ragged, read, verbatim, nul = as_strings(plan, header, buf, idx)
        records = delta.record_rows(buf, idx, batch.start, seeds) if seeds is not None else None
        typed, rejects, rewritten = coerce_noting_rewrites(raw, plan.spec, lines, nul=nul)
        if ragged.height:
            rejects = pl.concat([rejects, ragged])
        rejects = rejects.with_columns(stored_value("value")) if rejects.height else rejects
        if layout is not None:  # binary, not the batch's own bytes: the server parses it for half the work
            size = len(buf)
            del buf, verbatim, raw  # not sent: freed before the binary is built (peak memory)
            tuples = copy_binary.encode(typed.select(plan.spec.column_names), layout, size)
            if tuples is not None:
                return batch, tuples, True, typed.height, rejects, read, records
            return batch, csv_bytes(typed.drop("_line")), False, typed.height, rejects, read, records
        if (verbatim is not None and not rejects.height and not rewritten and in_spec_order
                and _no_end_marker(verbatim)):  # COPY reads the batch's own bytes as we did: no re-encoding
            return batch, verbatim, False, typed.height, rejects, read, records
        return batch, csv_bytes(typed.drop("_line")), False, typed.height, rejects, read, records

    return in_order(parse, batches, workers)


def _no_end_marker(buf: bytes) -> bool:
    """No line of ``buf`` is ``\\.``, COPY's end of data (PostgreSQL reads one inside a quoted value as
    data, but a batch with such a line is rare enough to re-encode rather than rely on it)."""
    return not buf.startswith(b"\\.\n") and b"\n\\.\n" not in buf and not buf.endswith(b"\n\\.")


def load_into_empty_target(db: Database, plan: SyncPlan, scan: csvscan.ScanStream, base_version: int,
                           started: float, *, workers: int,
                           on_batch: Callable[[BatchResult], None] | None = None) -> SyncResult | None:
    """The first load of a table that has no phase and no row, streamed straight into it: ONE COPY, of
    frozen rows (``merge.copy_into_target``), in the merge's own transaction, batches parsed by other
    threads meanwhile — no staging table, no second write of every row. The guarantees are the staging
    path's (one transaction, read = loaded + rejected). Returns None, having changed nothing, when the
    file needs the staging path to judge it: a key on two rows or a row whose parent is missing (the
    table's constraints refuse the COPY), or a rejected row whose key a loaded row has. The COPY starts
    with the scan's first batch: a file the scan finds broken further on raises, and the transaction
    applies nothing."""
    spec = plan.spec
    # the file's record hashes, kept with the baseline this load leaves: the first diff need not hash it
    keeper = delta.RecordKeeper(plan, scan.size, workers) if plan.diff_index_bytes else None

    def step(conn: psycopg.Connection) -> SyncResult | None:
        if keeper:
            keeper.start()
        state.table_lock(conn, spec.name)
        current = state.get_state(conn, spec.name, for_update=True)
        if current.version != base_version:
            raise ConcurrentChange(f"{spec.name} changed while this sync was loading; nothing was applied — rerun")
        if current.phase is not None or conn.execute(merge.has_rows(spec)).fetchone()[0]:
            return None
        read = loaded = rejected = 0
        # one COPY at a time per connection: rejects wait in a spool file until the rows are in
        with tempfile.TemporaryFile() as spool:
            try:
                with conn.transaction():  # a savepoint: a refused file leaves no trace
                    # keys are checked once, after the COPY, by adding their constraints back: a repeated
                    # key or an orphan then fails that statement instead of the COPY, to the same effect
                    constraints = conn.execute(merge.key_constraints(spec)).fetchall()
                    # dropping a key waits for every reader of the table and its children: never forever
                    conn.execute("set local lock_timeout = '20s'")
                    for table, name, _ in constraints:
                        conn.execute(merge.drop_constraint(table, name))
                    # checked again under the lock dropping its key took: the truncate must not lose a row
                    # written since the first check
                    if conn.execute(merge.has_rows(spec)).fetchone()[0]:
                        raise _NeedsStaging
                    freeze = conn.execute(merge.truncate_unseen(spec)).fetchone()[0]
                    if freeze:
                        conn.execute(merge.empty_for_freeze(spec))
                    with conn.cursor() as cur:
                        with CopyRuns(cur, lambda as_binary: merge.copy_into_target(spec, freeze=freeze,
                                                                                     binary=as_binary)) as copy:
                            for batch, data, binary, staged, rejects, n, records in _parsed_in_order(
                                    plan, scan.header, scan.batches(), workers, keeper.seeds if keeper else None):
                                copy.write(data, binary=binary)
                                if keeper:
                                    keeper.add(records, batch.end - batch.start)
                                if rejects.height:
                                    spool.write(csv_bytes(rejects.select(
                                        pl.lit(str(plan.run_id)).alias("run_id"), pl.all())))
                                read, loaded, rejected = read + n, loaded + staged, rejected + rejects.height
                                if on_batch:
                                    on_batch(BatchResult(batch.index, n, staged, rejects.height,
                                                         batch.end - batch.start))
                        for table, name, definition in reversed(constraints):  # the key first, then references
                            conn.execute(merge.add_constraint(table, name, definition))
                        if rejected:
                            spool.seek(0)
                            with cur.copy(merge.COPY_REJECTS) as cp:
                                while chunk := spool.read(1 << 20):
                                    cp.write(chunk)
                    if rejected and conn.execute(merge.rejected_key_loaded(spec), {"run": plan.run_id}).fetchone()[0]:
                        raise _NeedsStaging
            except (pgerr.UniqueViolation, pgerr.ForeignKeyViolation, pgerr.LockNotAvailable, _NeedsStaging):
                return None  # the staged path judges the file (and takes no lock a reader holds up)
        if read != loaded + rejected:
            raise CutoverError(f"internal error: read {read} rows but loaded {loaded} + rejected {rejected}")
        return finish(conn, plan, scan.finish(), current, started, read=read, loaded=loaded, rejected=rejected,
                       inserted=loaded, updated=0, deleted=0, method="direct")

    try:
        result = db.run(step, what=f"first load of {spec.name}")
        if result is not None:
            keep_baseline(plan, scan.finish(), result.read, keeper.kept(result) if keeper else None)
    finally:
        if keeper:
            keeper.close()
    return result


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


def run_sync(db: Database, plan: SyncPlan, *, workers: int = 2, check_unchanged: bool = True,
             on_scan: Callable[[int], None] | None = None,
             on_batch: Callable[[BatchResult], None] | None = None) -> SyncResult:
    """The whole sync in this process (what ``cutover sync`` runs)."""
    started = time.time()
    if check_unchanged and (nothing_to_do := skip_unchanged(db, plan, started)) is not None:
        return nothing_to_do
    base_version = begin(db, plan)
    try:
        # merged before: the last merged file is indexed while this one is scanned, to diff them
        indexing = delta.start_indexing(db, plan, find_baseline(plan), workers) if base_version else None
        stream = scan_stream(plan)
        if on_scan:
            on_scan(stream.size)
        # the first load and the diff start on the scan's first batches; the staged path waits for it
        if base_version == 0:  # never merged: perhaps an empty table, loaded straight
            first = load_into_empty_target(db, plan, stream, base_version, started, workers=workers,
                                           on_batch=on_batch)
            if first is not None:
                return first
        changes = delta.load_changes(db, plan, stream, indexing, base_version, started, workers=workers,
                                     on_batch=on_batch, on_restart=(lambda: on_scan(stream.size)) if on_scan else None)
        if changes is not None:
            return changes
        fscan = stream.finish()
        if on_scan and (base_version == 0 or indexing is not None):
            on_scan(fscan.size)  # a faster path read some batches, then gave up: progress starts over

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
