"""schedule.py: every item of a parallel loop is taken exactly once, a thread's own run
first and in order."""
import numba
import numpy as np
from numba import njit, prange

from numatp.quant.schedule import STRIDE, split, split_among, take, threads_for


def test_runs_cover_the_items_in_order():
    runs = split_among(10, 3)
    assert [(runs[t * STRIDE], runs[t * STRIDE + 1]) for t in range(3)] == [(0, 3), (3, 6), (6, 10)]


def test_a_thread_takes_its_own_run_then_the_others_in_turn():
    runs = split_among(10, 3)
    assert [take(runs, 1) for _ in range(3)] == [3, 4, 5]
    assert take(runs, 0) == 0
    # thread 1's run is done: it goes on with thread 2's, then thread 0's
    assert [take(runs, 1) for _ in range(6)] == [6, 7, 8, 9, 1, 2]
    assert take(runs, 0) == -1 and take(runs, 2) == -1


def test_fewer_items_than_threads():
    assert threads_for(0) == 1 and threads_for(1) == 1
    runs = split(1)
    assert take(runs, 0) == 0 and take(runs, 0) == -1
    runs = split(0)
    assert take(runs, 0) == -1


@njit(parallel=True)
def _take_all(n_items, n_threads, taken_by, order):
    runs = split_among(n_items, n_threads)
    for thread in prange(n_threads):
        k = 0
        while True:
            i = take(runs, thread)
            if i < 0:
                break
            taken_by[i] += thread + 1
            order[thread, k] = i
            k += 1


def test_in_a_parallel_loop_every_item_is_taken_once():
    n_threads = numba.get_num_threads()
    for n_items in (1, 7, 100, 1000, 12345):
        for threads in sorted({1, 2, n_threads, 2 * n_threads + 1}):
            taken_by = np.zeros(n_items, np.int64)
            order = np.full((threads, n_items), -1, np.int64)
            _take_all(n_items, threads, taken_by, order)
            items = np.concatenate([r[r >= 0] for r in order])
            assert np.array_equal(np.sort(items), np.arange(n_items))
            assert ((taken_by >= 1) & (taken_by <= threads)).all()
