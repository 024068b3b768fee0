"""The CSV's digest sums kept for its bytes (``cutover.digest_memo``).

They are recalled only for the same bytes under the same rules. The table's side is never taken from
them. A comparison that recalls them gives exactly what one that reads the file gives: the counts, the
examples and the rejects it records.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cutover import digest_memo, digest_parity, digests, sync as engine, validate as validation
from tests.csvdata import lead, write_csv


def _plan(settings, specs, keep=True):
    return validation.plan_validation(specs["leads"], specs, settings.csv_path("leads"),
                                      rejects_dir=settings.rejects_dir, batch_bytes=settings.batch_bytes,
                                      suites_dir=settings.expectations_dir, reports_dir=settings.reports_dir,
                                      keep_csv_digests=keep)


def _parity(db, settings, specs, keep=True):
    return validation.parity_only(db, _plan(settings, specs, keep), workers=1)


def _sync(db, settings, specs):
    plan = engine.plan_sync(specs["leads"], specs, settings.csv_path("leads"), rejects_dir=settings.rejects_dir,
                            batch_bytes=settings.batch_bytes, mass_delete_threshold=1.0)
    return engine.run_sync(db, plan, workers=1)


@pytest.fixture
def no_csv_read(monkeypatch):
    """Fail any first pass over the CSV: what follows must recall its sums."""
    def read(*args, **kwargs):
        raise AssertionError("the CSV was read for its sums")

    return lambda: monkeypatch.setattr(digest_parity, "csv_sums", read)


def _sums() -> digests.Sums:
    sums = digests.Sums.empty()
    sums.rows[[3, 4095]] = [2, 1]
    sums.x0[3], sums.x1[4095] = np.uint64(2**64 - 1), np.uint64(12345)
    sums.untrusted[7] = True
    return sums


def test_kept_sums_come_back_only_for_the_same_bytes_and_rules(tmp_path):
    path, sha = digest_memo.path_for(tmp_path, "leads"), "ab" * 32
    assert digest_memo.recall(path, sha, "rules") is None  # nothing kept yet
    digest_memo.keep(path, sha, "rules", _sums(), read=4, loaded=3, rejected=1)
    sums, counts = digest_memo.recall(path, sha, "rules")
    for field in ("rows", "x0", "x1", "untrusted"):
        assert np.array_equal(getattr(sums, field), getattr(_sums(), field))
    assert counts == {"read": 4, "loaded": 3, "rejected": 1}
    assert digest_memo.recall(path, "cd" * 32, "rules") is None
    assert digest_memo.recall(path, sha, "other rules") is None


def test_sums_may_be_kept_only_for_a_file_of_the_size_they_were_kept_for(tmp_path):
    """``may_hold`` (whether the table's sums may run alone) is False only when no kept sums can be for
    the file; when unsure (an older file without the size, a torn one), they may."""
    path, sha = digest_memo.path_for(tmp_path, "leads"), "ab" * 32
    assert not digest_memo.may_hold(path, 100)  # nothing kept
    digest_memo.keep(path, sha, "rules", _sums(), read=3, loaded=3, rejected=0, size=100)
    assert digest_memo.may_hold(path, 100) and not digest_memo.may_hold(path, 101)
    digest_memo.keep(path, sha, "rules", _sums(), read=3, loaded=3, rejected=0)  # the size unknown
    assert digest_memo.may_hold(path, 101)
    path.write_bytes(path.read_bytes()[:300])
    assert digest_memo.may_hold(path, 101)


def test_a_torn_or_foreign_file_reads_as_nothing_kept(tmp_path):
    path, sha = digest_memo.path_for(tmp_path, "leads"), "ab" * 32
    digest_memo.keep(path, sha, "rules", _sums(), read=3, loaded=3, rejected=0)
    path.write_bytes(path.read_bytes()[:300])
    assert digest_memo.recall(path, sha, "rules") is None
    meta = '{"format": 1, "sha256": "%s", "rules": "rules", "read": 1, "loaded": 1, "rejected": 0}' % sha
    with open(path, "wb") as f:  # right key, wrong shape
        np.savez(f, meta=np.array(meta), rows=np.zeros(16, np.int64), x0=np.zeros(16, np.uint64),
                 x1=np.zeros(16, np.uint64), untrusted=np.zeros(16, bool))
    assert digest_memo.recall(path, sha, "rules") is None


def test_the_rules_name_the_spec(specs):
    spec = specs["leads"]
    column = spec.columns[6]
    flipped = dataclasses.replace(column, nullable=not column.nullable)
    other = dataclasses.replace(spec, columns=(*spec.columns[:6], flipped, *spec.columns[7:]))
    assert digest_memo.rules(spec) == digest_memo.rules(spec)
    assert digest_memo.rules(spec) != digest_memo.rules(other)


@pytest.mark.parametrize("module", ["csvscan", "record_index", "csv_fields", "batches", "coerce", "fast_timestamps",
                                    "digests", "table_digests", "digest_parity", "row_md5"])
def test_the_rules_name_each_module_the_sums_run_through(specs, tmp_path, monkeypatch, module):
    """A change to the code that reads, types or digests a CSV changes the rules: sums kept under the
    old code are not recalled."""
    import importlib

    code = importlib.import_module(f"cutover.{module}")
    before = digest_memo.rules.__wrapped__(specs["leads"])
    changed = tmp_path / f"{module}.py"
    changed.write_bytes(Path(code.__file__).read_bytes() + b"\n# changed\n")
    monkeypatch.setattr(code, "__file__", str(changed))
    assert digest_memo.rules.__wrapped__(specs["leads"]) != before


@pytest.mark.parametrize("module", ["record_index", "csv_fields", "row_md5"])
def test_the_rules_name_the_built_kernel(specs, tmp_path, monkeypatch, module):
    """Sums kept under one build of a C kernel are not recalled under another, nor without it."""
    import importlib

    code = importlib.import_module(f"cutover.{module}")
    built = code.kernel_file()
    assert built is not None
    before = digest_memo.rules.__wrapped__(specs["leads"])
    rebuilt = tmp_path / built.name
    rebuilt.write_bytes(built.read_bytes() + b"\x00")
    monkeypatch.setattr(code, "kernel_file", lambda: rebuilt)
    assert digest_memo.rules.__wrapped__(specs["leads"]) != before
    monkeypatch.setattr(code, "kernel_file", lambda: None)
    assert digest_memo.rules.__wrapped__(specs["leads"]) != before


def test_the_same_file_again_is_not_read_and_gives_the_same_outcome(db, settings, specs, sql, no_csv_read):
    rows = [lead(i) for i in range(30)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    write_csv(settings.csv_path("leads"), rows[1:20] + [lead(20, budget="12.345"), lead(21, city="Elsewhere"),
                                                        lead(77)] + rows[22:])
    first = _parity(db, settings, specs)
    assert (first["missing_in_target"], first["extra_in_target"], first["changed"], first["rejected_in_source"]) \
        == (1, 1, 1, 1)  # missing: lead 77; extra: lead 0 (lead 20, rejected, is not counted extra)
    no_csv_read()
    assert _parity(db, settings, specs) == first
    runs = sql("select rows_read, rows_loaded, rows_rejected, (select count(*) from cutover.rejects r"
               " where r.run_id = runs.run_id) from cutover.runs where kind = 'validate' order by started_at")
    assert runs == [(30, 29, 1, 1)] * 2  # the second run records its reject too


def test_a_table_written_since_is_still_found_different(db, settings, specs, sql, no_csv_read):
    rows = [lead(i) for i in range(20)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    assert _parity(db, settings, specs)["passed"]
    no_csv_read()
    sql("update public.leads set city = 'Nowhere' where id = %s", (rows[5]["id"],))
    result = _parity(db, settings, specs)
    assert result["changed"] == 1 and result["examples"]["changed"] == [{"key": rows[5]["id"], "columns": ["city"]}]


def test_a_file_written_since_is_read_again(db, settings, specs):
    rows = [lead(i) for i in range(20)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    assert _parity(db, settings, specs)["passed"]
    rows[5] = {**rows[5], "city": "Nowhere"}
    write_csv(settings.csv_path("leads"), rows)
    kept = _parity(db, settings, specs)
    assert kept == _parity(db, settings, specs, keep=False)
    assert kept["changed"] == 1 and kept["examples"]["changed"] == [{"key": rows[5]["id"], "columns": ["city"]}]


def test_a_validation_recalls_what_parity_kept(db, settings, specs, no_csv_read):
    write_csv(settings.csv_path("leads"), [lead(i) for i in range(10)])
    _sync(db, settings, specs)
    assert _parity(db, settings, specs)["passed"]
    no_csv_read()
    rep = validation.validate_table(db, _plan(settings, specs), workers=1)
    assert rep.passed and validation.SOURCE_IS_TARGET in rep.notes
    assert (rep.parity["source_rows"], rep.parity["target_rows"]) == (10, 10)


def test_the_tables_sums_run_alone_when_the_files_sums_may_be_kept(db, settings, specs):
    """The hint by which the table's sums take every core (the CSV may not be read) or one (it will be):
    none kept, then kept for this file's size, then the file grown."""
    rows = [lead(i) for i in range(20)]
    write_csv(settings.csv_path("leads"), rows)
    _sync(db, settings, specs)
    assert not digest_parity.may_be_kept(_plan(settings, specs, True).staging)
    assert not digest_parity.may_be_kept(_plan(settings, specs, False).staging)  # none kept by this plan
    assert _parity(db, settings, specs)["passed"]
    assert digest_parity.may_be_kept(_plan(settings, specs, True).staging)
    write_csv(settings.csv_path("leads"), rows + [lead(20)])
    assert not digest_parity.may_be_kept(_plan(settings, specs, True).staging)
