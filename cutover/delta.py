"""Syncing only what changed: type and stage just the records that differ from the last merged file.

When the table holds exactly the rows of its baseline (``cutover.baseline``: the file its last merge
loaded) — no write to it since that merge (data_version == merged_version), the same basis (spec,
parents' data), and that merge rejected nothing — a record of the new file equal to a baseline record
(byte for byte, or field for field) is already in the table, typed. Only the other records are typed
and staged; the baseline's records the new file no longer has give the keys to delete. The outcome is
the full load's: the same rows, the same rejects with the same lines and reasons, the same counts.

Records are compared by two 64-bit hashes. By bytes (``by="bytes"``), each record's bytes as written
are hashed with xxh3 (``RECORD_HASH``: a fixed algorithm, stable across versions) under two secret
seeds; nothing is parsed but the changed records. A merge that hashed every record of its file (this
diff, or a first load) keeps those hashes with the file it leaves as the baseline, seeds included
(``cutover.baseline``), so the next diff reads them instead of hashing the baseline again. A file
written over in another format (other quoting, line ends or header) has few records equal byte for
byte although their fields are, so the diff then compares parsed fields (``by="fields"``: both files
parsed, hashed by polars with seeds drawn for the run and never stored — polars' hashes change between
versions), chosen up front when the header's bytes differ, or once most records are found changed.

Memory does not grow with the files (``cutover.record_match``): the baseline's records are hashed and
spilled to a temporary file while the new file is scanned (unless their hashes were kept), and the new
file's as the scan finds them (where they can be kept for the next diff); the two are matched a
part of the hash space at a time, as many parts as ``SyncPlan.diff_index_bytes`` needs, and each part's
changed records are read back from the file by their byte ranges, and its gone records' keys from the
baseline. A sync whose match would need more than ``record_match.MAX_PARTS`` parts, or whose spill cannot
be written (~75 bytes a record of the temporary directory), takes the staged path.

Whatever would make the diff's outcome differ from the full load's sends the sync down the staged
path (``load_changes`` returns None) before anything is applied: no usable baseline, a write since
the merge, rejects in it, one record twice in the new file, or a changed or rejected row whose key an
unchanged row has — or more than half the records changed (``MOSTLY_CHANGED``, judged a part at a
time: a rewrite loads faster in parallel batches). Concurrency is the staged path's: one transaction
under the table's lock, merged only if the table's version is still the one the run began with.
"""

from __future__ import annotations

import io
import logging
import secrets
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, NamedTuple

import numpy as np
import polars as pl
import psycopg

from cutover import batches, commit, csvscan, merge, record_match, state
from cutover.baseline import Baseline
from cutover.coerce import column_rule
from cutover.db import Database
from cutover.errors import CutoverError
from cutover.pipeline import in_order
from cutover.syncplan import BatchResult, SyncPlan, SyncResult
from cutover.unchanged import still_merged


log = logging.getLogger("cutover.delta")
TYPE_ROWS = 10_000  # changed rows typed at a time (10M-row churn peaked at 365 MB with 50,000, 277 with 20,000, 243)
MOSTLY_CHANGED = 0.5  # past this share of changed records (a file of two batches or more), the diff gives up
JUDGE_AFTER = 10_000  # records matched before that share is judged (or all of them: a smaller file)
Matching = Literal["bytes", "fields"]  # what makes a record of the new file equal to a baseline record


