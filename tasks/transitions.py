"""Prefect tasks for phase transitions, and the flow-side ``Runner`` (see ``cutover.transitions``).

The executor runs in the flow itself (a pause for the operator's approval must happen in a flow);
its long steps are subflows and tasks here, so each is visible in the UI: the final sync is the
``sync-table`` subflow, validation the ``validate-table`` subflow (with its report artifacts), the
outbox drain and the backup are tasks with retries on transient errors.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from cutover import operate, phases, report, transitions
from tasks import resources
from tasks.sync import _transient_failure


@task(cache_policy=NO_CACHE)
def plan_transition(table: str, direction: str, drop: bool = False) -> phases.TransitionPlan:
    current = operate.current_state(resources.database(), table)
    return phases.plan_advance(current) if direction == "advance" else phases.plan_rollback(current, drop=drop)


@task(cache_policy=NO_CACHE)
def sync_needed(table: str) -> bool:
    settings = resources.settings()
    return operate.sync_needed(resources.database(), resources.specs(settings)[table], settings.csv_path(table))


@task(cache_policy=NO_CACHE)
def current_report(table: str) -> report.Report | None:
    return operate.current_report(resources.database(), table, resources.settings().csv_path(table))


@task(cache_policy=NO_CACHE)
def load_report(report_id: str) -> report.Report:
    return resources.database().run(lambda conn: report.load(conn, report_id), what="load report")


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_transient_failure)
def drain_outbox(table: str) -> int:
    settings = resources.settings()
    return operate.drain_outbox(settings, resources.database(), resources.specs(settings), table)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_transient_failure)
def backup_table(table: str) -> dict:
    settings = resources.settings()
    return operate.backup(settings, resources.database(), resources.specs(settings), table).as_dict()


def context(table: str) -> transitions.Context:
    settings = resources.settings()
    return operate.context(settings, resources.database(), resources.specs(settings), table)


@task(cache_policy=NO_CACHE)
def publish_transition(result: transitions.TransitionResult, plan: phases.TransitionPlan) -> None:
    r = result.as_dict()
    lines = [f"# {r['table']}: {r['from_phase'] or '(none)'} → {r['to_phase'] or '(none)'} — {r['outcome']}", "",
             *[f"    {line}" for line in plan.lines()], ""]
    for label, key in (("allowed by report", "report_id"), ("approved by", "approver"),
                       ("parity afterwards (report)", "parity_report_id"), ("archive", "archive")):
        if r[key]:
            lines.append(f"- {label}: `{r[key]}`")
    if r["parity_passed"] is not None:
        lines.append(f"- parity afterwards: {'exact' if r['parity_passed'] else '**FAILED**'}")
    create_markdown_artifact(key=f"transition-{r['table'].replace('_', '-')}", markdown="\n".join(lines),
                             description=f"{r['from_phase']} → {r['to_phase']}: {r['outcome']}")
