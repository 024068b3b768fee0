"""Exact parity of a CSV and its table without uploading the CSV: digests first, rows where they differ.

Contract: ``compare`` returns the same ``Parity`` as staging the whole file and running
``cutover.parity.compare`` on it (the counts, the examples, the rejects recorded for the run), unless
two different sets of rows share a 128-bit MD5 XOR (``cutover.digests``).

1. The CSV is read and typed by the loader's own code (same rejects), batches in parallel, each
   summed into buckets of keys; meanwhile PostgreSQL sums the table the same way, all buckets in one.
2. When the totals agree, so do the buckets. Otherwise a second read of the table sums it bucket by
   bucket. Buckets whose sums agree hold the same rows on both sides. The others
   (``digests.suspects``) are compared row by row: a second read of the file stages only their rows,
   and ``parity.compare`` runs on those buckets alone. A file with rejects takes that second read
   too, which records them.
So a file that matches its table costs one read of each and sends nothing but sums. When the
plan says where (``SyncPlan.csv_digests``), the CSV's sums are kept for its bytes
(``cutover.digest_memo``): the same file compared again is not read at all — the table always is.

Concurrency: everything that reads the table — its sums, the staging of step 2 and the comparison —
runs in ONE repeatable-read transaction, so the table is compared as of one instant even while the
application writes to it. The staged rows and rejects are written by that same transaction (they are
the run's own; nothing else reads them). The one exception proves itself: totals started ahead in a
transaction of their own (``cutover.totals_ahead``) that agree with the CSV's show the CSV equal to the
table as of their instant; totals that do not are set aside, and step 2 sums the table in the one
transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import psycopg

from cutover import batches, csvscan, digest_memo, digests, merge, parity, row_md5, table_digests
from cutover.pipeline import as_done, in_order
from cutover.syncplan import SyncPlan
from cutover.totals_ahead import TotalsAhead


@dataclass(frozen=True)
class SourceCounts:
    read: int
    loaded: int  # rows typed (duplicates included): the staged rows a full staging would hold
    rejected: int


def _typed(plan: SyncPlan, fscan: csvscan.FileScan, batch: csvscan.Batch):
    """A batch read and typed by the loader's code: (typed rows, rejects, records read, separator-free)."""
    raw, lines, ragged, read, verbatim, nul = batches.read_raw(plan, fscan.header, batch)
    typed, rejects = batches.type_rows(plan, raw, lines, ragged, nul=nul, instants=True)
    return typed, rejects, read, _separator_free(verbatim)


def _batch_sums(plan: SyncPlan, header: csvscan.Header, batch: csvscan.Batch) -> tuple[digests.Sums, SourceCounts]:
    """A batch read as strings (its records' fields counted by the C reader, as the loader counts them),
    typed by the loader's code and summed. Where the C kernel is built, it checks the uuids' and numerics'
    shapes itself, in its one pass, and the typing does not (a batch with one it refuses is typed again
    by every rule)."""
    rb = batches.read_raw(plan, header, batch)
    free = _separator_free(rb.verbatim)
    for unchecked in (True, False) if row_md5.available() else (False,):
        typed, rejects = batches.type_rows(plan, rb.raw, rb.lines, rb.ragged, nul=rb.nul,
                                           instants=digests.needs_instants(), unchecked_shapes=unchecked)
        sums = digests.Sums.empty()
        if digests.source_sums(typed, plan.spec, into=sums, separator_free=free, unchecked=unchecked):
            break
    return sums, SourceCounts(rb.read, typed.height, rejects.height)


def _separator_free(verbatim: bytes | None) -> bool:
    return verbatim is not None and digests.SEPARATOR.encode() not in verbatim


def csv_sums(plan: SyncPlan, scan: csvscan.ScanStream, workers: int) -> tuple[digests.Sums, SourceCounts]:
    """Pass 1 over the CSV: its bucket sums and counts; nothing is written. Each worker sums its own
    batch, so that a batch's typed rows die in the worker (fewer batches alive at once); batches are
    summed as the scan finds them."""
    sums, read, loaded, rejected = digests.Sums.empty(), 0, 0, 0
    for part, counts in as_done(lambda batch: _batch_sums(plan, scan.header, batch), scan.batches(), workers):
        sums.fold(part)
        read, loaded, rejected = read + counts.read, loaded + counts.loaded, rejected + counts.rejected
    return sums, SourceCounts(read, loaded, rejected)


def kept_sums(plan: SyncPlan, fscan: csvscan.FileScan) -> tuple[digests.Sums, SourceCounts] | None:
    """The CSV's sums and counts as kept for these bytes under today's rules, or None."""
    if plan.csv_digests is None:
        return None
    kept = digest_memo.recall(plan.csv_digests, fscan.sha256, digest_memo.rules(plan.spec))
    return None if kept is None else (kept[0], SourceCounts(**kept[1]))


def read_sums(plan: SyncPlan, scan: csvscan.ScanStream, workers: int) -> tuple[digests.Sums, SourceCounts]:
    """``csv_sums``, kept for these bytes when the plan keeps them."""
    sums, counts = csv_sums(plan, scan, workers)
    fscan = scan.finish()
    if plan.csv_digests is not None:
        digest_memo.keep(plan.csv_digests, fscan.sha256, digest_memo.rules(plan.spec), sums, read=counts.read,
                         loaded=counts.loaded, rejected=counts.rejected, size=fscan.size)
    return sums, counts


