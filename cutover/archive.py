"""Archive a deprecated table's CSV (gzip + JSON manifest) and restore it on rollback.

Contract: ``archive_csv`` writes ``<table>-<YYYYmmddTHHMMSSZ>.csv.gz`` and then its
``.manifest.json``, each atomically (see ``cutover.atomic``), after checking that the archive
decompresses to exactly the CSV's sha256. A manifest therefore only ever names a complete, verified
archive; on any error no manifest is written and the new archive is removed. The CSV itself is never
modified or deleted. ``restore_csv`` checks the archive's sha256 before decompressing and the
result's sha256 before renaming it over ``dest``: on a crash or any mismatch ``dest`` keeps its old
content (or stays absent). Memory stays bounded (files are streamed in blocks). ``upload`` copies
an archive and its manifest to Supabase Storage; its errors never contain a key.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import numpy as np
import yaml

from cutover.atomic import atomic_write
from cutover.errors import CutoverError
from cutover.redact import scrub
from cutover.settings import Settings
from cutover.spec import SpecError, TableSpec, parse_spec

BLOCK = 1 << 20  # streaming block size (bytes)
QUOTE, LF, CR = 0x22, 0x0A, 0x0D
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_STAMP = "%Y%m%dT%H%M%SZ"


class ArchiveError(CutoverError):
    """An archive cannot be written, read, verified, restored or uploaded."""

    exit_code = 1


@dataclass(frozen=True)
class Manifest:
    table: str
    archive: str  # file name of the .csv.gz, relative to the archive dir (the manifest's dir)
    csv_sha256: str  # sha256 of the uncompressed CSV bytes
    gz_sha256: str  # sha256 of the .csv.gz file
    rows: int  # data records (CSV-aware; blank lines are not rows, the header is not a row)
    bytes: int  # uncompressed size
    spec: dict  # the table spec as loaded from its YAML (raw dict); parse_spec(spec) gives it back
    phase_history: list[dict]
    report_ids: list[str]
    created_at: str  # ISO 8601 UTC

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------- helpers

class _RecordCounter:
    """Counts data records in a CSV fed block by block (RFC 4180 quoting: a newline inside a quoted
    field does not end a record). Like ``cutover.csvscan``: the first record is the header and blank
    records (empty, or a lone CR) are not counted."""

    def __init__(self) -> None:
        self.parity = 0  # quotes seen so far, mod 2 (1: inside a quoted field)
        self.offset = 0  # bytes fed so far
        self.start = 0  # offset of the current record's first byte
        self.last = -1  # the last byte fed
        self.records = 0  # non-blank records ended so far

    def feed(self, block: bytes) -> None:
        if not block:
            return
        a = np.frombuffer(block, dtype=np.uint8)
        quotes = np.flatnonzero(a == QUOTE)
        ends = np.flatnonzero(a == LF)
        if len(ends) and (len(quotes) or self.parity):
            ends = ends[((np.searchsorted(quotes, ends) + self.parity) & 1) == 0]
        if len(ends):
            stops = ends + self.offset
            starts = np.concatenate(([self.start], stops[:-1] + 1))
            before = np.where(ends > 0, a[np.maximum(ends - 1, 0)], self.last)  # byte before each LF
            blank = (stops == starts) | ((stops - starts == 1) & (before == CR))
            self.records += len(ends) - int(blank.sum())
            self.start = int(stops[-1]) + 1
        self.parity = (self.parity + len(quotes)) & 1
        self.offset += len(a)
        self.last = int(a[-1])

    def rows(self) -> int:
        tail = self.offset - self.start  # a last record without a final newline
        records = self.records + (1 if tail > 1 or (tail == 1 and self.last != CR) else 0)
        return max(records - 1, 0)


class _HashingWriter:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class _HashingReader:
    """A read-only file object that hashes what is read from it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _decompress(gz_path: Path, sink: Callable[[bytes], Any] | None = None) -> tuple[str, str, int]:
    """Stream ``gz_path`` through gzip into ``sink``: (sha256 of the .gz, sha256 of its content, size)."""
    content = hashlib.sha256()
    size = 0
    with open(gz_path, "rb") as raw:
        reader = _HashingReader(raw)
        with gzip.GzipFile(fileobj=reader, mode="rb") as gz:  # type: ignore[arg-type]
            while block := gz.read(BLOCK):
                content.update(block)
                size += len(block)
                if sink is not None:
                    sink(block)
        while reader.read(BLOCK):  # hash whatever gzip did not need to read
            pass
    return reader.digest.hexdigest(), content.hexdigest(), size


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


