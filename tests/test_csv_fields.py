"""The C field splitter (``cutover.csv_fields``) against polars' ``read_csv``: the same values, NULLs and
empty strings, for any records of well-placed quotes; None, for polars to judge, for any others."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from cutover import csv_fields, csvscan
from cutover.errors import StructuralError
from tests.conftest import CORPUS


def test_the_kernel_is_built():
    assert csv_fields.available(), "cutover._csv_fields was not built: is a C compiler installed?"


def _same(buf: bytes, columns: int) -> None:
    idx = csvscan.index_records(buf, 1, Path("f.csv"))
    good = ~idx.blank & (idx.fields == columns)
    names = [f"c{i}" for i in range(columns)]
    split = csv_fields.split(buf, idx.starts[good], idx.ends[good], names)
    kept = b"".join(buf[a:b] + (b"" if buf[b - 1:b] == b"\n" else b"\n")
                    for a, b in zip(idx.starts[good], idx.stops[good]))
    if not kept:
        assert split is not None and split.height == 0
        return
    polars = pl.read_csv(io.BytesIO(kept), has_header=False, new_columns=names,
                         schema={n: pl.String for n in names}, quote_char='"')
    assert split is not None and split.equals(polars, null_equal=True), (buf, split, polars)


def _texts(*pieces: str, most: int):
    return st.lists(st.sampled_from(pieces), max_size=most).map("".join)


FIELD = st.one_of(
    _texts("a", "é", "日", " ", "x" * 13, most=4),  # as written (maybe empty: NULL)
    st.builds(lambda t: '"' + t.replace('"', '""') + '"',  # quoted: commas, quotes, line breaks inside
              _texts("a", ",", '"', "\n", "\r\n", "\r", "é", "y" * 12, most=5)))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5).flatmap(lambda n: st.tuples(st.just(n), st.lists(
    st.lists(FIELD, min_size=n, max_size=n), min_size=1, max_size=8))), st.sampled_from(["\n", "\r\n"]),
    st.booleans())
def test_records_split_as_polars_reads_them(case, ending, last_ending):
    columns, records = case
    text = ending.join(",".join(r) for r in records) + (ending if last_ending else "")
    buf = text.encode()
    _same(buf, columns)


def test_a_record_of_another_number_of_fields_or_an_open_quote_is_refused():
    buf = b'a,b,c\nd,e\n"f,g\n'
    names = ["x", "y", "z"]
    assert csv_fields.split(buf, np.array([6]), np.array([9]), names) is None  # two fields for three
    assert csv_fields.split(buf, np.array([0]), np.array([5]), names[:2]) is None  # three for two
    assert csv_fields.split(buf, np.array([10]), np.array([14]), ["x", "y"]) is None  # a quote not closed
    assert csv_fields.split(b'"a"b,c', np.array([0]), np.array([6]), ["x", "y"]) is None  # text after a quote


def test_nulls_and_empty_strings_and_long_values():
    buf = b',"",' + b'v' * 40 + b',"' + b'w""' * 10 + b'"\n'
    frame = csv_fields.split(buf, np.array([0]), np.array([len(buf) - 1]), ["a", "b", "c", "d"])
    assert frame.row(0) == (None, "", "v" * 40, 'w"' * 10)
    _same(buf, 4)


LOADABLE = sorted(name for name, case in json.loads((CORPUS / "manifest.json").read_text())["files"].items()
                  if case["expect"] != "error")


@pytest.mark.parametrize("name", LOADABLE)
def test_the_corpora_split_as_polars_reads_them(name):
    path = CORPUS / name
    data = path.read_bytes()
    first = data.index(b"\n") + 1 if b"\n" in data else len(data)
    columns = data[:first].count(b",") + 1
    body = data[first:]
    try:
        _same(body, columns)
    except StructuralError:  # a file the loader refuses as a whole: polars never reads it
        pass
