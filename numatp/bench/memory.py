"""Memory bandwidth: the ceiling every decode figure is compared against.

Decode streams every weight once per token, so the best a kernel can do is the rate at
which a node's cores can read their local DRAM. This module measures that rate with Numba
kernels (so the ceiling is what Numba code can reach, not what hand-written C can), in the
STREAM convention: read counts 1 array, copy 2, triad 3, no credit for write-allocate.
"""
from numatp import _env  # noqa: F401  (before numba)

import statistics
import time

import numba
import numpy as np
from numba import njit, prange

from numatp.errors import NumatpError, UsageError

GB = 1e9
DEFAULT_READ_BYTES = 1 << 30
MIN_BYTES = 4096


# The read loop is a plain integer sum: LLVM's loop vectorizer turns it into several
# independent vector accumulators (interleaved), so the adds stay off the critical path
# and the loop is limited by loads alone. Integers rather than floats: the buffers hold
# arbitrary bytes, and float sums of them would hit NaN/denormal slow paths and need
# fastmath to be reassociated at all.
@njit(boundscheck=False)
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
    """Threads Numba can use in this process (fixed when numba starts)."""
    return numba.config.NUMBA_NUM_THREADS


def _check_threads(threads: int):
    if not 1 <= threads <= max_threads():
        raise UsageError(f"threads must be between 1 and {max_threads()}, got {threads}")


def _timed(kernel, args, threads: int, repeats: int, nbytes: int) -> list[float]:
    """GB/s of each of `repeats` timed calls of kernel(*args) moving `nbytes`, after one
    untimed call (compilation, thread-pool start, TLB warm-up)."""
    _check_threads(threads)
    if repeats < 1:
        raise UsageError(f"repeats must be at least 1, got {repeats}")
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        kernel(*args)
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            kernel(*args)
            rates.append(nbytes / (time.perf_counter() - t0) / GB)
        return rates
    finally:
        numba.set_num_threads(previous)


