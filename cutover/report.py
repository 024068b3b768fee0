"""Validation reports: one per validation run, with a stable id, stored three ways.

- as JSON in ``cutover.validation_reports`` (what the phase gate reads);
- as ``<id>.json`` and a self-contained ``<id>.html`` under ``$CUTOVER_HOME/reports`` (inline CSS,
  no script, no network: it renders the same offline, in a mail attachment or an archive);
- as Prefect artifacts, built by ``tasks/`` from ``markdown_summary`` and ``failure_rows``.

Rendering is pure (``render_html``, ``markdown_summary``); ``store`` and ``write_files`` do the I/O.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from cutover.atomic import atomic_write


def new_report_id(table: str, now: datetime | None = None) -> str:
    import uuid

    now = now or datetime.now(timezone.utc)
    return f"val-{table}-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


@dataclass
class Report:
    report_id: str
    table: str
    phase: str | None
    version: int
    data_version: int
    started_at: str
    duration_s: float
    csv_path: str | None
    csv_sha256: str | None
    expectations: dict  # {"source": [CheckResult dict], "target": [...]}; source is None without a CSV
    parity: dict | None  # Parity.as_dict(), None without a CSV
    security: dict  # {"subject": sub, "checks": [SecurityCheck dict]}
    notes: list[str] = field(default_factory=list)
    html_report: str | None = None

    @property
    def failed_expectations(self) -> list[dict]:
        return [{**c, "side": side} for side in ("source", "target") for c in (self.expectations.get(side) or [])
                if not c["success"]]

    @property
    def failed_security(self) -> list[dict]:
        return [c for c in self.security["checks"] if not c["passed"]]

    @property
    def passed(self) -> bool:
        return (not self.failed_expectations and not self.failed_security
                and self.parity is not None and self.parity["passed"])

    def failures(self) -> list[str]:
        """One line per failing check: what the gate names when it refuses."""
        out = [f"{c['side']} expectation failed: {c['rule']}"
               + (f" ({c['unexpected_count']} rows)" if c.get("unexpected_count") else "")
               for c in self.failed_expectations]
        if self.parity is None:
            out.append("parity not checked: no CSV to compare with")
        else:
            out += [f"parity: {self.parity[k]} {k.replace('_', ' ')}" for k in
                    ("missing_in_target", "extra_in_target", "changed", "rejected_in_source") if self.parity[k]]
        out += [f"security: {c['check']}" + (f" on {c['table']}" if c["table"] else "") + f": {c['detail']}"
                for c in self.failed_security]
        return out

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> dict:
        """The shape ``cutover validate --json`` prints."""
        return {
            "report_id": self.report_id, "table": self.table, "phase": self.phase, "passed": self.passed,
            "data_version": self.data_version,
            "expectations": {
                "evaluated": sum(len(v or []) for v in self.expectations.values()),
                "failed": [{"side": c["side"], "expectation": c["expectation"], "rule": c["rule"],
                            "column": c["column"], "unexpected_count": c["unexpected_count"]}
                           for c in self.failed_expectations]},
            "parity": self.parity,
            "security": {"subject": self.security["subject"], "passed": not self.failed_security,
                         "failed": self.failed_security},
            "failures": self.failures(),
            "html_report": self.html_report, "duration_s": self.duration_s,
        }


def store(conn: psycopg.Connection, report: Report) -> None:
    conn.execute(
        """insert into cutover.validation_reports
             (report_id, table_name, phase, version, data_version, csv_sha256, passed, report)
           values (%s, %s, %s, %s, %s, %s, %s, %s)""",
        (report.report_id, report.table, report.phase, report.version, report.data_version, report.csv_sha256,
         report.passed, Jsonb(report.as_dict())))


def latest(conn: psycopg.Connection, table: str) -> Report | None:
    row = conn.execute("select report from cutover.validation_reports where table_name = %s"
                       " order by created_at desc, report_id desc limit 1", (table,)).fetchone()
    return from_dict(row[0]) if row else None


def load(conn: psycopg.Connection, report_id: str) -> Report | None:
    row = conn.execute("select report from cutover.validation_reports where report_id = %s", (report_id,)).fetchone()
    return from_dict(row[0]) if row else None


def from_dict(data: dict) -> Report:
    return Report(**{k: v for k, v in data.items() if k != "passed"})


def write_files(report: Report, directory: Path) -> Path:
    """``<id>.json`` and ``<id>.html``, each written atomically; returns the HTML path."""
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / f"{report.report_id}.html"
    report.html_report = str(page)
    with atomic_write(directory / f"{report.report_id}.json") as f:
        f.write(json.dumps(report.as_dict(), indent=2, default=str).encode())
    with atomic_write(page) as f:
        f.write(render_html(report).encode())
    return page


# --- rendering -------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape("" if value is None else str(value))


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
main{max-width:1040px;margin:0 auto;padding:24px}
.verdict{border-radius:10px;padding:18px 22px;color:#fff;margin-bottom:18px}
.verdict.pass{background:#1f7a3f}.verdict.fail{background:#b3261e}
.verdict h1{margin:0 0 4px;font-size:26px}.verdict p{margin:0;opacity:.92}
section{background:#fff;border:1px solid #dde1e6;border-radius:10px;padding:14px 18px;margin-bottom:16px}
h2{font-size:17px;margin:0 0 10px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceff2;vertical-align:top}
th{color:#5b6570;font-weight:600}
.ok{color:#1f7a3f;font-weight:600}.bad{color:#b3261e;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{flex:1;min-width:140px;border:1px solid #dde1e6;border-radius:8px;padding:10px 12px}
.card b{display:block;font-size:24px}.card.bad b{color:#b3261e}.card span{color:#5b6570;font-size:13px}
code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f0f2f5;padding:1px 4px;border-radius:4px}
ul{margin:4px 0 0 18px;padding:0}.muted{color:#5b6570}
"""