def stage_suspects(conn: psycopg.Connection, plan: SyncPlan, fscan: csvscan.FileScan, buckets: np.ndarray | None,
                   workers: int) -> None:
    """Pass 2: the CSV's rows of ``buckets`` (None: every row) into the run's staging table, every reject
    into the run's rejects, through ``conn``."""
    for typed, rejects, *_ in in_order(lambda batch: _typed(plan, fscan, batch), fscan.batches, workers):
        rows = typed if buckets is None else digests.in_buckets(typed, plan.spec, buckets)
        if rows.height or rejects.height:
            batches.copy_staged(conn, plan, batches.csv_bytes(rows.select(*plan.spec.column_names, "_line")), rejects)
    conn.execute(merge.analyze_staging(plan.staging))


def may_be_kept(plan: SyncPlan) -> bool:
    """Whether the CSV's sums may be kept (``kept_sums``), judged before it is scanned: by its size."""
    return digest_memo.may_hold_file(plan.csv_digests, plan.csv_path)


def target_sums(conn: psycopg.Connection, plan: SyncPlan, *, parallel: bool = True) -> digests.Sums:
    """The table's sums, bucket by bucket."""
    query = table_digests.target_sql(plan.spec, conn.info.server_version)
    return digests.target_sums(table_digests.aggregate(conn, query, parallel=parallel))


def first_pass(conn: psycopg.Connection, plan: SyncPlan, scan: Callable[[], csvscan.ScanStream], workers: int, *,
               csv_after: Callable[[], None] | None = None, locate: bool = True,
               ahead: TotalsAhead | None = None) -> tuple[np.ndarray, SourceCounts, int]:
    """Step 1, in ``conn``'s transaction: (the buckets to compare row by row, the CSV's counts, the
    table's row count). No suspect and no reject: the CSV's typed rows are exactly the table's.

    The table is summed whole from the start, while ``scan`` gives the file's scan; the CSV is read once
    ``csv_after`` returns (a caller busy with Python-bound work — an import — lets the database work alone
    first), its batches summed as the scan finds them. The CSV is not read when its sums are kept
    (``kept_sums``): where they may be, the whole file is scanned first, for its SHA-256 names them. One
    server process sums the table beside the CSV's read: parallel workers would take the cores from it (at
    1M rows, 0.5 s slower in all); all of them, when it may not be read.
    ``ahead``: the table's totals were started before (``cutover.totals_ahead``); they are used if they
    agree with the CSV's — the CSV then equals the table as of their snapshot. Otherwise the table is
    summed bucket by bucket in ``conn``'s transaction, the one that compares.

    Sums that agree in total agree bucket by bucket, but for a 128-bit XOR collision (the argument of
    ``cutover.digests``, over all rows at once): only the CSV's untrusted buckets are then suspect. Sums
    that differ are located by a second read of the table, bucket by bucket; without ``locate``, every
    bucket is suspect (a caller that only asks whether they agree)."""
    if ahead is not None and not locate:
        raise ValueError("totals ahead need locating: they may not be this transaction's")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cutover-target-sums") as side:
        table = None if ahead is not None else side.submit(
            table_digests.totals, conn, plan.spec, parallel=csv_after is None and may_be_kept(plan))
        stream = scan()
        kept = kept_sums(plan, stream.finish()) if may_be_kept(plan) else None
        if kept is None and csv_after is not None:
            csv_after()
        source, counts = kept or read_sums(plan, stream, workers)
        totals = ahead.result() if table is None else table.result()
    if source.totals() == totals:
        suspects = np.flatnonzero(source.untrusted)
    elif locate:  # ahead's totals may be another instant's, or none: its rows are counted here too
        table_sums = target_sums(conn, plan)
        return digests.suspects(source, table_sums), counts, table_sums.total
    else:
        suspects = np.arange(digests.BUCKETS)
    return suspects, counts, totals[0]


def exact(counts: SourceCounts, target_rows: int) -> parity.Parity:
    return parity.Parity(source_rows=counts.loaded, target_rows=target_rows, missing_in_target=0,
                         extra_in_target=0, changed=0, rejected_in_source=0)


def compare(conn: psycopg.Connection, plan: SyncPlan, scan: Callable[[], csvscan.ScanStream],
            workers: int, *, ahead: TotalsAhead | None = None) -> tuple[parity.Parity, SourceCounts]:
    """Parity of the run's CSV (``plan``: a validate run's ``SyncPlan``; ``scan``, ``ahead``: see
    ``first_pass``) and its table, in ``conn``'s transaction, which must be repeatable read
    (``Database.run(..., snapshot=True)``)."""
    suspects, counts, target_rows = first_pass(conn, plan, scan, workers, ahead=ahead)
    if not len(suspects) and not counts.rejected:
        return exact(counts, target_rows), counts
    # every bucket (a change spread over the file): both sides whole, without a filter on each row's bucket
    buckets = None if len(suspects) == digests.BUCKETS else suspects
    stage_suspects(conn, plan, scan().finish(), buckets, workers)
    found = parity.compare(conn, plan.spec, plan.staging, plan.run_id,
                           buckets=None if buckets is None else buckets.tolist())
    return replace(found, source_rows=counts.loaded, target_rows=target_rows), counts
