"""Phases 2–4 and rollback, in-process against a real PostgreSQL: plans, gates, repositories in every
phase, the outbox, backup, archive and restore, and concurrent transitions and writers."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
from decimal import Decimal

import psycopg
import pytest

from cutover import baseline, digest_memo, operate, phases
from cutover.app import repositories
from cutover.errors import CutoverError, GateRefused, PhaseError
from cutover.state import TableState
from tests.csvdata import AGENT, OTHER_AGENT, lead, write_csv

NEW = "22222222-3333-4444-8555-666666666666"


def _new_lead(key=NEW, **kw):
    from datetime import datetime, timezone

    row = {"id": key, "created_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
           "updated_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "first_name": "Nia", "last_name": "Okafor",
           "email": "nia@example.com", "phone": None, "street": None, "city": "Lagos", "state": "TX", "zip": None,
           "budget": Decimal("1000.50"), "status": "new", "source": "web", "notes": 'line one\n"two"', "agent_id": AGENT}
    row.update(kw)
    return row


@pytest.fixture
def table(db, settings, specs):
    """leads mirrored from a small CSV (approvals left out: leads alone keeps the story short)."""
    write_csv(settings.csv_path("leads"), [lead(i) for i in range(6)] + [lead(6, agent_id=OTHER_AGENT)])
    operate.run_sync(settings, db, specs, "leads", actor="test")
    return "leads"


def _advance(db, settings, specs, **kw):
    return operate.advance(settings, db, specs, "leads", **kw)


def _rollback(db, settings, specs, **kw):
    return operate.rollback(settings, db, specs, "leads", **kw)


def test_plans_are_pure_data_and_name_every_step():
    dual = phases.plan_advance(TableState("leads", "mirror", 3, 2))
    assert (dual.from_phase, dual.to_phase, dual.expected_version) == ("mirror", "dual_write", 3)
    assert [type(s).__name__ for s in dual.steps] == ["SyncFromCsv", "Validate", "Locked"]
    promote = phases.plan_advance(TableState("leads", "dual_write", 4, 2))
    assert promote.needs_approval and "operator approves" in "\n".join(promote.lines())
    back = phases.plan_rollback(TableState("leads", "promoted", 5, 2))
    assert [type(s).__name__ for s in back.steps[0].steps] == ["BlockWrites", "ApplyChangesToCsv", "SetPhase"]
    assert back.as_dict()["steps"][-1]["step"] == "CheckParity"
    with pytest.raises(PhaseError, match="not mirrored yet"):
        phases.plan_advance(TableState("leads", None, 0, 0))
    with pytest.raises(PhaseError, match="no phase after"):
        phases.plan_advance(TableState("leads", "deprecated", 9, 2))
    assert "--drop" in "\n".join(phases.plan_rollback(TableState("leads", "mirror", 1, 1)).lines())


def test_the_whole_way_forward_and_back_without_losing_a_write(table, db, settings, specs, sql, db_url):
    # mirror → dual_write: validated, gated, write policies and change capture installed
    result = _advance(db, settings, specs, reason="start dual writes")
    assert (result.to_phase, result.outcome) == ("dual_write", "done") and result.report_id
    assert sql("select report_id from cutover.phase_history where to_phase = 'dual_write'") == [(result.report_id,)]
    app = repositories(settings, AGENT, specs=specs)
    try:
        # dual_write: CSV first, then the table
        app.leads.upsert([_new_lead()])
        assert sql("select city from public.leads where id = %s", (NEW,)) == [("Lagos",)]
        assert NEW in settings.csv_path("leads").read_text()
        assert app.leads.get(NEW)["notes"] == 'line one\n"two"'
        # the database half fails (its policy is gone): the write stands in the CSV and is queued
        sql("drop policy leads_update_own on public.leads")
        app.leads.update(NEW, lambda r: {**r, "city": "Abuja"})
        assert operate.outbox(settings).count("leads") == 1
        assert sql("select city from public.leads where id = %s", (NEW,)) == [("Lagos",)]
        assert operate.drain_outbox(settings, db, specs, "leads") == 1  # what the reconcile flow runs
        assert sql("select city from public.leads where id = %s", (NEW,)) == [("Abuja",)]
        sql("create policy leads_update_own on public.leads for update to authenticated"
            " using (agent_id = (select auth.uid())) with check (agent_id = (select auth.uid()))")

        with pytest.raises(CutoverError, match="needs an approver"):
            _advance(db, settings, specs)
        promoted = _advance(db, settings, specs, approve_as="Dana", reason="parity exact for a week")
        assert (promoted.to_phase, promoted.approver) == ("promoted", "Dana")
        assert sql("select actor like '%%Dana%%', report_id from cutover.phase_history where to_phase = 'promoted'") \
            == [(True, promoted.report_id)]

        # promoted: the table is the truth; the CSV is fed from it by the backup
        before = settings.csv_path("leads").read_bytes()
        app.leads._phase = None
        app.leads.update(NEW, lambda r: {**r, "status": "contacted"})
        assert settings.csv_path("leads").read_bytes() == before
        # a write made directly in Supabase, as an agent would through the API
        with psycopg.connect(db_url) as conn:
            conn.execute("set local role authenticated")
            conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": AGENT}),))
            conn.execute("update public.leads set notes = 'direct' where id = %s", (lead(0)["id"],))

        # promoted → deprecated: backup, gate, archive with manifest, CSV removed
        kept_digests = digest_memo.path_for(settings.rejects_dir, "leads")
        assert kept_digests.exists()  # kept by the gates' validations
        deprecated = _advance(db, settings, specs, reason="done with the CSV")
        assert deprecated.to_phase == "deprecated" and not settings.csv_path("leads").exists()
        assert not kept_digests.exists() and baseline.find("leads", settings.rejects_dir) is None  # gone with it
        manifest = json.loads(open(deprecated.archive).read())
        assert manifest["rows"] == 8 and manifest["report_ids"] and manifest["phase_history"]
        with pytest.raises(PhaseError):
            operate.run_sync(settings, db, specs, "leads", actor="test")

        # and all the way back, each step checked by parity
        for expected in ("promoted", "dual_write", "mirror"):
            back = _rollback(db, settings, specs)
            assert (back.to_phase, back.parity_passed) == (expected, True), back
        text = settings.csv_path("leads").read_text()
        assert '"contacted"' in text and '"direct"' in text  # nothing written while promoted was lost
        assert sql("select count(*) from pg_policies where tablename = 'leads' and policyname like '%%_own'"
                   " and cmd <> 'SELECT'") == [(0,)]
        assert sql("select tgname from pg_trigger where tgrelid = 'public.leads'::regclass and not tgisinternal") \
            == [("cutover_write_version",)]  # change capture gone; every write still bumps data_version
        gone = _rollback(db, settings, specs)
        assert gone.to_phase is None and sql("select to_regclass('public.leads') is not null") == [(True,)]
        assert sql("select count(*) from cutover.table_state") == [(0,)]
        history = sql("select from_phase, to_phase from cutover.phase_history where table_name = 'leads' order by id")
        assert history == [(None, "mirror"), ("mirror", "dual_write"), ("dual_write", "promoted"),
                           ("promoted", "deprecated"), ("deprecated", "promoted"), ("promoted", "dual_write"),
                           ("dual_write", "mirror"), ("mirror", None)]
    finally:
        app.close()


def test_the_gate_refuses_a_failing_validation_and_changes_nothing(table, db, settings, specs, sql):
    with open(settings.csv_path("leads"), "a") as f:
        f.write(",".join(['"' + v + '"' if v else "" for v in lead(50, budget="1.999").values()]) + "\n")
    with pytest.raises(GateRefused, match="rejected in source"):
        _advance(db, settings, specs)
    assert sql("select phase from cutover.table_state") == [("mirror",)]
    assert sql("select tgname from pg_trigger where tgrelid = 'public.leads'::regclass and not tgisinternal") \
        == [("cutover_write_version",)]  # change capture gone; every write still bumps data_version


def test_a_write_routed_by_a_stale_phase_is_redone_on_the_right_path(table, db, settings, specs, sql):
    _advance(db, settings, specs)
    _advance(db, settings, specs, approve_as="Dana")
    app = repositories(settings, AGENT, specs=specs)
    try:
        assert app.leads.phase() == "promoted"  # cached for a while
        _rollback(db, settings, specs)  # now dual_write: the CSV is the truth again
        app.leads.upsert([_new_lead()])  # routed as promoted; the database says the phase moved
        assert app.leads.phase() == "dual_write"
        assert NEW in settings.csv_path("leads").read_text()
        assert sql("select count(*) from public.leads where id = %s", (NEW,)) == [(1,)]
    finally:
        app.close()


def test_agents_read_and_write_only_their_own_rows_in_every_phase(table, db, settings, specs):
    app = repositories(settings, AGENT, specs=specs)
    try:
        for step in (None, dict(), dict(approve_as="Dana")):
            if step is not None:
                _advance(db, settings, specs, **step)
                app.leads._phase = None
            assert len(app.leads.list(limit=100)) == 6
            assert app.leads.get(lead(6)["id"]) is None  # the other agent's
            page = app.leads.list(limit=4)
            assert [r["id"] for r in app.leads.list(after=page[-1]["id"], limit=4)] == \
                [r["id"] for r in app.leads.list(limit=100)][4:]
            with pytest.raises(Exception):
                app.leads.upsert([_new_lead(agent_id=OTHER_AGENT)])
    finally:
        app.close()


def _promote_cli(env):
    import os
    import sys
    from pathlib import Path

    return subprocess.run([str(Path(sys.executable).parent / "cutover"), "advance", "--table", "leads",
                           "--to", "promoted", "--approve-as", "racer", "--json"], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_ten_concurrent_promotions_exactly_one_succeeds(table, db, settings, specs, sql, env):
    _advance(db, settings, specs)
    operate.run_validation(settings, db, specs, "leads")  # a current report: every racer reuses it
    with multiprocessing.get_context("spawn").Pool(10) as pool:
        results = pool.map(_promote_cli, [env] * 10)
    codes = sorted(r.returncode for r in results)
    assert codes.count(0) == 1, [r.stdout + r.stderr for r in results]
    assert set(codes) <= {0, 5, 6}, [r.stdout + r.stderr for r in results]  # 6: lost the race; 5: already promoted
    assert sql("select count(*) from cutover.phase_history where to_phase = 'promoted'") == [(1,)]
    assert sql("select phase from cutover.table_state where table_name = 'leads'") == [("promoted",)]


def _increment(args):
    env, key, times = args
    import os

    os.environ.update(env)
    from cutover.app import repositories as build
    from cutover.settings import Settings

    app = build(Settings(), AGENT)
    try:
        for _ in range(times):
            app.leads.update(key, lambda r: {**r, "budget": r["budget"] + 1})
    finally:
        app.close()


@pytest.mark.parametrize("phase", ["mirror", "dual_write"])
def test_four_writer_processes_lose_no_update_and_never_tear_the_csv(table, db, settings, specs, sql, env, phase):
    if phase == "dual_write":
        _advance(db, settings, specs)
    key = lead(1)["id"]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_increment, [(env, key, 10)] * 4)
    app = repositories(settings, AGENT, specs=specs)
    try:
        assert app.leads.get(key)["budget"] == Decimal("450040.00")
    finally:
        app.close()
    if phase == "dual_write":
        assert sql("select budget from public.leads where id = %s", (key,)) == [(Decimal("450040.00"),)]
        assert operate.run_validation(settings, db, specs, "leads", reuse=False).parity["passed"]


def test_a_half_configured_archive_upload_refuses_the_deprecation_before_it_starts(table, db, settings, specs, sql,
                                                                                    monkeypatch):
    from cutover.archive import ArchiveError
    from cutover.settings import Settings

    _advance(db, settings, specs)
    _advance(db, settings, specs, approve_as="Dana")
    monkeypatch.setenv("SUPABASE_ANON_KEY", "anon-key-value-not-to-be-echoed")
    with pytest.raises(ArchiveError, match="SUPABASE_URL is not") as refused:
        _advance(db, Settings(), specs)
    assert "anon-key-value" not in str(refused.value)
    assert sql("select phase from cutover.table_state") == [("promoted",)]
    assert settings.csv_path("leads").exists() and not (settings.data_dir / "archive").exists()


def test_shadow_reads_count_what_the_table_disagrees_on(table, db, settings, specs, sql):
    _advance(db, settings, specs)
    app = repositories(settings, AGENT, specs=specs, shadow_reads=True)
    try:
        key = lead(2)["id"]
        assert app.leads.get(key)["city"] == "Austin" and app.leads.shadow_mismatches == 0
        sql("update public.leads set city = 'Drifted' where id = %s", (key,))
        assert app.leads.get(key)["city"] == "Austin"  # the CSV is still the truth
        assert app.leads.shadow_mismatches == 1
    finally:
        app.close()


def _cli(env, *args):
    import os
    import sys
    from pathlib import Path

    done = subprocess.run([str(Path(sys.executable).parent / "cutover"), *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    return done.returncode, (json.loads(done.stdout) if "--json" in args else done.stdout), done.stderr


def test_cutover_backup_before_anything_was_mirrored_says_so(env):
    code, out, _ = _cli(env, "backup", "--table", "leads", "--json")
    assert (code, out["exit_code"]) == (5, 5) and "not mirrored yet" in out["error"], out


def test_cutover_backup_brings_the_csv_of_a_promoted_table_up_to_date(table, db, settings, specs, sql, env, db_url):
    code, out, _ = _cli(env, "backup", "--table", "leads", "--json")
    assert code == 5 and "leads is in phase mirror, not promoted" in out["error"] and out["exit_code"] == 5
    assert _cli(env, "backup", "--json")[:2] == (0, {"backups": []})  # nothing promoted: nothing to do
    _advance(db, settings, specs)
    _advance(db, settings, specs, approve_as="Dana")
    before = settings.csv_path("leads").read_bytes()
    with psycopg.connect(db_url) as conn:  # as an agent would through the API
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": AGENT}),))
        conn.execute("update public.leads set notes = 'backed up' where id = %s", (lead(0)["id"],))
        conn.execute("delete from public.leads where id = %s", (lead(1)["id"],))
    assert settings.csv_path("leads").read_bytes() == before
    code, out, err = _cli(env, "backup", "--json")
    assert code == 0, err
    [r] = out["backups"]
    assert (r["table"], r["upserted"], r["deleted"]) == ("leads", 1, 1) and r["to_change"] > r["from_change"]
    assert sql("select change_id from cutover.backup_state where table_name = 'leads'") == [(r["to_change"],)]
    text = settings.csv_path("leads").read_text()
    assert '"backed up"' in text and lead(1)["id"] not in text
    assert _cli(env, "parity", "--table", "leads", "--json")[0] == 0
    code, human, _ = _cli(env, "backup", "--table", "leads")  # again: nothing left, the CSV untouched
    assert code == 0 and human.strip() == f"leads: 0 upserted, 0 deleted (changes {r['to_change']} → {r['to_change']})"
    assert settings.csv_path("leads").read_text() == text


def test_a_parents_change_makes_an_unchanged_childs_sync_needed(db, settings, specs):
    """The transitions' pre-sync skips a table only when a sync would change nothing: the same file,
    no write since, and the same parents' data (an orphan may have found its parent)."""
    from tests.csvdata import APPROVAL_COLUMNS, approval

    write_csv(settings.csv_path("leads"), [lead(i) for i in range(3)])
    operate.run_sync(settings, db, specs, "leads", actor="test")
    write_csv(settings.csv_path("approvals"), [approval(0, lead(0)["id"]), approval(1, lead(3)["id"])],
              columns=APPROVAL_COLUMNS)
    first = operate.run_sync(settings, db, specs, "approvals", actor="test")
    assert (first.inserted, first.rejected) == (1, 1)  # lead 3 is not there yet: an orphan
    assert operate.run_sync(settings, db, specs, "approvals", actor="test") is None  # nothing would change
    write_csv(settings.csv_path("leads"), [lead(i) for i in range(4)])
    operate.run_sync(settings, db, specs, "leads", actor="test")
    again = operate.run_sync(settings, db, specs, "approvals", actor="test")
    assert again is not None and (again.rejected, again.inserted) == (0, 1)
