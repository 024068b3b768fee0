"""The ``validate`` flow: suites on CSV and table, exact parity and security checks for every
table (or the ones asked for), one report each, published as artifacts (scheduled daily, and the
gate every phase transition requires). A table whose validation fails does not stop the others;
the flow fails at the end if any table did not pass, so a failed validation is visible as a
failed run.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped

from cutover.spec import select_tables
from tasks import resources
from tasks.sync import load_batch
from tasks.validate import (abort, begin_staging, expectations, finish, finish_staging, parity, plan_validation,
                            publish_report, security, snapshot)


class ValidationFailed(Exception):
    """At least one table did not pass (its report says why)."""


@flow(name="validate-table", flow_run_name="validate {table}")
def validate_table(table: str, csv: str | None = None, subject: str | None = None) -> dict:
    """One table: stage the CSV (mapped batches), both suites, parity, security, report, artifacts."""
    plan = plan_validation(table, csv, subject)
    before = snapshot(plan)
    fscan = source = parity_result = None
    try:
        if plan.staging is not None:
            fscan = begin_staging(plan)
            loads = load_batch.map(unmapped(plan.staging), unmapped(fscan.header), fscan.batches)
            finish_staging(plan, fscan, loads.result())
            source = expectations(plan, "source")
            parity_result = parity(plan)
        target = expectations(plan, "target")
        rep = finish(plan, before, fscan, source, target, parity_result, security(plan))
    except BaseException as exc:
        abort(plan, f"{type(exc).__name__}: {exc}")
        raise
    publish_report(rep)
    get_run_logger().info("%s: %s (report %s)", table, "PASSED" if rep.passed else "FAILED", rep.report_id)
    return rep.summary()


@flow(name="validate")
def validate(tables: list[str] | None = None) -> dict[str, dict]:
    """Validate every table (parents first); fails if any table does not pass."""
    names = select_tables(resources.specs(), tables)
    summaries = {table: validate_table(table) for table in names}
    failed = [t for t, s in summaries.items() if not s["passed"]]
    if failed:
        raise ValidationFailed(f"validation failed for {', '.join(failed)}: "
                               + "; ".join(f"{t}: {', '.join(summaries[t]['failures'])}" for t in failed))
    return summaries
