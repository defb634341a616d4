"""A team of threads for one-token steps: the products of kernels.py as jobs that a
process's own threads take, in place of Numba's parallel regions.

Why: a decode step enters some 80 parallel regions (five per layer and the output
head). On the 16-core Xeon an empty Numba region cost 9-14 us at 16 threads and 7 us at
8, against 1.9-2.3 us and 1.3 us for an empty job of threads of our own that spin on a
counter; a 1.1B token's products ran 1-6% faster as such jobs.

How: the team's threads (numatp/forward/team.py starts them) spin on the generation word
of a control array (`team`, int64). The caller writes a job into it: its kind, its
numbers, and its arrays as address and shape; bumps the generation; takes the job's
items like the others (schedule.py's runs, kept in the control array); and waits until
every thread has said it is done with the job. The arrays are the caller's, and it does
not return before the job is done, so the threads' views of them stay valid.

Views: put() writes an array as (address, shape); the get*() read it back as a
C-contiguous array that holds no reference. Jitted calls take and drop a reference to
every array argument that has one, with a locked (atomic) instruction each; outside a
parallel region, where Numba's arrays have one, that made the kernels' call chains 1.4-2x
slower on one thread. So the caller, too, runs its items on the views.

An item is computed whole by whichever thread takes it, with the kernels' own item code
(kernels.py), so results are those of the parallel regions bit for bit.

Jobs must be run from code that does not hold the GIL (nogil=True, as the steps are). A
thread woken from its sleep takes the GIL for a moment before it serves again; a caller
holding it while it waits for that thread's share would wait forever. (A test that called
attention's jitted entry from Python did, once the threads had gone to sleep.)

    team_linear(team, kernels, ...)   linear(), as a job; with an empty `team`, linear()
    team_linear3 / team_glu / team_linear_units   likewise
    start(ctl, kind, n_items); <the caller's share of the items>; join(ctl)
                                      how any job runs (blocks.py's attention uses these)
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from numatp.quant.kernels import (BLOCK_ELEMS, R, _FLOAT, _check, _group_rows,
                                  _group_units, _quantize_tiles, act_group, float_chunk, glu,
                                  glu_stream_item, groups3, _silu, linear, linear3, linear3_item,
                                  linear_units, row_stride, rows_per_chunk)
from numatp.quant.schedule import STRIDE, take
from numatp.shm.atomics import cpu_relax, fetch_add, load_acquire
from numatp.shm.spin import sched_yield

# The control array's words. The generation, the done count and the session each have a
# 128-byte line of their own: every thread reads the first, writes the second.
GEN = 0        # jobs published so far
DONE = 16      # threads (not the caller) done with the current job
SESSION = 32   # odd while a step that uses the team runs (forward/team.py)
STOP = 33      # 1: the threads return for good
THREADS = 34   # the team's size, the caller included
PARK = 35      # 1: once no session is open, the threads sleep at once
KIND = 48      # the current job's kind
ARGS = 49      # its numbers and arrays, from here on
RUNS = 128     # schedule.py's runs of the current job, STRIDE words per thread

# Job kinds: the products here, attention's heads (numatp/forward/blocks.py).
LINEAR, LINEAR3, UNITS, GLU_STREAMS, FLOAT_MATVEC, ATTEND = range(1, 7)


# A step without a team: its products run as parallel regions.
NO_TEAM = np.zeros(0, np.int64)


@njit
def no_team():
    """NO_TEAM for jitted callers (a global array would be a read-only constant there)."""
    return np.zeros(0, np.int64)


# Spins of a wait (for a job, or for the team to finish one) before it yields the CPU at
# every further spin: tens of microseconds. A team of more threads than free CPUs (other
# processes' threads, or virtual nodes that share CPUs) otherwise spins on CPUs that the
# thread it waits for needs: 3 threads on 2 CPUs took over 10 minutes for a test that
# takes seconds.
SPINS_BEFORE_YIELD = 1000


@njit
def wait_a_little(spins):
    """One spin of a wait that has spun `spins` times so far."""
    if spins < SPINS_BEFORE_YIELD:
        cpu_relax()
    else:
        sched_yield()


def team_words(n_threads):
    """The control array's length for a team of n_threads (the caller included)."""
    return RUNS + n_threads * STRIDE


