"""Batches written to one table by COPY, each batch in its own format: binary (``cutover.copy_binary``), or
CSV text when the binary kernel did not read one of its values.

Contract: ``CopyRuns(cursor, statement)`` is a context manager; ``write(data, binary=...)`` sends one batch's
data, opening a COPY (``statement(binary)``) for each run of batches of one format and closing the one
before. A binary COPY gets its signature and trailer here. On an exception the open COPY is failed (the
server then aborts the statement, and the caller's transaction undoes the rest). The statements share the
caller's transaction: a ``COPY ... FREEZE`` stays allowed in each, as the table was emptied in it.
Concurrency: one thread, as the cursor's connection.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import psycopg
from psycopg import sql

from cutover import copy_binary

CHUNK = 1 << 20  # bytes handed to the driver at a time: it copies each into its own buffer


class CopyRuns:
    def __init__(self, cursor: psycopg.Cursor, statement: Callable[[bool], sql.Composable]) -> None:
        self._cursor, self._statement = cursor, statement
        self._open: ExitStack | None = None
        self._copy: psycopg.Copy | None = None
        self._binary = False

    def __enter__(self) -> CopyRuns:
        return self

    def write(self, data: bytes | memoryview, *, binary: bool) -> None:
        if self._copy is None or binary != self._binary:
            self._close()
            self._open = ExitStack()
            self._copy = self._open.enter_context(self._cursor.copy(self._statement(binary)))
            self._binary = binary
            if binary:
                self._copy.write(copy_binary.SIGNATURE)
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            self._copy.write(view[i:i + CHUNK])

    def _close(self) -> None:
        if self._copy is not None:
            if self._binary:
                self._copy.write(copy_binary.TRAILER)
            self._open.close()
            self._open = self._copy = None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            self._close()
        elif self._open is not None:
            self._open.__exit__(kind, exc, tb)  # the COPY fails with the exception
        return False
