"""Validation against real PostgreSQL and real GX: each injected defect is reported exactly, a clean
mirror passes, and the gate refuses anything but a passing report of the current data."""

from __future__ import annotations

import json
import os
import re

import psycopg
import pytest

from cutover import gate, report as reports, suites, sync as engine, validate as validation
from cutover.errors import GateRefused
from tests.csvdata import AGENT, lead, write_csv

LEADS, APPROVALS = 300, 200


def _sync(db, settings, specs, table, csv=None):
    plan = engine.plan_sync(specs[table], specs, csv or settings.csv_path(table), rejects_dir=settings.rejects_dir,
                            batch_bytes=settings.batch_bytes, mass_delete_threshold=1.0)
    return engine.run_sync(db, plan, workers=1)


def _validate(db, settings, specs, table, csv=None, **kw):
    plan = validation.plan_validation(specs[table], specs, csv or settings.csv_path(table),
                                      rejects_dir=settings.rejects_dir, batch_bytes=settings.batch_bytes,
                                      suites_dir=settings.expectations_dir, reports_dir=settings.reports_dir, **kw)
    return validation.validate_table(db, plan, workers=1)


def _failed(rep):
    """Every failing check, by kind: what a defect must show up as, and nothing else."""
    out = {f"expectation:{c['side']}:{c['rule']}" for c in rep.failed_expectations}
    out |= {f"parity:{k}" for k in ("missing_in_target", "extra_in_target", "changed", "rejected_in_source")
            if rep.parity[k]}
    return out | {f"security:{c['check']}" for c in rep.failed_security}


@pytest.fixture
def mirrored(db, settings, specs):
    from cutover.samples import generate

    generate("leads", LEADS, settings.csv_path("leads"), seed=11)
    generate("approvals", APPROVALS, settings.csv_path("approvals"), seed=11, leads_rows=LEADS)
    for table in ("leads", "approvals"):
        result = _sync(db, settings, specs, table)
        assert result.rejected == 0
    return settings


def test_a_clean_mirror_passes_and_leaves_a_report_everywhere(mirrored, db, settings, specs, sql):
    for table in ("leads", "approvals"):
        rep = _validate(db, settings, specs, table)
        assert rep.passed, rep.failures()
        assert rep.parity["source_rows"] == rep.parity["target_rows"] == {"leads": LEADS, "approvals": APPROVALS}[table]
        assert len(rep.expectations["source"]) == len(rep.expectations["target"]) == len(
            suites.load_suite(settings.expectations_dir, table)["expectations"])
        assert {c["check"] for c in rep.security["checks"]} >= {
            "rls_enabled", "policy_present", "anon_reads_nothing", "anon_insert_denied", "anon_writes_nothing",
            "authenticated_insert_denied", "authenticated_sees_own_rows", "cutover_schema_closed_to_anon",
            "cutover_schema_closed_to_authenticated"}
        stored = sql("select passed, data_version, report->>'table' from cutover.validation_reports"
                     " where report_id = %s", (rep.report_id,))
        assert stored == [(True, 1, table)]
        page = settings.reports_dir / f"{rep.report_id}.html"
        assert json.loads((settings.reports_dir / f"{rep.report_id}.json").read_text())["passed"] is True
        text = page.read_text()
        assert "PASSED" in text
        # self-contained: renders offline, nothing fetched
        assert not re.search(r"(src|href)\s*=|<script|<link|@import|url\(", text, re.I)
    # the probes ran in rolled-back transactions: nothing was left behind
    assert "CUTOVER_GX_DB_URL" not in os.environ  # the connection string GX resolved is gone again
    assert sql("select count(*) from public.leads") == [(LEADS,)]
    assert sql("select count(*) from pg_tables where schemaname = 'cutover' and tablename like 'stg_%%'") == [(0,)]
    assert sql("select count(*) from pg_views where schemaname = 'cutover'") == [(0,)]


def _by_the_steps(db, settings, specs, table):
    """What the flow's steps find: the whole file staged, both suites, the staged comparison."""
    plan = validation.plan_validation(specs[table], specs, settings.csv_path(table),
                                      rejects_dir=settings.rejects_dir, batch_bytes=settings.batch_bytes,
                                      suites_dir=settings.expectations_dir, reports_dir=settings.reports_dir)
    validation.stage_source(db, plan, engine.thread_map(1))
    try:
        return (validation.expectations(db, plan, "source"), validation.expectations(db, plan, "target"),
                validation.compare(db, plan))
    finally:
        db.run(lambda conn: validation._end_staging(conn, plan))


