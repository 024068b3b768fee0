"""End to end with a real Prefect server on a free port, the project's deployments and a process
worker: the promote deployment pauses for the operator; resuming it with the form's input (what
the UI posts) flips the phase; rejecting it changes nothing."""

from __future__ import annotations

import psycopg
import pytest

from tests.csvdata import OTHER_AGENT, lead, write_csv
from tests.prefect_stack import prefect_stack, wait_for_state


@pytest.fixture(scope="module")
def stack(pg_server, tmp_path_factory):
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    base = tmp_path_factory.mktemp("e2e")
    name = "cutover_e2e"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    env = {"SUPABASE_DB_URL": make_conninfo("", **{**conninfo_to_dict(pg_server), "dbname": name}),
           "CUTOVER_HOME": str(base / "home"), "CUTOVER_DATA_DIR": str(base / "data")}
    (base / "data").mkdir()
    with prefect_stack(env, log_dir=base / "logs") as (api, full_env):
        yield api, env, full_env
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def _in_dual_write(cli, env, table_rows):
    from pathlib import Path

    write_csv(Path(env["CUTOVER_DATA_DIR"]) / "leads.csv", table_rows)
    for args in (("sync", "--table", "leads"), ("advance", "--table", "leads")):
        proc = cli(*args, "--json", extra_env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _phase(env):
    with psycopg.connect(env["SUPABASE_DB_URL"]) as conn:
        return conn.execute("select phase from cutover.table_state where table_name = 'leads'").fetchone()[0]


@pytest.mark.parametrize("approve", [True, False], ids=["approved", "rejected"])
def test_promote_deployment_pauses_and_the_form_decides(stack, cli, approve):
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api, env, _ = stack
    if not approve:  # the approved case ran first: start again from a fresh dual_write
        with psycopg.connect(env["SUPABASE_DB_URL"], autocommit=True) as conn:
            conn.execute("drop schema cutover cascade; drop table public.leads cascade")
    _in_dual_write(cli, env, [lead(i) for i in range(5)] + [lead(9, agent_id=OTHER_AGENT)])
    with temporary_settings({PREFECT_API_URL: api}):
        run = run_deployment("promote/promote", parameters={"table": "leads", "timeout_s": 600}, timeout=0)
        paused = wait_for_state(run.id, {"Paused"})
        assert paused.state.state_details.run_input_keyset
        assert _phase(env) == "dual_write"
        resume_flow_run(run.id, run_input={"approve": approve, "approver": "Dana", "reason": "e2e"})
        finished = wait_for_state(run.id, {"Completed"})
    assert finished.state.is_completed()
    assert _phase(env) == ("promoted" if approve else "dual_write")
    with psycopg.connect(env["SUPABASE_DB_URL"]) as conn:
        outcome, actor = conn.execute(
            "select outcome, actor from cutover.phase_history order by id desc limit 1").fetchone()
    assert outcome == ("done" if approve else "rejected") and "Dana" in actor
