"""The diff path (``cutover.delta``) against the staged path, on a real PostgreSQL.

The oracle is the staged path itself: every scenario syncs the old file then the new one by the diff,
then again with the baseline discarded (the staged path), and the two outcomes — the table's rows,
the run's counts and its rejects (line, column, value, reason) — must be identical. Scenarios the diff
must not judge fall back to the staged path, which the run's ``method`` shows.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from cutover import baseline
from cutover import sync as engine
from cutover.errors import MassDeleteRefused, StructuralError
from tests.csvdata import APPROVAL_COLUMNS, LEAD_COLUMNS, approval, lead, write_csv
from tests.test_sync import EDGE_TEXT

# XXH3-64 of two records under seeds 1 and 2, as polars-hash computed them when the hashes began to be kept
PINNED_XXH3 = ([9184997277318540948, 4131358773137946850], [7113056417064333913, 8760311267495688009])


def _plan(settings, specs, path, table="leads", **kw):
    return engine.plan_sync(specs[table], specs, path, rejects_dir=settings.rejects_dir,
                            batch_bytes=kw.pop("batch_bytes", 4096),
                            mass_delete_threshold=settings.mass_delete_threshold, **kw)


def _sync(db, settings, specs, path, table="leads", **kw):
    return engine.run_sync(db, _plan(settings, specs, path, table, **kw), workers=2)


def _outcome(sql, result, table="leads"):
    counts = (result.read, result.loaded, result.rejected, result.inserted, result.updated, result.deleted)
    rows = sql(f"select md5(coalesce(string_agg(t::text, '|' order by id), '')), count(*) from public.{table} t")
    rejects = sql("select line, column_name, value, reason, key from cutover.rejects where run_id = %s"
                  " order by line, column_name", (result.run_id,))
    return counts, rows, rejects


def _diff_then_staged(db, settings, specs, sql, old, new, table="leads", expect="diff", **kw):
    """(outcome by the diff, outcome by the staged path) of syncing ``new`` over ``old``."""
    first = _sync(db, settings, specs, old, table, **{**kw, "allow_mass_delete": True})  # kept hashes: the same budget
    assert first.method in ("direct", "staged", "diff")
    by_diff = _sync(db, settings, specs, new, table, **kw)
    assert by_diff.method == expect
    diffed = _outcome(sql, by_diff, table)
    baseline.discard(table, settings.rejects_dir)
    assert _sync(db, settings, specs, old, table, allow_mass_delete=True).method == "staged"
    baseline.discard(table, settings.rejects_dir)
    by_staging = _sync(db, settings, specs, new, table, **kw)
    assert by_staging.method == "staged"
    return diffed, _outcome(sql, by_staging, table)


def _write_plain(path, rows, columns=LEAD_COLUMNS, newline="\n"):
    """Quoting only where needed (as a spreadsheet export does): the same values, other bytes."""
    def cell(v):
        if v is None:
            return ""
        return '"' + v.replace('"', '""') + '"' if (v == "" or any(c in v for c in ',"\r\n')) else v
    path.write_bytes((newline.join([",".join(columns)] + [",".join(cell(r[c]) for c in columns) for r in rows])
                      + newline).encode())
    return path


@pytest.mark.parametrize("statements", ["merge", "update, then insert"])
def test_changes_deletes_and_inserts_match_the_staged_path(db, settings, specs, sql, tmp_path, monkeypatch,
                                                           statements):
    from cutover import merge

    if statements != "merge":  # a server before PostgreSQL 17, which has no MERGE ... RETURNING
        monkeypatch.setattr(merge, "MERGE_RETURNING", 10**9)
    rows = [lead(i, notes=EDGE_TEXT[i % len(EDGE_TEXT)]) for i in range(400)]
    old = write_csv(tmp_path / "old.csv", rows)
    new_rows = [dict(r) for r in rows if int(r["first_name"][3:]) % 50 != 3]  # 8 deleted
    for r in new_rows[::37]:
        r["status"], r["notes"] = "contacted", 'edited, "quoted"\nand multi-line'
    new_rows[5]["notes"] = None  # '' or text -> NULL
    new_rows[6]["notes"] = ""  # NULL -> ''
    new_rows += [lead(1000 + i) for i in range(9)]
    random.Random(1).shuffle(new_rows)
    # other quoting, other line endings, other column order: only values count
    columns = LEAD_COLUMNS[::-1]
    new = _write_plain(tmp_path / "new.csv", new_rows, columns, newline="\r\n")
    diffed, staged = _diff_then_staged(db, settings, specs, sql, old, new)
    assert diffed == staged
    assert diffed[0][3:] == (9, 13, 8)  # inserted, updated (12 edited + the NULL one), deleted


def _matched_by(caplog) -> list[str]:
    return [m.split("diffing by ")[1].split()[0] for m in caplog.messages if "against the baseline" in m]


def test_a_file_from_the_same_writer_is_diffed_by_bytes(db, settings, specs, sql, tmp_path, caplog):
    caplog.set_level("INFO", logger="cutover.delta")
    rows = [lead(i, notes=EDGE_TEXT[i % len(EDGE_TEXT)]) for i in range(300)]
    old = write_csv(tmp_path / "old.csv", rows)
    new_rows = [dict(r) for r in rows if int(r["first_name"][3:]) % 40 != 1]
    for r in new_rows[::29]:
        r["status"], r["notes"] = "contacted", 'edited, "quoted"\r\nand multi-line'
    new_rows[3]["budget"] = "12.345"  # now rejected: its old row stays
    new_rows[4]["notes"] = "a NUL \x00 inside"  # rejected too: only this batch's bytes hold one
    new_rows += [lead(2000 + i) for i in range(6)]
    new = write_csv(tmp_path / "new.csv", new_rows)
    text = new.read_bytes().split(b"\n")
    text.insert(40, b"")  # a blank line and a ragged record among unchanged ones
    text.insert(90, b'"a","b"')
    new.write_bytes(b"\n".join(text))  # and no line feed after the last record
    caplog.clear()
    diffed, staged = _diff_then_staged(db, settings, specs, sql, old, new, batch_bytes=2048)
    assert _matched_by(caplog)[0] == "bytes"
    assert diffed == staged
    assert diffed[0][2] == 3 and diffed[0][5] == 8  # rejected (the budget, the NUL, the ragged record), deleted


def test_records_written_over_in_another_format_are_diffed_by_fields(db, settings, specs, sql, tmp_path, caplog):
    caplog.set_level("INFO", logger="cutover.delta")
    rows = [lead(i, notes=EDGE_TEXT[i % len(EDGE_TEXT)]) for i in range(300)]
    old = write_csv(tmp_path / "old.csv", rows)
    new_rows = [dict(r) for r in rows]
    new_rows[7]["city"] = "Elsewhere"
    # the same header, other quoting: few records are equal byte for byte, all but one are field for field
    requoted = _write_plain(tmp_path / "requoted.csv", new_rows)
    assert requoted.read_bytes().split(b"\n")[0] == old.read_bytes().split(b"\n")[0]
    caplog.clear()
    diffed, staged = _diff_then_staged(db, settings, specs, sql, old, requoted, batch_bytes=2048)
    assert _matched_by(caplog)[:2] == ["bytes", "fields"]
    assert any("another format" in m for m in caplog.messages)
    assert diffed == staged and diffed[0][3:] == (0, 1, 0)


def test_a_header_written_otherwise_means_a_diff_by_fields_at_once(db, settings, specs, sql, tmp_path, caplog):
    caplog.set_level("INFO", logger="cutover.delta")
    rows = [lead(i) for i in range(100)]
    old = write_csv(tmp_path / "old.csv", rows)
    new_rows = [dict(r) for r in rows]
    new_rows[7]["city"] = "Elsewhere"
    crlf = write_csv(tmp_path / "crlf.csv", new_rows, newline="\r\n")  # the header's line end differs
    diffed, staged = _diff_then_staged(db, settings, specs, sql, old, crlf, batch_bytes=2048)
    assert _matched_by(caplog)[0] == "fields"
    assert diffed == staged and diffed[0][3:] == (0, 1, 0)


def test_new_rejects_ragged_rows_and_blank_lines_match(db, settings, specs, sql, tmp_path):
    rows = [lead(i) for i in range(120)]
    old = write_csv(tmp_path / "old.csv", rows)
    changed = [dict(r) for r in rows]
    changed[3]["created_at"] = "yesterday"  # an unchanged key, now rejected: its old row stays
    changed[4]["id"] = "not-a-uuid"
    changed[50]["budget"] = "12.345"
    changed[51]["status"] = "maybe"
    new = write_csv(tmp_path / "new.csv", changed)
    text = new.read_text().splitlines()
    text.insert(10, "")  # a blank line: not a row
    text.insert(20, '"a","b"')  # a ragged row
    new.write_text("\n".join(text) + "\n")
    diffed, staged = _diff_then_staged(db, settings, specs, sql, old, new)
    assert diffed == staged
    assert diffed[0][2] == 5 and len(diffed[2]) == 5


def test_a_record_twice_or_a_key_reused_falls_back_to_the_staged_path(db, settings, specs, sql, tmp_path):
    rows = [lead(i) for i in range(60)]
    old = write_csv(tmp_path / "old.csv", rows)
    twice = write_csv(tmp_path / "twice.csv", rows + [rows[7]])  # the same record again: a duplicate key
    diffed, staged = _diff_then_staged(db, settings, specs, sql, old, twice, expect="staged")
    assert diffed == staged and diffed[0][2] == 2

    reused = write_csv(tmp_path / "reused.csv", rows + [lead(8, city="Elsewhere")])  # row 8's key, other values
    diffed, staged = _diff_then_staged(db, settings, specs, sql, old, reused, expect="staged")
    assert diffed == staged and diffed[0][2] == 2

    bad_copy = write_csv(tmp_path / "bad.csv", rows + [lead(9, budget="x")])  # a rejected copy of row 9's key
    diffed, staged = _diff_then_staged(db, settings, specs, sql, old, bad_copy, expect="staged")
    assert diffed == staged and diffed[0][2] == 2


def test_no_diff_after_rejects_a_write_or_a_touched_baseline(db, settings, specs, sql, tmp_path):
    rows = [lead(i) for i in range(50)]
    with_reject = write_csv(tmp_path / "r.csv", rows + [lead(99, budget="x")])
    assert _sync(db, settings, specs, with_reject, allow_mass_delete=True).rejected == 1
    edited = write_csv(tmp_path / "e.csv", rows[:-1] + [lead(49, city="Paris")])
    assert _sync(db, settings, specs, edited).method == "staged"  # the last merge rejected a row

    assert _sync(db, settings, specs, write_csv(tmp_path / "e2.csv", rows)).method == "diff"
    sql("update public.leads set city = 'Drift' where id = %s", (rows[0]["id"],))  # a write since the merge
    result = _sync(db, settings, specs, write_csv(tmp_path / "e3.csv", rows[:-1]))
    assert result.method == "staged" and result.updated == 1  # the drifted row is put back
    assert sql("select count(*) from public.leads where city = 'Drift'") == [(0,)]

    assert _sync(db, settings, specs, write_csv(tmp_path / "e4.csv", rows)).method == "diff"
    kept = baseline.find("leads", settings.rejects_dir)
    assert kept is not None and kept.rows == 50
    with open(kept.path, "r+b") as f:  # written in place: the baseline is no longer what was merged
        f.seek(os.path.getsize(kept.path) - 2)
        f.write(b"X")
    assert baseline.find("leads", settings.rejects_dir) is None
    result = _sync(db, settings, specs, write_csv(tmp_path / "e5.csv", rows[:-2]))
    assert (result.method, result.deleted) == ("staged", 2)


def test_no_diff_without_a_memory_budget_or_past_the_parts_it_allows(db, settings, specs, tmp_path, monkeypatch):
    from cutover import record_match

    rows = [lead(i) for i in range(50)]
    _sync(db, settings, specs, write_csv(tmp_path / "a.csv", rows))
    edited = write_csv(tmp_path / "b.csv", rows[:-1] + [lead(49, city="Paris")])
    result = _sync(db, settings, specs, edited, diff_index_mb=0)  # 0: never diff
    assert (result.method, result.updated) == ("staged", 1)
    monkeypatch.setattr(record_match, "MAX_PARTS", 2)  # 150 records at 4,000 bytes each: 2 parts of 512 KB
    monkeypatch.setattr(record_match, "MATCH_BYTES", 4000)
    assert _sync(db, settings, specs, write_csv(tmp_path / "c.csv", rows), diff_index_mb=1).method == "diff"
    monkeypatch.setattr(record_match, "MATCH_BYTES", 8000)  # 3 parts: more than allowed
    assert _sync(db, settings, specs, edited, diff_index_mb=1).method == "staged"


@pytest.mark.parametrize("side", ["baseline", "new file"])
def test_a_spill_without_room_means_the_staged_path(db, settings, specs, sql, tmp_path, monkeypatch, caplog, side):
    import errno

    from cutover import delta, record_match

    rows = [lead(i) for i in range(60)]
    old = write_csv(tmp_path / "old.csv", rows)
    new = write_csv(tmp_path / "new.csv", rows[5:] + [lead(70), lead(3, city="Lyon")])
    add = record_match.Spill.add

    def full(self, batch):
        if (self.dtype == record_match.BASE) == (side == "baseline"):
            raise OSError(errno.ENOSPC, "No space left on device")
        add(self, batch)

    monkeypatch.setattr(record_match.Spill, "add", full)
    if side == "baseline":  # the first load's kept hashes would spare the baseline its spill
        monkeypatch.setattr(delta, "_kept_spill", lambda base, parts: None)
    diffed, staged = _diff_then_staged(db, settings, specs, sql, old, new, expect="staged")
    assert diffed == staged and "no diff: [Errno 28] No space left on device" in caplog.text
    if side == "new file":  # the first load could not keep its hashes either, and loaded all the same
        assert "not keeping the record hashes: [Errno 28]" in caplog.text


def test_diff_refuses_a_mass_delete_and_applies_nothing(db, settings, specs, sql, tmp_path):
    rows = [lead(i) for i in range(100)]
    _sync(db, settings, specs, write_csv(tmp_path / "all.csv", rows))
    before = sql("select md5(string_agg(t::text, '|' order by id)) from public.leads t")
    with pytest.raises(MassDeleteRefused):
        _sync(db, settings, specs, write_csv(tmp_path / "few.csv", rows[:30]))
    assert sql("select md5(string_agg(t::text, '|' order by id)) from public.leads t") == before
    assert _sync(db, settings, specs, tmp_path / "few.csv", allow_mass_delete=True).deleted == 70


def test_a_file_found_broken_after_its_first_batches_were_hashed_applies_nothing(db, settings, specs, sql, tmp_path,
                                                                                 caplog):
    """The diff hashes batches as the scan finds them: a quote left open on the file's last line (found
    once every other batch is hashed) still names the file and line, and leaves table and baseline be."""
    rows = [lead(i) for i in range(60)]
    _sync(db, settings, specs, write_csv(tmp_path / "leads.csv", rows), batch_bytes=1024)
    before = sql("select md5(string_agg(t::text, '|' order by id)), count(*) from public.leads t")
    kept = baseline.find("leads", settings.rejects_dir)
    src = write_csv(tmp_path / "next.csv", [lead(i, status="contacted") if i == 5 else r for i, r in enumerate(rows)])
    src.write_bytes(src.read_bytes() + b'"an unterminated quote\n')
    with caplog.at_level("INFO", logger="cutover.delta"), pytest.raises(StructuralError) as e:
        _sync(db, settings, specs, src, batch_bytes=1024)
    assert _matched_by(caplog) == ["bytes"]  # the diff was under way when the scan reached the end
    assert e.value.path == src and e.value.line == 62 and "unterminated" in str(e.value)
    assert sql("select md5(string_agg(t::text, '|' order by id)), count(*) from public.leads t") == before
    assert baseline.find("leads", settings.rejects_dir) == kept
    assert sql("select status from cutover.runs order by started_at desc limit 1") == [("failed",)]


def test_children_diff_and_their_orphans_match(db, settings, specs, sql, tmp_path):
    leads = [lead(i) for i in range(30)]
    _sync(db, settings, specs, write_csv(tmp_path / "leads.csv", leads))
    apps = [approval(i, leads[i % 30]["id"]) for i in range(90)]
    old = write_csv(tmp_path / "a_old.csv", apps, APPROVAL_COLUMNS)
    new_apps = apps[:85] + [approval(200, lead(777)["id"]), approval(201, leads[0]["id"], status="approved",
                                                                       reviewer="ops", decided_at="2025-03-04T00:00:00Z")]
    new_apps[4] = approval(4, leads[4]["id"], draft="edited draft")
    new = write_csv(tmp_path / "a_new.csv", new_apps, APPROVAL_COLUMNS)
    diffed, staged = _diff_then_staged(db, settings, specs, sql, old, new, table="approvals")
    assert diffed == staged
    assert any("foreign key" in reject[3] for reject in diffed[2])  # the orphan


def test_a_parents_change_means_no_diff_for_its_children(db, settings, specs, sql, tmp_path):
    leads = [lead(i) for i in range(10)]
    _sync(db, settings, specs, write_csv(tmp_path / "leads.csv", leads))
    apps = write_csv(tmp_path / "apps.csv", [approval(i, leads[i]["id"]) for i in range(10)], APPROVAL_COLUMNS)
    _sync(db, settings, specs, apps, "approvals")
    _sync(db, settings, specs, write_csv(tmp_path / "leads2.csv", leads[1:]), allow_mass_delete=True)
    again = write_csv(tmp_path / "apps2.csv", [approval(i, leads[i]["id"]) for i in range(9)], APPROVAL_COLUMNS)
    result = _sync(db, settings, specs, again, "approvals", allow_mass_delete=True)
    assert result.method == "staged"  # its lead is gone: the basis changed, every row is judged again
    assert result.rejected == 1


@pytest.mark.parametrize("seed", range(6))
def test_random_edits_match_the_staged_path(db, settings, specs, sql, tmp_path, seed, monkeypatch, caplog):
    from cutover import record_match

    caplog.set_level("INFO", logger="cutover.delta")
    rng = random.Random(seed)
    rows = [lead(i, notes=rng.choice(EDGE_TEXT + [None])) for i in range(rng.randint(1, 300))]
    parts = [1, 2, 5, 9, 17, 33][seed]  # matched in this many parts of a 1 MB budget (two workers: 512 KB each)
    monkeypatch.setattr(record_match, "MATCH_BYTES", (parts - 1) * (1 << 19) // (3 * len(rows)) + 1)
    old = write_csv(tmp_path / "old.csv", rows)
    new_rows = []
    for r in rows:
        roll = rng.random()
        if roll < 0.1:
            continue  # deleted
        r = dict(r)
        if roll < 0.25:
            r[rng.choice(LEAD_COLUMNS[1:])] = rng.choice([None, "", "2025-01-01T00:00:00Z", "x", "12.5", "lost", "Ω"])
        new_rows.append(r)
    new_rows += [lead(5000 + i, budget=rng.choice(["1", "2.999", None])) for i in range(rng.randint(0, 20))]
    rng.shuffle(new_rows)
    new = (_write_plain if seed % 2 else write_csv)(tmp_path / "new.csv", new_rows)
    diffed, staged = _diff_then_staged(db, settings, specs, sql, old, new, diff_index_mb=1,
                                       batch_bytes=rng.choice([512, 4096, 1 << 20]), allow_mass_delete=True)
    assert diffed == staged
    # matched in the parts the budget needs, or in more: those the first load kept its hashes in
    matched_in = [int(m.split("(")[1].split()[0]) for m in caplog.messages if "against the baseline" in m]
    assert matched_in and matched_in[0] >= parts and (matched_in[0] == parts or "were kept" in caplog.text)


def test_the_baseline_is_one_per_table_and_goes_with_a_path_change(db, settings, specs, sql, tmp_path):
    rows = [lead(i) for i in range(20)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _sync(db, settings, specs, write_csv(tmp_path / "a" / "leads.csv", rows))
    first = baseline.find("leads", settings.rejects_dir)
    assert first is not None and first.path.parent == tmp_path / "a"
    result = _sync(db, settings, specs, write_csv(tmp_path / "b" / "leads.csv", rows + [lead(20)]))
    assert (result.method, result.inserted) == ("diff", 1)
    second = baseline.find("leads", settings.rejects_dir)
    assert second.path.parent == tmp_path / "b" and not first.path.exists()
    assert [p.name for p in (tmp_path / "b").iterdir() if ".snapshot" in p.name] == []


def test_two_homes_syncing_one_folder_keep_a_baseline_each(db, settings, specs, sql, tmp_path):
    """Two cutover homes (each its own registry) merging CSVs of the same folder: neither replaces the
    other's baseline, so both keep diffing."""
    rows = [lead(i) for i in range(20)]
    ours = _sync(db, settings, specs, write_csv(tmp_path / "leads.csv", rows))
    other_registry = tmp_path / "other-home" / "rejects"
    other = _plan(settings, specs, write_csv(tmp_path / "other.csv", rows[:5]))
    scanned = engine.scan(other)  # takes the run's snapshot, which the other home's merge then keeps
    baseline.keep(other.snapshot, "leads", scanned, 5, other_registry)
    theirs, kept = baseline.find("leads", other_registry), baseline.find("leads", settings.rejects_dir)
    assert theirs is not None and kept is not None and theirs.path != kept.path
    assert theirs.path.parent == kept.path.parent == tmp_path and kept.rows == ours.read
    result = _sync(db, settings, specs, write_csv(tmp_path / "next.csv", rows + [lead(20)]))
    assert (result.method, result.inserted) == ("diff", 1)
    assert baseline.find("leads", other_registry) == theirs  # the other home's is untouched


