"""Validating one table: suites on both sides, exact parity, security — one report.

Steps, each a function so that flows can run them as tasks and the CLI in-process:

1. ``snapshot``: the table's phase and versions now; the report is about this data version, and
   the gate accepts it only while the version is unchanged;
2. ``stage_source``: the CSV goes through the loader (same typing and rejects as a sync) into an
   unlogged staging table — never into memory — recorded as a ``validate`` run;
3. ``expectations`` on the staged source and on the target, pushed down to SQL by GX;
4. ``compare``: exact parity of staging vs target (``cutover.parity``);
5. ``security``: RLS, policies and role probes (``cutover.security_checks``);
6. ``finish``: build the report, store it, write its files, drop the staging table.
``abort`` records a failed run and drops staging. Without a CSV (e.g. deprecated, archived) the
source side and parity are skipped and the report cannot pass. Steps 3–5 need only what they read;
the report is the same whatever the order. The flow runs the steps as tasks (staging mapped over
batches, on any task runner). ``validate_table`` (the CLI) first compares by digests
(``digests_match``): a CSV whose typed rows are exactly the table's is not staged at all — its parity
is exact and its suite's results are the target's, the same report the steps would give.

The staging run stays ``running`` until the report is stored (``finish`` drops the staging table and
marks the run succeeded in one transaction), heartbeating while the long steps run. A validation
killed on the way is reaped like a killed sync: once its heartbeat is older than
``state.STALE_AFTER``, the next sync or validation of the table marks it failed and drops its staging.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cutover import csvscan, digest_parity, gx_runner, merge, parity, report, security_checks, state, suites, sync
from cutover.db import Database
from cutover.spec import TableSpec
from cutover.totals_ahead import TotalsAhead

log = logging.getLogger("cutover.validate")
HEARTBEAT_S = 60.0  # well inside state.STALE_AFTER


@dataclass(frozen=True)
class ValidationPlan:
    """What a validation will do; built with no I/O."""

    spec: TableSpec
    specs: dict[str, TableSpec]
    report_id: str
    staging: sync.SyncPlan | None  # None: no CSV to compare with
    suites_dir: Path
    reports_dir: Path
    subject: str | None  # the agent the RLS probe acts as (default: the largest owner)
    started: float


def plan_validation(spec: TableSpec, specs: dict[str, TableSpec], csv_path: Path | None, *, rejects_dir: Path,
                    batch_bytes: int, suites_dir: Path, reports_dir: Path, subject: str | None = None,
                    actor: str = "cutover", keep_csv_digests: bool = False, suites: bool = True) -> ValidationPlan:
    """``suites``: the plan runs the suites (the whole gate), not parity alone: GX (~100 MB) then shares the
    process with the CSV's pass, which reads batches of half ``batch_bytes`` — at 1M rows, the gate's peak
    RSS went from 287-295 MB to ~275, at the same speed."""
    staging = None
    if csv_path is not None and Path(csv_path).exists():
        staging = sync.plan_sync(spec, specs, csv_path, rejects_dir=rejects_dir,
                                 batch_bytes=batch_bytes // 2 if suites else batch_bytes, mass_delete_threshold=1.0,
                                 actor=actor, keep_csv_digests=keep_csv_digests)
    return ValidationPlan(spec=spec, specs=specs, report_id=report.new_report_id(spec.name), staging=staging,
                          suites_dir=Path(suites_dir), reports_dir=Path(reports_dir), subject=subject,
                          started=time.time())


def snapshot(db: Database, plan: ValidationPlan) -> state.TableState:
    return db.run(lambda conn: state.get_state(conn, plan.spec.name), what=f"read state of {plan.spec.name}")


def stage_source(db: Database, plan: ValidationPlan, map_batches: sync.MapBatches) -> csvscan.FileScan:
    """Load the CSV into the run's staging table, exactly as a sync would (batches in parallel)."""
    fscan = begin_staging(db, plan)
    load_staging(db, plan, fscan, map_batches)
    return fscan


def begin_staging(db: Database, plan: ValidationPlan) -> csvscan.FileScan:
    """Record the run and scan the file: a structural error stops the validation here."""
    sync.begin(db, plan.staging, kind="validate")
    return sync.scan(plan.staging)


def load_staging(db: Database, plan: ValidationPlan, fscan: csvscan.FileScan, map_batches: sync.MapBatches) -> None:
    stg = plan.staging
    results = list(map_batches(lambda b: sync.load_batch(db, stg, fscan.header, b), list(fscan.batches)))
    finish_staging(db, plan, fscan, results)


