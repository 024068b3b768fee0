"""``make demo``: the pipeline so far, end to end, on the embedded PostgreSQL.

It works in its own home (``.cutover/demo`` unless ``CUTOVER_DEMO_HOME`` says otherwise), on a copy
of the sample CSVs, so the committed files never change and a real ``.cutover`` is never touched.
Each run starts from scratch. The Prefect flows run against a temporary local Prefect server;
the ``cutover`` commands run as an operator would type them.

Story: bootstrap → mirror flow (both tables, phase ``mirror``) → the application edits its CSV
store (a new lead, an edited lead, a deleted lead, a bad row) → sync flow → RLS as an agent sees
it → validate flow (fails: the CSV holds rows the mirror cannot) → the application fixes its
data → sync → validate passes → phases 2–4: advance to dual_write, the application writes both
stores (one database half fails and the reconcile flow repairs it), the promote flow pauses until
an operator approves it (here: the same call the UI's Resume form makes), writes in Supabase, the
backup flow, the deprecate flow (archive + manifest), rollback to dual_write, forward again →
the phase timeline, status, export.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("CUTOVER_DEMO_HOME", ROOT / ".cutover" / "demo")).resolve()
DATA = HOME / "data"


def _environment() -> None:
    # Before Prefect is imported: its settings are read at import.
    os.environ.pop("SUPABASE_DB_URL", None)  # the demo always uses the embedded database
    os.environ.update({
        "CUTOVER_HOME": str(HOME), "CUTOVER_DATA_DIR": str(DATA),
        "PREFECT_HOME": str(HOME / "prefect"), "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # a cold first start takes a while
    })
    os.environ.pop("PREFECT_API_URL", None)  # a temporary server of our own, never someone's real one


def _cutover(*args: str) -> str:
    out = subprocess.run([str(Path(sys.executable).parent / "cutover"), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"cutover {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    return out.stdout.strip()


def _reset() -> None:
    from cutover import embedded

    embedded.stop(HOME)
    shutil.rmtree(HOME, ignore_errors=True)
    DATA.mkdir(parents=True)
    for table in ("leads", "approvals"):
        shutil.copy(ROOT / "data" / f"{table}.csv", DATA / f"{table}.csv")


def _edit_leads_csv(console) -> None:
    """What the RE Engine does to its store between two syncs (written atomically, as it should)."""
    import polars as pl

    from cutover.atomic import atomic_write

    path = DATA / "leads.csv"
    leads = pl.read_csv(path, infer_schema=False)
    # delete a lead that has approvals: the mirror cascades, and the CSV's now-orphaned approvals are rejected
    deleted = pl.read_csv(DATA / "approvals.csv", infer_schema=False)["lead_id"][0]
    edited = leads.filter(pl.col("id") != deleted)["id"][0]
    leads = leads.filter(pl.col("id") != deleted).with_columns(
        pl.when(pl.col("id") == edited).then(pl.lit("won")).otherwise(pl.col("status")).alias("status"))
    new = pl.DataFrame([{**{c: None for c in leads.columns},
                         "id": "0b5e2f6a-9c1d-4e3b-8a7f-2d4c6e8f0a1b", "created_at": "2026-11-25T09:00:00Z",
                         "updated_at": "2026-11-25T09:00:00Z", "first_name": "Zoë", "last_name": "Ångström",
                         "email": "zoe@example.org", "status": "new", "notes": 'Walk-in, "call me after 6",\nno SMS.'}],
                       schema={c: pl.String for c in leads.columns})
    bad = new.with_columns(pl.lit("5b0cd0a8-3a4e-4c52-9f3d-0d3f1c2b4a99").alias("id"),
                           pl.lit("100.005").alias("budget"))  # three decimals: rejected, never rounded
    with atomic_write(path) as f:
        pl.concat([leads, new, bad]).write_csv(f, quote_style="necessary")
    console.print(f"  deleted lead {deleted[:8]}…, set lead {edited[:8]}… to [b]won[/], added a lead,"
                  " and added a row with budget 100.005")


def _fix_csv_store(console) -> None:
    """The operator's fix: drop the bad row and the approvals of the deleted lead."""
    import polars as pl

    from cutover.atomic import atomic_write

    leads = pl.read_csv(DATA / "leads.csv", infer_schema=False)
    approvals = pl.read_csv(DATA / "approvals.csv", infer_schema=False)
    kept = leads.filter(pl.col("budget").is_null() | ~pl.col("budget").str.contains(r"\.\d{3}$"))
    orphans = approvals.filter(~pl.col("lead_id").is_in(kept["id"].implode()))
    for path, frame in ((DATA / "leads.csv", kept), (DATA / "approvals.csv", approvals.join(orphans, on="id", how="anti"))):
        with atomic_write(path) as f:
            frame.write_csv(f, quote_style="necessary")
    console.print(f"  removed {leads.height - kept.height} bad lead row and {orphans.height} orphaned approvals")


