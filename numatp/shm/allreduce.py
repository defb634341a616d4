"""Sum float32 partial results across the tensor-parallel ranks, through shared memory.

Python (setup):
    group = AllReduceGroup.create(nranks, max_floats)          # coordinator, owns the memory
    group = AllReduceGroup.attach(name, nranks, max_floats, rank=r)   # worker r
    ctl, data = group.arrays()     # pass these into jitted code
    group.abort()                  # make every waiting rank return ABORTED
    group.waited_ns()              # each rank's time spent waiting for its peers
    group.close()

Jitted (callable from other @njit code and from Python; releases the GIL):
    status = allreduce_parts(ctl, data, rank, nranks, parts, out)
        parts: (n, ...) float32, C-contiguous: this rank's n partial results, each of
        out's size; n * out.size <= max_floats. On return with status OK, out holds the
        sum of every rank's parts, added one at a time in rank order and, within a rank,
        in its parts' order: ((r0p0 + r0p1) + r1p0) + ..., bit-identical on every rank.
        The ranks may hold different numbers of parts. Every rank must make the same
        sequence of calls (same out sizes). nranks == 1 folds the parts the same way
        without touching ctl or data (a single-process run may pass any int64/float32
        arrays); that is how one rank adds up the reduce units that N ranks share
        (numatp/parallel/plan.py), so that both give the same bits.
    status = allreduce(ctl, data, rank, nranks, x)
        the same with one part, x, summed in place.
    fold_parts(parts, out): the one-rank fold.
    status is OK (0), ABORTED (1: the abort word was set, e.g. a peer died),
    TIMED_OUT (2: a peer did not arrive within the group's timeout) or BAD_ARGS (3).
    After a non-OK status the group is out of step and must not be used again.

The abort word lives in this group's own segment. ControlChannel.abort() sets it (the
channel is handed the groups it should abort), so a dead worker stops its peers here too.

Algorithm. Call number s (1, 2, ...) on rank r:
  1. copy its parts into slot [s % 2][r], their count into count[s % 2][r]
  2. store-release seq[r] = s                     (seq[r] has its own cache line)
  3. for every peer p: spin until load-acquire seq[p] >= s, watching the abort word
  4. out = the parts of slot[s%2][0], then of slot[s%2][1], ..., added one at a time
Every rank adds the same numbers in the same order, so all get the same bits, and no
second barrier is needed to say "everyone has read the slots".

Why two buffers (by the parity of s) are enough. Rank r overwrites its slot of parity
s % 2 again only in call s + 2. To start call s + 2 it must have finished call s + 1,
which needs every peer's seq >= s + 1 (step 3). A peer stores seq = s + 1 in call s + 1,
i.e. after it finished summing call s (program order, and the release store keeps those
reads before it). So by then no one reads the slots of call s any more. A rank can run
at most one call ahead of the slowest peer; that is why step 3 tests >= s and not == s:
a fast peer may already have published s + 1, writing only the other buffer (and the
other count word: the counts have two places by parity too).
(tests/test_allreduce.py runs a deliberately late rank; with one buffer it fails.)

Caching: Numba's on-disk cache of a caller (cache=True) holds its own copy of this code
and is not invalidated when this file changes. After editing it, delete the callers'
cache files (__pycache__/*.nbi, *.nbc), or they keep running the old version.

Layout of the segment (LINE = 128 bytes: two cache lines, so the adjacent-line
prefetcher does not make neighbours false-share):
  int64 ctl: line 0 = header (+ abort word), line 1 + r = seq[r], count[0][r], count[1][r],
  waited[r] (nanoseconds rank r has spent in step 3, all calls together: what a rank loses
  to slower peers and to the hand-over itself; `numatp bench decode` reports it)
  float32 data, at a page boundary: slot [b][r] at (b * nranks + r) * stride; stride is
  max_floats rounded up to whole 4 KiB pages so that each slot's pages are allocated by
  its owner, in that worker's NUMA node (attach(..., rank=r) reserves them; create()
  reserves only the ctl lines).
"""
from numatp import _env  # noqa: F401
import numpy as np
from numba import njit, prange

from numatp.errors import NumatpError
from numatp.shm.atomics import store_release
from numatp.shm.segment import SharedSegment
from numatp.shm.spin import ABORTED, READY, TIMED_OUT, now_ns, wait_until_ge

OK = READY
BAD_ARGS = 3
__all__ = ["AllReduceGroup", "allreduce", "allreduce_parts", "fold_parts", "OK", "ABORTED",
           "TIMED_OUT", "BAD_ARGS"]