def test_a_merge_keeps_its_record_hashes_for_the_next_diff(db, settings, specs, sql, tmp_path, caplog):
    """A first load, then each diff, keeps its file's record hashes (stable xxh3, secret seeds) with the
    baseline; the next diff reads them instead of hashing the baseline. Each step's counts are exactly
    the edits made, and the table ends as a staged load of the last file leaves it. A merge with rejects
    keeps none (no diff follows it); the staged path keeps none either."""
    caplog.set_level("INFO", logger="cutover.delta")
    rng = random.Random(7)
    rows = [lead(i, notes=rng.choice(EDGE_TEXT + [None])) for i in range(150)]
    kept = settings.rejects_dir / ".leads.baseline.records"
    assert _sync(db, settings, specs, write_csv(tmp_path / "v0.csv", rows)).method == "direct"
    assert kept.exists() and baseline.find("leads", settings.rejects_dir).records.path == kept
    for version in range(1, 4):
        gone = set(rng.sample(range(len(rows)), 6))
        edited = set(rng.sample(sorted(set(range(len(rows))) - gone), 9))
        rows = [dict(r, notes=f"edit {version}") if i in edited else r for i, r in enumerate(rows) if i not in gone]
        rows += [lead(1000 * version + i) for i in range(4)]
        caplog.clear()
        result = _sync(db, settings, specs, write_csv(tmp_path / f"v{version}.csv", rows))
        assert "record hashes were kept" in caplog.text and result.method == "diff", version
        assert _matched_by(caplog) == ["bytes"]  # the kept seeds hash the new file alike: nothing looked rewritten
        assert (result.inserted, result.updated, result.deleted, result.rejected) == (4, 9, 6, 0)
        assert baseline.find("leads", settings.rejects_dir).records.path == kept
    diffed = sql("select md5(string_agg(t::text, '|' order by id)), count(*) from public.leads t")
    baseline.discard("leads", settings.rejects_dir)
    assert not kept.exists()  # gone with its baseline
    sql("truncate public.leads cascade")
    sql("delete from cutover.table_state")
    assert _sync(db, settings, specs, tmp_path / "v0.csv").method == "direct"
    baseline.discard("leads", settings.rejects_dir)
    assert _sync(db, settings, specs, tmp_path / "v3.csv", allow_mass_delete=True).method == "staged"
    assert not kept.exists()
    assert sql("select md5(string_agg(t::text, '|' order by id)), count(*) from public.leads t") == diffed
    with_reject = write_csv(tmp_path / "v4.csv", rows + [lead(9999, budget="lots")])
    assert _sync(db, settings, specs, with_reject).rejected == 1 and not kept.exists()
    assert [p.name for p in settings.rejects_dir.glob(".*.records")] == []  # no run left one behind