def _verdicts(summaries: dict[str, dict], console) -> None:
    for name, s in summaries.items():
        mark = "[green]PASSED[/]" if s["passed"] else "[red]FAILED[/]"
        console.print(f"  {name}: {mark}  report {s['html_report']}")
        for failure in s["failures"]:
            console.print(f"    - {failure}")


def _validate_all(console) -> dict[str, dict]:
    from flows.validate import validate_table

    summaries = {t: validate_table(t) for t in ("leads", "approvals")}
    _verdicts(summaries, console)
    return summaries


TABLES = ("leads", "approvals")


def _promote_approved(table: str, console) -> dict:
    """Start the promote flow, wait until it pauses for the operator, answer its form."""
    import threading
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.flow_runs import resume_flow_run

    from flows.promote import promote

    def runs():
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["promote"])))

    known = {r.id for r in runs()}
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(result=promote(table, timeout_s=600)), daemon=True)
    worker.start()
    while True:
        paused = [r for r in runs() if r.id not in known and r.state and r.state.name == "Paused"]
        if paused or not worker.is_alive():
            break
        time.sleep(0.5)
    if paused:
        console.print(f"  promote {table}: [yellow]Paused[/] — waiting for an operator (UI: ⋮ → Resume);"
                      " approving as 'Dana (ops)'")
        resume_flow_run(paused[0].id, run_input={"approve": True, "approver": "Dana (ops)",
                                                 "reason": "parity exact, suites green"})
    worker.join()
    if "result" not in box:
        raise SystemExit(f"demo: the promote flow of {table} failed")
    return box["result"]


def _phases_2_to_4(console) -> None:
    from datetime import datetime, timezone
    from decimal import Decimal

    from cutover.app import repositories
    from cutover.samples import agent_ids
    from cutover.settings import Settings
    from flows.advance import advance, deprecate
    from flows.maintenance import backup, reconcile
    from flows.rollback import rollback

    def show(result: dict) -> None:
        extra = "".join(f", {k.replace('_', ' ')} {result[k]}" for k in ("report_id", "approver", "archive")
                        if result.get(k))
        if result.get("parity_report_id"):
            extra += f", parity afterwards {'exact' if result['parity_passed'] else 'FAILED'}"
        console.print(f"  {result['table']}: {result['from_phase']} → {result['to_phase']} ({result['outcome']}){extra}")

    console.print("\n[b]9. advance flow: mirror → dual_write[/] (final sync, validation, gate)")
    for t in TABLES:
        show(advance(t, reason="start dual writes"))

    console.print("\n[b]10. the application writes both stores[/] (as an agent: RLS applies, no service-role key)")
    agent = agent_ids(7)[0]
    settings = Settings()
    app = repositories(settings, agent)
    now = datetime.now(timezone.utc)
    lead_id = "7d3f5a10-2b4c-4d6e-8f10-a2b4c6d8e0f1"
    app.leads.upsert([{"id": lead_id, "created_at": now, "updated_at": now, "first_name": "Amara",
                       "last_name": "Diallo", "email": "amara@example.com", "phone": "+1 512 555 0199",
                       "street": None, "city": "Austin", "state": "TX", "zip": "78701", "budget": Decimal("615000.00"),
                       "status": "new", "source": "referral", "notes": None, "agent_id": agent}])
    console.print(f"  new lead {lead_id[:8]}… written to leads.csv, then to Supabase")
    app.db.pool.close()  # the application's connection to Supabase drops
    app.leads.update(lead_id, lambda r: {**r, "status": "contacted", "updated_at": datetime.now(timezone.utc)})
    console.print("  update while Supabase is unreachable: in the CSV, and queued in the outbox"
                  f" ({app.leads.outbox.count('leads')} pending)")
    app.close()
    console.print(f"  reconcile flow (every 10 min): repaired {reconcile()}")

    console.print("\n[b]11. promote flow: dual_write → promoted[/] (pauses for the operator's approval)")
    for t in TABLES:
        show(_promote_approved(t, console))

    console.print("\n[b]12. writes in Supabase[/] (the source of truth now)")
    app = repositories(settings, agent)
    app.leads.update(lead_id, lambda r: {**r, "status": "qualified", "updated_at": datetime.now(timezone.utc)})
    console.print(f"  lead {lead_id[:8]}… → qualified, in Supabase only")
    app.close()
    console.print("\n[b]13. backup flow[/] (hourly: the CSV backup follows the change log)")
    for t, r in backup().items():
        console.print(f"  {t}: changes {r['from_change']}→{r['to_change']}: {r['upserted']} rows written,"
                      f" {r['deleted']} removed")

    console.print("\n[b]14. deprecate flow: promoted → deprecated[/] (archive with a sha256 manifest)")
    for t in reversed(TABLES):
        show(deprecate(t, reason="the CSV store is retired"))

    console.print("\n[b]15. rollback flow, twice: deprecated → promoted → dual_write[/] (parity checked each time)")
    for _ in range(2):
        for t in TABLES:
            show(rollback(t, reason="demo: the way back"))
    text = (DATA / "leads.csv").read_text()
    console.print(f"  the lead written in Supabase while promoted is in leads.csv: {'qualified' in text}")

    console.print("\n[b]16. forward again: dual_write → promoted[/]")
    for t in TABLES:
        show(_promote_approved(t, console))
    _timeline(console)


