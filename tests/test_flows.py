"""The Prefect flows against a real Prefect API and a real PostgreSQL: mirror, sync, skips,
failures, artifacts, and the deployments of prefect.yaml."""

from __future__ import annotations


import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.csvdata import lead, write_csv

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(autouse=True)
def _fresh_pools():
    yield
    from tasks.resources import close_databases

    close_databases()  # each test has its own database: do not keep pools to dropped ones


@pytest.fixture
def samples_dir(env):
    data = Path(env["CUTOVER_DATA_DIR"])
    for table in ("leads", "approvals"):
        shutil.copy(ROOT / "data" / f"{table}.csv", data / f"{table}.csv")
    return data


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    return found[0] if found else None


def test_mirror_flow_loads_every_table_and_records_the_phase(samples_dir, sql):
    from flows.mirror import mirror

    results = mirror()
    assert list(results) == ["leads", "approvals"]  # parents first
    assert (results["leads"]["read"], results["leads"]["inserted"], results["leads"]["rejected"]) == (3000, 3000, 0)
    assert (results["approvals"]["read"], results["approvals"]["inserted"]) == (2000, 2000)
    assert sql("select table_name, phase from cutover.table_state order by 1") == [("approvals", "mirror"),
                                                                                  ("leads", "mirror")]
    history = sql("select table_name, from_phase, to_phase, started_at from cutover.phase_history order by id")
    assert [h[:3] for h in history] == [("leads", None, "mirror"), ("approvals", None, "mirror")]
    now = datetime.now(timezone.utc)
    assert all(now - timedelta(minutes=5) < h[3] <= now for h in history)
    assert sql("select count(*) from public.leads") == [(3000,)]

    artifact = _artifact("mirror-counts")
    assert artifact is not None and artifact.type == "table"
    assert "2 table(s) synced" in artifact.description
    assert '"inserted": 3000' in str(artifact.data) or "'inserted': 3000" in str(artifact.data)

    again = mirror()  # idempotent: nothing to do the second time
    assert all((r["inserted"], r["updated"], r["deleted"]) == (0, 0, 0) for r in again.values())


def test_sync_flow_applies_inserts_updates_deletes_then_nothing(samples_dir, sql):
    from flows.mirror import mirror
    from flows.sync import sync

    mirror()
    leads_csv = samples_dir / "leads.csv"
    lines = leads_csv.read_bytes().decode().split("\n")
    # the app edits its store: one lead gone (and with it, by cascade, its approvals), one appended
    write_csv(samples_dir / "extra.csv", [lead(1)])
    new_row = (samples_dir / "extra.csv").read_text().splitlines()[1]
    gone = lines[1].split(",")[0]
    edited = [line for line in lines if not line.startswith(gone)] + []
    edited.insert(-1, new_row)
    leads_csv.write_text("\n".join(edited))
    sql("update public.leads set city = 'Tampered' where id = (select id from public.leads where id::text <> %s "
        "order by id limit 1)", (gone,))  # a drifted mirror row is put back

    results = sync()
    assert (results["leads"]["inserted"], results["leads"]["updated"], results["leads"]["deleted"]) == (1, 1, 1)
    orphans = results["approvals"]["rejected"]
    assert results["approvals"]["read"] == 2000 == results["approvals"]["loaded"] + orphans
    assert sql("select count(*) from public.leads where city = 'Tampered'") == [(0,)]
    artifact = _artifact("sync-counts")
    assert artifact is not None and "2 table(s) synced" in artifact.description

    again = sync()
    assert all((r["inserted"], r["updated"], r["deleted"]) == (0, 0, 0) for r in again.values())

    # the next edit, written by rename as cutover's CSV store writes, is merged by diffing against the
    # file merged last: only the new record is typed and staged
    edited.insert(-1, new_row.replace(new_row.split(",")[0], str(uuid.uuid4())))
    (samples_dir / "leads.tmp").write_text("\n".join(edited))
    os.replace(samples_dir / "leads.tmp", leads_csv)
    results = sync(tables=["leads"])
    assert (results["leads"]["method"], results["leads"]["inserted"], results["leads"]["updated"]) == ("diff", 1, 0)


def test_sync_flow_skips_tables_the_csv_does_not_own(samples_dir, sql):
    from flows.mirror import mirror
    from flows.sync import sync

    assert sync() == {}  # nothing mirrored yet: nothing synced
    assert "not mirrored yet" in str(_artifact("sync-counts").data)

    mirror(tables=["leads"])
    sql("update cutover.table_state set phase = 'promoted' where table_name = 'leads'")
    (samples_dir / "leads.csv").write_text((samples_dir / "leads.csv").read_text().split("\n", 1)[0] + "\n")
    assert sync() == {}  # an emptied CSV must not touch a table the database owns
    assert sql("select count(*) from public.leads") == [(3000,)]
    assert "phase promoted" in str(_artifact("sync-counts").data)


