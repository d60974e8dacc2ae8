"""Per-node file work on as many threads as pay off on the disk underneath.

Which count is faster depends on the disk, and the disk is not asked: on tmpfs one thread beats
four (they only contend for the GIL, at twice the CPU); on ext4 four beat one (kernel time for new
inodes and fsync overlaps). So every stretch of items starts with two timed slices of like items,
one on the calling thread and one on the pool, and the faster does the rest of the stretch
(bench/README.md, sixth pass)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

SLICE = 8  # items per timed slice: ~4 ms on tmpfs, ~90 ms on a slow ext4
STRETCH = 256  # items per decision: a long run re-times as the disk's speed changes
POOL_MARGIN = 0.9  # the pool must be clearly faster: one thread costs half the CPU


class PacedPool:
    """A thread pool whose map runs each stretch on one thread or on all, whichever timed faster;
    `last_threads` keeps the last map's choice per stretch, for bootstrap's report."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.last_threads: list[int] = []
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="files")

    def __enter__(self) -> PacedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown()

    def map(self, fn: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
        """fn over items, results in item order. An exception from fn is raised once the items
        already handed to the pool finish, as with ThreadPoolExecutor.map. Work order differs from
        item order: a stretch's last items (its timed slices) run before the rest of it."""
        items = list(items)
        self.last_threads = []
        return [result for start in range(0, len(items), STRETCH)
                for result in self._stretch(fn, items[start:start + STRETCH])]

    def _stretch(self, fn: Callable[[Item], Result], items: list[Item]) -> list[Result]:
        if len(items) < 3 * SLICE:  # too few to time: a small cluster's files take milliseconds
            self.last_threads.append(1)
            return [fn(item) for item in items]
        # The slices come from the stretch's end: the first stretch starts with the control-plane
        # nodes, which hold more files than workers and would make one slice look slow.
        head, on_thread, on_pool = items[:-2 * SLICE], items[-2 * SLICE:-SLICE], items[-SLICE:]
        thread_results, thread_s = _timed(lambda: [fn(item) for item in on_thread])
        pool_results, pool_s = _timed(lambda: list(self._pool.map(fn, on_pool)))
        pooled = pool_s < POOL_MARGIN * thread_s
        self.last_threads.append(self.threads if pooled else 1)
        head_results = list(self._pool.map(fn, head)) if pooled else [fn(item) for item in head]
        return head_results + thread_results + pool_results


def _timed(run: Callable[[], list[Result]]) -> tuple[list[Result], float]:
    started = time.perf_counter()
    results = run()
    return results, time.perf_counter() - started