@pytest.mark.parametrize("rule_broken", [False, True])
def test_a_file_equal_to_its_table_is_not_staged_and_reports_what_the_steps_find(db, settings, specs, sql,
                                                                                  rule_broken):
    rows = [lead(i, budget="-5.00" if rule_broken and i == 3 else "450000.00") for i in range(20)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs, "leads")
    rep = _validate(db, settings, specs, "leads")
    assert validation.SOURCE_IS_TARGET in rep.notes
    source, target, parity = _by_the_steps(db, settings, specs, "leads")
    assert (rep.expectations["source"], rep.expectations["target"], rep.parity) == (source, target, parity)
    assert rep.passed is not rule_broken
    assert (_failed(rep) == {"expectation:source:budget >= 0", "expectation:target:budget >= 0"}) is rule_broken
    runs = sql("select status, rows_read, rows_loaded, rows_rejected, csv_sha256 is not null from cutover.runs"
               " where kind = 'validate' order by started_at")
    assert runs[0] == ("succeeded", 20, 20, 0, True)
    assert sql("select count(*) from pg_tables where schemaname = 'cutover' and tablename like 'stg_%%'") == [(0,)]
    # one changed cell: no longer equal, so the file is staged and the steps' own results come back
    write_csv(settings.csv_path("leads"), rows[:-1] + [{**rows[-1], "city": "Elsewhere"}])
    rep = _validate(db, settings, specs, "leads")
    assert validation.SOURCE_IS_TARGET not in rep.notes and rep.parity["changed"] == 1


def _lead_without_approvals(sql):
    return sql("select id::text from public.leads l where not exists"
               " (select 1 from public.approvals a where a.lead_id = l.id) order by id limit 1")[0][0]


def _copy_of_a_lead(sql, new_id):
    sql("insert into public.leads select %s::uuid, created_at, updated_at, first_name, last_name, email, phone,"
        " street, city, state, zip, budget, status, source, notes, agent_id from public.leads order by id limit 1",
        (new_id,))


ORPHAN = "0f0e0d0c-0b0a-4909-8807-060504030201"
NEW_ID = "11111111-2222-4333-8444-555555555555"


def test_a_changed_cell_is_reported_with_its_key_and_column(mirrored, db, settings, specs, sql):
    key = sql("select id::text from public.leads where city is not null order by id limit 1")[0][0]
    sql("update public.leads set city = city || ' (edited)' where id = %s", (key,))
    rep = _validate(db, settings, specs, "leads")
    assert _failed(rep) == {"parity:changed"}
    assert rep.parity["changed"] == 1
    assert rep.parity["examples"]["changed"] == [{"key": key, "columns": ["city"]}]


def test_a_null_turned_into_an_empty_string_is_a_change(mirrored, db, settings, specs, sql):
    key = sql("select id::text from public.leads where notes is null order by id limit 1")[0][0]
    sql("update public.leads set notes = '' where id = %s", (key,))
    rep = _validate(db, settings, specs, "leads")
    assert _failed(rep) == {"parity:changed"}
    assert rep.parity["examples"]["changed"] == [{"key": key, "columns": ["notes"]}]


def test_a_missing_row_is_reported(mirrored, db, settings, specs, sql):
    key = _lead_without_approvals(sql)
    sql("delete from public.leads where id = %s", (key,))
    rep = _validate(db, settings, specs, "leads")
    assert _failed(rep) == {"parity:missing_in_target"}
    assert rep.parity["examples"]["missing_in_target"] == [key]


def test_an_extra_row_is_reported(mirrored, db, settings, specs, sql):
    _copy_of_a_lead(sql, NEW_ID)
    rep = _validate(db, settings, specs, "leads")
    assert _failed(rep) == {"parity:extra_in_target"}
    assert rep.parity["examples"]["extra_in_target"] == [NEW_ID]