def _spec_to_raw(spec: TableSpec) -> dict:
    """The YAML-shaped dict of a spec (for specs without a readable source file)."""
    columns = []
    for c in spec.columns:
        col: dict[str, Any] = {"name": c.name, "type": c.type, "nullable": c.nullable}
        if c.enum is not None:
            col["enum"] = list(c.enum)
        for key in ("length", "precision", "scale"):
            if getattr(c, key) is not None:
                col[key] = getattr(c, key)
        if c.references is not None:
            col["references"] = ".".join(c.references)
        columns.append(col)
    rules = []
    for r in spec.rules:
        rule: dict[str, Any] = {"column": r.column}
        if r.pattern is not None:
            rule["pattern"] = r.pattern
        if r.min is not None:
            rule["min"] = r.min
        if r.not_before is not None:
            rule["not_before"] = r.not_before
        if r.set_iff is not None:
            rule["set_iff"] = {"column": r.set_iff[0], "in": list(r.set_iff[1])}
        rules.append(rule)
    rls = {"owner_column": spec.rls.owner_column} if spec.rls.owner_column else {"via_parent": spec.rls.via_parent}
    raw: dict[str, Any] = {"table": spec.name, "description": spec.description, "primary_key": spec.primary_key,
                           "columns": columns, "rls": rls}
    if rules:
        raw["rules"] = rules
    return raw


def _raw_spec(spec: TableSpec) -> dict:
    """The spec's YAML as a dict, if its source file still describes this very spec; else the dict
    rebuilt from the spec (either way ``parse_spec`` of the result equals ``spec``)."""
    if spec.source is not None:
        try:
            with open(spec.source, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
            if isinstance(raw, dict) and parse_spec(raw, source=spec.source) == spec:
                return json.loads(json.dumps(raw, default=str))
        except (OSError, yaml.YAMLError, SpecError, KeyError, TypeError, ValueError):
            pass
    return _spec_to_raw(spec)


def _free_stem(archive_dir: Path, table: str, now: datetime) -> str:
    base = f"{table}-{now.strftime(_STAMP)}"
    stem, n = base, 0
    while (archive_dir / f"{stem}.csv.gz").exists() or (archive_dir / f"{stem}.manifest.json").exists():
        n += 1
        stem = f"{base}-{n}"
    return stem


def _manifest_from_dict(data: Any, where: Path) -> Manifest:
    if not isinstance(data, dict):
        raise ArchiveError(f"{where}: not an archive manifest (expected a JSON object)")
    types = {"table": str, "archive": str, "csv_sha256": str, "gz_sha256": str, "rows": int, "bytes": int,
             "spec": dict, "phase_history": list, "report_ids": list, "created_at": str}
    missing = [k for k in types if k not in data]
    if missing:
        raise ArchiveError(f"{where}: not an archive manifest: missing {', '.join(missing)}")
    for key, kind in types.items():
        value = data[key]
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise ArchiveError(f"{where}: manifest field {key!r} must be a {'non-negative integer' if kind is int else kind.__name__}")
    for key in ("csv_sha256", "gz_sha256"):
        if not _SHA256.match(data[key]):
            raise ArchiveError(f"{where}: manifest field {key!r} is not a sha256 hex digest")
    name = data["archive"]
    if not name or name != Path(name).name or name in (".", "..") or "\\" in name:
        raise ArchiveError(f"{where}: manifest field 'archive' must be a file name in the manifest's directory, "
                           f"got {name!r}")
    return Manifest(**{k: data[k] for k in types})


# ------------------------------------------------------------------------------------- public API

def archive_csv(csv_path: Path, archive_dir: Path, spec: TableSpec, *, history: list[dict],
                report_ids: list[str], now: datetime | None = None) -> tuple[Path, Manifest]:
    """Archive ``csv_path`` into ``archive_dir``; returns (manifest path, manifest). The CSV is kept."""
    csv_path, archive_dir, now = Path(csv_path), Path(archive_dir), _utc(now)
    try:
        before = csv_path.stat()
    except FileNotFoundError:
        raise ArchiveError(f"{csv_path}: no such file; nothing to archive") from None
    except OSError as exc:
        raise ArchiveError(f"{csv_path}: cannot read: {exc.strerror or exc}") from None
    raw_spec = _raw_spec(spec)
    try:
        archive_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArchiveError(f"{archive_dir}: cannot create the archive directory: {exc.strerror or exc}") from None
    stem = _free_stem(archive_dir, spec.name, now)
    gz_path, manifest_path = archive_dir / f"{stem}.csv.gz", archive_dir / f"{stem}.manifest.json"

    csv_digest, counter, size = hashlib.sha256(), _RecordCounter(), 0
    try:
        with open(csv_path, "rb") as src, atomic_write(gz_path) as raw:
            out = _HashingWriter(raw)
            with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=int(now.timestamp()),
                               compresslevel=6) as gz:  # type: ignore[arg-type]
                while block := src.read(BLOCK):
                    csv_digest.update(block)
                    counter.feed(block)
                    size += len(block)
                    gz.write(block)
        after = csv_path.stat()
        if (after.st_size, after.st_mtime_ns, after.st_ino) != (before.st_size, before.st_mtime_ns, before.st_ino) \
                or after.st_size != size:
            raise ArchiveError(f"{csv_path}: the file changed while it was being archived; nothing was archived")
        gz_sha, csv_sha, gz_size = _decompress(gz_path)
        if (gz_sha, csv_sha, gz_size) != (out.digest.hexdigest(), csv_digest.hexdigest(), size):
            raise ArchiveError(
                f"{gz_path}: verification failed: the archive decompresses to sha256 {csv_sha} ({gz_size} bytes), "
                f"expected {csv_digest.hexdigest()} ({size} bytes); nothing was archived")
        data = Manifest(
            table=spec.name, archive=gz_path.name, csv_sha256=csv_sha, gz_sha256=gz_sha, rows=counter.rows(),
            bytes=size, spec=raw_spec, phase_history=list(history), report_ids=[str(r) for r in report_ids],
            created_at=now.isoformat().replace("+00:00", "Z"),
        ).as_dict()
        text = json.dumps(data, default=str, indent=2, ensure_ascii=False) + "\n"
        manifest = _manifest_from_dict(json.loads(text), manifest_path)  # exactly what read_manifest returns
        with atomic_write(manifest_path) as f:
            f.write(text.encode("utf-8"))
    except BaseException as exc:
        manifest_path.unlink(missing_ok=True)  # both names were free when we started: they are ours
        gz_path.unlink(missing_ok=True)
        if isinstance(exc, (OSError, EOFError, zlib.error)):
            raise ArchiveError(f"{csv_path}: cannot archive to {gz_path}: {exc}; nothing was archived") from None
        raise
    return manifest_path, manifest