def test_kept_record_hashes_not_exactly_as_kept_are_hashed_again(db, settings, specs, sql, tmp_path, caplog,
                                                                  monkeypatch):
    """Kept hashes touched since (size, inode, mtime), from another hash, in fewer parts than the diff's
    budget needs, or recorded for a file that is not a finished spill, are not read: the diff hashes the
    baseline again."""
    from cutover import delta, record_match

    caplog.set_level("INFO", logger="cutover.delta")
    rows = [lead(i) for i in range(80)]
    kept = settings.rejects_dir / ".leads.baseline.records"

    def diff_after(spoil) -> None:
        if sql("select to_regclass('public.leads') is not null") == [(True,)]:
            sql("truncate public.leads cascade")
            sql("delete from cutover.table_state")
        baseline.discard("leads", settings.rejects_dir)
        assert _sync(db, settings, specs, write_csv(tmp_path / "old.csv", rows)).method == "direct" and kept.exists()
        spoil()
        caplog.clear()
        result = _sync(db, settings, specs, write_csv(tmp_path / "new.csv", rows[1:] + [lead(500)]))
        assert (result.method, result.inserted, result.deleted) == ("diff", 1, 1)
        assert "record hashes were kept" not in caplog.text and "diffing by bytes" in caplog.text

    diff_after(lambda: kept.write_bytes(kept.read_bytes()[:-1] + b"x"))  # same size, new mtime
    diff_after(lambda: monkeypatch.setattr(delta, "RECORD_HASH", "another hash"))
    monkeypatch.undo()
    diff_after(lambda: monkeypatch.setattr(record_match, "MATCH_BYTES", 10 ** 6))  # many more parts needed
    monkeypatch.undo()

    def truncated() -> None:  # a file that is not a finished spill, recorded as the kept one
        sidecar = settings.rejects_dir / ".leads.baseline.json"
        kept.write_bytes(b"not a spill")
        raw = json.loads(sidecar.read_text())
        st = kept.stat()
        raw["records"].update(size=st.st_size, inode=st.st_ino, mtime_ns=st.st_mtime_ns)
        sidecar.write_text(json.dumps(raw))
    diff_after(truncated)