def test_a_failing_sync_applies_nothing_and_records_the_failure(samples_dir, sql):
    from flows.mirror import mirror
    from flows.sync import sync_table

    mirror()
    before = sql("select md5(string_agg(l::text, '|' order by id)) from public.leads l")
    text = (samples_dir / "leads.csv").read_text()
    (samples_dir / "leads.csv").write_text(text + 'cc7ab9e6-0b6f-44c9-9547-e5115fe15fd9,"unterminated\n')
    from cutover.errors import StructuralError

    with pytest.raises(StructuralError, match=r"leads\.csv:3\d{3}: unterminated quoted field"):
        sync_table("leads")
    assert sql("select md5(string_agg(l::text, '|' order by id)) from public.leads l") == before
    assert sql("select status from cutover.runs order by started_at desc limit 1") == [("failed",)]
    assert sql("select count(*) from pg_tables where schemaname = 'cutover' and tablename like 'stg_%%'") == [(0,)]


def test_batches_are_mapped_tasks_and_give_the_same_table(samples_dir, sql, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.sync import sync_table
    from tasks.sync import plan_sync, scan_csv

    monkeypatch.setenv("CUTOVER_BATCH_BYTES", str(64 * 1024))  # ~13 batches of the 800 kB sample
    state = sync_table("leads", return_state=True)
    result = state.result()
    assert (result["read"], result["loaded"]) == (3000, 3000)
    batches = len(scan_csv.fn(plan_sync.fn("leads")).batches)
    assert batches > 10
    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    deadline = time.monotonic() + 30
    while True:  # task run states reach the API as events, a moment after the flow returns
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=flow_runs)
        done = sorted(r.name for r in runs if r.name.startswith("load leads batch")
                      and r.state is not None and r.state.is_completed())
        if len(done) == batches or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done == sorted(f"load leads batch {i}" for i in range(batches))
    mapped = sql("select md5(string_agg(l::text, '|' order by id)) from public.leads l")

    from cutover.export import export_table
    from tasks import resources

    db = resources.database()
    out = samples_dir / "export.csv"
    export_table(db, resources.specs()["leads"], out)
    sql("truncate public.leads cascade")
    monkeypatch.setenv("CUTOVER_BATCH_BYTES", str(1 << 30))  # one batch
    assert sync_table("leads", csv=str(out))["inserted"] == 3000
    assert sql("select md5(string_agg(l::text, '|' order by id)) from public.leads l") == mapped


def test_task_logic_runs_without_an_engine(samples_dir, settings):
    from tasks.sync import plan_sync, scan_csv

    plan = plan_sync.fn("leads")
    assert plan.csv_path == samples_dir.resolve() / "leads.csv"
    assert plan.rejects_file.parent == settings.rejects_dir
    fscan = scan_csv.fn(plan)
    assert fscan.header.names == tuple(c.name for c in plan.spec.columns)


