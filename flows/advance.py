"""The ``advance`` flow: one step forward for a table — mirror → dual_write, or promoted →
deprecated (promotion has its own flow, with the operator's approval). Each goes through the
final sync or backup, a validation and the gate; see ``cutover.phases`` for the exact steps."""

from __future__ import annotations

from prefect import flow, get_run_logger

from cutover import phases, transitions
from flows.phase_runner import flow_runner
from tasks.transitions import context, plan_transition, publish_transition


@flow(name="advance", flow_run_name="advance {table}")
def advance(table: str, reason: str = "") -> dict:
    plan = plan_transition(table, "advance")
    if plan.needs_approval:
        raise phases.PlanError(f"{table}: promotion needs an operator's approval — run the promote flow")
    get_run_logger().info("\n".join(plan.lines()))
    result = transitions.execute(context(table), plan, flow_runner(), actor="prefect", reason=reason)
    publish_transition(result, plan)
    return result.as_dict()


@flow(name="deprecate", flow_run_name="deprecate {table}")
def deprecate(table: str, reason: str = "") -> dict:
    """promoted → deprecated: back up, validate, archive the CSV with its manifest, stop writing it."""
    plan = plan_transition(table, "advance")
    if plan.to_phase != "deprecated":
        raise phases.PlanError(f"{table} is in phase {plan.from_phase}: deprecate moves a table from promoted")
    get_run_logger().info("\n".join(plan.lines()))
    result = transitions.execute(context(table), plan, flow_runner(), actor="prefect", reason=reason)
    publish_transition(result, plan)
    return result.as_dict()