def _parity_html(parity: dict | None) -> str:
    if parity is None:
        return "<section><h2>Parity</h2><p class=bad>Not checked: there is no CSV to compare with.</p></section>"
    cards = "".join(
        f"<div class='card{' bad' if parity[k] else ''}'><b>{parity[k]:,}</b><span>{k.replace('_', ' ')}</span></div>"
        for k in ("missing_in_target", "extra_in_target", "changed", "rejected_in_source"))
    rows = []
    for kind, items in parity.get("examples", {}).items():
        for item in items:
            if isinstance(item, dict):
                detail = ", ".join(item["columns"]) if "columns" in item else item.get("reason", "")
                rows.append(f"<tr><td>{_e(kind.replace('_', ' '))}</td><td><code>{_e(item['key'])}</code></td>"
                            f"<td>{_e(detail)}</td></tr>")
            else:
                rows.append(f"<tr><td>{_e(kind.replace('_', ' '))}</td><td><code>{_e(item)}</code></td><td></td></tr>")
    examples = ("<h2 style='margin-top:14px'>Examples</h2><table><tr><th>difference</th><th>key</th>"
                "<th>columns / reason</th></tr>" + "".join(rows) + "</table>") if rows else ""
    return (f"<section><h2>Parity <span class=muted>— {parity['source_rows']:,} CSV rows vs "
            f"{parity['target_rows']:,} table rows</span></h2><div class=cards>{cards}</div>{examples}</section>")


def _checks_html(title: str, checks: list[dict] | None) -> str:
    if checks is None:
        return f"<section><h2>{_e(title)}</h2><p class=muted>Not run (no CSV).</p></section>"
    ordered = sorted(checks, key=lambda c: c["success"])  # failures first
    rows = "".join(
        f"<tr><td class={'ok' if c['success'] else 'bad'}>{'pass' if c['success'] else 'FAIL'}</td>"
        f"<td>{_e(c['rule'])}</td><td>{_e(c['unexpected_count'] if c['unexpected_count'] is not None else c['observed'])}</td>"
        f"<td>{_e(', '.join(c['examples']) or c['error'] or '')}</td></tr>" for c in ordered)
    failed = sum(not c["success"] for c in checks)
    return (f"<section><h2>{_e(title)} <span class=muted>— {len(checks) - failed}/{len(checks)} passed</span></h2>"
            f"<table><tr><th></th><th>expectation</th><th>unexpected / observed</th><th>examples</th></tr>"
            f"{rows}</table></section>")


