"""The sample generator: deterministic, realistic, loadable with 0 rejects, streamed."""

from __future__ import annotations

import csv
import hashlib
import io
import uuid
from datetime import datetime

from cutover import samples
from cutover import sync as engine


def _rows(path):
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    samples.generate("leads", 1200, a, seed=5)
    samples.generate("leads", 1200, b, seed=5)
    samples.generate("leads", 1200, c, seed=6)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert a.read_bytes() != c.read_bytes()


def test_keys_are_a_function_of_seed_and_index(tmp_path):
    out = tmp_path / "leads.csv"
    samples.generate("leads", samples.CHUNK_ROWS + 10, out, seed=9)  # crosses a chunk boundary
    ids = [r["id"] for r in _rows(out)]
    assert len(set(ids)) == len(ids)
    assert ids[samples.CHUNK_ROWS - 2:samples.CHUNK_ROWS + 3] == samples.lead_ids(9, samples.CHUNK_ROWS - 2,
                                                                                  samples.CHUNK_ROWS + 3).to_list()
    assert all(uuid.UUID(i).version == 4 for i in ids[:100])


def test_rows_are_realistic_and_awkward(tmp_path):
    leads, approvals = tmp_path / "leads.csv", tmp_path / "approvals.csv"
    samples.generate("leads", 3000, leads, seed=7)
    samples.generate("approvals", 2000, approvals, seed=7, leads_rows=3000)
    rows = _rows(leads)
    assert list(rows[0]) == list(samples.LEADS_HEADER)
    notes = [r["notes"] for r in rows if r["notes"]]
    assert 0.3 < len(notes) / len(rows) < 0.5
    assert any("\n" in n for n in notes) and any('"' in n for n in notes) and any("," in n for n in notes)
    assert any(not r["first_name"].isascii() or not r["last_name"].isascii() for r in rows)
    assert all(datetime.fromisoformat(r["created_at"]) < datetime.fromisoformat(r["updated_at"]) for r in rows)
    assert len({r["created_at"][19:20] + r["created_at"][-6:] for r in rows}) > 3  # several timestamp forms
    lead_ids = {r["id"] for r in rows}
    for a in _rows(approvals):
        assert a["lead_id"] in lead_ids
        assert bool(a["decided_at"]) == bool(a["reviewer"]) == (a["status"] in ("approved", "rejected", "sent"))


def test_samples_load_with_zero_rejects(db, settings, specs, tmp_path):
    for table, rows, kw in (("leads", 4000, {}), ("approvals", 3000, {"leads_rows": 4000})):
        path = tmp_path / f"{table}.csv"
        samples.generate(table, rows, path, seed=11, **kw)
        plan = engine.plan_sync(specs[table], specs, path, rejects_dir=settings.rejects_dir,
                                batch_bytes=settings.batch_bytes, mass_delete_threshold=0.1)
        result = engine.run_sync(db, plan, workers=2)
        assert (result.read, result.loaded, result.rejected) == (rows, rows, 0)


def test_shipped_samples_are_what_the_generator_makes(tmp_path):
    from tests.conftest import ROOT

    for table, rows, kw in (("leads", 3000, {}), ("approvals", 2000, {"leads_rows": 3000})):
        out = tmp_path / f"{table}.csv"
        samples.generate(table, rows, out, seed=7, **kw)
        assert out.read_bytes() == (ROOT / "data" / f"{table}.csv").read_bytes(), f"regenerate data/{table}.csv"



def _records(path):
    """(line where the record starts, its fields) for every data record, read with the csv module."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        start = 2
        for fields in reader:
            yield start, fields
            start = reader.line_num + 1


def test_bad_rows_are_exactly_where_the_generator_says(tmp_path):
    """The oracle of the huge-file tests, checked without the loader: the hostile file differs from the
    clean one exactly at the rows it reports (but the rows whose key another row copied), each at the line
    it reports, in the one column it names (a ragged row: in its number of fields)."""
    rows, clean, hostile = samples.CHUNK_ROWS + 5_000, tmp_path / "clean.csv", tmp_path / "hostile.csv"
    samples.generate("leads", rows, clean, seed=4)
    bad = samples.generate_with_bad_rows(rows, hostile, seed=4, share=0.002)
    assert [b.line for b in bad] == sorted(b.line for b in bad)
    assert {b.kind for b in bad} == set(samples.BAD_KINDS)
    spoiled = [b for b in bad if b.kind != "duplicate"] + [b for b in bad if b.kind == "duplicate"][::2]
    assert abs(len(spoiled) - rows * 0.002) <= 1

    by_row = {b.row: b for b in bad}
    seen, changed, dup_keys = {}, set(), []
    for row, ((line, want), (hline, got)) in enumerate(zip(_records(clean), _records(hostile), strict=True)):
        if row in by_row:
            seen[row] = hline
            b = by_row[row]
            if b.kind == "ragged":
                assert len(got) in (len(want) - 1, len(want) + 1) and got[:15] == want[:15]
            else:
                assert [c for c, x, y in zip(samples.LEADS_HEADER, want, got) if x != y] in ([b.column], [])
            if b.kind == "duplicate":
                dup_keys.append(got[0])
        if want != got:
            changed.add(row)
    assert seen == {b.row: b.line for b in bad}
    assert changed == {b.row for b in bad} - {b.row for b in bad if b.kind == "duplicate" and b.row not in changed}
    assert len(changed & {b.row for b in bad if b.kind == "duplicate"}) == len(dup_keys) // 2
    assert all(dup_keys.count(k) == 2 for k in dup_keys)  # each copied key: the copy and its source