# ---- arrays by address ------------------------------------------------------------------


@intrinsic
def bare(typingctx, arr):
    """arr's view with no reference (the caller keeps arr alive): passing it to jitted
    calls costs no atomic increments."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        src = context.make_array(arr)(context, builder, args[0])
        out = context.make_array(arr)(context, builder)
        for name in ("nitems", "itemsize", "data", "shape", "strides"):
            setattr(out, name, getattr(src, name))
        out.meminfo = cgutils.get_null_value(out.meminfo.type)
        out.parent = cgutils.get_null_value(out.parent.type)
        return out._getvalue()

    return arr(arr), codegen


@intrinsic
def _array_at(typingctx, address, shape, dtype):
    """The C-contiguous array of `shape` (a tuple of int64) and `dtype` (a NumPy scalar
    type) at `address`, holding no reference."""
    if not (isinstance(address, types.Integer) and isinstance(shape, types.UniTuple)
            and isinstance(dtype, types.NumberClass)):
        return None
    ndim = shape.count
    retty = types.Array(dtype.dtype, ndim, "C")

    def codegen(context, builder, sig, args):
        intp = context.get_value_type(types.intp)
        data_type = context.get_data_type(retty.dtype)
        itemsize = context.get_abi_sizeof(data_type)
        shapes = cgutils.unpack_tuple(builder, args[1], ndim)
        strides = [None] * ndim
        step = ir.Constant(intp, itemsize)
        for d in reversed(range(ndim)):
            strides[d] = step
            step = builder.mul(step, shapes[d])
        ary = context.make_array(retty)(context, builder)
        context.populate_array(ary, data=builder.inttoptr(args[0], data_type.as_pointer()),
                               shape=shapes, strides=strides,
                               itemsize=ir.Constant(intp, itemsize), meminfo=None)
        return ary._getvalue()

    return retty(address, shape, dtype), codegen


@njit
def put(ctl, s, a):
    """Write array a (C-contiguous) at word s as its address and shape; returns the next
    free word."""
    step = a.itemsize
    for d in range(a.ndim - 1, -1, -1):
        if a.shape[d] > 1 and a.strides[d] != step:
            raise ValueError("a team job's arrays must be C-contiguous")
        step *= a.shape[d]
    ctl[s] = a.ctypes.data
    for d in range(a.ndim):
        ctl[s + 1 + d] = a.shape[d]
    return s + 1 + a.ndim


@njit
def get1(ctl, s, dtype):
    """(the 1-D array put() wrote at word s, the next word)"""
    return _array_at(ctl[s], (ctl[s + 1],), dtype), s + 2


@njit
def get2(ctl, s, dtype):
    return _array_at(ctl[s], (ctl[s + 1], ctl[s + 2]), dtype), s + 3


@njit
def get3(ctl, s, dtype):
    return _array_at(ctl[s], (ctl[s + 1], ctl[s + 2], ctl[s + 3]), dtype), s + 4


@njit
def get4(ctl, s, dtype):
    return _array_at(ctl[s], (ctl[s + 1], ctl[s + 2], ctl[s + 3], ctl[s + 4]), dtype), s + 5


@njit
def get5(ctl, s, dtype):
    return _array_at(ctl[s], (ctl[s + 1], ctl[s + 2], ctl[s + 3], ctl[s + 4], ctl[s + 5]),
                     dtype), s + 6


@njit
def _put_acts(ctl, s, acts):
    xq, xd, xs32, xs16, xi32, xi16 = acts
    s = put(ctl, put(ctl, put(ctl, s, xq), xd), xs32)
    return put(ctl, put(ctl, put(ctl, s, xs16), xi32), xi16)


@njit
def _get_acts(ctl, s):
    """The activations (activations.py's six arrays) that _put_acts wrote at word s."""
    xq, s = get2(ctl, s, np.int8)
    xd, s = get2(ctl, s, np.float32)
    xs32, s = get2(ctl, s, np.float32)
    xs16, s = get2(ctl, s, np.float32)
    xi32, s = get2(ctl, s, np.int32)
    xi16, s = get2(ctl, s, np.int32)
    return (xq, xd, xs32, xs16, xi32, xi16), s


# ---- running a job ----------------------------------------------------------------------


@njit(boundscheck=False)
def runs(ctl):
    """The current job's runs (schedule.py), for take()."""
    return ctl[RUNS:RUNS + ctl[THREADS] * STRIDE]


@njit(boundscheck=False)
def start(ctl, kind, n_items):
    """Publish the job whose arguments are in place: its n_items split among the team
    as schedule.split_among would, then the generation bumped (which orders the writes
    before it for every thread that sees it)."""
    n = ctl[THREADS]
    for t in range(n):
        ctl[RUNS + t * STRIDE] = t * n_items // n
        ctl[RUNS + t * STRIDE + 1] = (t + 1) * n_items // n
    ctl[DONE] = 0
    ctl[KIND] = kind
    fetch_add(ctl, GEN, 1)


@njit(boundscheck=False)
def join(ctl):
    """Wait until every thread is done with the current job."""
    n = ctl[THREADS] - 1
    spins = 0
    while load_acquire(ctl, DONE) < n:
        spins += 1
        wait_a_little(spins)


# ---- the products as jobs ---------------------------------------------------------------


@njit(boundscheck=False)
def linear_job(kernels, ctl, thread):
    s = ARGS
    q, rows, nblk = ctl[s], ctl[s + 1], ctl[s + 2]
    w, s = get1(ctl, s + 3, np.uint8)
    acts, s = _get_acts(ctl, s)
    P, s = get1(ctl, s, np.int8)
    Y, s = get2(ctl, s, np.float32)
    rr = runs(ctl)
    while True:
        g = take(rr, thread)
        if g < 0:
            break
        _group_rows(kernels, q, w, nblk, acts, P, Y, g, rows)


@njit(boundscheck=False)
def linear3_job(kernels, ctl, thread):
    s = ARGS
    qa, ra, qb, rb, qc, rc, nblk = (ctl[s], ctl[s + 1], ctl[s + 2], ctl[s + 3], ctl[s + 4],
                                    ctl[s + 5], ctl[s + 6])
    wa, s = get1(ctl, s + 7, np.uint8)
    wb, s = get1(ctl, s, np.uint8)
    wc, s = get1(ctl, s, np.uint8)
    acts, s = _get_acts(ctl, s)
    P, s = get1(ctl, s, np.int8)
    Ya, s = get2(ctl, s, np.float32)
    Yb, s = get2(ctl, s, np.float32)
    Yc, s = get2(ctl, s, np.float32)
    rr = runs(ctl)
    while True:
        i = take(rr, thread)
        if i < 0:
            break
        linear3_item(kernels, qa, wa, ra, qb, wb, rb, qc, wc, rc, nblk, acts, P, Ya, Yb, Yc, i)


@njit(boundscheck=False)
def units_job(kernels, ctl, thread):
    s = ARGS
    q, rows, nblk = ctl[s], ctl[s + 1], ctl[s + 2]
    w, s = get1(ctl, s + 3, np.uint8)
    units, s = get1(ctl, s, np.int64)
    acts, s = _get_acts(ctl, s)
    P, s = get1(ctl, s, np.int8)
    Yu, s = get3(ctl, s, np.float32)
    rr = runs(ctl)
    while True:
        g = take(rr, thread)
        if g < 0:
            break
        _group_units(kernels, q, w, nblk, units, acts, P, Yu, g, rows, 0)


@njit(boundscheck=False)
def glu_job(kernels, ctl, thread):
    s = ARGS
    qg, qu, rows, nblk, pad = ctl[s], ctl[s + 1], ctl[s + 2], ctl[s + 3], ctl[s + 4]
    wg, s = get1(ctl, s + 5, np.uint8)
    wu, s = get1(ctl, s, np.uint8)
    acts, s = _get_acts(ctl, s)
    P, s = get1(ctl, s, np.int8)
    G, s = get2(ctl, s, np.float32)
    U, s = get2(ctl, s, np.float32)
    H, s = get2(ctl, s, np.float32)
    halves_done, s = get1(ctl, s, np.int64)
    rr = runs(ctl)
    while True:
        i = take(rr, thread)
        if i < 0:
            break
        glu_stream_item(kernels, qg, wg, qu, wu, rows, nblk, acts, P, G, U, H, pad,
                        halves_done, i)


@njit(boundscheck=False)
def float_job(kernels, ctl, thread):
    s = ARGS
    q, stride, rows, cols, per = ctl[s], ctl[s + 1], ctl[s + 2], ctl[s + 3], ctl[s + 4]
    w, s = get1(ctl, s + 5, np.uint8)
    x, s = get1(ctl, s, np.float32)
    y, s = get1(ctl, s, np.float32)
    rr = runs(ctl)
    while True:
        c = take(rr, thread)
        if c < 0:
            break
        float_chunk(kernels, q, w, stride, rows, cols, x, y, per, c)


@njit
def run_kernel_job(kernels, ctl, kind, thread):
    """Thread `thread`'s share of a job of one of the products' kinds."""
    if kind == LINEAR:
        linear_job(kernels, ctl, thread)
    elif kind == LINEAR3:
        linear3_job(kernels, ctl, thread)
    elif kind == UNITS:
        units_job(kernels, ctl, thread)
    elif kind == GLU_STREAMS:
        glu_job(kernels, ctl, thread)
    elif kind == FLOAT_MATVEC:
        float_job(kernels, ctl, thread)


@njit
def _run(kernels, ctl, kind, n_items):
    start(ctl, kind, n_items)
    run_kernel_job(kernels, ctl, kind, 0)
    join(ctl)


# ---- the callers' side ------------------------------------------------------------------


@njit
def team_linear(team, kernels, qtype, w, rows, cols, X, Y):
    """linear(kernels, qtype, w, rows, cols, X, Y) as a team job; with an empty team, or
    a float format with more than one token, linear() itself."""
    q = np.int64(qtype)
    rows, cols = np.int64(rows), np.int64(cols)
    family = _check(kernels, q)
    if team.size == 0 or (family == _FLOAT and X.shape[0] != 1):
        linear(kernels, q, w, rows, cols, X, Y)
        return
    if family == _FLOAT:
        _float_matvec_at(team, kernels, q, w, row_stride(q, cols), rows, cols, X[0], Y[0])
        return
    ctl = bare(team)
    acts, P = _quantize_tiles(X, act_group(family))
    s = ARGS
    ctl[s], ctl[s + 1], ctl[s + 2] = q, rows, cols // BLOCK_ELEMS[q]
    s = put(ctl, _put_acts(ctl, put(ctl, s + 3, w), acts), P)
    put(ctl, s, Y)
    _run(kernels, ctl, LINEAR, (rows + R - 1) // R)


@njit
def _float_matvec_at(team, kernels, q, w, stride, rows, cols, x, y):
    """kernels.py's _float_matvec as a team job."""
    ctl = bare(team)
    per = rows_per_chunk(rows)
    s = ARGS
    ctl[s], ctl[s + 1], ctl[s + 2], ctl[s + 3], ctl[s + 4] = q, stride, rows, cols, per
    put(ctl, put(ctl, put(ctl, s + 5, w), x), y)
    _run(kernels, ctl, FLOAT_MATVEC, (rows + per - 1) // per)


@njit
def team_linear3(team, kernels, qa, wa, ra, qb, wb, rb, qc, wc, rc, cols, X, Ya, Yb, Yc):
    """linear3(...) as one team job where linear3 would be one region, else as three
    (team_linear); with an empty team, linear3()."""
    qa, qb, qc = np.int64(qa), np.int64(qb), np.int64(qc)
    fa, fb, fc = _check(kernels, qa), _check(kernels, qb), _check(kernels, qc)
    if team.size == 0:
        linear3(kernels, qa, wa, ra, qb, wb, rb, qc, wc, rc, cols, X, Ya, Yb, Yc)
        return
    if not (fa != _FLOAT and fa == fb and (fa == fc or rc == 0)):
        team_linear(team, kernels, qa, wa, ra, cols, X, Ya)
        team_linear(team, kernels, qb, wb, rb, cols, X, Yb)
        if rc:
            team_linear(team, kernels, qc, wc, rc, cols, X, Yc)
        return
    ctl = bare(team)
    acts, P = _quantize_tiles(X, act_group(fa))
    ra, rb, rc = np.int64(ra), np.int64(rb), np.int64(rc)
    s = ARGS
    ctl[s], ctl[s + 1], ctl[s + 2], ctl[s + 3], ctl[s + 4], ctl[s + 5] = qa, ra, qb, rb, qc, rc
    ctl[s + 6] = np.int64(cols) // BLOCK_ELEMS[qa]
    s = put(ctl, put(ctl, put(ctl, s + 7, wa), wb), wc)
    s = put(ctl, _put_acts(ctl, s, acts), P)
    put(ctl, put(ctl, put(ctl, s, Ya), Yb), Yc)
    _run(kernels, ctl, LINEAR3, groups3(ra, rb, rc))


@njit
def team_linear_units(team, kernels, qtype, w, rows, cols, units, X, Yu):
    """linear_units(...) as a team job, for quantized formats; else linear_units()."""
    q = np.int64(qtype)
    family = _check(kernels, q)
    n = units.shape[0] - 1
    if n == 1:
        team_linear(team, kernels, q, w, rows, cols, X, Yu[0])
        return
    if team.size == 0 or (family == _FLOAT and X.shape[0] != 1):
        linear_units(kernels, q, w, rows, cols, units, X, Yu)
        return
    if family == _FLOAT:
        # as linear_units: a unit is a range of each row's elements, times its part of X
        eb = row_stride(q, np.int64(1))
        for u in range(n):
            c0, c1 = units[u], units[u + 1]
            if c1 == c0:
                Yu[u] = 0
            else:
                _float_matvec_at(team, kernels, q, w[c0 * eb:], row_stride(q, cols), rows,
                                 c1 - c0, np.ascontiguousarray(X[0, c0:c1]), Yu[u, 0])
        return
    ctl = bare(team)
    rows, cols = np.int64(rows), np.int64(cols)
    acts, P = _quantize_tiles(X, act_group(family))
    s = ARGS
    ctl[s], ctl[s + 1], ctl[s + 2] = q, rows, cols // BLOCK_ELEMS[q]
    s = _put_acts(ctl, put(ctl, put(ctl, s + 3, w), units), acts)
    put(ctl, put(ctl, s, P), Yu)
    _run(kernels, ctl, UNITS, (rows + R - 1) // R)


@njit
def team_glu(team, kernels, qg, wg, qu, wu, rows, cols, X, G, U, H, pad):
    """glu(...) for one token of quantized gate and up of one family as a team job;
    otherwise glu()."""
    qg, qu = np.int64(qg), np.int64(qu)
    family = _check(kernels, qg)
    if team.size == 0 or X.shape[0] != 1:
        glu(kernels, qg, wg, qu, wu, rows, cols, X, G, U, H, pad)
        return
    if family == _FLOAT or family != _check(kernels, qu):
        team_linear(team, kernels, qg, wg, rows, cols, X, G)
        team_linear(team, kernels, qu, wu, rows, cols, X, U)
        for r in range(rows):   # one token's: as glu's silu, in this thread
            H[0, pad + r] = _silu(G[0, r]) * U[0, r]
        return
    ctl = bare(team)
    rows = np.int64(rows)
    groups = (rows + R - 1) // R
    acts, P = _quantize_tiles(X, act_group(family))
    halves_done = np.zeros(groups, np.int64)
    s = ARGS
    ctl[s], ctl[s + 1], ctl[s + 2] = qg, qu, rows
    ctl[s + 3], ctl[s + 4] = np.int64(cols) // BLOCK_ELEMS[qg], np.int64(pad)
    s = _put_acts(ctl, put(ctl, put(ctl, s + 5, wg), wu), acts)
    s = put(ctl, put(ctl, put(ctl, put(ctl, s, P), G), U), H)
    put(ctl, s, halves_done)
    _run(kernels, ctl, GLU_STREAMS, 2 * groups)