LINE = 16                      # int64 words per line (128 bytes)
_PAGE_FLOATS = 1024            # 4 KiB
_MAGIC = 0x6E756D617470_4102   # "numatp" + layout version

W_WAITED = 3         # a rank's line: seq, count[0], count[1], waited

# header words (line 0)
H_MAGIC = 0
H_NRANKS = 1
H_MAX_FLOATS = 2
H_STRIDE = 3
H_PAUSE_NS = 4
H_TIMEOUT_NS = 5
H_ABORT = 8


def _seq_index(rank):
    return LINE * (1 + rank)


# A fold of more floats than this runs over threads (a prompt chunk's; not a decode step's
# few thousand, for which a parallel region costs more than the adds).
PARALLEL_FLOATS = 1 << 16
_CHUNK = 4096   # floats a thread folds at a time: its parts' slices stay in L1/L2


@njit(nogil=True)
def allreduce(ctl, data, rank, nranks, x):
    return allreduce_parts(ctl, data, rank, nranks, x.reshape((1, x.size)), x)


@njit(nogil=True)
def allreduce_parts(ctl, data, rank, nranks, parts, out):
    n, m = parts.shape[0], out.size
    flat = parts.reshape((n, m))
    y = out.reshape(m)
    if nranks == 1:
        fold_parts(parts, out)
        return OK
    if (nranks != ctl[H_NRANKS] or rank < 0 or rank >= nranks or n < 1
            or n * m > ctl[H_MAX_FLOATS]):
        return BAD_ARGS
    stride = ctl[H_STRIDE]
    me = LINE * (1 + rank)
    seq = ctl[me] + 1          # only this rank writes its seq word and counts
    parity = seq & 1
    base = parity * nranks * stride

    # Loops over slices indexed from 0: `data[off + i]` would make Numba check for a
    # negative index on every element, and that check stops LLVM from vectorizing.
    for j in range(n):
        mine = data[base + rank * stride + j * m:base + rank * stride + (j + 1) * m]
        src = flat[j]
        for i in range(m):
            mine[i] = src[i]
    ctl[me + 1 + parity] = n
    store_release(ctl, me, seq)

    pause_ns = ctl[H_PAUSE_NS]
    timeout_ns = ctl[H_TIMEOUT_NS]
    start = now_ns()
    for p in range(nranks):
        if p != rank:
            status = wait_until_ge(ctl, LINE * (1 + p), seq, H_ABORT, pause_ns, timeout_ns)
            if status != READY:
                return status
    ctl[me + W_WAITED] += now_ns() - start
    # Where every rank's parts start in data, in order (the slots are stride apart, a
    # slot's parts m apart); a count out of range means a corrupt or foreign segment.
    total = 0
    for p in range(nranks):
        count = ctl[LINE * (1 + p) + 1 + parity]
        if count < 1 or count * m > ctl[H_MAX_FLOATS]:
            return BAD_ARGS
        total += count
    offsets = np.empty(total, np.int64)
    k = 0
    for p in range(nranks):
        for j in range(ctl[LINE * (1 + p) + 1 + parity]):
            offsets[k] = base + p * stride + j * m
            k += 1
    _fold_slots(data, offsets, y)
    return OK


@njit(nogil=True)
def fold_parts(parts, out):
    """out = ((parts[0] + parts[1]) + parts[2]) + ..., parts (n, ...) of out.size each
    (both C-contiguous). A single part that is out already is left as it is."""
    n, m = parts.shape[0], out.size
    if n == 1 and parts.ctypes.data == out.ctypes.data:
        return
    _fold_slots(parts.reshape(n * m), np.arange(n) * m, out.reshape(m))


@njit(nogil=True)
def _fold_slots(data, offsets, out):
    """out = the vectors at `offsets` in data (out.size each), added one at a time."""
    m = out.size
    if m > PARALLEL_FLOATS:
        _fold_chunks(data, offsets, out)
    else:
        _fold_range(data, offsets, out, 0, m)


