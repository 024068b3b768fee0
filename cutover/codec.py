"""Rows as the application sees them (typed Python values) and as the CSV store holds them (text).

``decode`` gives the same types psycopg returns for the table (``UUID``, aware ``datetime``,
``Decimal``, ``str``, ``None``), so a repository returns identical rows whether it read the CSV or
the database. ``encode`` writes the loader's canonical text and refuses what the loader would
reject — never rounding a number, never guessing a time zone — so that what the application
writes to the CSV always loads. Pure functions.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from cutover.spec import Column, TableSpec

Row = dict[str, Any]
TextRow = dict[str, "str | None"]


class RowError(ValueError):
    """A row the table cannot hold; the message names the table, the key and the column."""


def _decode(col: Column, text: str | None) -> Any:
    if text is None:
        return None
    if col.type == "uuid":
        return uuid.UUID(text)
    if col.type == "timestamptz":
        value = datetime.fromisoformat(text)
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)  # no offset: UTC, as the loader
    if col.type == "numeric":
        return Decimal(text)
    return text


def decode(spec: TableSpec, row: TextRow) -> Row:
    return {c.name: _decode(c, row.get(c.name)) for c in spec.columns}


def _encode(col: Column, value: Any) -> str | None:
    if value is None:
        return None
    if col.type == "uuid":
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    if col.type == "timestamptz":
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            raise ValueError("a timestamp needs a time zone")
        return value.astimezone(timezone.utc).isoformat()
    if col.type == "numeric":
        if isinstance(value, float):
            raise TypeError("a float cannot hold an exact amount: pass a Decimal or a string")
        number = Decimal(str(value))
        if not number.is_finite():
            raise ValueError("not a finite number")
        if number.as_tuple().exponent < -col.scale and number != number.quantize(Decimal(1).scaleb(-col.scale)):
            raise ValueError(f"more than {col.scale} decimals (never rounded)")
        number = number.quantize(Decimal(1).scaleb(-col.scale))
        if len(number.as_tuple().digits) > col.precision:
            raise ValueError(f"does not fit numeric({col.precision},{col.scale})")
        return str(number)
    text = str(value) if not isinstance(value, str) else value
    if "\x00" in text:
        raise ValueError("text cannot contain NUL")
    if col.enum and text not in col.enum:
        raise ValueError(f"must be one of {', '.join(col.enum)}")
    if col.length is not None and len(text) != col.length:
        raise ValueError(f"must have exactly {col.length} characters")
    return text


def encode(spec: TableSpec, row: Row) -> TextRow:
    """The row as CSV text, checked against the spec (every column present, types, NOT NULL, rules)."""
    key = row.get(spec.primary_key)
    unknown = set(row) - set(spec.column_names)
    if unknown:
        raise RowError(f"{spec.name} row {key}: unknown columns {sorted(unknown)}")
    missing = [c for c in spec.column_names if c not in row]
    if missing:
        raise RowError(f"{spec.name} row {key}: missing columns {missing}")
    out: TextRow = {}
    for col in spec.columns:
        try:
            out[col.name] = _encode(col, row[col.name])
        except (TypeError, ValueError, InvalidOperation) as exc:
            raise RowError(f"{spec.name} row {key}, column {col.name}: {exc}") from None
        if out[col.name] is None and not col.nullable:
            raise RowError(f"{spec.name} row {key}, column {col.name}: may not be NULL")
    return out