def _timeline(console) -> None:
    from rich.table import Table

    from tasks import resources

    rows = resources.database().run(lambda conn: conn.execute(
        """select table_name, coalesce(from_phase, '-'), coalesce(to_phase, '-'), outcome, actor,
                  coalesce(report_id, ''), to_char(finished_at, 'HH24:MI:SS')
           from cutover.phase_history order by id""").fetchall(), what="timeline")
    table = Table(title="phase timeline", title_justify="left")
    for col in ("table", "from", "to", "outcome", "actor", "report", "at"):
        table.add_column(col)
    for row in rows:
        table.add_row(*map(str, row))
    console.print(table)
    console.print(f"  reports: {HOME / 'reports'}")


def _counts_table(title: str, results: dict[str, dict]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col in ("table", "read", "loaded", "rejected", "inserted", "updated", "deleted", "seconds"):
        table.add_column(col, justify="left" if col == "table" else "right")
    for name, r in results.items():
        table.add_row(name, *(str(r[k]) for k in ("read", "loaded", "rejected", "inserted", "updated", "deleted")),
                      f"{r['duration_s']:.2f}")
    return table


def _as_agent(console) -> None:
    """RLS: what an authenticated agent and anon see, through the same roles Supabase uses."""
    import json

    from cutover.samples import agent_ids
    from tasks import resources

    agent = agent_ids(7)[0]

    def look(conn):
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": agent}),))
        leads = conn.execute("select count(*) from public.leads").fetchone()[0]
        approvals = conn.execute("select count(*) from public.approvals").fetchone()[0]
        conn.execute("set local role anon")  # SET LOCAL: gone when this read-only transaction ends
        anon = conn.execute("select count(*) from public.leads").fetchone()[0]
        return leads, approvals, anon

    leads, approvals, anon = resources.database().run(look, what="RLS demo")
    console.print(f"  agent {agent[:8]}… sees {leads} leads and {approvals} approvals; anon sees {anon} leads")


def main() -> None:
    _environment()
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 110)
    console.rule("[b]cutover demo[/] — the whole migration, on the embedded PostgreSQL")
    console.print(f"home: {HOME}")
    _reset()

    console.print("\n[b]1. bootstrap[/] (cutover bootstrap)")
    console.print("  " + _cutover("bootstrap"))

    # No PREFECT_API_URL: Prefect runs the flows against a temporary local server of its own.
    console.print("\n[b]2. mirror flow[/] (Prefect starts a temporary local server…)")
    from flows.mirror import mirror
    from flows.sync import sync

    console.print(_counts_table("mirror: first full load", mirror()))

    console.print("\n[b]3. the application edits its CSV store[/]")
    _edit_leads_csv(console)

    console.print("\n[b]4. sync flow[/] (what the 15-minute schedule runs)")
    results = sync()
    console.print(_counts_table("sync", results))
    for name, r in results.items():
        if r["rejects_file"]:
            console.print(f"  {name} rejects → {r['rejects_file']}")
            console.print("  " + Path(r["rejects_file"]).read_text().strip().replace("\n", "\n  "))

    console.print("\n[b]5. again, with nothing changed[/]")
    console.print(_counts_table("sync (no change)", sync()))

    console.print("\n[b]6. row-level security[/]")
    _as_agent(console)

    console.print("\n[b]7. validate flow[/] (suites on CSV and table, exact parity, security; the daily schedule)")
    _validate_all(console)
    console.print("  → the gate would refuse any phase change: the CSV holds rows the mirror cannot hold")

    console.print("\n[b]8. the application fixes its data, the next sync applies it, validation passes[/]")
    _fix_csv_store(console)
    console.print(_counts_table("sync", sync()))
    if not all(s["passed"] for s in _validate_all(console).values()):
        raise SystemExit("demo: validation should pass once the data is fixed")

    _phases_2_to_4(console)

    console.print("\n[b]17. status[/] (cutover status)")
    console.print(_cutover("status"))
    out = HOME / "export" / "leads.csv"
    console.print("\n[b]18. export[/] (cutover export --table leads)")
    console.print("  " + _cutover("export", "--table", "leads", "--csv", str(out)))
    console.print(f"\n[green]done.[/] The embedded server keeps running for you to explore:\n"
                  f"  CUTOVER_HOME={HOME} CUTOVER_DATA_DIR={DATA} .venv/bin/cutover status\n"
                  f"  CUTOVER_HOME={HOME} .venv/bin/cutover stop-embedded")


if __name__ == "__main__":
    main()