def as_words(buf: np.ndarray) -> np.ndarray:
    """A byte buffer seen as uint64 words (a tail that does not fill a word is dropped)."""
    flat = buf.reshape(-1).view(np.uint8)
    return flat[:flat.size // 8 * 8].view(np.uint64)


def time_read(words: np.ndarray, threads: int, repeats: int) -> list[float]:
    """Sum of `words`; counts 1 array."""
    return _timed(read_kernel, (words, threads), threads, repeats, words.nbytes)


def time_copy(dst: np.ndarray, src: np.ndarray, threads: int, repeats: int) -> list[float]:
    """dst[:] = src; counts 2 arrays of traffic."""
    return _timed(copy_kernel, (dst, src), threads, repeats, 2 * src.nbytes)


def time_triad(a: np.ndarray, b: np.ndarray, c: np.ndarray, threads: int,
               repeats: int) -> list[float]:
    """a = b + s*c; counts 3 arrays."""
    return _timed(triad_kernel, (a, b, c, 3.0), threads, repeats, 3 * a.nbytes)


def _float_arrays(count: int, nbytes: int, alloc) -> list[np.ndarray]:
    """`count` float64 arrays of 1.0 that together take about `nbytes`."""
    arrays = [alloc(max(8, nbytes // count // 8 * 8)).view(np.float64) for _ in range(count)]
    for a in arrays:
        a[:] = 1.0
    return arrays


def read_gbps(threads: int, nbytes: int | None = None, repeats: int = 5) -> float:
    """Best-of-repeats read bandwidth (GB/s) of the Numba read kernel with `threads`
    threads in this process, over a fresh buffer of `nbytes` (default 1 GiB)."""
    nbytes = DEFAULT_READ_BYTES if nbytes is None else int(nbytes)
    _check_size(nbytes)
    words = np.ones(nbytes // 8, np.uint64)  # written once so every page is really there
    return max(time_read(words, threads, repeats))


def _check_size(nbytes: int):
    if nbytes < MIN_BYTES:
        raise UsageError(f"buffer size must be at least {MIN_BYTES} bytes, got {nbytes}")


def thread_counts(n: int) -> list[int]:
    """1, 2, 4, ... below n, then n: the scaling curve's points."""
    counts, t = [], 1
    while t < n:
        counts.append(t)
        t *= 2
    return counts + [n]


def _summary(rates: list[float]) -> dict:
    return {"best": max(rates), "median": statistics.median(rates)}


def _allocator(node: int, bound: bool):
    if bound:
        from numatp.numa.placement import alloc_on_node
        return lambda nbytes: alloc_on_node(nbytes, node)
    # No libnuma on a single node: first touch by this process puts it on the only node.
    return lambda nbytes: np.ones(nbytes, np.uint8)


def _placed_fraction(buf: np.ndarray, node: int) -> float | None:
    """Share of the buffer's pages on `node`; None where the kernel will not say (some
    sandboxes lack move_pages): the bandwidth figure is still worth having."""
    from numatp.numa.placement import local_fraction
    try:
        return local_fraction(buf, node)
    except NumatpError:
        return None


def measure_node(cpus: list[int], cpu_node: int, mem_nodes: list[int], nbytes: int,
                 repeats: int, scaling: bool, bound: bool) -> dict:
    """Runs in a process of its own: pin to `cpus` (one node's), then read a buffer on
    each of `mem_nodes` with all those CPUs; with `scaling`, also read/copy/triad on
    local memory with 1..len(cpus) threads."""
    from numatp.numa.placement import pin_to_cpus
    pin_to_cpus(cpus)  # before the first parallel call, so the pool's threads inherit it
    n = len(cpus)
    row, fractions, curve = [], [], []
    for mem in mem_nodes:
        buf = _allocator(mem, bound)(nbytes)
        fractions.append(_placed_fraction(buf, mem) if bound else None)
        words = as_words(buf)
        row.append(_summary(time_read(words, n, repeats)))
        if scaling and mem == cpu_node:
            for t in thread_counts(n):
                read = row[-1] if t == n else _summary(time_read(words, t, repeats))
                curve.append({"threads": t, "read": read})
        del words, buf
    if scaling:
        alloc = _allocator(cpu_node if cpu_node in mem_nodes else mem_nodes[0], bound)
        dst, src = _float_arrays(2, nbytes, alloc)
        for point in curve:
            point["copy"] = _summary(time_copy(dst, src, point["threads"], repeats))
        del dst, src
        a, b, c = _float_arrays(3, nbytes, alloc)
        for point in curve:
            point["triad"] = _summary(time_triad(a, b, c, point["threads"], repeats))
        del a, b, c
    return {"row": row, "local_fraction": fractions, "scaling": curve}


def _in_child(fn, *args):
    """fn(*args) in a fresh spawned process, so that pinning and Numba's thread count
    belong to that process alone."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            raise NumatpError("the memory benchmark process died (out of memory? try a "
                              "smaller --size-mb)") from None


def run(size_mb: int = DEFAULT_READ_BYTES >> 20, repeats: int = 5) -> dict:
    """The whole `numatp bench memory`: node x node read matrix, and read/copy/triad
    scaling on the first node. Returns the JSON-ready result that `--json` prints
    (read_gbps, the figure other benchmarks compare against, and the rest below)."""
    from numatp.numa import libnuma
    from numatp.numa.topology import discover
    if size_mb < 1:
        raise UsageError(f"--size-mb must be at least 1, got {size_mb}")
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {repeats}")
    nbytes = int(size_mb) << 20
    topo = discover()
    cpu_nodes = [n for n in topo.nodes if n.cpus]
    mem_nodes = [n.id for n in topo.nodes if n.mem_total > 0] or [cpu_nodes[0].id]
    bound = libnuma.pynuma() is not None
    if len(mem_nodes) > 1 and not bound:
        libnuma.library()  # raises the "libnuma is not available" error
    matrix, medians, fractions, scaling = [], [], [], []
    for i, node in enumerate(cpu_nodes):
        out = _in_child(measure_node, node.cpus, node.id, mem_nodes, nbytes, repeats,
                        i == 0, bound)
        matrix.append([cell["best"] for cell in out["row"]])
        medians.append([cell["median"] for cell in out["row"]])
        fractions.append(out["local_fraction"])
        if i == 0:
            scaling = [{"threads": p["threads"],
                        "read_gbps": p["read"]["best"], "copy_gbps": p["copy"]["best"],
                        "triad_gbps": p["triad"]["best"],
                        "read_median_gbps": p["read"]["median"],
                        "copy_median_gbps": p["copy"]["median"],
                        "triad_median_gbps": p["triad"]["median"]} for p in out["scaling"]]
    first = cpu_nodes[0]
    local = mem_nodes.index(first.id) if first.id in mem_nodes else 0
    return {
        "read_gbps": matrix[0][local],
        "read_median_gbps": medians[0][local],
        "node": first.id,
        "threads": len(first.cpus),
        "matrix_gbps": matrix,
        "matrix_median_gbps": medians,
        "cpu_nodes": [n.id for n in cpu_nodes],
        "mem_nodes": mem_nodes,
        # Share of each buffer's pages the kernel reports on the intended node (null
        # where buffers could not be placed explicitly).
        "matrix_local_fraction": fractions,
        "scaling": scaling,
        "size_mb": int(size_mb),
        "repeats": int(repeats),
        "topology_source": topo.source,
    }


def format_report(r: dict) -> str:
    """The result as tables for a terminal."""
    lines = [f"Read bandwidth, GB/s, best of {r['repeats']} passes over {r['size_mb']} MiB "
             f"(rows: CPU node, all its threads; columns: memory node)"]
    lines.append("cpu\\mem " + "".join(f"{m:>10}" for m in r["mem_nodes"]))
    for cpu, row in zip(r["cpu_nodes"], r["matrix_gbps"]):
        lines.append(f"{cpu:>7} " + "".join(f"{v:>10.1f}" for v in row))
    lines.append("")
    lines.append(f"Local read, node {r['node']}, {r['threads']} threads: {r['read_gbps']:.1f} GB/s "
                 f"(median {r['read_median_gbps']:.1f})")
    lines.append("")
    lines.append(f"Scaling on node {r['node']}, GB/s best (median); STREAM byte counts: "
                 f"read 1 array, copy 2, triad 3")
    lines.append(f"{'threads':>7} {'read':>15} {'copy':>15} {'triad':>15}")
    for p in r["scaling"]:
        cells = [f"{p[k + '_gbps']:.1f} ({p[k + '_median_gbps']:.1f})" for k in ("read", "copy", "triad")]
        lines.append(f"{p['threads']:>7} " + " ".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)