def finish_staging(db: Database, plan: ValidationPlan, fscan: csvscan.FileScan,
                   results: list[sync.BatchResult]) -> None:
    """Statistics for the comparison's joins, the data-only view GX checks, the run's counts."""
    stg = plan.staging
    read = sum(r.read for r in results)

    def analyze(conn):
        conn.execute(merge.analyze_staging(stg.staging))
        conn.execute(merge.staging_view(plan.spec, stg.staging)[1])
        loaded = conn.execute(merge.count_staged(stg.staging)).fetchone()[0]
        state.record_counts(conn, stg.run_id, rows_read=read, rows_loaded=loaded, rows_rejected=read - loaded,
                         csv_sha256=fscan.sha256, csv_bytes=fscan.size)

    db.run(analyze, what=f"stage {plan.spec.name} for validation")
    sync.drop_snapshot(stg)


@contextmanager
def _alive(db: Database, plan: ValidationPlan) -> Iterator[None]:
    """Heartbeat the staging run while a step runs (GX on a large table can outlast STALE_AFTER), so
    that no other run takes it for dead and drops its staging."""
    if plan.staging is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                db.run(lambda conn: state.heartbeat(conn, plan.staging.run_id), what="validation heartbeat")
            except Exception as exc:  # a missed beat is not the validation's failure
                log.warning("heartbeat of %s failed: %s", plan.staging.run_id, db.scrub(str(exc)))
            if stop.wait(HEARTBEAT_S):
                return

    beater = threading.Thread(target=beat, name="cutover-heartbeat", daemon=True)
    beater.start()
    try:
        yield
    finally:
        stop.set()
        beater.join()


def expectations(db: Database, plan: ValidationPlan, side: str) -> list[dict]:
    suite = suites.load_suite(plan.suites_dir, plan.spec.name)
    with _alive(db, plan):
        if side == "source":  # the staging table, without its _line column
            view = merge.staging_view(plan.spec, plan.staging.staging)[0]
            results = gx_runner.run_suite(db.conninfo, suite, "cutover", view)
        else:
            results = gx_runner.run_suite(db.conninfo, suite, "public", plan.spec.name)
    return [r.as_dict() for r in results]


def compare(db: Database, plan: ValidationPlan) -> dict:
    with _alive(db, plan):
        return db.run(lambda conn: parity.compare(conn, plan.spec, plan.staging.staging,
                                                  plan.staging.run_id).as_dict(), what=f"parity of {plan.spec.name}")


def security(db: Database, plan: ValidationPlan) -> dict:
    with _alive(db, plan):
        sub, checks = db.run(lambda conn: security_checks.check_all(conn, plan.specs, [plan.spec.name], plan.subject),
                             what=f"security checks of {plan.spec.name}")
    return {"subject": sub, "checks": [c.as_dict() for c in checks]}


def finish(db: Database, plan: ValidationPlan, before: state.TableState, fscan: csvscan.FileScan | None,
           source: list[dict] | None, target: list[dict], parity_result: dict | None, security_result: dict,
           notes: list[str] | None = None) -> report.Report:
    notes = list(notes or [])
    if plan.staging is None:
        notes.append("no CSV: the source suite and parity were not run")
    rep = report.Report(
        report_id=plan.report_id, table=plan.spec.name, phase=before.phase, version=before.version,
        data_version=before.data_version,
        started_at=datetime.fromtimestamp(plan.started, timezone.utc).isoformat(timespec="seconds"),
        duration_s=0.0, csv_path=str(plan.staging.csv_path) if plan.staging else None,
        csv_sha256=fscan.sha256 if fscan else None, expectations={"source": source, "target": target},
        parity=parity_result, security=security_result, notes=notes)

    def store(conn):
        now = state.get_state(conn, plan.spec.name)
        if now.version != before.version:  # a sync or transition landed meanwhile: say so, gate will refuse
            rep.notes.append(f"the table changed during validation (version {before.version} → {now.version});"
                             " this report describes the earlier version")
        if plan.staging is not None:
            _end_staging(conn, plan)
        rep.duration_s = round(time.time() - plan.started, 3)
        report.write_files(rep, plan.reports_dir)
        report.store(conn, rep)
        return rep

    return db.run(store, what=f"store validation report of {plan.spec.name}")


def _end_staging(conn, plan: ValidationPlan) -> None:
    conn.execute(merge.drop_staging(plan.staging.staging))
    state.finish_run(conn, plan.staging.run_id)


def abort(db: Database, plan: ValidationPlan, error: BaseException) -> None:
    if plan.staging is not None:
        sync.abort(db, plan.staging, error)


SOURCE_IS_TARGET = ("the CSV's typed rows are exactly the table's (parity by digests), so the source suite's"
                    " results are the target's: the file was not staged")


