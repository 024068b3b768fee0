"""The operator's path through the real Prefect UI, in a real browser (Playwright driving Debian's
Chromium): a real server, the project's deployments and a process worker (``tests/prefect_stack.py``);
``leads`` is put in dual_write, the ``promote`` deployment runs and pauses; the browser opens the paused
run, clicks Resume, ticks *approve*, types the approver and a reason into the form Prefect generates
from ``PromotionApproval`` and submits it. The run must complete, ``leads`` must be ``promoted`` and
the history must name the approver.

Prefect 3.9 serves two UIs: the classic one (``/runs/flow-run/<id>``, the links Prefect itself makes;
Resume is a button on the run page) and the new one (``/v2/runs/flow-run/<id>``, where ``/`` leads by
default; Resume is in the run's ⋮ menu). Both are checked. Screenshots of each step land in the test's
tmp dir and in ``.cutover/ui-check/``. Run with ``make ui-check``."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import psycopg
import pytest

from tests.csvdata import OTHER_AGENT, lead, write_csv
from tests.prefect_stack import ROOT, prefect_stack, wait_for_state

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the Python package playwright is not installed (`make ui-check` installs it)")
CHROMIUM = Path(os.environ.get("CUTOVER_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium", allow_module_level=True)

# Playwright's own browser builds are never downloaded: Debian's Chromium, told not to reach the network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
APPROVER = "Browser Operator"
REASON = "UI check: parity and suites passed"
TIMEOUT_MS = 60_000
SHOTS = ROOT / ".cutover" / "ui-check"


@pytest.fixture(scope="module")
def stack(pg_server, tmp_path_factory):
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    base = tmp_path_factory.mktemp("ui")
    name = "cutover_ui"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    env = {"SUPABASE_DB_URL": make_conninfo("", **{**conninfo_to_dict(pg_server), "dbname": name}),
           "CUTOVER_HOME": str(base / "home"), "CUTOVER_DATA_DIR": str(base / "data")}
    (base / "data").mkdir()
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    with prefect_stack(env, log_dir=base / "logs") as (api, _):
        yield api, env
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def _fresh_dual_write(cli, env):
    with psycopg.connect(env["SUPABASE_DB_URL"], autocommit=True) as conn:  # each case starts from scratch
        conn.execute("drop schema if exists cutover cascade; drop table if exists public.leads cascade")
    write_csv(Path(env["CUTOVER_DATA_DIR"]) / "leads.csv", [lead(i) for i in range(5)] + [lead(9, agent_id=OTHER_AGENT)])
    for args in (("sync", "--table", "leads"), ("advance", "--table", "leads")):
        proc = cli(*args, "--json", extra_env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    shutil.copy(path, SHOTS / path.name)


def _open_resume_form(page):
    """Resume: a button on the run page (classic UI) or an item of the run's ⋮ menu (V2 UI)."""
    button = page.get_by_role("button", name=re.compile(r"^\s*Resume\b"))
    menu_item = page.get_by_role("menuitem", name=re.compile(r"^\s*Resume\b"))
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        if button.count() and button.first.is_visible():
            button.first.click()
            return
        for trigger in page.locator('button[aria-haspopup="menu"]').all():
            if not trigger.is_visible():
                continue
            trigger.click()
            try:
                menu_item.first.wait_for(state="visible", timeout=2_000)
            except sync_api.TimeoutError:
                page.keyboard.press("Escape")
                continue
            menu_item.first.click()
            return
        page.wait_for_timeout(500)
    raise AssertionError("no Resume action on the paused run's page")


def _field(dialog, label: re.Pattern, control: str):
    """The control of the form field labelled ``label``: through its <label for> (V2 UI), else the
    control inside the nearest element holding both the label's text and a control (the classic UI's
    labels point at no id)."""
    labelled = dialog.get_by_label(label)
    if labelled.count():
        return labelled.first
    return (dialog.get_by_text(label).first
            .locator("xpath=ancestor::*[.//textarea or .//input or .//*[@role='switch']][1]")
            .locator(control).first)


def _history(env) -> tuple[str, str, str]:
    with psycopg.connect(env["SUPABASE_DB_URL"]) as conn:
        return conn.execute("select outcome, actor, reason from cutover.phase_history "
                            "where table_name = 'leads' order by id desc limit 1").fetchone()


def _phase(env) -> str:
    with psycopg.connect(env["SUPABASE_DB_URL"]) as conn:
        return conn.execute("select phase from cutover.table_state where table_name = 'leads'").fetchone()[0]


@pytest.mark.parametrize("prefix", ["", "/v2"], ids=["classic-ui", "v2-ui"])
def test_operator_approves_the_promotion_in_the_prefect_ui(stack, cli, tmp_path, prefix):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api, env = stack
    ui = "v2" if prefix else "classic"
    _fresh_dual_write(cli, env)
    with temporary_settings({PREFECT_API_URL: api}):
        run = run_deployment("promote/promote", parameters={"table": "leads", "timeout_s": 900}, timeout=0)
        wait_for_state(run.id, {"Paused"})
    assert _phase(env) == "dual_write"

    url = f"{api.removesuffix('/api')}{prefix}/runs/flow-run/{run.id}"
    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.goto(url)
            expect(page.get_by_text("promote leads").first).to_be_visible()
            expect(page.get_by_text("Paused", exact=True).first).to_be_visible()
            _shot(page, tmp_path, f"{ui}-1-paused")

            _open_resume_form(page)
            dialog = page.get_by_role("dialog")
            expect(dialog).to_be_visible()
            # the form is PromotionApproval's, with the flow's description (report summary, plan)
            expect(dialog.get_by_text("Promote leads to promoted?")).to_be_visible()
            approve = _field(dialog, re.compile(r"^Approve\b"), "[role=switch]")
            approver = _field(dialog, re.compile(r"^Approver\b"), "textarea, input")
            reason = _field(dialog, re.compile(r"^Reason\b"), "textarea, input")
            expect(approve).to_have_attribute("aria-checked", "false")
            approve.click()
            expect(approve).to_have_attribute("aria-checked", "true")
            approver.fill(APPROVER)
            reason.fill(REASON)
            expect(approver).to_have_value(APPROVER)
            expect(reason).to_have_value(REASON)
            reason.scroll_into_view_if_needed()
            _shot(page, tmp_path, f"{ui}-2-form-filled")

            dialog.get_by_role("button", name=re.compile(r"^\s*(Submit|Resume)\s*$")).click()
            expect(dialog).to_be_hidden()
            with temporary_settings({PREFECT_API_URL: api}):
                finished = wait_for_state(run.id, {"Completed"})
            page.reload()
            expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
            page.wait_for_timeout(2_000)  # only for the screenshot: let the run graph draw
            _shot(page, tmp_path, f"{ui}-3-completed")
        finally:
            browser.close()

    assert finished.state.is_completed()
    assert _phase(env) == "promoted"
    outcome, actor, why = _history(env)
    assert outcome == "done" and APPROVER in actor and REASON in (why or ""), (outcome, actor, why)