def test_record_hashes_are_stable_xxh3_under_their_seeds():
    """Kept hashes must mean the same in a later run, whatever polars version it has: pinned values."""
    from cutover import csvscan, delta

    buf = b'a,"b\nc",d\n1,2,3\n'
    idx = csvscan.index_records(buf, 2, Path("t.csv"), count_fields=False)
    h1, h2 = delta.byte_hashes(buf, idx, np.arange(len(idx)), (1, 2))
    assert (h1.tolist(), h2.tolist()) == PINNED_XXH3
    assert delta.byte_hashes(buf, idx, np.arange(len(idx)), (3, 2))[0].tolist() != h1.tolist()
    empty = csvscan.RecordIndex(*(np.array([0]),) * 5, blank=np.array([False]))
    # XXH3_64bits(empty input, seed 0), the reference implementation's own test vector
    assert delta.byte_hashes(b"", empty, np.arange(1), (0, 0))[0].tolist() == [0x2D06800538D394C2]


def test_record_hashes_equal_each_record_hashed_on_its_own():
    """Records sliced out of the batch (short ones held inline, long ones pointing into the batch's
    buffer) hash exactly as each record's own bytes do, line end included."""
    import polars as pl
    import polars_hash as plh

    from cutover import csvscan, delta

    rng = random.Random(7)
    pieces = ["", "x", "é", "ü€", "a,b", '"q\nq"', '"a,""b"""', "\r"]
    records = [",".join(rng.choice(pieces) * rng.randint(1, 12) for _ in range(rng.randint(1, 4)))
               + rng.choice(["\n", "\r\n"]) for _ in range(300)]
    buf = "".join(records).encode() + "last,record,without,a,line,end".encode()
    idx = csvscan.index_records(buf, 1, Path("t.csv"), count_fields=False)
    rows = np.flatnonzero(~idx.blank)
    h1, h2 = delta.byte_hashes(buf, idx, rows, (11, 13))
    alone = pl.Series("r", [buf[s:t] for s, t in zip(idx.starts[rows].tolist(),
                                                     np.append(idx.starts, len(buf))[rows + 1].tolist())],
                      dtype=pl.Binary).to_frame()
    expected = alone.select(plh.col("r").nchash.xxh3_64(seed=11).alias("h1"),
                            plh.col("r").nchash.xxh3_64(seed=13).alias("h2"))
    assert len(rows) > 250 and max(np.diff(np.append(idx.starts, len(buf)))) > 12
    assert h1.tolist() == expected["h1"].to_list() and h2.tolist() == expected["h2"].to_list()


