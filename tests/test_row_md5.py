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


def _both(typed: pl.DataFrame, spec: TableSpec, *, separator_free: bool, count: str | None):
    sums = {}
    for kernel in (True, False):
        into = digests.Sums.empty()
        found = digests.source_sums(typed, spec, into, separator_free=separator_free, count=count, kernel=kernel)
        sums[kernel] = (into, found)
    (k, k_found), (p, p_found) = sums[True], sums[False]
    assert k_found == p_found
    for field in ("rows", "x0", "x1", "untrusted"):
        assert np.array_equal(getattr(k, field), getattr(p, field)), field
    return k, k_found


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
       instants=st.booleans(), count=st.sampled_from([None, ",", "-", SEP]))
def test_the_kernel_digests_as_polars(rows, extra, key, instants, count):
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
        _both(typed, spec, separator_free=free, count=count)


def test_a_separator_in_a_value_marks_its_bucket_untrusted():
    spec = _spec()
    raw = pl.DataFrame({"id": [f"{i}{i}{i}{i}0000-0000-4000-8000-000000000000" for i in range(3)],  # 3 buckets
                        "at": [None] * 3, "price": ["1", None, "2.5"], "wide": [None] * 3,
                        "note": [f"a{SEP}b", None, "c"], "code": ["x", f"{SEP}", "z"]},
                       schema={c.name: pl.String for c in spec.columns})
    typed, _ = coerce(raw, spec, pl.Series(range(3)))
    sums, _ = _both(typed, spec, separator_free=False, count=None)
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
    _both(typed, spec, separator_free=True, count=",")
    _both(typed.slice(333), spec, separator_free=False, count=",")
    chunked = pl.concat([typed.slice(0, 10), typed.slice(10, 300), typed.slice(310)], rechunk=False)
    assert chunked.n_chunks() > 1
    assert _both(chunked, spec, separator_free=True, count=",")[0].total == n


def test_a_timestamp_the_kernel_does_not_read_falls_back_to_polars():
    spec = _spec()
    # typed as by hand: seven decimals, which polars reads and the loader never writes
    typed = pl.DataFrame({"id": ["00000000-0000-4000-8000-000000000001", "11110000-0000-4000-8000-000000000000"],
                          "at": ["2024-02-29T23:59:59.1234567+01:00", "1999-12-31 23:59:59Z"], "price": ["1.00", None],
                          "wide": [None, "2.000"], "note": ["a", None], "code": ["b", "c"]})
    layout = row_md5.Layout(kinds=(row_md5.TIMESTAMPS,), scales=(0,), mask_slots=((0, 0),), n_masks=1, key_column=0,
                            uuid_key=False, bucket_bits=12)
    assert row_md5.digest(typed.select("at"), layout, check_separators=False) is None
    assert _both(typed, spec, separator_free=True, count=",")[0].total == 2
    assert row_md5.digest(typed.slice(1).select("at"), layout, check_separators=False) is not None


def test_integers_are_written_in_decimal_exactly():
    # every digit count and both ends of int64, each row's text its one field: its MD5 is hashlib's
    import hashlib

    edges = [0, -1, 2**63 - 1, -(2**63)] + [s * (10**k + d) for k in range(19) for d in (-1, 0, 1) for s in (1, -1)]
    values = pl.DataFrame({"v": edges}, schema={"v": pl.Int64})
    layout = row_md5.Layout(kinds=(row_md5.AS_IS,), scales=(0,), mask_slots=((-1, 0),), n_masks=0, key_column=0,
                            uuid_key=False, bucket_bits=12)
    found = row_md5.digest(values, layout, check_separators=True, count="-")
    expected = [hashlib.md5(str(v).encode()).digest() for v in edges]
    assert [int.from_bytes(e[:8], "big") for e in expected] == found.x0.tolist()
    assert [int.from_bytes(e[8:], "big") for e in expected] == found.x1.tolist()
    assert [int.from_bytes(e[:2], "big") >> 4 for e in expected] == found.bucket.tolist()  # the key's own MD5
    assert found.counted == sum(v < 0 for v in edges) and not found.untrusted.any()


def test_the_kernel_refuses_a_column_it_cannot_write():
    frame = pl.DataFrame({"a": ["x", "y"], "b": [1.5, 2.5]})
    layout = row_md5.Layout(kinds=(row_md5.AS_IS,) * 2, scales=(0, 0), mask_slots=((-1, 0),) * 2, n_masks=0,
                            key_column=0, uuid_key=False, bucket_bits=12)
    with pytest.raises(row_md5.KernelError, match="layout"):
        row_md5.digest(frame, layout, check_separators=False)
    with pytest.raises(row_md5.KernelError, match="1 fields for a layout of 2"):
        row_md5.digest(frame.select("a"), layout, check_separators=False)
    with pytest.raises(ValueError, match="one ASCII character"):
        row_md5.digest(frame.select("a", pl.col("a").alias("c")), layout, check_separators=False, count="é")


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
