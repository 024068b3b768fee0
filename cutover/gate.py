"""The validation gate in front of every phase transition.

A transition may proceed only with a passing validation report of the table's **current** data:
the report must be the table's latest, taken in the current phase at the current version (no
sync, write or transition since), and — when it compared a CSV — the CSV must still be the file
it compared (same sha256). ``check`` runs inside the transition's transaction, under the table's
lock, so nothing can change between the check and the transition it allows. A refusal names
every reason, including the report's failing checks.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from cutover import report, state
from cutover.errors import GateRefused
from cutover.fingerprint import file_sha256


def reasons_to_refuse(current: state.TableState, latest: report.Report | None, csv_sha256: str | None) -> list[str]:
    """Pure: why ``latest`` does not allow a transition of a table in state ``current``."""
    if latest is None:
        return [f"{current.table} has no validation report: run `cutover validate --table {current.table}`"]
    reasons = []
    if latest.phase != current.phase:
        reasons.append(f"report {latest.report_id} was taken in phase {latest.phase}, the table is in {current.phase}")
    if (latest.version, latest.data_version) != (current.version, current.data_version):
        reasons.append(f"report {latest.report_id} checked version {latest.version}.{latest.data_version}; the table"
                       f" is at {current.version}.{current.data_version} (synced, written or moved since):"
                       " validate again")
    if latest.csv_sha256 is not None and csv_sha256 is not None and latest.csv_sha256 != csv_sha256:
        reasons.append(f"the CSV changed since report {latest.report_id}: validate again")
    if not latest.passed:
        reasons += [f"report {latest.report_id} failed: {f}" for f in latest.failures()]
    return reasons


def check(conn: psycopg.Connection, table: str, csv_path: Path | None) -> report.Report:
    """The report that allows a transition of ``table`` now, or ``GateRefused`` with every reason."""
    current = state.get_state(conn, table)
    latest = report.latest(conn, table)
    sha = file_sha256(csv_path) if latest and latest.csv_sha256 and csv_path and Path(csv_path).exists() else None
    if latest is not None and latest.csv_sha256 and sha is None:
        reasons = [f"the CSV {csv_path} that report {latest.report_id} compared is gone"]
    else:
        reasons = reasons_to_refuse(current, latest, sha)
    if reasons:
        raise GateRefused(f"transition of {table} refused by the validation gate: " + "; ".join(reasons))
    return latest
