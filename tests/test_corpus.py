"""Every file of the shared adversarial corpus behaves as its manifest says, through the CLI."""

from __future__ import annotations

import csv
import json
from datetime import datetime

import pytest

from tests.conftest import CORPUS

MANIFEST = json.loads((CORPUS / "manifest.json").read_text())


def _sync(cli, table, path, *flags):
    proc = cli("sync", "--table", table, "--csv", str(path), "--json", *flags)
    return proc, json.loads(proc.stdout)


def test_manifest_schema_matches_the_specs(specs):
    for table, columns in MANIFEST["schema"].items():
        assert list(specs[table].column_names) == columns


@pytest.mark.parametrize("name", sorted(MANIFEST["files"]))
def test_corpus_file(name, cli, sql):
    case = MANIFEST["files"][name]
    table = case["table"]
    if "requires" in case:
        proc, out = _sync(cli, MANIFEST["files"][case["requires"]]["table"], CORPUS / case["requires"])
        assert proc.returncode == 0, proc.stderr
    before = sql(f"select count(*) from public.{table}")[0][0] if case.get("requires") else 0
    proc, out = _sync(cli, table, CORPUS / name)

    if case["expect"] == "error":
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert name in out["error"] and "nothing was applied" in out["error"]
        if "error_line" in case:
            assert f"{name}:{case['error_line']}:" in out["error"]
        assert name in proc.stderr  # the human message names the file too
        # Nothing applied: no rows, and the failed run is on record.
        assert sql(f"select count(*) from public.{table}")[0][0] == before
        assert sql("select status from cutover.runs order by started_at desc limit 1") == [("failed",)]
        return

    assert proc.returncode == 0, proc.stderr
    assert (out["loaded"], out["rejected"]) == (case["loaded"], case["rejected"])
    assert out["read"] == out["loaded"] + out["rejected"]
    assert sql(f"select count(*) from public.{table}")[0][0] == case["loaded"]
    if case["rejected"]:
        with open(out["rejects_file"], newline="", encoding="utf-8") as f:
            rejects = list(csv.DictReader(f))
        assert len(rejects) == case["rejected"]
        assert all(int(r["line"]) >= 2 and r["reason"] for r in rejects)
        stored = sql("select count(*) from cutover.rejects where run_id = %s", (out["run_id"],))[0][0]
        assert stored == case["rejected"]
    else:
        assert out["rejects_file"] is None
    for key, instant in case.get("instants", {}).items():
        (stored,) = sql(f"select created_at from public.{table} where id = %s", (key,))[0]
        assert stored == datetime.fromisoformat(instant)


def test_bad_types_rejects_name_line_column_and_reason(cli):
    proc, out = _sync(cli, "leads", CORPUS / "leads_bad_types.csv")
    with open(out["rejects_file"], newline="", encoding="utf-8") as f:
        rejects = {int(r["line"]): (r["column"], r["value"], r["reason"]) for r in csv.DictReader(f)}
    assert rejects[2][:2] == ("id", "not-a-uuid")
    assert rejects[3][:2] == ("created_at", "2025-13-45T99:00:00Z")
    assert rejects[4][:2] == ("budget", "12,5oo")
    assert rejects[5][:2] == ("status", "pending")
    assert rejects[6][0] == "first_name" and "missing" in rejects[6][2]
    assert rejects[7][:2] == ("budget", "100.005") and "round" in rejects[7][2]


def test_ragged_and_duplicate_rejects_name_their_lines(cli):
    _, ragged = _sync(cli, "leads", CORPUS / "leads_ragged.csv")
    text = open(ragged["rejects_file"], encoding="utf-8").read()
    assert "expected 16 fields, found 17" in text and "expected 16 fields, found 5" in text
    _, dup = _sync(cli, "leads", CORPUS / "leads_duplicate_keys.csv", "--allow-mass-delete")
    text = open(dup["rejects_file"], encoding="utf-8").read()
    assert text.count("duplicate primary key") == 2 and "lines 2, 4" in text


def test_quoted_newlines_survive_byte_exact(cli, sql):
    _sync(cli, "leads", CORPUS / "leads_quoted_newlines.csv")
    notes = dict(sql("select first_name, notes from public.leads"))
    assert notes["Ana10"] == 'Called twice.\nPrefers "email", not phone'
    assert notes["Ana11"] == "Line one\r\nLine two, with comma"
    assert notes["Ana12"] == '""quoted at both ends""'
    assert sql("select last_name from public.leads where first_name = 'Ana13'") == [("O'Neil, Jr.",)]


def test_huge_field_loads_intact(cli, sql):
    _sync(cli, "leads", CORPUS / "leads_huge_field.csv")
    csv.field_size_limit(1 << 30)
    with open(CORPUS / "leads_huge_field.csv", newline="", encoding="utf-8") as f:
        longest = max(len(r["notes"]) for r in csv.DictReader(f))
    assert sql("select max(length(notes)) from public.leads") == [(longest,)]
    assert longest >= 5_000_000
