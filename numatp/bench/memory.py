"""Memory bandwidth: the ceiling every decode figure is compared against.

Decode streams every weight once per token, so the best a kernel can do is the rate at
which a node's cores can read their local DRAM. This module measures that rate with Numba
kernels (so the ceiling is what Numba code can reach, not what hand-written C can), in the
STREAM convention: read counts 1 array, copy 2, triad 3, no credit for write-allocate.
"""
from numatp import _env  # noqa: F401  (before numba)

import time

import numba
import numpy as np
from numba import njit, prange

from numatp.errors import UsageError

GB = 1e9
DEFAULT_READ_BYTES = 1 << 30
# The read loop is a plain integer sum: LLVM's loop vectorizer turns it into several
# independent vector accumulators (interleaved), so the adds stay off the critical path
# and the loop is limited by loads alone. Integers rather than floats: the buffers hold
# arbitrary bytes, and float sums of them would hit NaN/denormal slow paths and need
# fastmath to be reassociated at all.
_MIN_WORDS = 32


@njit(cache=True, boundscheck=False)
def _sum_words(words):
    total = np.uint64(0)
    for i in range(words.size):  # 0-based: indices provably >= 0, so no wraparound check
        total += words[i]
    return total


@njit(parallel=True, cache=True, boundscheck=False)
def read_kernel(words, nchunks):
    """Sum of all words; one contiguous chunk per thread keeps each prefetcher on one stream."""
    n = words.size
    per = (n + nchunks - 1) // nchunks
    partial = np.zeros(nchunks, np.uint64)
    for c in prange(nchunks):
        lo = min(n, c * per)
        hi = min(n, lo + per)
        partial[c] = _sum_words(words[lo:hi])
    return partial.sum()


@njit(parallel=True, cache=True, boundscheck=False)
def copy_kernel(dst, src):
    for i in prange(src.size):
        dst[i] = src[i]


@njit(parallel=True, cache=True, boundscheck=False)
def triad_kernel(a, b, c, scalar):
    for i in prange(a.size):
        a[i] = b[i] + scalar * c[i]


def max_threads() -> int:
    """Threads Numba can use in this process (fixed when numba first starts its pool)."""
    return numba.config.NUMBA_NUM_THREADS


def _check_threads(threads: int):
    if not 1 <= threads <= max_threads():
        raise UsageError(f"threads must be between 1 and {max_threads()}, got {threads}")


def as_words(buf: np.ndarray) -> np.ndarray:
    """A byte buffer seen as uint64 words (the tail that does not fill a word is ignored)."""
    flat = buf.reshape(-1).view(np.uint8)
    usable = flat.size // 8 * 8
    return flat[:usable].view(np.uint64)


def time_read(words: np.ndarray, threads: int, repeats: int) -> list[float]:
    """GB/s of each of `repeats` timed passes of the read kernel over `words`, after one
    untimed pass (compilation, page faults, thread-pool start)."""
    _check_threads(threads)
    if repeats < 1:
        raise UsageError(f"repeats must be at least 1, got {repeats}")
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        read_kernel(words, threads)
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            read_kernel(words, threads)
            rates.append(words.nbytes / (time.perf_counter() - t0) / GB)
        return rates
    finally:
        numba.set_num_threads(previous)


def read_gbps(threads: int, nbytes: int | None = None, repeats: int = 5) -> float:
    """Best-of-repeats read bandwidth (GB/s) of the Numba read kernel with `threads`
    threads in this process, over a fresh buffer of `nbytes` (default 1 GiB)."""
    nbytes = DEFAULT_READ_BYTES if nbytes is None else int(nbytes)
    if nbytes < 8 * _MIN_WORDS:
        raise UsageError(f"read buffer must be at least {8 * _MIN_WORDS} bytes, got {nbytes}")
    words = np.ones(nbytes // 8, np.uint64)  # written once so every page is really there
    return max(time_read(words, threads, repeats))
