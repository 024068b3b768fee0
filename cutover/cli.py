"""The ``cutover`` command line. It calls the core directly (no Prefect), and imports heavy
modules (polars, the sync engine) only inside the commands that need them, so it starts fast.

Every command takes ``--json`` and then prints exactly one JSON object on stdout, errors included
(``{"error": ..., "exit_code": ...}``). Exit codes: 0 ok, 1 failed, 2 structural error in the CSV,
3 mass delete refused, 4 database unavailable, 5 not allowed in this phase, 6 concurrent change,
7 table differs from its spec, 8 refused by the validation gate.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

# before numpy is imported: its OpenBLAS would start a thread per core that keeps waking beside polars'
# threads and the workers (~5% of parity's CPU), and no command multiplies matrices
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# before polars is imported: its jemalloc keeps each arena's freed pages for reuse, and its default of four
# arenas a core left a 1M-row first load's peak ~25 MB higher than one a core (276-281 MB against 249-256,
# at the same speed): the steps must stay under 300 MB
os.environ.setdefault("_RJEM_MALLOC_CONF", f"narenas:{os.cpu_count() or 1}")

import typer

from cutover.errors import CutoverError
from cutover.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Move a CSV data store into Supabase in safe, reversible phases.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
TableOpt = Annotated[str, typer.Option("--table", "-t", help="Table name (a spec in data/specs).")]


def _settings() -> Settings:
    from cutover.redact import install_log_scrubber

    settings = Settings()
    install_log_scrubber(settings.secrets)
    return settings


def _emit(payload: dict[str, Any], as_json: bool, human: str | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(payload, default=str) + "\n")
    else:
        typer.echo(human if human is not None else json.dumps(payload, indent=2, default=str))


@contextmanager
def _reporting(as_json: bool, settings: Settings | None = None):
    """Turn errors into one clear, secret-free message and the documented exit code."""
    from cutover.redact import scrub

    secrets = settings.secrets if settings else ()
    try:
        yield
    except CutoverError as exc:
        message = scrub(str(exc), secrets)
        code = exc.exit_code
    except Exception as exc:  # unexpected: still no secret, still one line
        message = scrub(f"{type(exc).__name__}: {exc}", secrets)
        code = 1
    else:
        return
    if as_json:
        sys.stdout.write(json.dumps({"error": message, "exit_code": code}) + "\n")
    typer.echo(f"cutover: error: {message}", err=True)
    raise typer.Exit(code)


def _specs(settings: Settings):
    from cutover.spec import load_specs

    return load_specs(settings.spec_dir)


def _spec(settings: Settings, table: str):
    specs = _specs(settings)
    if table not in specs:
        raise CutoverError(f"unknown table {table!r}; known: {', '.join(specs)}")
    return specs[table], specs


@app.command()
def bootstrap(as_json: JsonOpt = False) -> None:
    """Create roles, the auth helpers, the cutover schema and every table (idempotent)."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover import bootstrap as boot
        from cutover.db import connect

        specs = _specs(settings)
        with connect(settings) as db:
            db.run(lambda conn: boot.bootstrap(conn, specs), what="bootstrap")
            _emit({"bootstrapped": list(specs), "database": db.display}, as_json,
                  f"bootstrapped {', '.join(specs)} on {db.display}")