def test_a_finished_spill_loads_back_as_written(tmp_path):
    from cutover import record_match

    rng = np.random.default_rng(3)
    spill = record_match.Spill(record_match.NEW, 7, tmp_path / "x.records")
    for n in (50, 0, 13, 200):
        spill.add(record_match.new_rows(rng.integers(0, 2 ** 63, n, dtype=np.uint64),
                                        rng.integers(0, 2 ** 63, n, dtype=np.uint64), np.arange(n), np.arange(n) + 1,
                                        np.arange(n)))
    parts = [spill.part(p).tobytes() for p in range(7)]
    spill.finish()
    spill.close()
    assert (tmp_path / "x.records").exists()  # finished: close leaves it
    loaded = record_match.Spill.load(tmp_path / "x.records")
    assert (loaded.records, loaded.parts, loaded.dtype) == (263, 7, record_match.NEW)
    assert [loaded.part(p).tobytes() for p in range(7)] == parts
    loaded.close()
    unfinished = record_match.Spill(record_match.NEW, 3, tmp_path / "y.records")
    unfinished.close()
    assert not (tmp_path / "y.records").exists()  # not finished: removed
    (tmp_path / "z.records").write_bytes((tmp_path / "x.records").read_bytes()[:-1])
    assert record_match.Spill.load(tmp_path / "z.records") is None
    assert record_match.Spill.load(tmp_path / "missing.records") is None


