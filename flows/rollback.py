"""The ``rollback`` flow: one phase back for a table, without losing a write, checked by parity.

deprecated → promoted restores the CSV from its archive (sha256 verified); promoted → dual_write
first applies every change made in the database since promotion to the CSV (writes blocked
meanwhile); dual_write → mirror drains the outbox first; mirror → none leaves the CSV alone and
drops the mirror only when ``drop`` is set. Never gated: it is the way out."""

from __future__ import annotations

from prefect import flow, get_run_logger

from cutover import transitions
from flows.phase_runner import flow_runner
from tasks.transitions import context, plan_transition, publish_transition


@flow(name="rollback", flow_run_name="rollback {table}")
def rollback(table: str, drop: bool = False, reason: str = "") -> dict:
    plan = plan_transition(table, "rollback", drop)
    get_run_logger().info("\n".join(plan.lines()))
    result = transitions.execute(context(table), plan, flow_runner(), actor="prefect", reason=reason)
    publish_transition(result, plan)
    if result.parity_passed is False:
        raise RuntimeError(f"{table} rolled back to {result.to_phase}, but parity afterwards FAILED:"
                           f" see report {result.parity_report_id}")
    return result.as_dict()