@app.command()
def sync(
    table: TableOpt,
    csv: Annotated[Path | None, typer.Option(help="CSV file (default: <table>.csv in CUTOVER_DATA_DIR).")] = None,
    allow_mass_delete: Annotated[bool, typer.Option(help="Allow deleting more than the threshold.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Load the table's CSV into its mirror: insert, update and delete to match it exactly."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover.db import connect
        from cutover.syncplan import plan_sync
        from cutover.unchanged import skip_unchanged
        from cutover.errors import StagingLost

        spec, specs = _spec(settings, table)

        def plan_it():
            return plan_sync(
                spec, specs, csv or settings.csv_path(table), rejects_dir=settings.rejects_dir,
                batch_bytes=settings.batch_bytes, mass_delete_threshold=settings.mass_delete_threshold,
                allow_mass_delete=allow_mass_delete, actor="cli", diff_index_mb=settings.diff_index_mb)

        plan = plan_it()
        if not plan.csv_path.exists():
            raise CutoverError(f"{plan.csv_path}: no such file")
        with connect(settings) as db:
            result = skip_unchanged(db, plan)  # before importing the loader: a no-op sync starts fast
            if result is None:
                from cutover import sync as engine

                with _progress(not as_json, plan.csv_path) as progress:
                    try:
                        result = engine.run_sync(db, plan, workers=settings.workers, check_unchanged=False,
                                                 **progress)
                    except StagingLost as lost:  # nothing was applied: stage the file again, once
                        logging.getLogger("cutover.cli").warning("%s; rerunning it", lost)
                        result = engine.run_sync(db, plan_it(), workers=settings.workers, **progress)
        r = result.as_dict()
        keys = ("table", "read", "loaded", "rejected", "inserted", "updated", "deleted", "rejects_file",
                "duration_s", "run_id", "phase", "method")
        _emit({k: r[k] for k in keys}, as_json,
              f"{table}: read {r['read']}, loaded {r['loaded']}, rejected {r['rejected']}"
              f" (inserted {r['inserted']}, updated {r['updated']}, deleted {r['deleted']}) in {r['duration_s']}s"
              + (f"\nrejects: {r['rejects_file']}" if r["rejects_file"] else ""))


@contextmanager
def _progress(enabled: bool, path: Path):
    """A rich progress bar over the file's bytes, on a terminal only."""
    if not (enabled and sys.stderr.isatty()):
        yield {}
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(f"syncing {path.name}", total=None)
        yield {"on_scan": lambda size: bar.update(task, total=size, completed=0),
               "on_batch": lambda r: bar.advance(task, r.bytes)}


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Phase and last run of every table."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover import bootstrap as boot, state
        from cutover.db import connect

        specs = _specs(settings)
        with connect(settings) as db:
            def read(conn):
                if not boot.is_bootstrapped(conn):
                    return {}, {}
                return state.phases(conn), state.last_runs(conn)
            phases, runs = db.run(read, what="status")
        tables = {name: {"phase": (phases.get(name) or {}).get("phase"),
                         "version": (phases.get(name) or {}).get("version", 0),
                         "last_run": runs.get(name)} for name in specs}
        lines = []
        for name, t in tables.items():
            run = t["last_run"]
            last = (f"{run['kind']} {run['status']} at {run['finished_at'] or run['started_at']}: read {run['rows_read']},"
                    f" rejected {run['rows_rejected']}" + (f" — {run['error']}" if run["error"] else "")
                    if run else "never synced")
            lines.append(f"{name:<12} {t['phase'] or 'not migrated':<14} {last}")
        _emit({"database": db.display, "tables": tables}, as_json, "\n".join(lines))


@app.command()
def health(as_json: JsonOpt = False) -> None:
    """Round-trip latency, pool usage and server facts. Exit 4 if the database is unreachable."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover.db import connect
        from cutover.health import check

        with connect(settings) as db:
            report = check(db)
        _emit(report, as_json, "\n".join(f"{k}: {v}" for k, v in report.items()))


@app.command()
def export(
    table: TableOpt,
    csv: Annotated[Path, typer.Option(help="Where to write the CSV (replaced atomically).")],
    as_json: JsonOpt = False,
) -> None:
    """Write the table as CSV, in the spec's column order, sorted by primary key."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover.db import connect
        from cutover.export import export_table

        spec, _ = _spec(settings, table)
        with connect(settings) as db:
            rows = export_table(db, spec, csv)
        _emit({"table": table, "rows": rows, "csv": str(csv.resolve())}, as_json, f"{table}: {rows} rows → {csv}")


@app.command()
def validate(
    table: TableOpt,
    csv: Annotated[Path | None, typer.Option(help="CSV to compare with (default: <table>.csv in CUTOVER_DATA_DIR).")] = None,
    subject: Annotated[str | None, typer.Option(help="Agent id the RLS probe acts as (default: the largest owner).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Suites on CSV and table, exact parity and security checks; one report. Exit 0 passed, 1 not."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover import validate as validation
        from cutover.db import connect

        spec, specs = _spec(settings, table)
        plan = validation.plan_validation(
            spec, specs, csv or settings.csv_path(table), rejects_dir=settings.rejects_dir,
            batch_bytes=settings.batch_bytes, suites_dir=settings.expectations_dir,
            reports_dir=settings.reports_dir, subject=subject, actor="cli",
            keep_csv_digests=settings.keep_csv_digests)
        with connect(settings) as db:
            rep = validation.validate_table(db, plan, workers=settings.workers)
        summary = rep.summary()
        _emit(summary, as_json, "\n".join(
            [f"{table}: {'PASSED' if rep.passed else 'FAILED'} (report {rep.report_id})"]
            + [f"  - {f}" for f in rep.failures()] + [f"report: {rep.html_report}"]))
    if not rep.passed:
        raise typer.Exit(1)


@app.command()
def parity(
    table: TableOpt,
    csv: Annotated[Path | None, typer.Option(help="CSV to compare with (default: <table>.csv in CUTOVER_DATA_DIR).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Exact row-level parity of CSV and table alone (no suites, no report). Exit 0 exact, 1 not."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover.db import connect
        from cutover.totals_ahead import TotalsAhead

        spec, specs = _spec(settings, table)
        csv_path = csv or settings.csv_path(table)

        def alone() -> bool:  # the CSV's sums are likely kept: the table's are all the work
            from cutover import digest_memo

            kept = digest_memo.kept_at(settings.rejects_dir, table, settings.keep_csv_digests)  # as plan_sync's
            return digest_memo.may_hold_file(kept, csv_path)

        # PostgreSQL starts summing the table before polars is even imported: 0.3-0.5 s sooner
        with connect(settings) as db, TotalsAhead.start(db, spec, alone=alone) as ahead:
            from cutover import validate as validation

            plan = validation.plan_validation(
                spec, specs, csv_path, rejects_dir=settings.rejects_dir,
                batch_bytes=settings.batch_bytes, suites_dir=settings.expectations_dir,
                reports_dir=settings.reports_dir, actor="cli", keep_csv_digests=settings.keep_csv_digests,
                suites=False)
            result = validation.parity_only(db, plan, workers=settings.workers, ahead=ahead)
        _emit(result, as_json, f"{table}: {'exact' if result['passed'] else 'DIFFERENT'} — "
              + ", ".join(f"{k} {result[k]}" for k in ("missing_in_target", "extra_in_target", "changed",
                                                       "rejected_in_source")))
    if not result["passed"]:
        raise typer.Exit(1)


@app.command()
def suites(
    write: Annotated[bool, typer.Option("--write", help="Regenerate the suite files from the specs.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check (or --write) that expectations/<table>.json hold every expectation the specs imply."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover import suites as gx_suites
        from cutover.atomic import atomic_write

        specs = _specs(settings)
        stale = gx_suites.stale_suites(specs, settings.expectations_dir)
        if write:
            for name in stale:
                path = gx_suites.suite_path(settings.expectations_dir, name)
                existing = gx_suites.load_suite(settings.expectations_dir, name) if path.exists() else None
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(path) as f:
                    f.write(gx_suites.render(gx_suites.merge_suite(gx_suites.suite_for(specs[name]), existing)).encode())
        _emit({"stale": [] if write else stale, "written": stale if write else []}, as_json,
              ("wrote " if write else "stale: ") + (", ".join(stale) or "none"))
    if stale and not write:
        raise typer.Exit(1)


def _transition_output(result, as_json: bool) -> None:
    r = result.as_dict()
    human = (f"{r['table']}: {r['from_phase'] or '(none)'} → {r['to_phase'] or '(none)'} ({r['outcome']})"
             + (f", allowed by report {r['report_id']}" if r["report_id"] else "")
             + (f", approved by {r['approver']}" if r["approver"] else "")
             + (f"\nparity afterwards: {'exact' if r['parity_passed'] else 'FAILED'} (report {r['parity_report_id']})"
                if r["parity_report_id"] else "")
             + (f"\narchive: {r['archive']}" if r["archive"] else ""))
    _emit(r, as_json, human)


@app.command()
def plan(
    table: TableOpt,
    to: Annotated[str, typer.Option("--to", help="Target phase: the next one (advance) or the previous one (rollback).")],
    drop: Annotated[bool, typer.Option(help="mirror → none: also drop the mirror table.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print the steps a transition would take, without doing anything."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover import operate, phases
        from cutover.db import connect

        _spec(settings, table)
        with connect(settings) as db:
            current = operate.current_state(db, table)
        target_phase = None if to in ("none", "") else to
        if target_phase == phases.FORWARD.get(current.phase, "?"):
            planned = phases.plan_advance(current)
        elif current.phase is not None and target_phase == phases.BACK.get(current.phase, "?"):
            planned = phases.plan_rollback(current, drop=drop)
        else:
            raise phases.PlanError(f"{table} is in phase {current.phase or '(none)'}: it can go to "
                                   f"{phases.FORWARD.get(current.phase) or '—'} or back to "
                                   f"{(phases.BACK.get(current.phase) or '(none)') if current.phase else '—'}")
        _emit(planned.as_dict(), as_json, "\n".join(planned.lines()))


@app.command()
def advance(
    table: TableOpt,
    to: Annotated[str | None, typer.Option("--to", help="Expected next phase: refuse if the table is elsewhere.")] = None,
    approve_as: Annotated[str | None, typer.Option(help="Approver's name (required to promote).")] = None,
    reason: Annotated[str, typer.Option(help="Why: recorded in the phase history.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Move the table one phase forward: final sync, validation, gate, then the transition."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover import operate
        from cutover.db import connect

        _, specs = _spec(settings, table)
        with connect(settings) as db:
            result = operate.advance(settings, db, specs, table, approve_as=approve_as, reason=reason, to=to)
        _transition_output(result, as_json)


@app.command()
def rollback(
    table: TableOpt,
    drop: Annotated[bool, typer.Option(help="mirror → none: also drop the mirror table.")] = False,
    reason: Annotated[str, typer.Option(help="Why: recorded in the phase history.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Move the table one phase back without losing a write; exact parity is checked afterwards."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover import operate
        from cutover.db import connect

        _, specs = _spec(settings, table)
        with connect(settings) as db:
            result = operate.rollback(settings, db, specs, table, drop=drop, reason=reason)
        _transition_output(result, as_json)
    if result.parity_passed is False:
        raise typer.Exit(1)


@app.command()
def backup(
    table: Annotated[str | None, typer.Option("--table", "-t", help="Only this table (default: every promoted one).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Bring the CSV of each promoted table up to date from the database's change log."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover import operate
        from cutover.db import connect

        specs = _spec(settings, table)[1] if table else _specs(settings)
        with connect(settings) as db:
            names = [table] if table else [n for n in specs if operate.current_state(db, n).phase == "promoted"]
            results = [operate.backup(settings, db, specs, name).as_dict() for name in names]
        _emit({"backups": results}, as_json, "\n".join(
            f"{r['table']}: {r['upserted']} upserted, {r['deleted']} deleted (changes {r['from_change']} → {r['to_change']})"
            for r in results) or "no promoted table")


@app.command()
def generate(
    table: TableOpt,
    rows: Annotated[int, typer.Option(min=0, help="How many rows.")],
    out: Annotated[Path, typer.Option(help="Output CSV.")],
    seed: Annotated[int, typer.Option(help="Same seed, same file.")] = 7,
    leads_rows: Annotated[int | None, typer.Option(help="approvals: how many leads they refer to.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a deterministic, realistic sample CSV of any size (streamed; bounded memory)."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover.samples import generate as gen

        written = gen(table, rows, out, seed=seed, leads_rows=leads_rows)
        _emit({"table": table, "rows": written, "csv": str(out.resolve())}, as_json, f"{table}: {written} rows → {out}")


@app.command("stop-embedded")
def stop_embedded(as_json: JsonOpt = False) -> None:
    """Stop the embedded PostgreSQL of CUTOVER_HOME, if it runs."""
    settings = _settings()
    with _reporting(as_json, settings):
        from cutover import embedded

        stopped = embedded.stop(settings.home)
        _emit({"stopped": stopped}, as_json, "stopped" if stopped else "not running")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    finally:
        # the interpreter's last garbage collection walks every object the imports made (0.1–0.25 s of
        # each command); frozen, cycles among them are left to the OS (every file and connection is
        # closed by then, and atexit handlers, logging's flush among them, still run)
        gc.freeze()


if __name__ == "__main__":
    main()
