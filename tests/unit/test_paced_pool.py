"""PacedPool: results in order, errors raised, and the thread count follows what the work costs."""

from __future__ import annotations

import threading
import time

import pytest

from vaultk8s.store.paced import SLICE, STRETCH, PacedPool


def test_results_keep_item_order_across_stretches() -> None:
    items = list(range(STRETCH + 5 * SLICE))
    with PacedPool(4) as pool:
        assert pool.map(lambda n: n * n, items) == [n * n for n in items]
        assert len(pool.last_threads) == 2


def test_a_small_run_stays_on_one_thread_untimed() -> None:
    with PacedPool(4) as pool:
        assert pool.map(str, range(SLICE)) == [str(n) for n in range(SLICE)]
        assert pool.last_threads == [1]
        assert pool.map(str, []) == [] and pool.last_threads == []


def test_work_that_waits_goes_to_the_pool() -> None:
    # Sleeping releases the GIL, as kernel time for new inodes does. 20 ms an item puts the pool's
    # slice (2 rounds) 120 ms under the thread's (8 items): with 5 ms, a loaded machine's late
    # wake-ups once ate the 27 ms margin (a full-suite run).
    def wait(n: int) -> int:
        time.sleep(0.02)
        return n

    with PacedPool(4) as pool:
        assert pool.map(wait, range(4 * SLICE)) == list(range(4 * SLICE))
        assert pool.last_threads == [4]


def test_work_that_slows_down_together_stays_on_one_thread() -> None:
    # As files on tmpfs do: each item gets slower the more threads run at once (there, GIL
    # hand-offs), so the pool finishes its slice later than one thread does.
    active, lock = [0], threading.Lock()

    def contend(n: int) -> int:
        with lock:
            active[0] += 1
            together = active[0]
        time.sleep(0.002 * together ** 2)
        with lock:
            active[0] -= 1
        return n

    with PacedPool(4) as pool:
        assert pool.map(contend, range(4 * SLICE)) == list(range(4 * SLICE))
        assert pool.last_threads == [1]


@pytest.mark.parametrize("bad", [0, 3 * SLICE + 2, 4 * SLICE - 1])  # head, thread slice, pool slice
def test_an_error_from_any_part_of_a_stretch_is_raised(bad: int) -> None:
    def fail_on(n: int) -> int:
        if n == bad:
            raise ValueError(f"item {n}")
        return n

    with PacedPool(4) as pool, pytest.raises(ValueError, match=f"item {bad}"):
        pool.map(fail_on, range(4 * SLICE))
