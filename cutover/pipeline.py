"""Running a function over a file's batches on a few threads, results in file order or as they come.

Contract: ``in_order(fn, items, workers)`` yields ``fn(item)`` for each item, in order, computed by at
most ``workers`` threads that run at most ``workers`` items ahead of the consumer — so memory holds a
few batches' results, whatever the file's size, and the consumer (one thread) sees them as a stream.
The first exception raised by ``fn`` is raised to the consumer when it reaches that item; the items
already submitted finish before the generator closes. ``as_done`` is the same but yields each result
as soon as it is computed, for a consumer to whom order does not matter: no thread then waits for a
slower item ahead of its own.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def in_order(fn: Callable[[Item], Result], items: Iterable[Item], workers: int) -> Iterator[Result]:
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cutover-parse") as pool:
        ahead = iter(items)
        pending = deque(pool.submit(fn, item) for item in itertools.islice(ahead, max(1, workers)))
        while pending:
            done = pending.popleft().result()
            if (following := next(ahead, None)) is not None:
                pending.append(pool.submit(fn, following))
            yield done


def as_done(fn: Callable[[Item], Result], items: Iterable[Item], workers: int) -> Iterator[Result]:
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cutover-parse") as pool:
        ahead = iter(items)
        running = {pool.submit(fn, item) for item in itertools.islice(ahead, max(1, workers))}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:  # in no particular order: an exception surfaces with its item
                if (following := next(ahead, None)) is not None:
                    running.add(pool.submit(fn, following))
            for future in done:
                yield future.result()