def test_an_orphan_approval_fails_the_foreign_key_expectation_on_both_sides(mirrored, db, settings, specs, sql,
                                                                           db_url):
    # The same orphan in the CSV and in the table (put there the way a broken writer would: the
    # loader and the foreign key would both refuse it), so parity agrees and only the rule fails.
    copy = ("copy (select %s::uuid, %s::uuid, channel, draft, status, reviewer, decided_at, created_at, updated_at"
            " from public.approvals order by id limit 1) to stdout (format csv, force_quote *)")
    with psycopg.connect(db_url) as conn:
        with conn.cursor().copy(copy, (ORPHAN, ORPHAN)) as cp:
            line = b"".join(bytes(chunk) for chunk in cp)
    with open(settings.csv_path("approvals"), "ab") as f:
        f.write(line)
    with psycopg.connect(db_url) as conn:  # replica mode: no foreign-key triggers
        conn.execute("set local session_replication_role = replica")
        conn.execute("insert into public.approvals select %s::uuid, %s::uuid, channel, draft, status, reviewer,"
                     " decided_at, created_at, updated_at from public.approvals order by id limit 1", (ORPHAN, ORPHAN))
    rep = _validate(db, settings, specs, "approvals")
    rule = "every lead_id is a leads.id"
    assert _failed(rep) == {f"expectation:source:{rule}", f"expectation:target:{rule}"}
    assert [c["unexpected_count"] for c in rep.failed_expectations] == [1, 1]


def test_a_dropped_policy_is_reported(mirrored, db, settings, specs, sql):
    sql("drop policy leads_select_own on public.leads")
    rep = _validate(db, settings, specs, "leads")
    assert _failed(rep) == {"security:policy_present", "security:authenticated_sees_own_rows"}


def test_disabled_rls_is_reported(mirrored, db, settings, specs, sql):
    sql("alter table public.approvals disable row level security")
    rep = _validate(db, settings, specs, "approvals")
    failed = _failed(rep)
    assert {"security:rls_enabled", "security:anon_reads_nothing", "security:authenticated_sees_own_rows"} <= failed
    assert all(f.startswith("security:") for f in failed)
    assert sql("select count(*) from public.approvals") == [(APPROVALS,)]  # the write probes were rolled back


def test_business_rules_fail_on_the_side_that_breaks_them(mirrored, db, settings, specs, sql):
    key = _lead_without_approvals(sql)
    sql("update public.leads set state = 'tx', budget = -1, updated_at = created_at - interval '1 day'"
        " where id = %s", (key,))
    rep = _validate(db, settings, specs, "leads")
    assert _failed(rep) == {"expectation:target:state matches ^[A-Z]{2}$", "expectation:target:budget >= 0",
                            "expectation:target:updated_at >= created_at", "parity:changed"}
    assert rep.parity["examples"]["changed"] == [{"key": key, "columns": ["updated_at", "state", "budget"]}]
    examples = {c["rule"]: c["examples"] for c in rep.failed_expectations}
    assert examples["state matches ^[A-Z]{2}$"] == ["tx"] and examples["budget >= 0"] == ["-1.0"]
    assert all(c["examples"] == [] for c in rep.expectations["target"] if c["success"])


def test_rows_the_loader_rejects_and_duplicate_keys_fail_parity(db, settings, specs):
    rows = [lead(i) for i in range(5)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs, "leads")
    write_csv(settings.csv_path("leads"), rows[:3] + [lead(3, budget="12.345"), rows[4], lead(4, city="Elsewhere")])
    rep = _validate(db, settings, specs, "leads")
    assert rep.parity["rejected_in_source"] == 3  # one untypable row, two copies of one key
    assert _failed(rep) == {"parity:rejected_in_source", "expectation:source:id is unique (primary key)"}
    reasons = [e["reason"] for e in rep.parity["examples"]["rejected_in_source"]]
    assert any("budget" in r for r in reasons) and any("duplicate key: 2 rows" in r for r in reasons)


def test_parity_compares_instants_numbers_and_text_exactly(db, settings, specs):
    base = lead(1, created_at="2025-03-01T12:00:00.123456+02:00", budget="1.5", notes='a "quoted",\nmulti-line ü',
                phone="")
    write_csv(settings.csv_path("leads"), [base, lead(2)])
    _sync(db, settings, specs, "leads")
    same = {**base, "created_at": "2025-03-01T10:00:00.123456Z", "budget": "1.50"}  # same instant, same number
    write_csv(settings.csv_path("leads"), [same, lead(2)])
    assert _validate(db, settings, specs, "leads").parity["passed"]
    for change, column in ((dict(created_at="2025-03-01T10:00:00.123457Z"), "created_at"),
                           (dict(phone=None), "phone"),  # '' → NULL
                           (dict(notes='a "quoted",\r\nmulti-line ü'), "notes")):
        write_csv(settings.csv_path("leads"), [{**same, **change}, lead(2)])
        parity = _validate(db, settings, specs, "leads").parity
        assert parity["changed"] == 1 and parity["examples"]["changed"][0]["columns"] == [column], change


