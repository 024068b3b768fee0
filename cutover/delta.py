"""Syncing only what changed: type and stage just the records that differ from the last merged file.

When the table holds exactly the rows of its baseline (``cutover.baseline``: the file its last merge
loaded) — no write to it since that merge (data_version == merged_version), the same basis (spec,
parents' data), and that merge rejected nothing — a record of the new file equal to a baseline record
(byte for byte, or field for field) is already in the table, typed. Only the other records are typed
and staged; the baseline's records the new file no longer has give the keys to delete. The outcome is
the full load's: the same rows, the same rejects with the same lines and reasons, the same counts.

Records are compared by two polars hashes (100 bits kept) with seeds drawn for this run and never
stored (polars' hashes change between versions): see ``BaselineIndex``. They hash each record's bytes
as written (``by="bytes"``): nothing is parsed but the changed records. A file written over in another
format (other quoting, line ends or header) has few records equal byte for byte although their fields
are, so the diff then compares parsed fields (``by="fields"``: both files parsed), chosen up front when
the header's bytes differ, or after the first batches. Memory: 16 bytes a baseline record plus the
batches in flight; the baseline's keys are read again only for the records that are gone. A baseline
whose index would pass ``SyncPlan.diff_index_bytes`` is not indexed: memory stays bounded.

Whatever would make the diff's outcome differ from the full load's sends the sync down the staged
path (``load_changes`` returns None) before anything is applied: no usable baseline, a write since
the merge, rejects in it, one record twice in the new file, or a changed or rejected row whose key an
unchanged row has — or more than half the records changed so far (``MOSTLY_CHANGED``: a rewrite loads
faster in parallel batches). Concurrency is the staged path's: one transaction under the table's lock,
merged only if the table's version is still the one the run began with.
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
from typing import Literal

import numpy as np
import polars as pl
import psycopg

from cutover import batches, commit, csvscan, merge, state
from cutover.baseline import Baseline
from cutover.coerce import column_rule
from cutover.db import Database
from cutover.errors import CutoverError
from cutover.pipeline import in_order
from cutover.syncplan import BatchResult, SyncPlan, SyncResult
from cutover.unchanged import still_merged


log = logging.getLogger("cutover.delta")
TYPE_ROWS = 50_000  # changed rows typed at a time
INDEX_BYTES_PER_RECORD = 16  # BaselineIndex: a sorted word and a second hash
MOSTLY_CHANGED = 0.5  # past this share of changed records (from the second batch on), the diff gives up


ORDINAL_BITS = 28  # a baseline of up to 268M records
_ORDINAL = np.uint64((1 << ORDINAL_BITS) - 1)
_PREFIX = ~_ORDINAL
MAX_SHARED = 4  # records whose hashes share a prefix (at 10M records, 5 do once in ~10^10 runs: then no diff)
Matching = Literal["bytes", "fields"]  # what makes a record of the new file equal to a baseline record


@dataclass(frozen=True)
class BaselineIndex:
    """Every baseline record as one 64-bit word, sorted in place: the top 36 bits of a first hash over the
    record's ordinal (its position in the file), plus a second 64-bit hash by ordinal — 16 bytes a
    record and no temporary copy, so a 10M-record baseline costs 160 MB. A record of the new file is
    found by binary search (sorted queries, walking the index in order) and confirmed by both hashes:
    100 bits, so at 10M records the chance that a changed record passes for an unchanged one is below
    1e-17 per run."""

    words: np.ndarray  # uint64, sorted: prefix | ordinal
    h2: np.ndarray  # uint64, by ordinal
    seeds: tuple[int, int]

    def __len__(self) -> int:
        return len(self.words)

    def positions(self, raw: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(which rows of ``raw`` are baseline records, the ordinals of those records)."""
        return self.lookup(*record_hashes(raw, self.seeds))

    def lookup(self, h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.words)
        same = np.zeros(len(h1), dtype=bool)
        ordinal = np.zeros(len(h1), dtype=np.int64)
        if not n:
            return same, ordinal[:0]
        prefix = h1 & _PREFIX
        order = np.argsort(prefix)
        at = np.empty(len(h1), dtype=np.int64)
        at[order] = np.searchsorted(self.words, prefix[order])
        todo = np.arange(len(h1))
        for _ in range(MAX_SHARED):  # records sharing a prefix sit side by side: look at the next one
            todo, at = todo[at < n], at[at < n]
            word = self.words[at]
            shared = (word & _PREFIX) == prefix[todo]
            todo, at, word = todo[shared], at[shared], word[shared]
            hit = self.h2[word & _ORDINAL] == h2[todo]
            same[todo[hit]] = True
            ordinal[todo[hit]] = (word[hit] & _ORDINAL).astype(np.int64)
            todo, at = todo[~hit], at[~hit] + 1
            if not len(todo):
                break
        return same, ordinal[same]