@njit(parallel=True)
def _fold_chunks(data, offsets, out):
    m = out.size
    for c in prange((m + _CHUNK - 1) // _CHUNK):
        _fold_range(data, offsets, out, c * _CHUNK, min(m, (c + 1) * _CHUNK))


@njit(nogil=True)
def _fold_range(data, offsets, out, i0, i1):
    # Writing the first part before reading it is fine where out is that part itself (a
    # single part folded in place); no other part overlaps out.
    y = out[i0:i1]
    first = data[offsets[0] + i0:offsets[0] + i1]
    for i in range(i1 - i0):
        y[i] = first[i]
    for k in range(1, offsets.shape[0]):
        src = data[offsets[k] + i0:offsets[k] + i1]
        for i in range(i1 - i0):
            y[i] += src[i]


def _layout(nranks, max_floats):
    stride = -(-max(max_floats, 1) // _PAGE_FLOATS) * _PAGE_FLOATS
    ctl_words = LINE * (1 + nranks)
    data_offset = -(-ctl_words * 8 // 4096) * 4096
    data_floats = 2 * nranks * stride
    return stride, ctl_words, data_offset, data_floats


class AllReduceGroup:
    """The shared memory of one all-reduce group. create() in the coordinator,
    attach() in each worker."""

    def __init__(self, segment, nranks, max_floats):
        self.nranks = nranks
        self.max_floats = max_floats
        self._segment = segment
        stride, ctl_words, data_offset, data_floats = _layout(nranks, max_floats)
        self.stride = stride
        self._ctl = segment.array(np.int64, 0, ctl_words)
        self._data = segment.array(np.float32, data_offset, data_floats)

    @property
    def name(self):
        return self._segment.name

    @classmethod
    def create(cls, nranks, max_floats, *, timeout_s=120.0, pause_us=5.0):
        """timeout_s: how long a rank waits for a peer before giving up (a last resort;
        dead peers are reported through the abort word much sooner).
        pause_us: how long a waiting rank spins with `pause` before it starts yielding
        its core between checks. Short, because when ranks outnumber cores the peer may
        be waiting for our core (3 ranks on 2 cores: 5 us gave ~30-50 us per call, 50 us
        gave ~120-360 us); with a core per rank, a peer arriving late finds us at most
        one sched_yield() call (well under a microsecond) away."""
        if nranks < 1 or max_floats < 1:
            raise ValueError(f"bad all-reduce group size: {nranks} ranks x {max_floats} floats")
        _, ctl_words, data_offset, data_floats = _layout(nranks, max_floats)
        seg = SharedSegment.create("allreduce", data_offset + 4 * data_floats, reserve=False)
        try:
            seg.reserve(0, data_offset)
        except BaseException:
            seg.close()
            raise
        group = cls(seg, nranks, max_floats)
        ctl = group._ctl
        ctl[H_NRANKS] = nranks
        ctl[H_MAX_FLOATS] = max_floats
        ctl[H_STRIDE] = group.stride
        ctl[H_PAUSE_NS] = int(pause_us * 1e3)
        ctl[H_TIMEOUT_NS] = int(timeout_s * 1e9)
        ctl[H_MAGIC] = _MAGIC
        return group

    @classmethod
    def attach(cls, name, nranks, max_floats, rank=None):
        """rank: if given, this rank's slots are reserved now, so that their pages are
        placed by this process's memory policy (its NUMA node); NumatpError if /dev/shm
        has no room for them."""
        seg = SharedSegment.attach(name)
        try:
            group = cls(seg, nranks, max_floats)
            ctl = group._ctl
            if (ctl[H_MAGIC], ctl[H_NRANKS], ctl[H_MAX_FLOATS]) != (_MAGIC, nranks, max_floats):
                raise NumatpError(
                    f"all-reduce segment {name} holds {ctl[H_NRANKS]} ranks x "
                    f"{ctl[H_MAX_FLOATS]} floats, expected {nranks} x {max_floats}")
            if rank is not None:
                data_offset = _layout(nranks, max_floats)[2]
                for b in range(2):
                    slot = (b * nranks + rank) * group.stride
                    seg.reserve(data_offset + 4 * slot, 4 * group.stride)
        except BaseException:
            group = None
            seg.close()
            raise
        return group

    def arrays(self):
        """(ctl, data): the first two arguments of allreduce()."""
        return self._ctl, self._data

    def abort(self):
        """Make every rank waiting in (or entering) allreduce return ABORTED."""
        if not self._segment.closed:
            store_abort(self._ctl, H_ABORT)

    @property
    def aborted(self):
        return bool(self._ctl[H_ABORT]) if not self._segment.closed else True

    def waited_ns(self) -> list[int]:
        """Per rank: nanoseconds spent waiting for peers in allreduce(), all calls so far."""
        return [int(self._ctl[_seq_index(r) + W_WAITED]) for r in range(self.nranks)]

    def close(self):
        self._ctl = self._data = None
        self._segment.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@njit(cache=True)
def store_abort(ctl, idx):
    store_release(ctl, idx, 1)
