"""Prefect tasks wrapping the steps of ``cutover.sync``: begin, scan, load one batch, merge, abort.

The core owns the guarantees (one merge transaction, ``read = loaded + rejected``, idempotent
batch loads); these tasks only add what Prefect is for: each step is visible in the UI, a batch
that fails on a transient database error is retried by Prefect as a unit (safe: a batch load is
idempotent), and ``load_batch`` can be mapped over the batches on any task runner. Every argument
is a small picklable value (plan, header, batch bounds), never rows or a connection.

No task caches its result: every step has side effects that must happen each time it runs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from cutover import csvscan, state
from cutover import sync as core
from cutover.db import is_transient
from tasks import resources


def _transient_failure(task, task_run, final_state) -> bool:
    try:
        final_state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


@task(cache_policy=NO_CACHE)
def table_phases(tables: list[str]) -> dict[str, str | None]:
    """The current phase of each table (None: never mirrored)."""

    def read(conn):
        from cutover import bootstrap

        if not bootstrap.is_bootstrapped(conn):
            return {t: None for t in tables}
        return {t: state.get_state(conn, t).phase for t in tables}

    return resources.database().run(read, what="read phases")


@task(cache_policy=NO_CACHE)
def bootstrap_database() -> None:
    """Roles, auth functions, the cutover schema and every table with RLS (idempotent)."""
    from cutover import bootstrap

    specs = resources.specs()
    resources.database().run(lambda conn: bootstrap.bootstrap(conn, specs), what="bootstrap")


@task(cache_policy=NO_CACHE)
def plan_sync(table: str, csv: str | None = None, allow_mass_delete: bool = False, actor: str = "prefect") -> core.SyncPlan:
    settings = resources.settings()
    specs = resources.specs(settings)
    return core.plan_sync(specs[table], specs, Path(csv) if csv else settings.csv_path(table),
                          rejects_dir=settings.rejects_dir, batch_bytes=settings.batch_bytes,
                          mass_delete_threshold=settings.mass_delete_threshold,
                          allow_mass_delete=allow_mass_delete, actor=actor, diff_index_mb=settings.diff_index_mb)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_transient_failure)
def skip_unchanged(plan: core.SyncPlan, started: float) -> core.SyncResult | None:
    """A run that changed nothing when the CSV is the one already merged (see ``cutover.sync``)."""
    return core.skip_unchanged(resources.database(), plan, started)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=_transient_failure)
def begin_sync(plan: core.SyncPlan) -> int:
    return core.begin(resources.database(), plan)


@task(cache_policy=NO_CACHE)
def scan_csv(plan: core.SyncPlan) -> csvscan.FileScan:
    return core.scan(plan)


@task(cache_policy=NO_CACHE, task_run_name="merge {plan.spec.name}'s changes")
def sync_changes(plan: core.SyncPlan, fscan: csvscan.FileScan, base_version: int, started: float) -> core.SyncResult | None:
    """Only the records that differ from the last merged file (``cutover.delta``), in one task: they are
    few, and the diff needs the whole baseline's index in one process. None: load every batch instead."""
    from cutover import delta

    db, workers = resources.database(), resources.settings().workers
    indexing = delta.start_indexing(db, plan, core.find_baseline(plan), workers)
    return delta.load_changes(db, plan, csvscan.ScanStream.of(fscan), indexing, base_version, started,
                              workers=workers)


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[1, 5, 15], retry_condition_fn=_transient_failure,
      task_run_name="load {plan.spec.name} batch {batch.index}")
def load_batch(plan: core.SyncPlan, header: csvscan.Header, batch: csvscan.Batch) -> core.BatchResult:
    return core.load_batch(resources.database(), plan, header, batch)


@task(cache_policy=NO_CACHE)
def merge_sync(plan: core.SyncPlan, fscan: csvscan.FileScan, results: list[core.BatchResult], base_version: int,
               started: float) -> core.SyncResult:
    return core.merge_run(resources.database(), plan, fscan, results, base_version, started)


@task(cache_policy=NO_CACHE)
def abort_sync(plan: core.SyncPlan, error: str) -> None:
    core.abort(resources.database(), plan, RuntimeError(error))
