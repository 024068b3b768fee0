"""Prefect tasks wrapping the steps of ``cutover.validate``, and the report's artifacts.

Staging the CSV reuses the sync's mapped ``load_batch`` task; the GX suites of the two sides and
the security probes are tasks of their own, so the UI shows which part of a validation failed or
was slow. Artifacts use stable keys per table (``validation-<table>`` for the summary,
``validation-<table>-failures`` for the table of failing checks) so that the Artifacts page keeps
each key's history.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from cutover import csvscan, report, state
from cutover import sync as sync_core
from cutover import validate as core
from tasks import resources


@task(cache_policy=NO_CACHE)
def plan_validation(table: str, csv: str | None = None, subject: str | None = None) -> core.ValidationPlan:
    settings = resources.settings()
    specs = resources.specs(settings)
    return core.plan_validation(specs[table], specs, Path(csv) if csv else settings.csv_path(table),
                                rejects_dir=settings.rejects_dir, batch_bytes=settings.batch_bytes,
                                suites_dir=settings.expectations_dir, reports_dir=settings.reports_dir,
                                subject=subject, actor="prefect")


@task(cache_policy=NO_CACHE)
def snapshot(plan: core.ValidationPlan) -> state.TableState:
    return core.snapshot(resources.database(), plan)


@task(cache_policy=NO_CACHE)
def begin_staging(plan: core.ValidationPlan) -> csvscan.FileScan:
    sync_core.begin(resources.database(), plan.staging, kind="validate")
    return sync_core.scan(plan.staging)


@task(cache_policy=NO_CACHE)
def finish_staging(plan: core.ValidationPlan, fscan: csvscan.FileScan, results: list[sync_core.BatchResult]) -> None:
    core.finish_staging(resources.database(), plan, fscan, results)


@task(cache_policy=NO_CACHE, task_run_name="expectations on {side} of {plan.spec.name}")
def expectations(plan: core.ValidationPlan, side: str) -> list[dict]:
    return core.expectations(resources.database(), plan, side)


@task(cache_policy=NO_CACHE)
def parity(plan: core.ValidationPlan) -> dict:
    return core.compare(resources.database(), plan)


@task(cache_policy=NO_CACHE)
def security(plan: core.ValidationPlan) -> dict:
    return core.security(resources.database(), plan)


@task(cache_policy=NO_CACHE)
def finish(plan: core.ValidationPlan, before: state.TableState, fscan: csvscan.FileScan | None,
           source: list[dict] | None, target: list[dict], parity_result: dict | None, security_result: dict
           ) -> report.Report:
    return core.finish(resources.database(), plan, before, fscan, source, target, parity_result, security_result)


@task(cache_policy=NO_CACHE)
def abort(plan: core.ValidationPlan, error: str) -> None:
    core.abort(resources.database(), plan, RuntimeError(error))


@task(cache_policy=NO_CACHE)
def publish_report(rep: report.Report) -> None:
    """The summary (markdown) and the failing checks (table) under the table's stable keys."""
    key = f"validation-{rep.table.replace('_', '-')}"
    create_markdown_artifact(key=key, markdown=report.markdown_summary(rep),
                             description=f"{'PASSED' if rep.passed else 'FAILED'}: {rep.report_id}")
    rows = report.failure_rows(rep) or [{"kind": "none", "check": "all checks passed", "detail": ""}]
    create_table_artifact(key=f"{key}-failures", table=rows, description=f"failing checks of {rep.report_id}")
