"""The flows' ``Runner``: the executor's long steps as subflows and tasks (shared by the phase flows)."""

from __future__ import annotations

from collections.abc import Callable

from cutover import phases, report, transitions
from flows.sync import sync_table
from flows.validate import validate_table
from tasks.transitions import current_report, drain_outbox, load_report, sync_needed


def _sync(table: str):
    return sync_table(table) if sync_needed(table) else None


def _validate(table: str) -> report.Report:
    reusable = current_report(table)
    if reusable is not None:
        return reusable
    return load_report(validate_table(table)["report_id"])


def _no_approval(plan: phases.TransitionPlan, rep: report.Report | None) -> transitions.Approval:
    raise AssertionError(f"{plan.table}: this transition needs no approval")


def flow_runner(approve: Callable[[phases.TransitionPlan, report.Report | None], transitions.Approval] = _no_approval
                ) -> transitions.Runner:
    return transitions.Runner(sync=_sync, validate=_validate, drain_outbox=drain_outbox, approve=approve)