def _records(rng, n):
    from cutover import record_match

    h = rng.integers(0, 2**64, (2, n), dtype=np.uint64)
    at = np.arange(n, dtype=np.int64) * 10
    return record_match.base_rows(h[0], h[1], at, at + 10)


@pytest.mark.parametrize("parts", [1, 3, 16])
def test_records_are_matched_by_both_hashes_in_any_number_of_parts(parts):
    from cutover import record_match

    rng = np.random.default_rng(parts)
    base = _records(rng, 1000)
    new = record_match.new_rows(base["h1"], base["h2"], base["start"] + 5, base["stop"] + 5, np.arange(1000) + 2)
    new = new[rng.permutation(1000)][:900]  # 100 gone, the rest in another order
    new["h2"][:10] ^= np.uint64(1)  # changed records whose first hash is a baseline record's
    at = np.arange(20) * 7 + 90000
    extra = record_match.new_rows(rng.integers(0, 2**64, 20, np.uint64), rng.integers(0, 2**64, 20, np.uint64),
                                  at, at + 7, np.arange(20), np.arange(20) < 3)  # 20 new records, 3 ragged
    missing = sorted(set(base["start"].tolist()) - set((new["start"] - 5).tolist()))[0] // 10
    extra["h1"][0], extra["h2"][0] = base["h1"][missing], base["h2"][missing]  # ragged: never a match
    base_spill, new_spill = record_match.Spill(record_match.BASE, parts), record_match.Spill(record_match.NEW, parts)
    for chunk in np.array_split(base, 7):
        base_spill.add(chunk)
    for chunk in np.array_split(np.concatenate((new, extra)), 5):
        new_spill.add(chunk)
    outcomes = [record_match.match_part(base_spill.part(p), new_spill.part(p)) for p in range(parts)]
    assert sum(o.records for o in outcomes) == 920 and sum(o.unchanged for o in outcomes) == 890
    changed = np.concatenate([o.changed for o in outcomes])
    assert sorted(changed["start"].tolist()) == sorted(new["start"][:10].tolist() + extra["start"].tolist())
    assert all((np.diff(o.changed["start"]) > 0).all() and (np.diff(o.gone["start"]) > 0).all() for o in outcomes)
    kept = set((new["start"][10:] - 5).tolist())
    gone = np.concatenate([o.gone for o in outcomes])
    assert sorted(gone["start"].tolist()) == sorted(set(base["start"].tolist()) - kept)
    base_spill.close()
    new_spill.close()


