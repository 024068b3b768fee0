"""The baseline: the exact file a table's last merge loaded, kept for the next sync to diff against.

Contract: after a merge commits, the run's snapshot of the CSV (a hard link, or a copy where the store
takes no links) is renamed to the table's baseline, ``.<table>.<home>.baseline.csv`` in the same folder
(``<home>``: a digest of the registry's path, so that two cutover homes syncing CSVs of one folder keep a
baseline each instead of replacing each other's), and a sidecar JSON in cutover's home records its
path, sha256, size, inode and modification time, its header and its batch boundaries — facts about the
bytes, never a hash of polars' (those change between versions). One baseline a table and home, whatever
path the CSV was synced from. ``find`` returns the baseline only
while the file is provably the one recorded: same inode, size and mtime (writers replace the CSV by
rename, so the baseline's inode is never written again; one written in place changes its mtime).
Whether the table still holds exactly that file's rows is the caller's to check (``cutover.delta``).

A merge that hashed every record of its file (``cutover.delta``; a first load) keeps those hashes too:
the spill file (``cutover.record_match``) goes to ``.<table>.baseline.records`` in the home, and the
sidecar records its size, inode and modification time, the hash's name and its seeds (secret to the home:
whoever cannot see them cannot craft a record that passes for another). ``find`` drops them, keeping
the baseline, when the file is not exactly the one recorded.

Concurrency: only a committed merge keeps a baseline, under no lock: the sidecar is written after the
rename, atomically, and names the sha256 of its file, which the caller compares with the last
successful sync's; two merges racing leave one baseline and a sidecar that either matches it or is
refused. Failing to keep one is harmless (the next sync loads the whole file) and never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from cutover.atomic import atomic_write, unlink_quietly
from cutover.csvscan import FileScan

log = logging.getLogger("cutover.baseline")


@dataclass(frozen=True)
class KeptRecords:
    """The baseline's record hashes, as its merge spilled them (``record_match.Spill.finish``)."""

    path: Path
    size: int
    inode: int
    mtime_ns: int
    hash: str  # the hash function's name (``cutover.delta.RECORD_HASH``)
    seeds: tuple[int, int]


@dataclass(frozen=True)
class Baseline:
    path: Path
    sha256: str
    size: int
    inode: int
    mtime_ns: int
    names: tuple[str, ...]  # the header, in file order
    batches: tuple[tuple[int, int], ...]  # [start, end) byte ranges on record boundaries
    rows: int  # data rows the merge read
    records: KeptRecords | None = None


def _sidecar(registry: Path, table: str) -> Path:
    return registry / f".{table}.baseline.json"


def _baseline_name(registry: Path, table: str) -> str:
    home = hashlib.sha256(str(Path(registry).resolve()).encode()).hexdigest()[:12]
    return f".{table}.{home}.baseline.csv"


def _records_file(registry: Path, table: str) -> Path:
    return registry / f".{table}.baseline.records"


def _recorded_path(sidecar: Path) -> Path | None:
    try:
        return Path(json.loads(sidecar.read_bytes())["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep(snapshot: Path, table: str, fscan: FileScan, rows: int, registry: Path,
         records: tuple[Path, str, tuple[int, int]] | None = None) -> None:
    """Make a merged run's snapshot the table's baseline (see the module docstring). The file stays
    where the snapshot is (a rename keeps the hard link); ``registry`` holds the sidecar. ``records``:
    (a finished spill of the file's record hashes, in ``registry``; the hash's name; its seeds)."""
    sidecar = _sidecar(registry, table)
    data = snapshot.parent / _baseline_name(registry, table)
    kept = _records_file(registry, table)
    previous = _recorded_path(sidecar)
    try:
        sidecar.unlink(missing_ok=True)  # never a sidecar describing another file, even for an instant
        os.replace(snapshot, data)
        st = data.stat()
        hashes = None
        if records is not None:
            os.replace(records[0], kept)
            rs = kept.stat()
            hashes = KeptRecords(path=kept, size=rs.st_size, inode=rs.st_ino, mtime_ns=rs.st_mtime_ns,
                                 hash=records[1], seeds=records[2])
        else:
            kept.unlink(missing_ok=True)
        record = Baseline(path=data, sha256=fscan.sha256, size=st.st_size, inode=st.st_ino, mtime_ns=st.st_mtime_ns,
                          names=fscan.header.names, batches=tuple((b.start, b.end) for b in fscan.batches), rows=rows,
                          records=hashes)
        registry.mkdir(parents=True, exist_ok=True)
        with atomic_write(sidecar) as f:
            f.write(json.dumps(asdict(record), default=str).encode())  # paths as text
    except OSError as exc:
        log.warning("could not keep %s's baseline (the next sync loads the whole file): %s", table, exc)
        unlink_quietly(sidecar, snapshot, kept, *([records[0]] if records else []))
        return
    if previous is not None and previous != data:  # the last file merged came from another folder
        unlink_quietly(previous)


def find(table: str, registry: Path) -> Baseline | None:
    """The table's baseline, if its file is still exactly the one the sidecar describes."""
    try:
        raw = json.loads(_sidecar(registry, table).read_bytes())
        record = Baseline(**{**raw, "path": Path(raw["path"]), "names": tuple(raw["names"]),
                             "batches": tuple((int(a), int(b)) for a, b in raw["batches"]), "records": None})
        st = record.path.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (st.st_ino, st.st_size, st.st_mtime_ns) != (record.inode, record.size, record.mtime_ns):
        return None
    return replace(record, records=_kept_records(raw.get("records")))


def _kept_records(raw: dict | None) -> KeptRecords | None:
    """The kept record hashes the sidecar describes, if their file is still exactly the one recorded."""
    if raw is None:
        return None
    try:
        kept = KeptRecords(**{**raw, "path": Path(raw["path"]), "seeds": tuple(int(x) for x in raw["seeds"])})
        st = kept.path.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return kept if (st.st_ino, st.st_size, st.st_mtime_ns) == (kept.inode, kept.size, kept.mtime_ns) else None


def discard(table: str, registry: Path) -> None:
    """Remove the table's baseline (the CSV stops being synced: a stale copy of the data must not linger)."""
    sidecar = _sidecar(registry, table)
    data = _recorded_path(sidecar)
    unlink_quietly(sidecar, _records_file(registry, table), *([data] if data else []))