def test_gate_requires_a_passing_report_of_the_current_data(mirrored, db, settings, specs, sql):
    def check():
        return db.run(lambda conn: gate.check(conn, "leads", settings.csv_path("leads")))

    with pytest.raises(GateRefused, match="no validation report"):
        check()
    key = sql("select id::text from public.leads order by id limit 1")[0][0]
    sql("update public.leads set city = 'X' where id = %s", (key,))
    failing = _validate(db, settings, specs, "leads")
    with pytest.raises(GateRefused, match=r"failed: parity: 1 changed"):
        check()
    _sync(db, settings, specs, "leads")  # repairs the mirror, and makes the failing report stale
    good = _validate(db, settings, specs, "leads")
    assert good.passed and good.report_id != failing.report_id
    assert check().report_id == good.report_id
    _sync(db, settings, specs, "leads")  # the very file merged last: skipped, so the report still holds
    assert check().report_id == good.report_id
    with open(settings.csv_path("leads"), "a") as f:
        f.write("\n")  # a blank line: other bytes, the same rows
    _sync(db, settings, specs, "leads")  # a merge (even one that changes nothing) invalidates it
    with pytest.raises(GateRefused, match="validate again"):
        check()
    assert _validate(db, settings, specs, "leads").passed
    with open(settings.csv_path("leads"), "a") as f:
        f.write(",".join(['"' + v + '"' if v else "" for v in lead(99_999, agent_id=AGENT).values()]) + "\n")
    with pytest.raises(GateRefused, match="the CSV changed"):
        check()


def test_gate_reasons_are_pure_and_name_the_failures():
    from cutover.state import TableState

    rep = reports.Report(report_id="r1", table="leads", phase="mirror", version=3, data_version=2, started_at="",
                         duration_s=0, csv_path=None, csv_sha256="abc", expectations={"source": [], "target": []},
                         parity={"missing_in_target": 0, "extra_in_target": 2, "changed": 0, "rejected_in_source": 0,
                                 "passed": False, "examples": {}}, security={"subject": "s", "checks": []})
    assert gate.reasons_to_refuse(TableState("leads", "mirror", 3, 2), rep, "abc") == [
        "report r1 failed: parity: 2 extra in target"]
    reasons = gate.reasons_to_refuse(TableState("leads", "dual_write", 4, 2), rep, "def")
    assert len(reasons) == 4


def test_cli_validate_prints_one_json_object_and_exits_by_verdict(cli, env, tmp_path, sql):
    write_csv(tmp_path / "data" / "leads.csv", [lead(i) for i in range(4)])
    assert cli("sync", "--table", "leads", "--json").returncode == 0
    proc = cli("validate", "--table", "leads", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= {"report_id", "passed", "expectations", "parity", "security", "html_report"}
    assert out["passed"] and out["expectations"]["failed"] == []
    assert {"missing_in_target", "extra_in_target", "changed", "examples"} <= set(out["parity"])
    sql("update public.leads set first_name = 'Bob'")
    proc = cli("validate", "--table", "leads", "--json")
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert not out["passed"] and out["parity"]["changed"] == 4


def test_committed_suites_hold_every_expectation_the_specs_imply(specs, settings, tmp_path):
    assert suites.stale_suites(specs, settings.expectations_dir) == []
    # a hand-written expectation survives regeneration
    existing = suites.load_suite(settings.expectations_dir, "leads")
    manual = {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "phone"}, "meta": {"owner": "ops"}}
    merged = suites.merge_suite(suites.suite_for(specs["leads"]), {**existing,
                                                                   "expectations": existing["expectations"] + [manual]})
    assert merged["expectations"][-1] == manual
    assert len(merged["expectations"]) == len(existing["expectations"]) + 1


def test_gx_sees_the_connection_string_only_as_a_substitution(db, settings):
    from cutover.gx_runner import sqlalchemy_url

    url = sqlalchemy_url("host=/tmp/sock dbname=db user=u password=p@ss port=5433")
    assert url.startswith("postgresql+psycopg://u:p%40ss@localhost:5433/db?") and "host=%2Ftmp%2Fsock" in url
    with psycopg.connect(db.conninfo) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
