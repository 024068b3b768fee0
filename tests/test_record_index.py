"""The C record reader (``cutover.record_index``) against numpy's (``cutover.csvscan.index_records`` without it):
the same records, bounds, lines and field counts for any bytes whose quotes are well placed; for any others
it declines, and numpy's reader raises the error that names the line and column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cutover import csvscan, record_index
from cutover.errors import StructuralError
from tests.conftest import CORPUS

FIELDS = ("starts", "ends", "stops", "lines", "fields", "blank")


def _numpy_index(buf: bytes, first_line: int, count_fields: bool):
    with pytest.MonkeyPatch.context() as m:
        m.setattr(record_index, "bounds", lambda *a, **k: None)
        return csvscan.index_records(buf, first_line, Path("f.csv"), count_fields=count_fields)


def _same(buf: bytes, first_line: int = 2) -> None:
    for count_fields in (False, True):
        found = record_index.bounds(buf, first_line, count_fields=count_fields)
        if found is None:  # declined: numpy's reader must find the file wrong (or the bytes empty)
            if buf:
                with pytest.raises(StructuralError):
                    _numpy_index(buf, first_line, count_fields)
            continue
        kernel = csvscan.index_records(buf, first_line, Path("f.csv"), count_fields=count_fields)
        numpy = _numpy_index(buf, first_line, count_fields)
        for field in FIELDS:
            a, b = getattr(kernel, field), getattr(numpy, field)
            assert (a is None and b is None) or np.array_equal(a, b), (field, count_fields, buf)


def test_the_kernel_is_built():
    # `make setup` compiles it (cutover/_record_index.c); without it batches are indexed by numpy, ~3x slower
    assert record_index.available(), "cutover._record_index was not built: is a C compiler installed?"


record = st.lists(st.one_of(st.text(alphabet=st.sampled_from(["a", "é", "日", " ", "\r", ","]), max_size=12),
                            st.builds(lambda t: '"' + t.replace('"', '""') + '"',
                                      st.text(alphabet=st.sampled_from(["a", ",", "\n", "\r", '"', "é"]), max_size=12))),
                  min_size=1, max_size=5).map(",".join)
well_formed = st.builds(lambda records, ends, last: "".join(r + e for r, e in zip(records, ends)) + last,
                        st.lists(record, min_size=0, max_size=12), st.lists(st.sampled_from(["\n", "\r\n"]), min_size=12),
                        st.one_of(st.just(""), record))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=well_formed, first_line=st.integers(1, 10**9))
def test_well_formed_bytes_index_as_numpy_does(text, first_line):
    buf = text.encode()
    if buf:
        assert record_index.bounds(buf, first_line, count_fields=True) is not None
    _same(buf, first_line)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(alphabet=st.sampled_from(["a", ",", "\n", "\r", '"', "é", " "]), max_size=80))
def test_any_bytes_index_as_numpy_does_or_numpy_names_the_error(text):
    # quotes anywhere: misplaced ones, text after a closing quote, a quote left open at the end
    _same(text.encode())


@pytest.mark.parametrize("shift", range(9))
def test_every_byte_of_a_word_is_read(shift):
    # the kernel reads eight bytes at a time: a quote, line feed or comma in each position of a word
    body = 'id,"a,""b""\nc",x\r\n,,\n"",z\n"q\n",\r\nlast,"",end'
    _same(("a" * shift + "," + body).encode())
    _same((body * 7 + "\n").encode())


def test_misplaced_quotes_are_declined_and_named():
    for bad in (b'a,b"c\n', b'a,"b"c\n', b'"open\n', b'x,"y"\n"z"w\n'):
        assert record_index.bounds(bad, 1, count_fields=False) is None
        with pytest.raises(StructuralError, match=r"^f\.csv:\d+: "):  # file and line
            csvscan.index_records(bad, 1, Path("f.csv"))


# the manifest's files: a glob would also pick up the baselines syncs keep beside a CSV (``.leads.*.baseline.csv``)
@pytest.mark.parametrize("name", sorted(json.loads((CORPUS / "manifest.json").read_text())["files"]))
def test_the_corpora_index_as_numpy_does(name):
    data = (CORPUS / name).read_bytes()
    _same(data[data.find(b"\n") + 1:] if b"\n" in data else data)


def test_without_the_kernel_numpy_indexes(monkeypatch):
    monkeypatch.setattr(record_index, "_kernel", lambda: None)
    assert not record_index.available()
    assert record_index.bounds(b"a,b\n", 1, count_fields=True) is None
    idx = csvscan.index_records(b'a,"b\nc"\nd,e\n', 5, Path("f.csv"))
    assert idx.lines.tolist() == [5, 7] and idx.fields.tolist() == [2, 2]
