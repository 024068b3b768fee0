"""What a sync's outcome depends on, as values that can be stored and compared.

- ``file_sha256``: the CSV's exact bytes (runs, validation reports and the gate record it);
- ``basis``: everything else — the spec (types, rules) and, for a table with foreign keys, its
  parents' data_version (an approval whose lead is gone is rejected).
The same bytes under the same basis load to the same rows, rejects and reasons.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import psycopg

from cutover import state
from cutover.spec import TableSpec


def file_sha256(path: Path) -> str:
    """Streamed, in 1 MiB reads: memory does not grow with the file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def basis(conn: psycopg.Connection, spec: TableSpec) -> str:
    """See the module docstring; read inside the transaction that relies on it."""
    parents = sorted((p, state.get_state(conn, p).data_version) for p in spec.parents)
    return hashlib.sha256(repr((dataclasses.replace(spec, source=None), parents)).encode()).hexdigest()
