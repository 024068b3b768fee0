"""``cutover.pipeline``: every item once, at most ``workers`` at a time, errors raised to the consumer."""

from __future__ import annotations

import threading
import time

import pytest

from cutover.pipeline import as_done, in_order


class _Tracker:
    """A function of an item that sleeps its item's delay and records how many ran at once."""

    def __init__(self, delays: dict[int, float]):
        self.delays, self.running, self.most, self.finished = delays, 0, 0, []
        self.lock = threading.Lock()

    def __call__(self, item: int) -> int:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.delays.get(item, 0.0))
        if item < 0:
            with self.lock:
                self.running -= 1
            raise ValueError(f"item {item}")
        with self.lock:
            self.running -= 1
            self.finished.append(item)
        return item * 10


@pytest.mark.parametrize("runner", [in_order, as_done])
def test_every_item_once_and_never_more_than_workers_at_once(runner):
    fn = _Tracker({i: 0.002 * (i % 3) for i in range(40)})
    out = list(runner(fn, range(40), 3))
    assert sorted(out) == [i * 10 for i in range(40)] and 1 < fn.most <= 3
    if runner is in_order:
        assert out == [i * 10 for i in range(40)]


def test_as_done_yields_a_fast_item_before_a_slow_one_ahead_of_it():
    started = time.monotonic()
    results = as_done(_Tracker({0: 0.5}), range(6), 2)  # kept: closing it waits for the slow item
    first = next(results)
    assert first != 0 and time.monotonic() - started < 0.4
    assert sorted([first, *results]) == [0, 10, 20, 30, 40, 50]
    # in order, the consumer waits for the slow item
    assert next(in_order(_Tracker({0: 0.5}), range(6), 2)) == 0


@pytest.mark.parametrize("runner", [in_order, as_done])
def test_an_error_reaches_the_consumer_and_items_already_started_finish(runner):
    fn = _Tracker({-1: 0.0, 1: 0.2})
    with pytest.raises(ValueError, match="item -1"):
        list(runner(fn, [0, -1, 1, 2, 3, 4, 5], 2))
    assert fn.running == 0  # nothing still runs once the generator is closed
    assert 5 not in fn.finished  # nor did it run far past the error
