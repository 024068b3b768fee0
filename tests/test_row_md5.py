"""The C row digest kernel (``cutover.row_md5``) against its definition, ``cutover.digests``' polars
expressions: the same sums, untrusted buckets and counts for the same typed rows, whatever the values.
(``tests/test_digest_parity.py`` holds both against PostgreSQL's side.)"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cutover import digests, row_md5
from cutover.coerce import coerce
from cutover.spec import Column, Rls, TableSpec

SEP = digests.SEPARATOR


def _spec(extra_nullable: int = 0, key: str = "id") -> TableSpec:
    return TableSpec(name="things", primary_key=key, rls=Rls(owner_column=None), columns=(
        Column(name="id", type="uuid", nullable=False), Column(name="at", type="timestamptz"),
        Column(name="price", type="numeric", precision=12, scale=2),
        Column(name="wide", type="numeric", precision=50, scale=3), Column(name="note", type="text"),
        Column(name="code", type="text", nullable=False),
        *(Column(name=f"x{i}", type="text") for i in range(extra_nullable))))


def _both(typed: pl.DataFrame, spec: TableSpec, *, separator_free: bool) -> digests.Sums:
    sums = {}
    for kernel in (True, False):
        into = digests.Sums.empty()
        assert digests.source_sums(typed, spec, into, separator_free=separator_free, kernel=kernel)
        sums[kernel] = into
    for field in ("rows", "x0", "x1", "untrusted"):
        assert np.array_equal(getattr(sums[True], field), getattr(sums[False], field)), field
    return sums[True]


def test_the_kernel_is_built():
    # `make setup` compiles it (cutover/_row_md5.c); without it digests keep polars' slower expressions
    assert row_md5.available(), "the C kernel cutover._row_md5 was not built: is a C compiler installed?"


text = st.text(alphabet=st.sampled_from(["a", "Z", ",", "-", " ", "é", "日", "\n", '"', SEP]), max_size=30)
timestamp = st.one_of(
    st.none(),
    st.builds(lambda y, mo, d, sep, h, frac, off: f"{y}-{mo:02d}-{d:02d}{sep}{h:02d}:07:09{frac}{off}",
              st.integers(1000, 8999), st.integers(1, 12), st.integers(1, 28), st.sampled_from(["T", " "]),
              st.integers(0, 23), st.one_of(st.just(""), st.from_regex(r"\A\.[0-9]{1,6}\Z")),
              st.sampled_from(["Z", "+00:00", "-05:30", "+14:00", "-00:45"])),
    st.builds(lambda y, mo, d, h: f"{y:04d}-{mo:02d}-{d:02d} {h:02d}:30-07", st.integers(0, 9999), st.integers(1, 12),
              st.sampled_from([1, 28, 29, 30, 31]), st.integers(0, 23)))  # the general rule; some dates impossible
price = st.one_of(st.none(), st.from_regex(r"\A[+-]?(0{0,3}[0-9]{1,9}(\.[0-9]{0,2}0{0,3})?|\.[0-9]{1,2}0{0,2})\Z"))
row = st.fixed_dictionaries({"at": timestamp, "price": price, "wide": price,
                             "note": st.one_of(st.none(), text), "code": text})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(row, min_size=1, max_size=40), extra=st.sampled_from([0, 70]), key=st.sampled_from(["id", "code"]),
       instants=st.booleans())
def test_the_kernel_digests_as_polars(rows, extra, key, instants):
    spec = _spec(extra, key)  # a uuid key's bucket by its bytes, a text key's by its MD5
    raw = pl.DataFrame({
        "id": [f"{i:08x}-0000-4000-8000-{i:012X}" for i in range(len(rows))],
        **{k: [r[k] for r in rows] for k in ("at", "price", "wide", "note", "code")},
        # 70 more nullable columns: two NULL bitmasks (62 flags each)
        **{f"x{i}": [None if (j + i) % 3 else f"v{i},{j}" for j in range(len(rows))] for i in range(extra)}},
        schema={c.name: pl.String for c in spec.columns})
    typed, _ = coerce(raw, spec, pl.Series(range(len(rows))), instants=instants)
    separator_free = not any(SEP in (r["note"] or "") + r["code"] for r in rows)
    for free in {separator_free, False}:
        _both(typed, spec, separator_free=free)


def test_a_separator_in_a_value_marks_its_bucket_untrusted():
    spec = _spec()
    raw = pl.DataFrame({"id": [f"{i}{i}{i}{i}0000-0000-4000-8000-000000000000" for i in range(3)],  # 3 buckets
                        "at": [None] * 3, "price": ["1", None, "2.5"], "wide": [None] * 3,
                        "note": [f"a{SEP}b", None, "c"], "code": ["x", f"{SEP}", "z"]},
                       schema={c.name: pl.String for c in spec.columns})
    typed, _ = coerce(raw, spec, pl.Series(range(3)))
    sums = _both(typed, spec, separator_free=False)
    assert sums.untrusted.sum() == 2 and sums.total == 3


def test_long_texts_many_rows_slices_and_chunks():
    # more rows than a tile, values longer than the kernel's first buffer, a frame that starts mid-array
    # and one of several chunks: Arrow offsets and views into several data buffers
    spec, n = _spec(), 1_000
    raw = pl.DataFrame({"id": [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(n)],
                        "at": ["2024-02-29T23:59:59.999999+01:00"] * n, "price": [str(i) for i in range(n)],
                        "wide": [None] * n,
                        "note": [("é," * (i * 97 % 300_000)) if i % 100 == 0 else None for i in range(n)],
                        "code": [f"c{i}" for i in range(n)]}, schema={c.name: pl.String for c in spec.columns})
    typed, _ = coerce(raw, spec, pl.Series(range(n)), instants=True)
    _both(typed, spec, separator_free=True)
    _both(typed.slice(333), spec, separator_free=False)
    chunked = pl.concat([typed.slice(0, 10), typed.slice(10, 300), typed.slice(310)], rechunk=False)
    assert chunked.n_chunks() > 1
    assert _both(chunked, spec, separator_free=True).total == n


def test_a_timestamp_the_kernel_does_not_read_falls_back_to_polars():
    spec = _spec()
    # typed as by hand: seven decimals, which polars reads and the loader never writes
    typed = pl.DataFrame({"id": ["00000000-0000-4000-8000-000000000001", "11110000-0000-4000-8000-000000000000"],
                          "at": ["2024-02-29T23:59:59.1234567+01:00", "1999-12-31 23:59:59Z"], "price": ["1.00", None],
                          "wide": [None, "2.000"], "note": ["a", None], "code": ["b", "c"]})
    layout = row_md5.Layout(kinds=(row_md5.TIMESTAMPS,), scales=(0,), wholes=(0,), mask_slots=((0, 0),), n_masks=1,
                            key_column=0, uuid_key=False, bucket_bits=12)
    assert row_md5.digest(typed.select("at"), layout, check_separators=False) is None
    assert _both(typed, spec, separator_free=True).total == 2
    assert row_md5.digest(typed.slice(1).select("at"), layout, check_separators=False) is not None


def test_integers_are_written_in_decimal_exactly():
    # every digit count and both ends of int64, each row's text its one field: its MD5 is hashlib's
    import hashlib

    edges = [0, -1, 2**63 - 1, -(2**63)] + [s * (10**k + d) for k in range(19) for d in (-1, 0, 1) for s in (1, -1)]
    values = pl.DataFrame({"v": edges}, schema={"v": pl.Int64})
    layout = row_md5.Layout(kinds=(row_md5.AS_IS,), scales=(0,), wholes=(0,), mask_slots=((-1, 0),), n_masks=0,
                            key_column=0, uuid_key=False, bucket_bits=12)
    found = row_md5.digest(values, layout, check_separators=True)
    expected = [hashlib.md5(str(v).encode()).digest() for v in edges]
    assert [int.from_bytes(e[:8], "big") for e in expected] == found.x0.tolist()
    assert [int.from_bytes(e[8:], "big") for e in expected] == found.x1.tolist()
    assert [int.from_bytes(e[:2], "big") >> 4 for e in expected] == found.bucket.tolist()  # the key's own MD5
    assert not found.untrusted.any()


def test_the_kernel_refuses_a_column_it_cannot_write():
    frame = pl.DataFrame({"a": ["x", "y"], "b": [1.5, 2.5]})
    layout = row_md5.Layout(kinds=(row_md5.AS_IS,) * 2, scales=(0, 0), wholes=(0, 0), mask_slots=((-1, 0),) * 2,
                            n_masks=0, key_column=0, uuid_key=False, bucket_bits=12)
    with pytest.raises(row_md5.KernelError, match="layout"):
        row_md5.digest(frame, layout, check_separators=False)
    with pytest.raises(row_md5.KernelError, match="1 fields for a layout of 2"):
        row_md5.digest(frame.select("a"), layout, check_separators=False)


def test_without_the_kernel_digests_keep_polars(monkeypatch):
    spec = _spec()
    raw = pl.DataFrame({"id": ["00000000-0000-4000-8000-000000000001"], "at": [None], "price": ["3"],
                        "wide": [None], "note": ["n"], "code": ["c"]}, schema={c.name: pl.String for c in spec.columns})
    typed, _ = coerce(raw, spec, pl.Series([0]))
    with_kernel = digests.Sums.empty()
    digests.source_sums(typed, spec, with_kernel)
    monkeypatch.setattr(row_md5, "available", lambda: False)
    monkeypatch.setattr(row_md5, "digest", None)  # never called
    without = digests.Sums.empty()
    digests.source_sums(typed, spec, without)
    assert with_kernel.totals() == without.totals()


def _uuid_text(i: int, case: int) -> str:
    canonical = f"{i:08x}-0000-4000-8000-{(i * 7919) % 16**12:012x}"
    return (canonical, canonical.upper(), canonical[:9] + canonical[9:].upper())[case]


# values the loader rejects by their shape alone (a uuid's made from a valid one): each must make the kernel
# refuse its batch
UUID_FLAWS = (lambda u: u[:-1], lambda u: u + "0", lambda u: u.replace("-", "", 1) + "0", lambda u: "g" + u[1:],
              lambda u: u[:8] + "a" + u[9:], lambda u: u[:30] + "G" + u[31:], lambda u: u[:-1] + "\u00e9")
FLAWS = ([(column, flaw) for column in ("id", "ref") for flaw in UUID_FLAWS]
         + [("price", lambda _, v=v: v) for v in ("12345678901", "-12345678901.5", "1.001", "abc", ".", "1e3", "++1",
                                                 "1.2.3", " 1")]
         + [("whole", lambda _, v=v: v) for v in ("1.5", "00.1x", "0.0001", "-1")])


@st.composite
def _loose_batch(draw) -> dict[str, list[str | None]]:
    """Valid values of every case and NULLs, and at most one value of a shape the loader rejects (``FLAWS``).
    Drawn whole, in one strategy: per-value draws from the test would be checked one by one."""
    n = draw(st.integers(1, 30))
    case = st.integers(0, 2)
    rows = {
        "id": [_uuid_text(i, c) for i, c in enumerate(draw(st.lists(case, min_size=n, max_size=n)))],
        "ref": [None if c is None else _uuid_text(10**6 + i, c)
                for i, c in enumerate(draw(st.lists(st.one_of(st.none(), case), min_size=n, max_size=n)))],
        "price": draw(st.lists(st.one_of(st.none(), price, st.sampled_from(
            ["1234567890.99", "0001234567890", "1.000", "-0", "+.5", "5.", "00000000000000.10"])),
            min_size=n, max_size=n)),
        "whole": draw(st.lists(st.sampled_from([None, "0.5", "0", ".125", "00.1", "-0.000", "0.1230"]),
                               min_size=n, max_size=n)),
        "code": draw(st.lists(st.sampled_from(["a", "b,c", "d", None]), min_size=n, max_size=n)),  # None: a reject
    }
    flaw = draw(st.one_of(st.none(), st.tuples(st.integers(0, n - 1), st.sampled_from(FLAWS))))
    if flaw is not None:
        at, (column, make) = flaw
        rows[column][at] = make(_uuid_text(at, 0))
    return rows


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_loose_batch())
def test_shapes_left_to_the_kernel_are_checked_as_the_loader_checks_them(rows):
    """Typed without their uuids' and numerics' shapes checked (``coerce``'s ``unchecked_shapes``), rows
    digest as the loader's typed rows do when none would be rejected; the kernel refuses them otherwise."""
    spec = TableSpec(name="things", primary_key="id", rls=Rls(owner_column=None), columns=(
        Column(name="id", type="uuid", nullable=False), Column(name="ref", type="uuid"),
        Column(name="price", type="numeric", precision=12, scale=2),
        Column(name="whole", type="numeric", precision=3, scale=3), Column(name="code", type="text", nullable=False)))
    n = len(rows["id"])
    raw = pl.DataFrame(rows, schema={c.name: pl.String for c in spec.columns})
    lines = pl.Series(range(n))
    typed, rejects = coerce(raw, spec, lines)
    loose, loose_rejects = coerce(raw, spec, lines, unchecked_shapes=True)
    # the rows it rejects, it rejects for the same first reason
    assert loose_rejects.join(rejects, on=loose_rejects.columns, how="anti", nulls_equal=True).height == 0
    expected = digests.Sums.empty()
    assert digests.source_sums(typed, spec, expected, kernel=False)
    found = digests.Sums.empty()
    folded = digests.source_sums(loose, spec, found, unchecked=True)
    if loose_rejects.height < rejects.height:  # a row only a uuid's or numeric's shape rejects
        assert not folded
    else:
        assert folded and found.totals() == expected.totals()
        assert np.array_equal(found.x0, expected.x0) and np.array_equal(found.rows, expected.rows)


@pytest.mark.parametrize("flaw", range(len(FLAWS)))
def test_each_shape_the_loader_rejects_makes_the_kernel_refuse(flaw):
    column, make = FLAWS[flaw]
    spec = TableSpec(name="things", primary_key="id", rls=Rls(owner_column=None), columns=(
        Column(name="id", type="uuid", nullable=False), Column(name="ref", type="uuid"),
        Column(name="price", type="numeric", precision=12, scale=2),
        Column(name="whole", type="numeric", precision=3, scale=3), Column(name="code", type="text", nullable=False)))
    rows = {"id": [_uuid_text(i, i % 3) for i in range(5)], "ref": [_uuid_text(9 + i, 1) for i in range(5)],
            "price": ["1234567890.99"] * 5, "whole": ["0.999"] * 5, "code": ["c"] * 5}
    rows[column][2] = make(rows[column][2])
    raw = pl.DataFrame(rows, schema={c.name: pl.String for c in spec.columns})
    assert coerce(raw, spec, pl.Series(range(5)))[1]["line"].to_list() == [2]
    loose, loose_rejects = coerce(raw, spec, pl.Series(range(5)), unchecked_shapes=True)
    assert loose.height == 5 and loose_rejects.height == 0
    assert not digests.source_sums(loose, spec, digests.Sums.empty(), unchecked=True)
    assert digests.source_sums(loose.filter(pl.col("_line") != 2), spec, digests.Sums.empty(), unchecked=True)