def render_html(report: Report) -> str:
    passed = report.passed
    failures = report.failures()
    fail_list = ("<section><h2>Failing checks</h2><ul>" + "".join(f"<li>{_e(f)}</li>" for f in failures)
                 + "</ul></section>") if failures else ""
    sec_rows = "".join(
        f"<tr><td class={'ok' if c['passed'] else 'bad'}>{'pass' if c['passed'] else 'FAIL'}</td>"
        f"<td>{_e(c['check'])}</td><td>{_e(c['table'] or '—')}</td><td>{_e(c['detail'])}</td></tr>"
        for c in sorted(report.security["checks"], key=lambda c: c["passed"]))
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.notes)
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width,initial-scale=1">
<title>{'PASS' if passed else 'FAIL'} · {_e(report.table)} · {_e(report.report_id)}</title><style>{CSS}</style></head>
<body><main>
<div class="verdict {'pass' if passed else 'fail'}"><h1>{'PASSED' if passed else 'FAILED'} — {_e(report.table)}</h1>
<p>phase {_e(report.phase or 'none')} · data version {report.data_version} · {len(failures)} failing check(s) ·
{_e(report.started_at)} · {report.duration_s:.1f} s</p></div>
{fail_list}
{_parity_html(report.parity)}
{_checks_html('Expectations on the source (CSV, typed by the loader)', report.expectations.get('source'))}
{_checks_html('Expectations on the target (' + report.table + ')', report.expectations.get('target'))}
<section><h2>Security <span class=muted>— as agent {_e(report.security['subject'])}</span></h2>
<table><tr><th></th><th>check</th><th>table</th><th>detail</th></tr>{sec_rows}</table></section>
<section><h2>Run</h2><table>
<tr><th>report id</th><td><code>{_e(report.report_id)}</code></td></tr>
<tr><th>CSV</th><td>{_e(report.csv_path or '—')}</td></tr>
<tr><th>CSV sha256</th><td><code>{_e(report.csv_sha256 or '—')}</code></td></tr>
<tr><th>table version</th><td>{report.version} (data {report.data_version})</td></tr>
</table>{'<ul>' + notes + '</ul>' if notes else ''}</section>
</main></body></html>
"""


def markdown_summary(report: Report) -> str:
    lines = [f"# {'✅ PASSED' if report.passed else '❌ FAILED'} — validation of `{report.table}`", "",
             f"Report `{report.report_id}` · phase `{report.phase}` · data version {report.data_version}"
             f" · {report.duration_s:.1f} s", ""]
    if report.parity is not None:
        p = report.parity
        lines += ["| source rows | target rows | missing in target | extra in target | changed | rejected in source |",
                  "|---|---|---|---|---|---|",
                  f"| {p['source_rows']} | {p['target_rows']} | {p['missing_in_target']} | {p['extra_in_target']}"
                  f" | {p['changed']} | {p['rejected_in_source']} |", ""]
    failures = report.failures()
    lines += (["## Failing checks", ""] + [f"- {f}" for f in failures]) if failures else ["All checks passed."]
    if report.html_report:
        lines += ["", f"Full report: `{report.html_report}`"]
    return "\n".join(lines)


def failure_rows(report: Report) -> list[dict]:
    """The failing checks as table rows (an artifact's table)."""
    rows = [{"kind": f"expectation ({c['side']})", "check": c["rule"], "detail": str(c["unexpected_count"] or c["observed"] or "")}
            for c in report.failed_expectations]
    if report.parity is not None:
        rows += [{"kind": "parity", "check": k, "detail": str(report.parity[k])}
                 for k in ("missing_in_target", "extra_in_target", "changed", "rejected_in_source") if report.parity[k]]
    rows += [{"kind": "security", "check": c["check"], "detail": c["detail"]} for c in report.failed_security]
    return rows