def test_a_record_twice_on_either_side_is_not_matched():
    from cutover import record_match

    rng = np.random.default_rng(3)
    base = _records(rng, 50)
    new = record_match.new_rows(base["h1"], base["h2"], base["start"], base["stop"], np.arange(50))
    assert record_match.match_part(base, new).unchanged == 50
    twice = np.concatenate((new, new[:1]))
    assert record_match.match_part(base, twice) is None  # a baseline record twice in the new file
    assert record_match.match_part(np.concatenate((base, base[:1])), new) is None  # twice in the baseline
    unknown = np.concatenate((new[1:], new[:1], new[:1]))
    unknown["h1"][-2:] ^= np.uint64(1)  # the same new record twice, equal to no baseline record: two changed
    outcome = record_match.match_part(base, unknown)
    assert (outcome.unchanged, len(outcome.changed), len(outcome.gone)) == (49, 2, 1)
    base["h1"][5] = base["h1"][6]  # two records sharing a first hash: told apart by the second
    new = record_match.new_rows(base["h1"], base["h2"], base["start"], base["stop"], np.arange(50))
    assert record_match.match_part(base, new[::-1].copy()).unchanged == 50


def test_changed_records_are_read_back_by_their_byte_ranges(tmp_path):
    from cutover import record_match

    path = tmp_path / "f.csv"
    path.write_bytes(b"h\r\na,1\r\nb,2\nc,3\nd,4")
    rows = record_match.base_rows(np.zeros(4, np.uint64), np.zeros(4, np.uint64), np.array([3, 8, 12, 16]),
                                  np.array([8, 12, 16, 19]))
    assert record_match.read_records(path, rows[[0, 2, 3]]) == b"a,1\r\nc,3\nd,4\n"
    assert record_match.read_records(path, rows[:0]) == b""