def digests_match(db: Database, plan: ValidationPlan, fscan: csvscan.FileScan,
                  workers: int) -> digest_parity.SourceCounts | None:
    """The CSV's counts when its typed rows are exactly the table's (``digest_parity.first_pass``: no
    suspect bucket, no reject), recorded on the run; None when they are not."""
    stg = plan.staging
    # The table is summed by one server process, which takes a core, and GX (~100 MB) shares this one:
    # the CSV's pass reads one batch fewer at a time (each holds ~11x its size in working memory).
    csv_workers = max(1, workers - 1)
    with _alive(db, plan):
        # GX's import (seconds holding Python's lock) goes beside the table's sums, not the CSV's
        suspects, counts, _ = db.run(
            lambda conn: digest_parity.first_pass(conn, stg, lambda: csvscan.ScanStream.of(fscan), csv_workers,
                                                  csv_after=gx_runner.wait_warm, locate=False),
            what=f"digests of {plan.spec.name}", snapshot=True)
    if len(suspects) or counts.rejected:
        return None
    db.run(lambda conn: _record_source(conn, plan, fscan, counts), what=f"record the validation of {plan.spec.name}")
    return counts


def _record_source(conn, plan: ValidationPlan, fscan: csvscan.FileScan, counts: digest_parity.SourceCounts) -> None:
    """The run's counts, from a digest comparison's read of the file."""
    state.record_counts(conn, plan.staging.run_id, rows_read=counts.read, rows_loaded=counts.loaded,
                        rows_rejected=counts.rejected, csv_sha256=fscan.sha256, csv_bytes=fscan.size)


def validate_table(db: Database, plan: ValidationPlan, *, workers: int = 2) -> report.Report:
    """The whole validation in this process (what ``cutover validate`` runs).

    The file is scanned first; then GX's import starts in the background, and the target's suite and
    the security probes run in threads while the CSV and the table are compared by digests
    (``cutover.digest_parity``): PostgreSQL sums the table beside the import, and the CSV's pass
    begins once the import is done (the import holds Python's lock for seconds). When they match, the CSV's typed rows are the table's rows: parity is
    exact and the source suite, run on the same rows, would give the target's results — they are
    reported as such, and the file is never staged. Otherwise the file is staged in full (batches in
    parallel), then the source's suite and the staged comparison run side by side. GX runs one suite
    at a time (``gx_runner``), on its own connection outside the pool; the probes run beside the
    comparison only when the pool has a connection to spare for them."""
    before = snapshot(db, plan)
    side = ThreadPoolExecutor(max_workers=3, thread_name_prefix="cutover-validate")
    try:
        fscan = begin_staging(db, plan) if plan.staging is not None else None
        gx_runner.warm_up()  # after the scan, which would crawl beside the import (Python's lock)
        target = side.submit(expectations, db, plan, "target")
        probes = side.submit(security, db, plan) if plan.staging is None or db.pool.max_size > workers else None
        source = parity_result = None
        notes = []
        if plan.staging is not None:
            if (counts := digests_match(db, plan, fscan, workers)) is not None:
                sync.drop_snapshot(plan.staging)
                # no suspect bucket: every bucket holds as many rows on both sides
                parity_result = digest_parity.exact(counts, target_rows=counts.loaded).as_dict()
                source = [dict(c) for c in target.result()]
                notes.append(SOURCE_IS_TARGET)
            else:
                load_staging(db, plan, fscan, sync.thread_map(workers))
                compared = side.submit(compare, db, plan)
                if probes is None and db.pool.max_size > 1:
                    probes = side.submit(security, db, plan)
                source = expectations(db, plan, "source")
                parity_result = compared.result()
        security_result = probes.result() if probes is not None else security(db, plan)
        return finish(db, plan, before, fscan, source, target.result(), parity_result, security_result, notes)
    except BaseException as exc:
        side.shutdown(wait=True, cancel_futures=True)  # nothing may still read staging when abort drops it
        abort(db, plan, exc)
        raise
    finally:
        side.shutdown(wait=True, cancel_futures=True)


def parity_only(db: Database, plan: ValidationPlan, *, workers: int = 2, ahead: TotalsAhead | None = None) -> dict:
    """Exact parity alone (no suites, no report), by digests: the CSV is read, not uploaded, except the
    rows of the key buckets that differ (``cutover.digest_parity``; ``ahead``: see there)."""
    if plan.staging is None:
        raise FileNotFoundError(f"{plan.spec.name}: no CSV to compare with")
    stg = plan.staging
    try:
        sync.begin(db, stg, kind="validate")
        scanned = functools.cache(lambda: sync.scan_stream(stg))  # scanned while PostgreSQL sums the table
        with _alive(db, plan):
            result, counts = db.run(lambda conn: digest_parity.compare(conn, stg, scanned, workers, ahead=ahead),
                                    what=f"parity of {plan.spec.name}", snapshot=True)

        def end(conn) -> None:
            _record_source(conn, plan, scanned().finish(), counts)
            _end_staging(conn, plan)

        db.run(end, what=f"finish parity of {plan.spec.name}")
    except BaseException as exc:
        abort(db, plan, exc)
        raise
    sync.drop_snapshot(stg)
    return result.as_dict()