def record_hashes(raw: pl.DataFrame, seeds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return raw.hash_rows(seeds[0]).to_numpy(), raw.hash_rows(seeds[1]).to_numpy()


def byte_hashes(buf: bytes, idx: csvscan.RecordIndex, rows: np.ndarray,
                seeds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the records ``rows`` of ``buf`` as written, line end included."""
    import pyarrow as pa  # here: ~25 MB of memory that only a diff needs
    # every record as one binary value, sharing buf's memory: a record runs to the next one's start
    offsets = np.append(idx.starts, len(buf)).astype(np.int64)
    records = pl.Series(pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(idx), [None, pa.py_buffer(offsets), pa.py_buffer(buf)]))
    return records.hash(seeds[0]).to_numpy()[rows], records.hash(seeds[1]).to_numpy()[rows]


def _record_rows(idx: csvscan.RecordIndex) -> np.ndarray:
    return np.flatnonzero(~idx.blank)  # blank lines are not rows


def _baseline_bytes(base: Baseline, i: int) -> bytes:
    start, end = base.batches[i]
    with open(base.path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def _baseline_batch(base: Baseline, i: int, columns: list[int] | None = None) -> pl.DataFrame:
    buf = _baseline_bytes(base, i)
    if columns is not None:
        return pl.read_csv(io.BytesIO(buf), has_header=False, columns=columns, infer_schema=False, quote_char='"')
    return pl.read_csv(io.BytesIO(buf), has_header=False, new_columns=list(base.names),
                       schema={n: pl.String for n in base.names}, quote_char='"')


def index_baseline(base: Baseline, plan: SyncPlan, workers: int,
                   by: Matching) -> tuple[BaselineIndex, list[int]] | None:
    """The baseline's index and its records per batch; None if it does not hold ``base.rows`` distinct
    records (or holds too many for the index)."""
    seeds = (secrets.randbits(63), secrets.randbits(63))
    names = list(plan.spec.column_names)
    if base.rows >= 1 << ORDINAL_BITS:
        return None
    words = np.empty(base.rows, dtype=np.uint64)
    h2 = np.empty(base.rows, dtype=np.uint64)
    per_batch: list[int] = []

    def hashes(i: int) -> tuple[np.ndarray, np.ndarray]:
        if by == "fields":
            return record_hashes(_baseline_batch(base, i).select(names), seeds)
        buf = _baseline_bytes(base, i)
        idx = csvscan.index_records(buf, 1, base.path, count_fields=False)
        return byte_hashes(buf, idx, _record_rows(idx), seeds)

    filled = 0
    for first, second in in_order(hashes, list(range(len(base.batches))), workers):
        if filled + len(first) > base.rows:  # more records than the merge read: not this baseline
            return None
        words[filled:filled + len(first)] = (first & _PREFIX) | np.arange(filled, filled + len(first),
                                                                          dtype=np.uint64)
        h2[filled:filled + len(first)] = second
        filled += len(first)
        per_batch.append(len(first))
    if filled != base.rows:  # blank lines or a ragged record: the merge did not load every record
        return None
    words.sort()
    if _ambiguous(words, h2):
        return None
    return BaselineIndex(words=words, h2=h2, seeds=seeds), per_batch


def _ambiguous(words: np.ndarray, h2: np.ndarray) -> bool:
    """Two equal records (the merge would have rejected both), or more than ``MAX_SHARED`` sharing a
    prefix; checked a slice at a time, so no temporary the size of the index."""
    span, step = MAX_SHARED, 1 << 20  # records i and i + span alike: span + 1 share a prefix
    for lo in range(0, max(0, len(words) - 1), step):
        w = words[lo:lo + step + span]
        prefix = w & _PREFIX
        pair = np.flatnonzero(prefix[1:] == prefix[:-1])
        if (h2[w[pair] & _ORDINAL] == h2[w[pair + 1] & _ORDINAL]).any():
            return True
        if len(prefix) > span and (prefix[span:] == prefix[:-span]).any():
            return True
    return False


def gone_keys(base: Baseline, plan: SyncPlan, ordinals: np.ndarray, per_batch: list[int],
              workers: int) -> bytes | None:
    """The typed keys (CSV, one a line) of the baseline records at ``ordinals`` (sorted); only the batches
    holding one are read, and only their key column is parsed."""
    pk = plan.spec.column(plan.spec.primary_key)
    column = base.names.index(pk.name)
    starts = np.concatenate(([0], np.cumsum(per_batch)))
    owner = np.searchsorted(starts, ordinals, side="right") - 1

    def keys(i: int) -> pl.Series:
        local = ordinals[owner == i] - starts[i]
        return _baseline_batch(base, i, [column]).to_series()[local].alias(pk.name)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cutover-baseline") as pool:
        raw = pl.concat(list(pool.map(keys, np.unique(owner).tolist())) or [pl.Series(pk.name, [], pl.String)])
    value, reason = column_rule(pk)
    typed = pl.DataFrame(raw).select(value.alias("key"), reason.alias("why"))
    if typed["why"].is_not_null().any():  # the merge loaded it, so its key was valid: not this baseline
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
    """A baseline being indexed in the background (while the new file is scanned)."""

    base: Baseline
    by: Matching
    index: Future  # of index_baseline's result


def _index_in_background(base: Baseline, plan: SyncPlan, workers: int, by: Matching) -> Indexing:
    runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cutover-baseline")
    try:
        return Indexing(base, by, runner.submit(index_baseline, base, plan, workers, by))
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
    """Begin indexing the table's baseline if the table still holds exactly its rows and the index
    fits in ``plan.diff_index_bytes``; None if not."""
    if base is not None and base.rows * INDEX_BYTES_PER_RECORD > plan.diff_index_bytes:
        log.info("%s: no diff: indexing %d rows takes more than the %d MB allowed (CUTOVER_DIFF_INDEX_MB)",
                 plan.spec.name, base.rows, plan.diff_index_bytes >> 20)
        return None
    if base is None or db.run(lambda conn: _eligible(conn, plan, base),
                              what=f"check {plan.spec.name}'s baseline") is None:
        return None
    return _index_in_background(base, plan, workers, "bytes" if _same_header(plan.csv_path, base) else "fields")


class _Reformatted(Exception):
    """Most records differ byte for byte: the file was written over in another format."""


def load_changes(db: Database, plan: SyncPlan, fscan: csvscan.FileScan, indexing: Indexing | None, base_version: int,
                 started: float, *, workers: int, on_batch: Callable[[BatchResult], None] | None = None,
                 on_restart: Callable[[], None] | None = None) -> SyncResult | None:
    """Diff ``fscan`` against the baseline and merge the difference in one transaction; None, having
    applied nothing, when the staged path must judge the file (see the module docstring).
    ``on_restart`` is called when a diff by bytes gives way to one by fields (progress starts over)."""
    if indexing is None:
        return None
    if indexing.by == "bytes" and not _same_header(plan.snapshot, indexing.base):  # replaced since the check
        indexing = _index_in_background(indexing.base, plan, workers, "fields")
    try:
        return _load_changes(db, plan, fscan, indexing, base_version, started, workers=workers, on_batch=on_batch)
    except _Reformatted:
        log.info("%s: most records were re-written in another format: diffing by fields", plan.spec.name)
        if on_restart:
            on_restart()
        return _load_changes(db, plan, fscan, _index_in_background(indexing.base, plan, workers, "fields"),
                             base_version, started, workers=workers, on_batch=on_batch)


def _load_changes(db: Database, plan: SyncPlan, fscan: csvscan.FileScan, indexing: Indexing, base_version: int,
                  started: float, *, workers: int,
                  on_batch: Callable[[BatchResult], None] | None) -> SyncResult | None:
    spec = plan.spec
    indexed = indexing.index.result()
    if indexed is None:
        return None
    log.info("%s: diffing by %s against the baseline", spec.name, indexing.by)
    base, (index, per_batch) = indexing.base, indexed
    seen = np.zeros(len(index), dtype=bool)
    read = unchanged = 0

    def diff(batch: csvscan.Batch):
        """(batch, records, baseline ordinals found, the changed records: CSV text and what types it)."""
        if indexing.by == "fields":
            raw, lines, ragged, n, _, _ = batches.read_raw(plan, fscan.header, batch)
            same, pos = index.positions(raw)
            changed = raw.filter(pl.Series(~same)).with_columns(lines.filter(pl.Series(~same)))
            # as CSV text: a filtered frame would keep its whole batch's strings alive until typed
            return batch, n, pos, (batches.csv_bytes(changed), ragged), changed.height + ragged.height
        buf = batches.read_bytes(plan, batch)
        idx = batches.index_batch(plan, buf, batch.first_line, count_fields=False)
        rows = _record_rows(idx)
        same, pos = index.lookup(*byte_hashes(buf, idx, rows, index.seeds))
        changed = rows[~same]  # parsed later, together: polars' fixed cost a call dwarfs a batch's few records
        return batch, len(rows), pos, (batches.cut(buf, idx, changed), idx.lines[changed]), len(changed)

    with tempfile.TemporaryFile() as rows_spool, tempfile.TemporaryFile() as rejects_spool:
        pending: list[tuple[bytes, object]] = []
        pending_rows = 0
        schema = {**{c: pl.String for c in spec.column_names}, "_line": pl.Int64}

        def read_pending() -> batches.RawBatch:
            text = b"".join(t for t, _ in pending)
            if indexing.by == "bytes":
                return batches.read_cut(plan, fscan.header, text, np.concatenate([lines for _, lines in pending]))
            raw = (pl.read_csv(io.BytesIO(text), has_header=False, new_columns=list(schema), schema=schema,
                               quote_char='"') if text else pl.DataFrame(schema=schema))
            ragged = pl.concat([ragged for _, ragged in pending])
            return batches.RawBatch(raw.drop("_line"), raw["_line"], ragged, raw.height + ragged.height, None,
                                    b"\x00" in text)

        def type_pending() -> None:
            # typed together: typing costs ~20 ms a call whatever the rows, more than a batch's few changed ones
            nonlocal pending_rows
            if not pending:
                return
            rb = read_pending()
            pending.clear()
            pending_rows = 0
            typed, rejects = batches.type_rows(plan, rb.raw, rb.lines, rb.ragged, nul=rb.nul)
            rows_spool.write(batches.csv_bytes(typed))
            rejects_spool.write(batches.csv_bytes(rejects.select(pl.lit(str(plan.run_id)).alias("run_id"), pl.all())))

        for batch, n, pos, part, n_changed in in_order(diff, list(fscan.batches), workers):
            seen[pos] = True
            read, unchanged = read + n, unchanged + len(pos)
            pending.append(part)
            pending_rows += n_changed
            if batch.index >= 1 and read - unchanged > MOSTLY_CHANGED * read:
                if indexing.by == "bytes":
                    raise _Reformatted
                return None  # a rewrite, not a change: the staged path loads it in parallel batches
            if pending_rows >= TYPE_ROWS:
                type_pending()
            if on_batch:  # progress: the changed records are staged, or rejected, when typed (later)
                on_batch(BatchResult(batch.index, n, 0, 0, batch.end - batch.start))
        type_pending()
        if np.count_nonzero(seen) != unchanged:
            return None  # a record twice in the file: the full load rejects its key on both lines
        gone = np.flatnonzero(~seen)
        del seen

        def step(conn: psycopg.Connection) -> SyncResult | None:
            current = commit.lock_for_merge(conn, plan, base_version)
            if _eligible(conn, plan, base) is None:  # written since the check: the table is not the baseline
                return None
            try:
                with conn.transaction():  # a savepoint: a diff the full load must redo leaves no trace
                    return _merge(conn, plan, fscan, current, started, rows_spool, rejects_spool, keys,
                                  read=read, unchanged=unchanged, baseline_rows=len(index))
            except _NeedsFullLoad:
                return None

        # the gone records' keys are read from the baseline while the merge stages the changed ones
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cutover-gone") as reader:
            keys = reader.submit(gone_keys, base, plan, gone, per_batch, workers)
            result = db.run(step, what=f"merge {spec.name}'s changes")
    if result is not None:
        commit.keep_baseline(plan, fscan, result.read)
    return result


def _copy(cur: psycopg.Cursor, statement, spool) -> None:
    spool.seek(0)
    with cur.copy(statement) as cp:
        while chunk := spool.read(1 << 20):
            cp.write(chunk)


def _merge(conn: psycopg.Connection, plan: SyncPlan, fscan: csvscan.FileScan, current: state.TableState,
           started: float, rows_spool, rejects_spool, keys: Future, *, read: int, unchanged: int,
           baseline_rows: int) -> SyncResult:
    """``keys``: the future of ``gone_keys``, awaited only once the staged rows need them."""
    spec, stg, params = plan.spec, plan.staging, {"run": plan.run_id}
    with conn.cursor() as cur:
        _copy(cur, merge.copy_into_staging(spec, stg), rows_spool)
        _copy(cur, merge.COPY_REJECTS, rejects_spool)
    conn.execute(merge.analyze_join_keys(spec, stg))
    # the diff touches few keys of a big table: cost index probes as the SSDs and caches they run on do
    # (PostgreSQL's default, 4x a sequential read, has the merge hash-join the whole table instead)
    conn.execute("set local random_page_cost = 1.1")
    conn.execute(merge.reject_duplicates(spec, stg), params)
    for stmt in merge.reject_orphans(spec, stg, plan.specs):
        conn.execute(stmt, params)
    if (gone := keys.result()) is None:
        raise _NeedsFullLoad
    with conn.cursor() as cur:
        cur.execute(merge.create_gone(spec))
        with cur.copy(merge.copy_into_gone(spec)) as cp:
            cp.write(gone)
    if conn.execute(merge.diff_collides(spec, stg), params).fetchone()[0]:
        raise _NeedsFullLoad
    loaded = unchanged + conn.execute(merge.count_staged(stg)).fetchone()[0]
    rejected = conn.execute("select count(*) from cutover.rejects where run_id = %(run)s", params).fetchone()[0]
    if read != loaded + rejected:
        raise CutoverError(f"internal error: read {read} rows but loaded {loaded} + rejected {rejected}")
    conn.execute(merge.keep_newer_writes(spec, stg), params)
    deleted = conn.execute(merge.delete_gone(spec, stg), params).rowcount
    commit.refuse_mass_delete(plan, deleted, baseline_rows)  # raising undoes the delete with the rest
    updated = conn.execute(merge.update_changed(spec, stg)).rowcount
    inserted = conn.execute(merge.insert_new(spec, stg)).rowcount
    return commit.finish(conn, plan, fscan, current, started, read=read, loaded=loaded, rejected=rejected,
                       inserted=inserted, updated=updated, deleted=deleted, method="diff")