def latest_manifest(archive_dir: Path, table: str) -> Path | None:
    """The newest ``<table>-<stamp>[-n].manifest.json`` in ``archive_dir`` (by its name's time stamp)."""
    pattern = re.compile(rf"^{re.escape(table)}-(\d{{8}}T\d{{6}}Z)(?:-(\d+))?\.manifest\.json$")
    best: tuple[tuple[str, int], Path] | None = None
    try:
        entries = list(Path(archive_dir).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return None
    for path in entries:
        m = pattern.match(path.name)
        if m and path.is_file():
            key = (m.group(1), int(m.group(2) or 0))
            if best is None or key > best[0]:
                best = (key, path)
    return best[1] if best else None


def read_manifest(path: Path) -> Manifest:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArchiveError(f"{path}: no such manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{path}: cannot read the manifest: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchiveError(f"{path}: the manifest is not valid JSON: {exc}") from None
    return _manifest_from_dict(data, path)


def restore_csv(manifest_path: Path, dest: Path) -> Manifest:
    """Decompress the manifest's archive over ``dest`` (atomically), after verifying both digests."""
    manifest_path, dest = Path(manifest_path), Path(dest)
    manifest = read_manifest(manifest_path)
    gz_path = manifest_path.parent / manifest.archive
    untouched = f"{dest} was left untouched"
    try:
        actual = _sha256_file(gz_path)
    except FileNotFoundError:
        raise ArchiveError(f"{gz_path}: the archive named by {manifest_path} is missing; {untouched}") from None
    except OSError as exc:
        raise ArchiveError(f"{gz_path}: cannot read the archive: {exc}; {untouched}") from None
    if actual != manifest.gz_sha256:
        raise ArchiveError(f"{gz_path}: the archive is corrupt: its sha256 is {actual} but {manifest_path} "
                           f"records {manifest.gz_sha256}; {untouched}")
    try:
        with atomic_write(dest) as out:
            gz_sha, csv_sha, size = _decompress(gz_path, out.write)
            if gz_sha != manifest.gz_sha256:
                raise ArchiveError(f"{gz_path}: the archive changed while it was restored: sha256 {gz_sha}, "
                                   f"expected {manifest.gz_sha256}; {untouched}")
            if csv_sha != manifest.csv_sha256 or size != manifest.bytes:
                raise ArchiveError(
                    f"{gz_path}: the restored CSV does not match {manifest_path}: sha256 {csv_sha} ({size} bytes), "
                    f"expected {manifest.csv_sha256} ({manifest.bytes} bytes); {untouched}")
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ArchiveError(f"{gz_path}: cannot restore to {dest}: {exc}; {untouched}") from None
    return manifest


def upload_target(settings: Settings) -> tuple[str, str] | None:
    """(url, key) to upload archives with, None when the upload is not configured, or ArchiveError
    when it is half configured — so a deprecation can refuse before it starts."""
    url = (settings.supabase_url or "").strip()
    key = ""
    for secret in (settings.supabase_service_role_key, settings.supabase_anon_key):
        if secret is not None and secret.get_secret_value().strip():
            key = secret.get_secret_value().strip()
            break
    if not url and not key:
        return None
    if not key:
        raise ArchiveError("SUPABASE_URL is set but no Supabase key is: set SUPABASE_SERVICE_ROLE_KEY "
                           "(or SUPABASE_ANON_KEY) to upload archives, or unset SUPABASE_URL to skip the upload")
    if not url:
        raise ArchiveError("a Supabase key is set but SUPABASE_URL is not: set SUPABASE_URL "
                           "(https://<project-ref>.supabase.co) to upload archives, or unset the key to skip the upload")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:  # the value is not echoed: a key pasted into the wrong variable must not leak
        raise ArchiveError("SUPABASE_URL is not a valid http(s) URL; expected https://<project-ref>.supabase.co")

    return url, key


def upload(archive_path: Path, manifest_path: Path, settings: Settings, *,
           bucket: str = "cutover-archive") -> list[str] | None:
    """Upload the archive, then its manifest, to Supabase Storage as ``<table>/<file name>`` (upsert:
    archive names are unique, so a retry after a partial upload succeeds). Returns the object paths,
    or None when neither SUPABASE_URL nor a key is configured. The bucket must exist."""
    archive_path, manifest_path = Path(archive_path), Path(manifest_path)
    target = upload_target(settings)
    if target is None:
        return None
    url, key = target
    parts = urlsplit(url)

    manifest = read_manifest(manifest_path)
    if archive_path.name != manifest.archive:
        raise ArchiveError(f"{manifest_path} describes {manifest.archive}, not {archive_path.name}")
    for path in (archive_path, manifest_path):
        if not path.is_file():
            raise ArchiveError(f"{path}: no such file; nothing was uploaded")

    import httpx
    from supabase import ClientOptions, create_client

    secrets = (*settings.secrets, key)
    host = parts.hostname
    objects = [(archive_path, f"{manifest.table}/{archive_path.name}", "application/gzip"),
               (manifest_path, f"{manifest.table}/{manifest_path.name}", "application/json")]
    done: list[str] = []
    # no redirects: httpx would forward the apikey header to wherever a redirect points
    http = httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=False)
    try:
        client = create_client(url, key, options=ClientOptions(httpx_client=http, auto_refresh_token=False,
                                                               persist_session=False))
        files = client.storage.from_(bucket)
        for path, name, content_type in objects:
            with open(path, "rb") as f:
                files.upload(name, f, file_options={"content-type": content_type, "upsert": "true"})
            done.append(name)
    except Exception as exc:
        where = f"{archive_path.name if not done else manifest_path.name} to bucket {bucket!r} on {host}"
        detail = scrub(f"{type(exc).__name__}: {exc}", secrets)
        uploaded = f" (already uploaded: {', '.join(done)})" if done else ""
        raise ArchiveError(scrub(f"upload of {where} failed: {detail}{uploaded}", secrets)) from None
    finally:
        http.close()
    return done
