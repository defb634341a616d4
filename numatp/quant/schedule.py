"""How a parallel loop's threads share its items (a matrix's row groups): each thread
owns a contiguous run of them, as prange's static split would give it, and takes its
items in order through a counter of its own; a thread whose run is done takes the next
items of the others' runs. Threads whose runs cost the same do not wait for each other.

Why not prange alone: on a 16-core Xeon the threads of a static split finished one
matrix of a decode 20-30% of the region's time apart, and the region waits for the
last. Taking items one at a time from a shared counter removed that wait but mixed the
threads' streams: on a 2-core AMD host a decode's products ran 8-33% slower than with
the static split.
Runs with taking-over keep each thread's stream contiguous until its run is done.

An item is computed whole by whichever thread takes it, with the same code, so results
do not depend on which one does.

    runs = split(n_items)                   # before the parallel loop
    for t in prange(threads(runs)):
        while True:
            i = take(runs, t)
            if i < 0:
                break
            ... item i ...
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
# What a parallel loop itself calls for its thread count. numba.get_num_threads() inside
# jitted code goes through a ctypes pointer, which keeps every caller, the cached
# transformer step included, out of Numba's on-disk cache.
from numba.np.ufunc.parallel import _iget_num_threads

# int64s per thread's counter and run end: 128 bytes, so that no two threads' counters
# share a cache line (or the pair of lines the adjacent-line prefetcher fetches).
STRIDE = 16


def _pointer(context, builder, arrty, arr, index):
    ary = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [index])


@intrinsic
def fetch_add(typingctx, arr, index):
    """arr[index] += 1 atomically; returns the value before. Ordered both ways: a thread
    that sees another's increment also sees what that thread wrote before it."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, arr, args[0], args[1])
        return builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "acq_rel")

    return types.int64(arr, index), codegen


@intrinsic
def read_shared(typingctx, arr, index):
    """arr[index], read from memory every time (another thread may change it)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None

    def codegen(context, builder, sig, args):
        ptr = _pointer(context, builder, arr, args[0], args[1])
        return builder.load_atomic(ptr, "monotonic", 8)

    return types.int64(arr, index), codegen


@njit
def threads_for(n_items):
    """The threads a parallel loop over n_items items uses: all, or one per item."""
    return max(1, min(_iget_num_threads(), n_items))


@njit
def split(n_items):
    """The runs of n_items items among threads_for(n_items) threads (split_among)."""
    return split_among(n_items, threads_for(n_items))


@njit
def split_among(n_items, n_threads):
    """Each thread's run of items: thread t's counter at runs[t * STRIDE], starting at its
    first item, and the end of its run at runs[t * STRIDE + 1]."""
    runs = np.empty(n_threads * STRIDE, np.int64)
    for t in range(n_threads):
        runs[t * STRIDE] = t * n_items // n_threads
        runs[t * STRIDE + 1] = (t + 1) * n_items // n_threads
    return runs


@njit
def threads(runs):
    """How many threads `runs` is for: the parallel loop's length."""
    return runs.shape[0] // STRIDE


@njit
def take(runs, thread):
    """The next item for `thread` (its loop index): the next of its own run, or when that
    is done, the next of the first other run with items left; -1 when none are left."""
    n = threads(runs)
    t = np.int64(thread)  # a prange index may be unsigned
    for k in range(n):
        c = (t + k) % n * STRIDE
        end = runs[c + 1]
        if read_shared(runs, c) < end:
            i = fetch_add(runs, c)
            if i < end:
                return i
    return np.int64(-1)
