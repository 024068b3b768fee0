"""The CSV's side of a digest comparison, kept for its exact bytes: the same file compared again is not re-read.

Contract: ``recall(path, sha256, rules)`` returns the sums and counts that ``keep`` stored for a file
with that SHA-256 typed and digested under those ``rules``, or None. A file's sums are a function of
its bytes and of the rules that split, type and digest them, so what is recalled is exactly what a
new read would compute: ``rules`` names all of those rules — the table's spec, the source of the
modules that apply it, the C kernels as built (``cutover.record_index``, ``cutover.row_md5``), the polars
and polars-hash versions they run on. Only the CSV's side is ever recalled; the table's side is summed
again by every comparison (it may change without cutover). Only a full read of the file keeps sums —
never a sync, even one that knows which records changed: sums derived from what a sync did would share its
mistakes, the very thing a comparison is there to catch.

Storage: one file per table, the last file compared (4,096 buckets, ~100 KB), written atomically
(``cutover.atomic``) as a numpy archive read without pickle; a missing, torn or foreign file reads as
nothing kept. Nothing in it is data: row counts and XORs of digests per bucket.

Concurrency: none needed. For one key every writer writes the same value and a rename is atomic, so a
reader sees a whole file, old or new; two comparisons of different files leave either one's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import uuid
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from cutover.atomic import atomic_write

if TYPE_CHECKING:  # numpy and polars are imported by use: planning a sync names the path without them
    from cutover.digests import Sums
    from cutover.spec import TableSpec

log = logging.getLogger("cutover.digest_memo")
FORMAT = 1


def path_for(registry: Path, table: str) -> Path:
    return Path(registry) / f".{table}.csv-digests.npz"


def kept_at(registry: Path, table: str, keep: bool) -> Path | None:
    """Where a run keeps the table's CSV sums: ``path_for``, or None when the settings keep none."""
    return path_for(registry, table) if keep else None


@functools.cache  # a process's modules and libraries do not change: read their bytes once per spec
def rules(spec: TableSpec) -> str:
    """What a CSV's sums depend on besides its bytes (see the module docstring)."""
    import polars
    import polars_hash

    from cutover import (batches, coerce, csv_fields, csvscan, digest_parity, digests, fast_timestamps, record_index,
                         row_md5, table_digests)

    digest = hashlib.sha256()
    for part in (repr(dataclasses.replace(spec, source=None)), polars.__version__,
                 getattr(polars_hash, "__version__", "?")):
        digest.update(part.encode() + b"\x00")
    try:
        for module in (csvscan, record_index, csv_fields, batches, coerce, fast_timestamps, digests, table_digests,
                       digest_parity, row_md5):
            digest.update(Path(module.__file__).read_bytes() + b"\x00")
        # the C kernels as built, if they were (by contract they give numpy's and polars' results)
        for kernel in (record_index.kernel_file(), csv_fields.kernel_file(), row_md5.kernel_file()):
            digest.update(kernel.read_bytes() if kernel else b"no kernel")
    except (OSError, TypeError):  # no readable source: rules that no kept sums can match
        return f"unknown-{uuid.uuid4().hex}"
    return digest.hexdigest()


def recall(path: Path, sha256: str, rules_id: str) -> tuple[Sums, dict[str, int]] | None:
    """(sums, counts: read, loaded, rejected) kept for this file under these rules, or None."""
    import numpy as np

    from cutover.digests import Sums

    try:
        with np.load(path, allow_pickle=False) as kept:
            meta = json.loads(str(kept["meta"]))
            if (meta.get("format"), meta.get("sha256"), meta.get("rules")) != (FORMAT, sha256, rules_id):
                return None
            sums = Sums(rows=kept["rows"], x0=kept["x0"], x1=kept["x1"], untrusted=kept["untrusted"])
            counts = {k: int(meta[k]) for k in ("read", "loaded", "rejected")}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:  # torn, foreign: none kept
        log.warning("ignoring the kept CSV digests at %s: %s", path, exc)
        return None
    empty = Sums.empty()
    if any(getattr(sums, f).shape != getattr(empty, f).shape or getattr(sums, f).dtype != getattr(empty, f).dtype
           for f in ("rows", "x0", "x1", "untrusted")):
        return None
    return sums, counts


def may_hold(path: Path, size: int) -> bool:
    """Whether sums may be kept for a file of ``size`` bytes: False only when none can be (a hint, before
    the file's SHA-256 is known; ``recall`` decides)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as kept:
            return json.loads(str(kept["meta"])).get("bytes", size) == size
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return True  # recall says why it ignores the file


def may_hold_file(path: Path | None, csv: Path) -> bool:
    """``may_hold`` for the file ``csv`` as it is now, where ``path`` keeps sums (None: nowhere)."""
    try:
        return path is not None and path.exists() and may_hold(path, csv.stat().st_size)
    except OSError:  # the scan says what is wrong with the file
        return False


def keep(path: Path, sha256: str, rules_id: str, sums: Sums, *, read: int, loaded: int, rejected: int,
         size: int | None = None) -> None:
    """Store a file's sums (``size``: its bytes, for ``may_hold``); a failure to is logged, never raised
    (the next comparison reads the file)."""
    import numpy as np

    meta = {"format": FORMAT, "sha256": sha256, "rules": rules_id, "read": read, "loaded": loaded,
            "rejected": rejected, **({"bytes": size} if size is not None else {})}
    try:
        with atomic_write(path) as f:
            np.savez(f, meta=np.array(json.dumps(meta)), rows=sums.rows, x0=sums.x0, x1=sums.x1,
                     untrusted=sums.untrusted)
    except OSError as exc:
        log.warning("could not keep the CSV's digests at %s: %s", path, exc)


def forget(path: Path) -> None:
    Path(path).unlink(missing_ok=True)
