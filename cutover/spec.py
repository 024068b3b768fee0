"""Declarative table specs.

A spec (``data/specs/<table>.yaml``) is the single source of truth for one migrated table: the
column order of its CSV and exports, the PostgreSQL DDL, the loader's typing and reject rules, the
row-level-security policy and, downstream, the validation suites and parity. Everything here is
pure data: loading a spec does no I/O beyond reading its YAML file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml

ColumnType = Literal["uuid", "text", "timestamptz", "numeric"]
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
PROJECT_SPEC_DIR = Path(__file__).resolve().parent.parent / "data" / "specs"


class SpecError(ValueError):
    """A spec file is malformed or inconsistent."""


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = True
    enum: tuple[str, ...] | None = None
    length: int | None = None  # exact length in characters (text only)
    precision: int | None = None  # numeric only
    scale: int | None = None  # numeric only
    references: tuple[str, str] | None = None  # (table, column)

    @property
    def sql_type(self) -> str:
        if self.type == "numeric":
            return f"numeric({self.precision},{self.scale})"
        return self.type


@dataclass(frozen=True)
class Rls:
    """Who may read a row as ``authenticated``: its owner, or whoever may read its parent row."""

    owner_column: str | None = None
    via_parent: str | None = None  # a foreign-key column of this table


@dataclass(frozen=True)
class Rule:
    """A business rule on one column, checked by validation (not by the loader: the mirror must
    hold what the CSV holds, even a bad e-mail address). Exactly one of the conditions is set:

    - ``pattern``: a POSIX regular expression every non-NULL value matches;
    - ``min``: every non-NULL value is at least this;
    - ``not_before``: another column this one is never earlier than (both set);
    - ``set_iff``: (column, values): this column is non-NULL exactly when that column is in values.
    """

    column: str
    pattern: str | None = None
    min: float | None = None
    not_before: str | None = None
    set_iff: tuple[str, tuple[str, ...]] | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    primary_key: str
    columns: tuple[Column, ...]
    rls: Rls
    description: str = ""
    rules: tuple[Rule, ...] = ()
    source: Path | None = field(default=None, compare=False)

    @cached_property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def parents(self) -> tuple[str, ...]:
        """Tables this one references (must be loaded first)."""
        return tuple(sorted({c.references[0] for c in self.columns if c.references}))

    @property
    def foreign_keys(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.references)

    @property
    def qualified(self) -> str:
        return f"public.{self.name}"


def _column(raw: dict, table: str) -> Column:
    name = raw.get("name", "")
    where = f"{table}.{name or '?'}"
    if not _IDENT.match(name):
        raise SpecError(f"{where}: column name must be a lower-case SQL identifier")
    ctype = raw.get("type")
    if ctype not in ("uuid", "text", "timestamptz", "numeric"):
        raise SpecError(f"{where}: unsupported type {ctype!r}")
    unknown = set(raw) - {"name", "type", "nullable", "enum", "length", "precision", "scale", "references"}
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}")
    precision, scale = raw.get("precision"), raw.get("scale")
    if ctype == "numeric" and not (isinstance(precision, int) and isinstance(scale, int) and 0 <= scale <= precision):
        raise SpecError(f"{where}: numeric needs integer precision >= scale >= 0")
    enum = raw.get("enum")
    if enum is not None and (ctype != "text" or not enum or not all(isinstance(v, str) for v in enum)):
        raise SpecError(f"{where}: enum is a non-empty list of strings on a text column")
    refs = raw.get("references")
    if refs is not None:
        parts = str(refs).split(".")
        if len(parts) != 2 or not all(_IDENT.match(p) for p in parts):
            raise SpecError(f"{where}: references must be 'table.column'")
        refs = (parts[0], parts[1])
    return Column(
        name=name,
        type=ctype,
        nullable=bool(raw.get("nullable", True)),
        enum=tuple(enum) if enum else None,
        length=raw.get("length"),
        precision=precision,
        scale=scale,
        references=refs,
    )


def _rule(raw: dict, table: str, names: list[str]) -> Rule:
    where = f"{table}.rules[{raw.get('column', '?')}]"
    unknown = set(raw) - {"column", "pattern", "min", "not_before", "set_iff"}
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}")
    if raw.get("column") not in names:
        raise SpecError(f"{where}: 'column' must name a column")
    conditions = [k for k in ("pattern", "min", "not_before", "set_iff") if k in raw]
    if len(conditions) != 1:
        raise SpecError(f"{where}: exactly one of pattern, min, not_before, set_iff")
    set_iff = raw.get("set_iff")
    if set_iff is not None:
        if not (isinstance(set_iff, dict) and set_iff.get("column") in names and set_iff.get("in")
                and all(isinstance(v, str) for v in set_iff["in"])):
            raise SpecError(f"{where}: set_iff is {{column: <a column>, in: [values]}}")
        set_iff = (set_iff["column"], tuple(set_iff["in"]))
    if "not_before" in raw and raw["not_before"] not in names:
        raise SpecError(f"{where}: not_before must name a column")
    if "min" in raw and not isinstance(raw["min"], (int, float)):
        raise SpecError(f"{where}: min must be a number")
    if "pattern" in raw:
        try:
            re.compile(raw["pattern"])
        except (re.error, TypeError) as exc:
            raise SpecError(f"{where}: invalid pattern: {exc}") from None
    return Rule(column=raw["column"], pattern=raw.get("pattern"), min=raw.get("min"),
                not_before=raw.get("not_before"), set_iff=set_iff)


def parse_spec(raw: dict, source: Path | None = None) -> TableSpec:
    name = raw.get("table", "")
    if not _IDENT.match(name):
        raise SpecError(f"{source}: 'table' must be a lower-case SQL identifier")
    columns = tuple(_column(c, name) for c in raw.get("columns") or ())
    names = [c.name for c in columns]
    if not columns or len(set(names)) != len(names):
        raise SpecError(f"{name}: columns must be present and unique")
    pk = raw.get("primary_key")
    if pk not in names:
        raise SpecError(f"{name}: primary_key {pk!r} is not a column")
    if raw["columns"][names.index(pk)].get("nullable") is True:
        raise SpecError(f"{name}: the primary key cannot be nullable")
    rls_raw = raw.get("rls") or {}
    rls = Rls(owner_column=rls_raw.get("owner_column"), via_parent=rls_raw.get("via_parent"))
    if (rls.owner_column is None) == (rls.via_parent is None):
        raise SpecError(f"{name}: rls needs exactly one of owner_column or via_parent")
    if (rls.owner_column or rls.via_parent) not in names:
        raise SpecError(f"{name}: rls names an unknown column")
    if rls.via_parent and columns[names.index(rls.via_parent)].references is None:
        raise SpecError(f"{name}: rls.via_parent must be a column with 'references'")
    # The key is never NULL, whatever the YAML says.
    columns = tuple(Column(**{**c.__dict__, "nullable": False}) if c.name == pk else c for c in columns)
    rules = tuple(_rule(r, name, names) for r in raw.get("rules") or ())
    return TableSpec(name=name, primary_key=pk, columns=columns, rls=rls,
                     description=raw.get("description", ""), rules=rules, source=source)


def load_spec(path: Path) -> TableSpec:
    with open(path, encoding="utf-8") as f:
        return parse_spec(yaml.safe_load(f) or {}, source=path)


def load_specs(spec_dir: Path = PROJECT_SPEC_DIR) -> dict[str, TableSpec]:
    """All specs in ``spec_dir``, parents before children (the order to create and load them)."""
    specs = {s.name: s for s in (load_spec(p) for p in sorted(Path(spec_dir).glob("*.yaml")))}
    if not specs:
        raise SpecError(f"no table specs in {spec_dir}")
    for s in specs.values():
        for c in s.foreign_keys:
            parent = specs.get(c.references[0])
            if parent is None or c.references[1] != parent.primary_key:
                raise SpecError(f"{s.name}.{c.name}: references must name another spec's primary key")
    ordered: dict[str, TableSpec] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise SpecError(f"foreign keys form a cycle through {name}")
        visiting.add(name)
        for p in specs[name].parents:
            visit(p)
        ordered[name] = specs[name]

    for name in sorted(specs):
        visit(name)
    return ordered


def select_tables(specs: dict[str, TableSpec], wanted: list[str] | None) -> list[str]:
    """The tables named in ``wanted`` (all when empty), in load order (parents first)."""
    unknown = sorted(set(wanted or ()) - set(specs))
    if unknown:
        raise SpecError(f"unknown table(s): {', '.join(unknown)}; known: {', '.join(specs)}")
    return [name for name in specs if not wanted or name in wanted]
