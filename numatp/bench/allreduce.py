"""Latency of the shared-memory all-reduce between worker processes.

For each worker count, spawn that many workers (each pinned to its own CPU when there are
enough CPUs), then for each vector size have them run back-to-back allreduce() calls,
each timed inside jitted code by every rank. A call's latency is the slowest rank's time
for it, so imbalance between ranks counts against the result; medians and 99th
percentiles are over calls, after a warm-up.

    run(workers=(2,), floats=DEFAULT_FLOATS) -> [{"workers", "floats", "median_us", "p99_us"}]
"""
import multiprocessing as mp
import os
import signal

from numatp import _env  # noqa: F401
import numpy as np
from numba import njit

from numatp.parallel.control import QUIT, ControlChannel, WorkerChannel
from numatp.shm.allreduce import OK, AllReduceGroup, allreduce
from numatp.shm.segment import SharedSegment
from numatp.shm.spin import now_ns

DEFAULT_FLOATS = (576, 896, 2048, 4096, 8192)  # hidden sizes of common small/large models
DEFAULT_ITERS = 2000
WARMUP = 200
_RUN = 1          # the one command the workers know: args = (floats, calls)
_WRONG_SUM = 100  # status when the result is not the expected sum


@njit(cache=True)
def _timed_allreduces(ctl, data, rank, nranks, x, src, times):
    # Every rank contributes 0.5 * (rank + 1): small integers times 0.5 add exactly, so
    # the result can be checked for equality.
    expected = np.float32(0.25 * nranks * (nranks + 1))
    for it in range(times.shape[0]):
        x[:] = src
        t0 = now_ns()
        status = allreduce(ctl, data, rank, nranks, x)
        times[it] = now_ns() - t0
        if status != OK:
            return status
        if x[0] != expected or x[x.shape[0] - 1] != expected:
            return _WRONG_SUM
    return OK


def _compile():
    """Compile (or load from cache) the worker's kernel once here, so that the workers
    load it from Numba's cache instead of each compiling it at the same time."""
    ctl = np.zeros(16, np.int64)
    buf = np.zeros(1, np.float32)
    _timed_allreduces(ctl, buf, 0, 1, buf.copy(), buf.copy(), np.zeros(1, np.int64))


def _worker(chan_name, group_name, times_name, rank, nranks, max_floats, max_calls, cpu):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl-C
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    chan = WorkerChannel.attach(chan_name, rank)
    group = AllReduceGroup.attach(group_name, nranks, max_floats, rank=rank)
    times_seg = SharedSegment.attach(times_name)
    try:
        ctl, data = group.arrays()
        times = times_seg.array(np.int64, rank * max_calls * 8, max_calls)
        src = np.full(max_floats, 0.5 * (rank + 1), np.float32)
        x = np.empty(max_floats, np.float32)
        while True:
            cmd, args = chan.wait()
            if cmd == QUIT:
                break
            n, calls = int(args[0]), int(args[1])
            status = _timed_allreduces(ctl, data, rank, nranks, x[:n], src[:n], times[:calls])
            if status == OK or chan.aborted:
                chan.done()
            else:
                chan.fail(f"allreduce of {n} floats returned status {status}")
    finally:
        chan.close()
        group.close()
        times_seg.close()


def pinned(nworkers):
    """Whether a run with this many workers pins each to its own CPU."""
    return nworkers <= len(os.sched_getaffinity(0))


def _bench_workers(nworkers, floats, iters, timeout_s):
    ctx = mp.get_context("spawn")
    max_floats = max(floats)
    calls = iters + WARMUP
    cpus = sorted(os.sched_getaffinity(0))
    pin = pinned(nworkers)
    group = AllReduceGroup.create(nworkers, max_floats)
    chan = ControlChannel.create(nworkers, groups=[group])
    times_seg = SharedSegment.create("benchtimes", nworkers * calls * 8)
    procs = []
    try:
        for rank in range(nworkers):
            p = ctx.Process(target=_worker, daemon=True, name=f"numatp-bench-{rank}",
                            args=(chan.name, group.name, times_seg.name, rank, nworkers,
                                  max_floats, calls, cpus[rank] if pin else None))
            p.start()
            procs.append(p)
            chan.watch(procs)
        times = times_seg.array(np.int64, 0, nworkers * calls).reshape(nworkers, calls)
        results = []
        for n in floats:
            chan.call(_RUN, n, calls, timeout=timeout_s)
            per_call_us = times[:, WARMUP:].max(axis=0) / 1e3
            results.append({"workers": nworkers, "floats": n,
                            "median_us": round(float(np.median(per_call_us)), 3),
                            "p99_us": round(float(np.percentile(per_call_us, 99)), 3)})
        del times
        return results
    finally:
        chan.close()
        group.close()
        times_seg.close()


def run(workers=(2,), floats=DEFAULT_FLOATS, iters=DEFAULT_ITERS, timeout_s=300.0):
    """Benchmark every worker count with every size; see the module docstring."""
    _compile()
    results = []
    for n in workers:
        results.extend(_bench_workers(n, list(floats), iters, timeout_s))
    return results
