"""Great Expectations suites derived from table specs, in GX 1.x's JSON form.

``expectations/<table>.json`` is what validation runs, and is reviewed in pull requests like any
code. ``suite_for`` derives it from the spec (columns and their order, types, nullability, key
uniqueness, enum sets, lengths, the spec's business rules and foreign keys), so regenerating it
(``cutover suites --write``) after a spec change is one command; expectations added to the file
by hand are kept and run too (``merge_suite``). Pure data: nothing here imports GX or touches a
database. The same suite runs on the source (the CSV typed by the loader, staged in PostgreSQL)
and on the target table, so every check is pushed down to SQL.

SQL expectations (``unexpected_rows_expectation``) name parent tables by their target name
(``public.<parent>``): on the source side a child row is checked against the mirror of its parent,
which is exactly what the loader requires of it.
"""

from __future__ import annotations

import json
from pathlib import Path

from cutover.spec import Column, Rule, TableSpec

GENERATED = "cutover.spec"  # meta.source of expectations derived from the spec


def _gx_type(col: Column) -> str:
    # The names GX's SQL backend reports for PostgreSQL's types (SQLAlchemy's rendering).
    if col.type == "numeric":
        return f"NUMERIC({col.precision}, {col.scale})"
    return {"uuid": "UUID", "text": "TEXT", "timestamptz": "TIMESTAMP WITH TIME ZONE"}[col.type]


def _expect(kind: str, rule: str, **kwargs) -> dict:
    return {"type": kind, "kwargs": kwargs, "meta": {"source": GENERATED, "rule": rule}}


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _column_expectations(spec: TableSpec, col: Column) -> list[dict]:
    out = [_expect("expect_column_values_to_be_of_type", f"{col.name} is {col.sql_type}",
                   column=col.name, type_=_gx_type(col))]
    if not col.nullable:
        out.append(_expect("expect_column_values_to_not_be_null", f"{col.name} is never NULL", column=col.name))
    if col.name == spec.primary_key:
        out.append(_expect("expect_column_values_to_be_unique", f"{col.name} is unique (primary key)",
                           column=col.name))
    if col.enum:
        out.append(_expect("expect_column_values_to_be_in_set", f"{col.name} is one of {', '.join(col.enum)}",
                           column=col.name, value_set=list(col.enum)))
    if col.length is not None:
        out.append(_expect("expect_column_value_lengths_to_equal", f"{col.name} has {col.length} characters",
                           column=col.name, value=col.length))
    if col.references:
        parent, key = col.references
        out.append(_expect(
            "unexpected_rows_expectation", f"every {col.name} is a {parent}.{key}",
            unexpected_rows_query=(
                # {batch} becomes "(…) AS alias": wrap it to name the rows for the correlation.
                f"select * from (select * from {{batch}}) c where c.{col.name} is not null and not exists"
                f" (select 1 from public.{parent} p where p.{key} = c.{col.name})"),
            description=f"every {spec.name}.{col.name} is present in {parent}.{key}"))
    return out


def _rule_expectation(rule: Rule) -> dict:
    c = rule.column
    if rule.pattern is not None:
        return _expect("expect_column_values_to_match_regex", f"{c} matches {rule.pattern}",
                       column=c, regex=rule.pattern)
    if rule.min is not None:
        return _expect("expect_column_values_to_be_between", f"{c} >= {rule.min:g}", column=c, min_value=rule.min)
    if rule.not_before is not None:
        return _expect("expect_column_pair_values_a_to_be_greater_than_b", f"{c} >= {rule.not_before}",
                       column_A=c, column_B=rule.not_before, or_equal=True)
    other, values = rule.set_iff
    listed = ", ".join(_sql_literal(v) for v in values)
    return _expect(
        "unexpected_rows_expectation", f"{c} is set iff {other} is one of {', '.join(values)}",
        unexpected_rows_query=(
            f"select * from {{batch}} where ({c} is not null) <> coalesce({other} in ({listed}), false)"),
        description=f"{c} is set exactly when {other} is one of {', '.join(values)}")


def suite_for(spec: TableSpec) -> dict:
    """The spec's suite in GX's JSON form (``ExpectationSuite(**suite)`` builds it)."""
    expectations = [_expect("expect_table_columns_to_match_ordered_list", "columns as in the spec",
                            column_list=list(spec.column_names))]
    for col in spec.columns:
        expectations += _column_expectations(spec, col)
    expectations += [_rule_expectation(r) for r in spec.rules]
    return {"name": spec.name, "expectations": expectations,
            "meta": {"generated_from": f"data/specs/{spec.name}.yaml",
                     "note": "Regenerate with `cutover suites --write`; hand-written expectations are kept."}}


def merge_suite(generated: dict, existing: dict | None) -> dict:
    """The generated suite plus the expectations someone added to the file by hand."""
    if not existing:
        return generated
    manual = [e for e in existing.get("expectations", []) if (e.get("meta") or {}).get("source") != GENERATED]
    return {**generated, "expectations": generated["expectations"] + manual}


def suite_path(directory: Path, table: str) -> Path:
    return Path(directory) / f"{table}.json"


def load_suite(directory: Path, table: str) -> dict:
    path = suite_path(directory, table)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no expectation suite for {table}; run `cutover suites --write`") from None


def render(suite: dict) -> str:
    return json.dumps(suite, indent=2, ensure_ascii=False) + "\n"


def stale_suites(specs: dict[str, TableSpec], directory: Path) -> list[str]:
    """Tables whose suite file lacks (or changed) an expectation the spec implies."""
    stale = []
    for name, spec in specs.items():
        path = suite_path(directory, name)
        existing = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        if existing is None or render(merge_suite(suite_for(spec), existing)) != render(existing):
            stale.append(name)
    return stale
