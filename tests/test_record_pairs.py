"""The C pairing of a part's records (``cutover.record_pairs``) against numpy's sort
(``cutover.record_match._paired_by_sorting``): the same pairs, and the same refusals, for any records."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cutover import record_match, record_pairs


def test_the_kernel_is_built():
    assert record_pairs.available(), "cutover._record_pairs was not built: is a C compiler installed?"


def _same(base: np.ndarray, new: np.ndarray) -> None:
    kernel, numpy = record_pairs.pair(base, new), record_match._paired_by_sorting(base, new)
    assert (kernel is None) == (numpy is None)
    if kernel is not None:
        assert np.array_equal(kernel[0], numpy[0]) and np.array_equal(kernel[1], numpy[1])
        assert kernel[0].sum() == kernel[1].sum()


def _base(hashes: list[tuple[int, int]]) -> np.ndarray:
    h = np.array(hashes, dtype=np.uint64).reshape(-1, 2)
    at = np.arange(len(h), dtype=np.int64) * 10
    return record_match.base_rows(h[:, 0], h[:, 1], at, at + 10)


def _new(hashes: list[tuple[int, int]]) -> np.ndarray:
    base = _base(hashes)
    return record_match.new_rows(base["h1"], base["h2"], base["start"], base["stop"], np.arange(len(base)))


# few distinct hashes, so that records are often equal, or share one hash and not the other
HASHES = st.tuples(st.sampled_from([0, 1, 2**63, 2**64 - 1, 12345]), st.sampled_from([0, 7, 2**64 - 1]))


@settings(max_examples=400, deadline=None)
@given(st.lists(HASHES, max_size=12), st.lists(HASHES, max_size=12))
def test_any_records_pair_as_numpy_pairs_them(base, new):
    _same(_base(base), _new(new))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 3000), st.integers(0, 2**32))
def test_big_parts_pair_as_numpy_pairs_them(n_base, n_new, seed):
    rng = np.random.default_rng(seed)
    base = _base(rng.integers(0, 2**64, (n_base, 2), dtype=np.uint64).tolist())
    new = _new(base[["h1", "h2"]][rng.permutation(n_base)[: n_new // 2]].tolist()
               + rng.integers(0, 2**64, (n_new - min(n_new // 2, n_base), 2), dtype=np.uint64).tolist())
    new["h1"][::7] = base["h1"][0] if n_base else 0  # sharing a first hash, not the second
    _same(base, new)


def test_records_read_at_any_stride():
    rng = np.random.default_rng(5)
    base = _base(rng.integers(0, 2**64, (500, 2), dtype=np.uint64).tolist())
    new = _new(base[["h1", "h2"]].tolist())  # NEW records: 41 bytes apart, BASE 32
    _same(base, new)
    _same(base[::-1], new[::3])  # views: a negative stride, and one of three records
    assert record_pairs.pair(base[::-1], new[::3])[1].all()


def test_a_record_seen_twice_is_refused():
    base = _base([(1, 2), (3, 4)])
    assert record_pairs.pair(base, _new([(1, 2), (3, 4)]))[0].all()
    assert record_pairs.pair(base, _new([(3, 4), (1, 2), (3, 4)])) is None  # a baseline record twice in the new
    assert record_pairs.pair(_base([(1, 2), (5, 6), (1, 2)]), _new([])) is None  # twice in the baseline
    paired = record_pairs.pair(base, _new([(9, 9), (9, 9), (1, 4)]))  # equal new records, equal to no baseline one
    assert not paired[0].any() and not paired[1].any()


def test_empty_sides():
    for base, new in (([], []), ([(1, 1)], []), ([], [(1, 1)])):
        _same(_base(base), _new(new))


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "numpy"])
def test_match_part_gives_the_same_outcome_either_way(monkeypatch, kernel):
    if not kernel:
        monkeypatch.setattr(record_pairs, "available", lambda: False)
    rng = np.random.default_rng(11)
    base = _base(rng.integers(0, 2**64, (300, 2), dtype=np.uint64).tolist())
    new = _new(base[["h1", "h2"]].tolist()[:250] + [(5, 5), (5, 5)])
    new["start"] += 7
    new["ragged"][:3] = 1  # never a match, even to their baseline record
    new = new[rng.permutation(len(new))]
    outcome = record_match.match_part(base, new)
    assert (outcome.records, outcome.unchanged, len(outcome.changed), len(outcome.gone)) == (252, 247, 5, 53)
    assert (np.diff(outcome.changed["start"]) > 0).all() and (np.diff(outcome.gone["start"]) > 0).all()
