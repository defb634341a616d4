"""Waiting in jitted code for a shared int64 word to reach a value.

  now_ns() -> int64          CLOCK_MONOTONIC in nanoseconds (vDSO, ~20 ns)
  sched_yield()              give the CPU to another runnable thread, if any
  wait_until_ge(words, idx, target, abort_idx, pause_ns, limit_ns) -> status
      spin until words[idx] >= target (load-acquire). Returns READY, ABORTED as soon as
      words[abort_idx] != 0, or TIMED_OUT once limit_ns have passed.

The wait has two phases. For the first pause_ns it spins with `pause`: the cheapest way
to notice a peer that is a few microseconds behind. After that it calls sched_yield()
between checks: when workers outnumber cores (tests, small machines) the peer we wait for
may be queued on our own core, and a pure spin would hold it off for a whole time slice.
The clock is read only after the first 64 spins, so a short wait makes no calls at all.

now_ns and sched_yield call libc by symbol name, not by address, so functions using them
can be cached (cache=True) and loaded by another process.
"""
from numatp import _env  # noqa: F401
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from numatp.shm.atomics import cpu_relax, load_acquire

READY = 0
ABORTED = 1
TIMED_OUT = 2

_CLOCK_MONOTONIC = 1  # Linux
_FAST_SPINS = 64


@intrinsic
def now_ns(typingctx):
    def codegen(context, builder, sig, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        timespec = ir.ArrayType(i64, 2)  # struct timespec {time_t tv_sec; long tv_nsec}
        ts = cgutils.alloca_once(builder, timespec)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i32, [i32, timespec.as_pointer()]), "clock_gettime")
        builder.call(fn, [ir.Constant(i32, _CLOCK_MONOTONIC), ts])
        zero = ir.Constant(i32, 0)
        sec = builder.load(builder.gep(ts, [zero, zero]))
        nsec = builder.load(builder.gep(ts, [zero, ir.Constant(i32, 1)]))
        return builder.add(builder.mul(sec, ir.Constant(i64, 1_000_000_000)), nsec)

    return types.int64(), codegen


@intrinsic
def sched_yield(typingctx):
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@njit(nogil=True)
def wait_until_ge(words, idx, target, abort_idx, pause_ns, limit_ns):
    spins = 0
    start = 0
    while True:
        if load_acquire(words, idx) >= target:
            return READY
        if load_acquire(words, abort_idx) != 0:
            return ABORTED
        spins += 1
        if spins < _FAST_SPINS:
            cpu_relax()
            continue
        now = now_ns()
        if start == 0:
            start = now
        waited = now - start
        if waited >= limit_ns:
            return TIMED_OUT
        if waited < pause_ns:
            cpu_relax()
        else:
            sched_yield()