def test_prefect_yaml_deploys_scheduled_sync_and_manual_mirror(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    pool = subprocess.run([str(Path(sys.executable).parent / "prefect"), "work-pool", "create", "cutover-process",
                           "--type", "process", "--overwrite"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert pool.returncode == 0, pool.stderr
    deploy = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    with get_client(sync_client=True) as client:
        sync = client.read_deployment_by_name("sync/sync")
        mirror = client.read_deployment_by_name("mirror/mirror")
        validate = client.read_deployment_by_name("validate/validate")
    assert [s.schedule.interval.total_seconds() for s in sync.schedules] == [900]
    assert [s.schedule.cron for s in validate.schedules] == ["0 3 * * *"]
    assert mirror.schedules == []
    assert sync.work_pool_name == mirror.work_pool_name == "cutover-process"
    assert sync.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(ROOT)


def test_validate_flow_reports_each_table_and_publishes_artifacts(samples_dir, sql):
    from flows.mirror import mirror
    from flows.validate import ValidationFailed, validate

    mirror()
    summaries = validate()
    assert list(summaries) == ["leads", "approvals"]
    assert all(s["passed"] for s in summaries.values()), summaries
    assert sql("select table_name, passed from cutover.validation_reports order by created_at") == [
        ("leads", True), ("approvals", True)]
    summary = _artifact("validation-leads")
    assert summary.type == "markdown" and "PASSED" in summary.data and summaries["leads"]["report_id"] in summary.data
    assert _artifact("validation-leads-failures").type == "table"

    key = sql("select id::text from public.leads order by id limit 1")[0][0]
    sql("update public.leads set email = 'not-an-email' where id = %s", (key,))
    with pytest.raises(ValidationFailed, match=r"leads: .*email matches.*changed"):
        validate(["leads"])
    assert "FAILED" in _artifact("validation-leads").data
    failures = _artifact("validation-leads-failures").data
    assert "parity" in str(failures) and "email" in str(failures)


def _wait_for_state(flow_run_id, name: str, timeout: float = 120):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
        if run.state and run.state.name == name:
            return run
        time.sleep(0.5)
    raise AssertionError(f"flow run {flow_run_id} never reached {name} (last: {run.state and run.state.name})")


def _flow_runs(name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))


def _promote_in_background(table: str, timeout_s: int = 300):
    import threading

    from flows.promote import promote

    known = {r.id for r in _flow_runs("promote")}
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=promote(table, timeout_s=timeout_s)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = [r for r in _flow_runs("promote") if r.id not in known]
        if new:
            return thread, box, new[0].id
        time.sleep(0.5)
    raise AssertionError("the promote flow run never appeared")


@pytest.mark.parametrize("approve", [True, False])
def test_promote_pauses_for_the_operator_and_obeys_the_form(samples_dir, sql, approve):
    from prefect.flow_runs import resume_flow_run

    from flows.advance import advance
    from flows.mirror import mirror

    mirror(["leads"])
    assert advance("leads")["to_phase"] == "dual_write"
    thread, box, run_id = _promote_in_background("leads")
    paused = _wait_for_state(run_id, "Paused")
    assert paused.state.state_details.run_input_keyset  # a form is waiting (what the UI shows)
    assert sql("select phase from cutover.table_state where table_name = 'leads'") == [("dual_write",)]
    resume_flow_run(run_id, run_input={"approve": approve, "approver": "Dana", "reason": "checked the report"})
    thread.join(120)
    assert box["result"]["outcome"] == ("done" if approve else "rejected")
    phase = sql("select phase from cutover.table_state where table_name = 'leads'")[0][0]
    assert phase == ("promoted" if approve else "dual_write")
    last = sql("select to_phase, outcome, actor from cutover.phase_history order by id desc limit 1")[0]
    assert last[1] == ("done" if approve else "rejected") and "Dana" in last[2]
    assert "→" in _artifact("transition-leads").data


def test_batches_run_unchanged_on_a_dask_cluster(samples_dir, sql, monkeypatch):
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL

    from flows.mirror import mirror
    from flows.sync import sync

    monkeypatch.setenv("CUTOVER_BATCH_BYTES", str(64 * 1024))  # ~13 batches of leads
    mirror()  # thread runner
    threads = sql("select md5(string_agg(l::text, '|' order by id)) from public.leads l")
    sql("truncate public.leads cascade; delete from cutover.table_state; delete from cutover.runs")
    # Dask workers are other processes: they read the same environment (database, Prefect API)
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        monkeypatch.setenv("CUTOVER_DASK_ADDRESS", cluster.scheduler_address)
        results = mirror()
        assert results["leads"]["read"] == 3000 and results["approvals"]["read"] == 2000
        assert sync()["leads"]["inserted"] == 0
        ran_on_dask = {p for p in cluster.scheduler.task_prefixes if "load" in p}
        assert ran_on_dask, sorted(cluster.scheduler.task_prefixes)
    assert sql("select md5(string_agg(l::text, '|' order by id)) from public.leads l") == threads


def test_backup_flow_runs_the_cli_core_on_promoted_tables_only(samples_dir, sql, settings, db, specs):
    from cutover import operate
    from flows.maintenance import backup
    from flows.mirror import mirror

    mirror()
    operate.advance(settings, db, specs, "leads")
    operate.advance(settings, db, specs, "leads", approve_as="Dana")
    sql("update public.leads set notes = 'written in the table' where id = (select min(id::text)::uuid from public.leads)")
    result = backup()
    assert list(result) == ["leads"] and (result["leads"]["upserted"], result["leads"]["deleted"]) == (1, 0)
    assert "written in the table" in (samples_dir / "leads.csv").read_text()
    assert backup(["approvals"]) == {}  # still in mirror: its CSV is the truth
    assert _artifact("backup") is not None
