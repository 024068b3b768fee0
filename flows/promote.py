"""The ``promote`` flow: dual_write → promoted, approved by an operator in the Prefect UI.

Drain the outbox, final sync, validate (report artifacts), then the run pauses with a form
(``PromotionApproval``) showing the report's summary: approve (with the approver's name and a
reason) and the transition runs through the gate; reject, or no answer within ``timeout_s``, and
the refusal is recorded in the phase history while nothing changes.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, pause_flow_run
from prefect.input import RunInput

from cutover import phases, report, transitions
from flows.phase_runner import flow_runner
from tasks.transitions import context, plan_transition, publish_transition


class PromotionApproval(RunInput):
    approve: bool = False
    approver: str = ""
    reason: str = ""


def _form_text(plan: phases.TransitionPlan, rep: report.Report | None) -> str:
    summary = report.markdown_summary(rep) if rep else "(no report)"
    steps = "\n".join(f"    {line}" for line in plan.lines())
    return (f"## Promote `{plan.table}` to **promoted**?\n\nAfter approval Supabase becomes the source of"
            f" truth; the CSV is kept as a backup fed from the database.\n\n{summary}\n\n### Plan\n\n{steps}\n\n"
            "Tick **approve**, give your name and a reason, then submit. Leave **approve** unticked to reject.")


def ask_operator(timeout_s: int):
    def approve(plan: phases.TransitionPlan, rep: report.Report | None) -> transitions.Approval:
        if rep is not None and not rep.passed:  # no point asking: the gate would refuse
            return transitions.Approval(False, "gate", "the validation report failed: " + "; ".join(rep.failures()),
                                        outcome="rejected")
        try:
            answer = pause_flow_run(
                wait_for_input=PromotionApproval.with_initial_data(description=_form_text(plan, rep)),
                timeout=timeout_s, poll_interval=2, key=f"promote-{plan.table}")
        except Exception as exc:  # Prefect raises when the pause times out
            get_run_logger().warning("promotion of %s not answered: %s", plan.table, exc)
            return transitions.Approval(False, "nobody", f"no answer within {timeout_s}s", outcome="timed_out")
        if not answer.approve:
            return transitions.Approval(False, answer.approver or "operator", answer.reason, outcome="rejected")
        if not answer.approver.strip():
            return transitions.Approval(False, "operator", "approved without an approver's name",
                                        outcome="rejected")
        return transitions.Approval(True, answer.approver.strip(), answer.reason)

    return approve


@flow(name="promote", flow_run_name="promote {table}")
def promote(table: str, timeout_s: int = 3600, reason: str = "") -> dict:
    """Make the database the source of truth for ``table`` (from dual_write), with an operator's approval."""
    plan = plan_transition(table, "advance")
    if plan.to_phase != "promoted":
        raise phases.PlanError(f"{table} is in phase {plan.from_phase}: promote moves a table from dual_write")
    get_run_logger().info("\n".join(plan.lines()))
    result = transitions.execute(context(table), plan, flow_runner(ask_operator(timeout_s)), actor="prefect",
                                 reason=reason)
    publish_transition(result, plan)
    get_run_logger().info("%s: %s", table, result.outcome)
    return result.as_dict()