def record_hashes(raw: pl.DataFrame, seeds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return raw.hash_rows(seeds[0]).to_numpy(), raw.hash_rows(seeds[1]).to_numpy()


RECORD_HASH = "xxh3_64x2"  # byte_hashes' function, kept with a baseline's hashes: another name, another function


def new_seeds() -> tuple[int, int]:
    return secrets.randbits(63), secrets.randbits(63)


def byte_hashes(buf: bytes, idx: csvscan.RecordIndex, rows: np.ndarray,
                seeds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the records ``rows`` of ``buf`` as written, line end included: ``RECORD_HASH``, stable."""
    import polars_hash as plh
    # every record (it runs to the next one's start) a slice of one value holding the whole batch: views
    # into one buffer, no copy (pyarrow's from_buffers did the same for ~40 MB more peak memory, its
    # libraries' pages)
    starts = idx.starts.astype(np.int64, copy=False)
    whole = pl.Series("r", [buf], dtype=pl.Binary).new_from_index(0, len(idx))
    records = pl.DataFrame(whole.bin.slice(pl.Series(starts), pl.Series(np.diff(starts, append=len(buf)))))
    h = records.select(plh.col("r").nchash.xxh3_64(seed=seeds[0]).alias("h1"),
                       plh.col("r").nchash.xxh3_64(seed=seeds[1]).alias("h2"))
    return h["h1"].to_numpy()[rows], h["h2"].to_numpy()[rows]


def record_rows(buf: bytes, idx: csvscan.RecordIndex, first: int, seeds: tuple[int, int]) -> np.ndarray:
    """A batch's records (not blank lines; ``first``: the batch's offset in its file) as
    ``record_match.NEW`` rows hashed by bytes: what a merge keeps for the next diff."""
    rows = _record_rows(idx)
    h1, h2 = byte_hashes(buf, idx, rows, seeds)
    return record_match.new_rows(h1, h2, first + idx.starts[rows], first + idx.stops[rows], idx.lines[rows])


def _record_rows(idx: csvscan.RecordIndex) -> np.ndarray:
    return np.flatnonzero(~idx.blank)  # blank lines are not rows


def spill_baseline(base: Baseline, plan: SyncPlan, workers: int, by: Matching, seeds: tuple[int, int],
                   parts: int) -> record_match.Spill | None:
    """The baseline's records, hashed and spilled by part; None if it does not hold ``base.rows``
    records, each parsed as the merge did."""
    names = list(plan.spec.column_names)

    def hashes(i: int) -> np.ndarray | None:
        buf = batches.read_range(base.path, *base.batches[i])
        idx = csvscan.index_records(buf, 1, base.path, count_fields=by == "fields")
        rows = _record_rows(idx)
        if by == "fields":
            if (idx.fields[rows] != len(base.names)).any():
                return None  # ragged: not a file the merge loaded in full
            data = buf if len(rows) == len(idx) else batches.cut(buf, idx, rows)  # without blank lines
            raw = pl.read_csv(io.BytesIO(data), has_header=False, new_columns=list(base.names),
                              schema={n: pl.String for n in base.names}, quote_char='"')
            if raw.height != len(rows):
                return None
            h1, h2 = record_hashes(raw.select(names), seeds)
        else:
            h1, h2 = byte_hashes(buf, idx, rows, seeds)
        at = base.batches[i][0]
        return record_match.base_rows(h1, h2, at + idx.starts[rows], at + idx.stops[rows])

    try:
        spill = record_match.Spill(record_match.BASE, parts)
    except OSError as exc:
        return _no_room(plan, exc)
    try:
        for rows in in_order(hashes, list(range(len(base.batches))), workers):
            if rows is None or spill.records + len(rows) > base.rows:  # more records than the merge read
                spill.close()
                return None
            spill.add(rows)
    except OSError as exc:
        spill.close()
        return _no_room(plan, exc)
    if spill.records != base.rows:  # blank lines or a ragged record: the merge did not load every record
        spill.close()
        return None
    return spill


def _no_room(plan: SyncPlan, exc: OSError) -> None:
    """A spill that cannot be written (a full temporary directory) or read: the staged path loads the file."""
    log.warning("%s: no diff: %s (the staged path loads the whole file)", plan.spec.name, exc)
    return None


def gone_keys(base: Baseline, plan: SyncPlan, text: bytes, records: int) -> bytes | None:
    """The typed keys (CSV, one a line) of ``records`` baseline records (``text``: as
    ``record_match.read_records`` read them); only their key column is parsed. None if one is not
    a valid key (the merge loaded it, so it was: not this baseline)."""
    if not records:
        return b""
    pk = plan.spec.column(plan.spec.primary_key)
    raw = pl.read_csv(io.BytesIO(text), has_header=False, columns=[base.names.index(pk.name)],
                      infer_schema=False, quote_char='"').to_series().alias(pk.name)
    if len(raw) != records:
        return None
    value, reason = column_rule(pk)
    typed = pl.DataFrame(raw).select(value.alias("key"), reason.alias("why"))
    if typed["why"].is_not_null().any():
        return None
    out = io.BytesIO()
    typed.select("key").write_csv(out, include_header=False, quote_style="non_numeric")
    return out.getvalue()


class _NeedsFullLoad(Exception):
    """The diff cannot reproduce the full load's outcome (see the module docstring)."""


def _eligible(conn: psycopg.Connection, plan: SyncPlan, base: Baseline) -> state.TableState | None:
    current = state.get_state(conn, plan.spec.name)
    last = still_merged(conn, plan.spec, current)
    if current.phase not in state.SYNCABLE or last is None or last[1] != base.sha256 or last[7] != 0:
        return None  # [7]: the merge's rejects
    return current


@dataclass(frozen=True)
class Indexing:
    """A baseline being hashed and spilled in the background (while the new file is scanned), or its
    hashes as its merge kept them."""

    base: Baseline
    by: Matching
    seeds: tuple[int, int]  # drawn for this run, never stored (polars' hashes change between versions)
    parts: int
    spill: Future  # of spill_baseline's result


def _index_in_background(base: Baseline, plan: SyncPlan, workers: int, by: Matching, parts: int) -> Indexing:
    seeds = new_seeds()
    runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cutover-baseline")
    try:
        return Indexing(base, by, seeds, parts, runner.submit(spill_baseline, base, plan, workers, by, seeds, parts))
    finally:
        runner.shutdown(wait=False)  # the thread ends with its one task


def _same_header(path: Path, base: Baseline) -> bool:
    """Whether the file at ``path`` begins with the baseline's header, byte for byte."""
    if not base.batches:
        return False
    length = base.batches[0][0]
    try:
        with open(path, "rb") as f, open(base.path, "rb") as g:
            return f.read(length) == g.read(length)
    except OSError:
        return False


def start_indexing(db: Database, plan: SyncPlan, base: Baseline | None, workers: int) -> Indexing | None:
    """Begin hashing the table's baseline if the table still holds exactly its rows and the match fits
    ``plan.diff_index_bytes`` in at most ``record_match.MAX_PARTS`` parts; None if not."""
    if base is None:
        return None
    # the new file's records are matched beside the baseline's: up to twice as many before the diff gives up
    parts = record_match.parts_for(3 * base.rows, plan.diff_index_bytes // max(1, workers)) \
        if plan.diff_index_bytes else None
    if parts is None:
        log.info("%s: no diff: matching %d rows in %d MB (CUTOVER_DIFF_INDEX_MB) takes more than %d parts",
                 plan.spec.name, base.rows, plan.diff_index_bytes >> 20, record_match.MAX_PARTS)
        return None
    if db.run(lambda conn: _eligible(conn, plan, base), what=f"check {plan.spec.name}'s baseline") is None:
        return None
    by: Matching = "bytes" if _same_header(plan.csv_path, base) else "fields"
    if by == "bytes" and (kept := _kept_spill(base, parts)) is not None:
        log.info("%s: the baseline's record hashes were kept by its merge", plan.spec.name)
        done: Future = Future()
        done.set_result(kept)
        return Indexing(base, by, base.records.seeds, kept.parts, done)
    return _index_in_background(base, plan, workers, by, parts)


def _kept_spill(base: Baseline, parts: int) -> record_match.Spill | None:
    """The baseline's record hashes as its merge kept them, if they are by ``RECORD_HASH``, one for each
    of its records, in at least ``parts`` parts (more parts only match in smaller pieces)."""
    if base.records is None or base.records.hash != RECORD_HASH:
        return None
    spill = record_match.Spill.load(base.records.path)
    if spill is not None and (spill.records != base.rows or spill.parts < parts):
        spill.close()
        return None
    return spill


def _drop(indexing: Indexing) -> None:
    """Close the spill of an indexing no longer wanted, once its thread is done with it."""
    def close(done: Future) -> None:
        if done.exception() is None and done.result() is not None:
            done.result().close()
    indexing.spill.add_done_callback(close)


class _Reformatted(Exception):
    """Most records differ byte for byte: the file was written over in another format."""


def load_changes(db: Database, plan: SyncPlan, scan: csvscan.ScanStream, indexing: Indexing | None,
                 base_version: int, started: float, *, workers: int,
                 on_batch: Callable[[BatchResult], None] | None = None,
                 on_restart: Callable[[], None] | None = None) -> SyncResult | None:
    """Diff the scanned file against the baseline and merge the difference in one transaction; None,
    having applied nothing, when the staged path must judge the file (see the module docstring). The
    new file's records are hashed batch by batch as ``scan`` finds them.
    ``on_restart`` is called when a diff by bytes gives way to one by fields (progress starts over)."""
    if indexing is None:
        return None
    if indexing.by == "bytes" and not _same_header(plan.snapshot, indexing.base):  # replaced since the check
        _drop(indexing)
        indexing = _index_in_background(indexing.base, plan, workers, "fields", indexing.parts)
    try:
        return _load_changes(db, plan, scan, indexing, base_version, started, workers=workers, on_batch=on_batch)
    except _Reformatted:
        log.info("%s: most records were re-written in another format: diffing by fields", plan.spec.name)
        if on_restart:
            on_restart()
        return _load_changes(db, plan, scan, _index_in_background(indexing.base, plan, workers, "fields",
                                                                   indexing.parts),
                             base_version, started, workers=workers, on_batch=on_batch)


def _load_changes(db: Database, plan: SyncPlan, scan: csvscan.ScanStream, indexing: Indexing, base_version: int,
                  started: float, *, workers: int,
                  on_batch: Callable[[BatchResult], None] | None) -> SyncResult | None:
    base_spill = indexing.spill.result()
    if base_spill is None:
        return None
    log.info("%s: diffing by %s against the baseline (%d parts)", plan.spec.name, indexing.by, indexing.parts)
    new_spill = None
    try:
        with tempfile.TemporaryFile() as rows_spool, tempfile.TemporaryFile() as rejects_spool, \
                tempfile.TemporaryFile() as gone_spool:
            spools = _Spools(rows_spool, rejects_spool, gone_spool)
            try:
                # by bytes, the new file's hashes are the next diff's baseline hashes: spilled where they can be kept
                new_spill = record_match.Spill(record_match.NEW, indexing.parts,
                                               plan.records_spill if indexing.by == "bytes" else None)
                for batch, rows in in_order(lambda b: (b, _hash_batch(plan, scan.header, indexing, b)),
                                            scan.batches(), workers):
                    new_spill.add(rows)
                    if on_batch:  # progress: the changed records are staged, or rejected, when typed (later)
                        on_batch(BatchResult(batch.index, len(rows), 0, 0, batch.end - batch.start))
                fscan = scan.finish()
                counts = _match(plan, fscan, indexing, base_spill, new_spill, spools, workers)
            except OSError as exc:
                return _no_room(plan, exc)
            if counts is None:
                return None
            read, unchanged = counts

            def step(conn: psycopg.Connection) -> SyncResult | None:
                current = commit.lock_for_merge(conn, plan, base_version)
                if _eligible(conn, plan, indexing.base) is None:  # written since the check: not the baseline
                    return None
                try:
                    with conn.transaction():  # a savepoint: a diff the full load must redo leaves no trace
                        return _merge(conn, plan, fscan, current, started, spools, read=read, unchanged=unchanged,
                                      baseline_rows=base_spill.records)
                except _NeedsFullLoad:
                    return None

            result = db.run(step, what=f"merge {plan.spec.name}'s changes")
            if result is not None:
                commit.keep_baseline(plan, fscan, result.read, records_to_keep(new_spill, result, indexing.seeds))
    finally:
        if new_spill is not None:
            new_spill.close()
        base_spill.close()
    return result


def records_to_keep(spill: record_match.Spill | None, result: SyncResult,
                    seeds: tuple[int, int]) -> tuple[Path, str, tuple[int, int]] | None:
    """What ``commit.keep_baseline`` keeps of a merge's record hashes: those of a file merged without a
    reject (after one, the next sync does not diff), spilled where they can be kept; else nothing."""
    if spill is None or spill.path is None or result.rejected or spill.records != result.read:
        return None
    try:
        spill.finish()
    except OSError as exc:
        log.warning("could not keep the record hashes (the next diff hashes the file again): %s", exc)
        return None
    return spill.path, RECORD_HASH, seeds


def _hash_batch(plan: SyncPlan, header: csvscan.Header, indexing: Indexing, batch: csvscan.Batch) -> np.ndarray:
    """The batch's records (not blank lines) as ``record_match.NEW`` rows."""
    buf = batches.read_bytes(plan, batch)
    if indexing.by == "bytes":
        return record_rows(buf, batches.index_batch(plan, buf, batch.first_line, count_fields=False), batch.start,
                           indexing.seeds)
    # parsed as the full load parses it: a ragged record is a reject, never equal to a baseline one
    idx = batches.index_batch(plan, buf, batch.first_line)
    rows = _record_rows(idx)
    good = idx.fields[rows] == len(header.names)
    h1, h2 = np.zeros(len(rows), np.uint64), np.zeros(len(rows), np.uint64)
    h1[good], h2[good] = record_hashes(batches.as_strings(plan, header, buf, idx).raw, indexing.seeds)
    return record_match.new_rows(h1, h2, batch.start + idx.starts[rows], batch.start + idx.stops[rows],
                                 idx.lines[rows], ~good)


class RecordKeeper:
    """A first load's record hashes, spilled batch by batch (``record_rows``), to keep with the baseline
    it leaves: the first diff then need not hash that file. The spill's parts are sized for the whole
    file from its first batch, a quarter more for safety (a diff that needs more hashes it again).
    ``start`` begins again (a retried load)."""

    def __init__(self, plan: SyncPlan, file_bytes: int, workers: int) -> None:
        self.seeds = new_seeds()
        self._plan, self._file_bytes, self._budget = plan, file_bytes, plan.diff_index_bytes // max(1, workers)
        self._spill: record_match.Spill | None = None
        self._off = False

    def start(self) -> None:
        self.close()
        self._off = False

    def add(self, rows: np.ndarray, batch_bytes: int) -> None:
        if self._off:
            return
        try:
            if self._spill is None:
                estimate = len(rows) * self._file_bytes // max(1, batch_bytes) * 5 // 4 + 1
                parts = record_match.parts_for(3 * estimate, self._budget)
                if parts is None:  # no diff would use them
                    self._off = True
                    return
                self._spill = record_match.Spill(record_match.NEW, parts, self._plan.records_spill)
            self._spill.add(rows)
        except OSError as exc:  # a full disk costs the next diff a hash of the file, never this load
            log.warning("%s: not keeping the record hashes: %s", self._plan.spec.name, exc)
            self.close()
            self._off = True

    def kept(self, result: SyncResult) -> tuple[Path, str, tuple[int, int]] | None:
        return None if self._off else records_to_keep(self._spill, result, self.seeds)

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None


class _Spools(NamedTuple):
    rows: IO[bytes]  # the changed records, typed (CSV for COPY into staging)
    rejects: IO[bytes]  # their rejects (CSV for COPY into cutover.rejects)
    gone: IO[bytes]  # the typed keys of the baseline's records the file no longer has


def _match(plan: SyncPlan, fscan: csvscan.FileScan, indexing: Indexing, base_spill: record_match.Spill,
           new_spill: record_match.Spill, spools: _Spools, workers: int) -> tuple[int, int] | None:
    """Match the two files a part at a time, type the changed records into ``spools`` and write the gone
    records' keys; (records read, unchanged ones), or None when the staged path must judge the file."""
    read = new_spill.records
    several = len(fscan.batches) >= 2  # a rewrite, not a change: the staged path loads it in parallel batches
    if several and read - base_spill.records > MOSTLY_CHANGED * read:  # even were every baseline record kept
        return _rewritten(indexing)
    pending: list[tuple[bytes, np.ndarray]] = []  # changed records, not yet typed
    gone: list[tuple[bytes, int]] = []  # gone records, their keys not yet parsed

    def type_pending() -> None:
        # typed together: typing costs ~20 ms a call whatever the rows, more than a part's few changed ones
        if not pending:
            return
        rb = batches.read_cut(plan, fscan.header, b"".join(t for t, _ in pending),
                              np.concatenate([lines for _, lines in pending]))
        pending.clear()
        typed, rejects = batches.type_rows(plan, rb.raw, rb.lines, rb.ragged, nul=rb.nul)
        spools.rows.write(batches.csv_bytes(typed))
        spools.rejects.write(batches.csv_bytes(rejects.select(pl.lit(str(plan.run_id)).alias("run_id"), pl.all())))

    def write_gone() -> bool:
        keys = gone_keys(indexing.base, plan, b"".join(t for t, _ in gone), sum(n for _, n in gone))
        gone.clear()
        if keys is not None:
            spools.gone.write(keys)
        return keys is not None

    def match(p: int):
        matched = record_match.match_part(base_spill.part(p), new_spill.part(p))
        if matched is None:  # a record twice in a file: the full load rejects its key on both lines
            return None
        return (matched, record_match.read_records(plan.snapshot, matched.changed),
                record_match.read_records(indexing.base.path, matched.gone))

    seen = unchanged = 0
    for outcome in in_order(match, range(indexing.parts), workers):
        if outcome is None:
            return None
        matched, changed, gone_text = outcome
        seen, unchanged = seen + matched.records, unchanged + matched.unchanged
        # each part samples the whole file: judged once the sample is big enough to be sure, or complete
        if several and (seen >= JUDGE_AFTER or seen == read) and seen - unchanged > MOSTLY_CHANGED * seen:
            return _rewritten(indexing)
        pending.append((changed, matched.changed["line"]))
        gone.append((gone_text, len(matched.gone)))
        if sum(len(lines) for _, lines in pending) >= TYPE_ROWS:
            type_pending()
        if sum(n for _, n in gone) >= TYPE_ROWS and not write_gone():
            return None
    type_pending()
    return (read, unchanged) if write_gone() else None


def _rewritten(indexing: Indexing) -> None:
    if indexing.by == "bytes":
        raise _Reformatted
    return None


def _copy(cur: psycopg.Cursor, statement, spool) -> None:
    spool.seek(0)
    with cur.copy(statement) as cp:
        while chunk := spool.read(1 << 20):
            cp.write(chunk)


def _merge(conn: psycopg.Connection, plan: SyncPlan, fscan: csvscan.FileScan, current: state.TableState,
           started: float, spools: _Spools, *, read: int, unchanged: int, baseline_rows: int) -> SyncResult:
    spec, stg, params = plan.spec, plan.staging, {"run": plan.run_id}
    with conn.cursor() as cur:
        _copy(cur, merge.copy_into_staging(spec, stg), spools.rows)
        _copy(cur, merge.COPY_REJECTS, spools.rejects)
    conn.execute(merge.analyze_join_keys(spec, stg))
    # the diff touches few keys of a big table: cost index probes as the SSDs and caches they run on do
    # (PostgreSQL's default, 4x a sequential read, has the merge hash-join the whole table instead)
    conn.execute("set local random_page_cost = 1.1")
    conn.execute(merge.reject_duplicates(spec, stg), params)
    for stmt in merge.reject_orphans(spec, stg, plan.specs):
        conn.execute(stmt, params)
    with conn.cursor() as cur:
        cur.execute(merge.create_gone(spec))
        _copy(cur, merge.copy_into_gone(spec), spools.gone)
    if conn.execute(merge.diff_collides(spec, stg), params).fetchone()[0]:
        raise _NeedsFullLoad
    loaded = unchanged + conn.execute(merge.count_staged(stg)).fetchone()[0]
    rejected = conn.execute("select count(*) from cutover.rejects where run_id = %(run)s", params).fetchone()[0]
    if read != loaded + rejected:
        raise CutoverError(f"internal error: read {read} rows but loaded {loaded} + rejected {rejected}")
    conn.execute(merge.keep_newer_writes(spec, stg), params)
    deleted = conn.execute(merge.delete_gone(spec, stg), params).rowcount
    commit.refuse_mass_delete(plan, deleted, baseline_rows)  # raising undoes the delete with the rest
    if conn.info.server_version >= merge.MERGE_RETURNING:
        updated, inserted = conn.execute(merge.upsert_changed(spec, stg)).fetchone()
    else:
        updated = conn.execute(merge.update_changed(spec, stg, in_key_order=True)).rowcount
        inserted = conn.execute(merge.insert_new(spec, stg, in_key_order=True)).rowcount
    return commit.finish(conn, plan, fscan, current, started, read=read, loaded=loaded, rejected=rejected,
                       inserted=inserted, updated=updated, deleted=deleted, method="diff")
