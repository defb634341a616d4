"""The per-command channel between the coordinator and its workers, in shared memory.

Coordinator:
    chan = ControlChannel.create(nworkers, groups=[allreduce_group])
    chan.watch(processes)              # multiprocessing.Process objects or pids, rank order
    chan.call(cmd, arg0, arg1, ...)    # = send() then wait(); raises WorkerError
    chan.close()                       # tell workers to quit, reap them, free the memory

Worker (rank r):
    w = WorkerChannel.attach(name, r)
    while True:
        cmd, args = w.wait()           # args: int64 view, valid until done()
        if cmd == QUIT: break          # asked to quit, aborted, or the coordinator died
        ... run it ...
        w.done()                       # or w.done(status) / w.fail("message")

Commands are int64 codes >= 0 chosen by the caller (QUIT = -1 is reserved) with up to
NARGS int64 arguments. Per command the Python work on either side is a few item writes
and one or two jitted calls, independent of the model size.

Protocol. The coordinator writes the code and arguments, then store-releases the command
sequence number; each worker, when finished, writes its status and store-releases its own
done number (own cache line). Waiting is two-phase on both sides: spin (with `pause`,
then sched_yield) for spin_us, then block on a futex on the awaited word, after
announcing it in a counter (SLEEPERS for workers, COORD_SLEEPING for the coordinator).
The publisher calls futex_wake only when that counter is non-zero, so the fast path has
no system call. No lost wake-up: the sleeper does "announce; fence; re-read the word" and
the publisher "write the word; fence; read the counter" -- with both fences sequentially
consistent, at least one side sees the other's write; and futex_wait itself refuses to
sleep if the word has moved since it was read.

Failures. While waiting, the coordinator checks every poll_ms that the watched processes
are alive; a dead one sets the abort word of this channel and of every all-reduce group
it was given (so peers stuck in allreduce() return ABORTED instead of hanging), wakes all
workers (their wait() returns QUIT) and raises WorkerError naming the worker's rank.
A worker that is stopped (SIGSTOP) is alive but never answers, and its peers would wait
for it in the all-reduce until they time out and take the blame: once a wait has lasted
STOP_CHECK_AFTER_S, the coordinator also looks for stopped workers, and one seen stopped
for STOPPED_LIMIT_S is killed and named the same way (supervision.py watches them).
Workers check every poll_ms that the coordinator is alive, and quit if it is not.
The abort word used by allreduce() lives in the all-reduce group's own segment;
ControlChannel.abort() sets it along with this channel's.
"""
import os
import time

from numatp import _env  # noqa: F401
import numpy as np
from numba import njit

from numatp.errors import NumatpError, WorkerError
from numatp.parallel.supervision import STOP_CHECK_AFTER_S, WatchedWorkers, death
from numatp.shm.atomics import fence, fetch_add, load_acquire, store_release
from numatp.shm.futex import futex_wait, futex_wake
from numatp.shm.segment import SharedSegment
from numatp.shm.spin import ABORTED, READY, TIMED_OUT, now_ns, wait_until_ge

QUIT = -1
NARGS = 8
FAILED = -1                     # status of a worker that called fail()
MESSAGE_BYTES = 256

_PAUSE_NS = 5_000               # spin with `pause` this long, then sched_yield (see spin.py)
LINE = 16                       # int64 words per line (128 bytes: no false sharing)
_MAGIC = 0x6E756D617470_4301
# line 0: header
H_MAGIC, H_NWORKERS, H_COORD_PID, H_ABORT = 0, 1, 2, 8
# line 1: the command, written by the coordinator
CMD_SEQ, CMD, ARGS = LINE, LINE + 1, LINE + 2
# lines 2, 3: how many workers / whether the coordinator are blocked on a futex
SLEEPERS = 2 * LINE
COORD_SLEEPING = 3 * LINE
# line 4 + w: worker w's done number, status, message length, and the nanoseconds it has
# spent on commands (from wait()'s return to done(), all commands together)
DONE0 = 4 * LINE
_STATUS, _MSG_LEN, _BUSY_NS = 1, 2, 3


def _done_index(rank):
    return DONE0 + LINE * rank


# ---- jitted halves of the protocol (atomics need jitted code) ----

@njit(cache=True)
def _publish(ctl, idx, value, sleepers_idx):
    """Store-release ctl[idx] = value; then, after a full fence, return how many are
    blocked (or about to block) on it."""
    store_release(ctl, idx, value)
    fence()
    return load_acquire(ctl, sleepers_idx)


@njit(cache=True)
def _announce_sleep(ctl, counter_idx, idx, target, abort_idx):
    """Count ourselves as a sleeper, then re-read the word. Returns READY, ABORTED, or
    TIMED_OUT meaning 'still not there: block'."""
    fetch_add(ctl, counter_idx, 1)
    fence()
    if load_acquire(ctl, idx) >= target:
        return READY
    if load_acquire(ctl, abort_idx) != 0:
        return ABORTED
    return TIMED_OUT


@njit(cache=True)
def _end_sleep(ctl, counter_idx, idx, target, abort_idx):
    fetch_add(ctl, counter_idx, -1)
    if load_acquire(ctl, idx) >= target:
        return READY
    if load_acquire(ctl, abort_idx) != 0:
        return ABORTED
    return TIMED_OUT


@njit(cache=True, nogil=True)
def _wait_all_done(ctl, nworkers, seq, pause_ns, limit_ns):
    """Spin until every worker's done number reaches seq. Returns -1 when all are done,
    -2 if aborted, else the rank of the first worker not yet done when limit_ns ran out."""
    start = now_ns()
    for w in range(nworkers):
        left = max(limit_ns - (now_ns() - start), 0)
        status = wait_until_ge(ctl, DONE0 + LINE * w, seq, H_ABORT, pause_ns, left)
        if status == ABORTED:
            return -2
        if status == TIMED_OUT:
            return w
    return -1


@njit(cache=True)
def _set_abort(ctl):
    store_release(ctl, H_ABORT, 1)
    fence()
    fetch_add(ctl, CMD_SEQ, 1)   # move the futex word so that no worker can sleep past it


def _block_once(ctl, counter_idx, idx, target, timeout_s):
    """The blocking phase, once: announce, re-check, futex-wait up to timeout_s.
    Returns READY, ABORTED or TIMED_OUT (no progress yet)."""
    status = _announce_sleep(ctl, counter_idx, idx, target, H_ABORT)
    try:
        if status == TIMED_OUT:
            futex_wait(ctl, idx, int(ctl[idx]), timeout_s)
    finally:
        status = _end_sleep(ctl, counter_idx, idx, target, H_ABORT)
    return status


def _layout(nworkers):
    words = DONE0 + LINE * nworkers
    return words, words * 8, words * 8 + MESSAGE_BYTES * nworkers


class ControlChannel:
    """The coordinator's end. create() makes the shared memory; workers attach by name."""

    def __init__(self, segment, nworkers, groups, spin_us, poll_ms):
        words, msg_offset, _ = _layout(nworkers)
        self._segment = segment
        self.nworkers = nworkers
        self._ctl = segment.array(np.int64, 0, words)
        self._messages = segment.array(np.uint8, msg_offset, MESSAGE_BYTES * nworkers)
        self._args = self._ctl[ARGS:ARGS + NARGS]
        self._statuses = self._ctl[DONE0 + _STATUS::LINE]
        self._groups = list(groups)
        self._workers = WatchedWorkers()
        self._spin_ns = int(spin_us * 1e3)
        self._pause_ns = min(self._spin_ns, _PAUSE_NS)
        self._poll_s = poll_ms / 1e3
        self._seq = 0              # last command sent
        self._waited = 0           # last command all workers were seen to finish
        self._aborted = False
        self.call_ns = 0           # time spent in call(), all calls together

    @classmethod
    def create(cls, nworkers, *, processes=(), groups=(), spin_us=100.0, poll_ms=25.0):
        """groups: all-reduce groups to abort with this channel.
        spin_us: how long wait() spins before blocking; poll_ms: how often, while
        blocked, it checks that the workers are alive."""
        if nworkers < 1:
            raise ValueError(f"need at least one worker, got {nworkers}")
        seg = SharedSegment.create("control", _layout(nworkers)[2])
        chan = cls(seg, nworkers, groups, spin_us, poll_ms)
        chan._ctl[H_NWORKERS] = nworkers
        chan._ctl[H_COORD_PID] = os.getpid()
        chan._ctl[H_MAGIC] = _MAGIC
        chan.watch(processes)
        return chan

    @property
    def name(self):
        return self._segment.name

    def watch(self, processes, labels=()):
        """The worker processes in rank order: Process objects or pids; labels (where
        each runs, e.g. "node 1") go into the error messages."""
        self._workers = WatchedWorkers(processes, labels)

    def _who(self, rank):
        return self._workers.who(rank)

    def send(self, cmd, *args):
        """Publish a command; returns at once. Waits for the previous one first."""
        if cmd < 0:
            raise ValueError(f"command codes are >= 0 (close() sends QUIT), got {cmd}")
        if len(args) > NARGS:
            raise ValueError(f"at most {NARGS} command arguments, got {len(args)}")
        if self._aborted:
            raise WorkerError("the workers were stopped after an earlier failure")
        if self._waited != self._seq:
            self.wait()
        ctl = self._ctl
        ctl[CMD] = cmd
        self._args[:len(args)] = args
        self._args[len(args):] = 0
        self._seq += 1
        if _publish(ctl, CMD_SEQ, self._seq, SLEEPERS):
            futex_wake(ctl, CMD_SEQ)
        return self._seq

    def wait(self, timeout=None):
        """Wait until every worker has finished the last command. Raises WorkerError if
        a worker failed, died, or (with a timeout in seconds) took too long."""
        seq = self._seq
        if self._waited == seq:
            return
        ctl = self._ctl
        w = _wait_all_done(ctl, self.nworkers, seq, self._pause_ns, self._spin_ns)
        if w != -1:
            self._wait_blocking(seq, w, timeout)
        self._waited = seq
        if self._statuses[:self.nworkers].any():
            self._raise_failure()

    def call(self, cmd, *args, timeout=None):
        start = time.perf_counter_ns()
        self.send(cmd, *args)
        self.wait(timeout)
        self.call_ns += time.perf_counter_ns() - start

    @property
    def commands(self) -> int:
        """How many commands have been sent."""
        return self._seq

    def busy_ns(self) -> list[int]:
        """Per worker: nanoseconds spent on commands so far, each from the worker's
        wait() returning it to its done(). A call's time beyond the slowest worker's is
        the hand-over: publishing, waking, and noticing that every worker is done."""
        return [int(self._ctl[_done_index(w) + _BUSY_NS]) for w in range(self.nworkers)]

    def _wait_blocking(self, seq, w, timeout):
        ctl = self._ctl
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        while w != -1:
            if w == -2:
                raise WorkerError("the workers were stopped after an earlier failure")
            status = _block_once(ctl, COORD_SLEEPING, _done_index(w), seq, self._poll_s)
            if status == TIMED_OUT:
                self._check_alive()
                now = time.monotonic()
                if now - start >= STOP_CHECK_AFTER_S:
                    self._check_running()
                if deadline is not None and now > deadline:
                    self.abort()
                    raise WorkerError(f"{self._who(w)} did not answer within {timeout:g} s")
            w = _wait_all_done(ctl, self.nworkers, seq, 0, 0)

    def _check_alive(self):
        dead = self._workers.first_dead()
        if dead is not None:
            self.abort()
            rank, how = dead
            raise WorkerError(f"{self._who(rank)} died ({how})")

    def _check_running(self):
        stopped = self._workers.first_stopped_too_long()
        if stopped is not None:
            self.abort()
            raise WorkerError(stopped)

    def _raise_failure(self):
        for rank in range(self.nworkers):
            status = int(self._statuses[rank])
            if status == 0:
                continue
            self.abort()
            if status == FAILED:
                n = int(self._ctl[_done_index(rank) + _MSG_LEN])
                off = rank * MESSAGE_BYTES
                text = bytes(self._messages[off:off + n]).decode("utf-8", "replace")
                raise WorkerError(f"{self._who(rank)} failed: {text}")
            raise WorkerError(f"{self._who(rank)} failed with status {status}")

    def abort(self):
        """Stop everything now: workers' wait() returns QUIT, allreduce() returns ABORTED
        in every group given to create()."""
        if self._segment.closed:
            return
        self._aborted = True
        for group in self._groups:
            group.abort()
        _set_abort(self._ctl)
        futex_wake(self._ctl, CMD_SEQ)

    @property
    def aborted(self):
        return self._aborted

    def close(self, timeout=5.0):
        """Tell the workers to quit (abort them if a command is still running), give the
        watched processes `timeout` seconds to exit, terminate what is left, and free the
        shared memory. Safe to call twice."""
        if self._segment.closed:
            return
        try:
            if self._aborted or self._waited != self._seq:
                self.abort()
            else:
                self._seq += 1
                self._ctl[CMD] = QUIT
                if _publish(self._ctl, CMD_SEQ, self._seq, SLEEPERS):
                    futex_wake(self._ctl, CMD_SEQ)
            self._workers.stop_all(timeout)
        finally:
            self._ctl = self._args = self._statuses = self._messages = None
            self._segment.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class WorkerChannel:
    """A worker's end of the channel."""

    def __init__(self, segment, rank, spin_us, poll_ms):
        self._segment = segment
        self.rank = rank
        ctl = segment.array(np.int64, 0, DONE0)
        nworkers = int(ctl[H_NWORKERS])
        if ctl[H_MAGIC] != _MAGIC or not 0 <= rank < nworkers:
            raise NumatpError(f"control segment {segment.name} is not for worker {rank}")
        words, msg_offset, _ = _layout(nworkers)
        self.nworkers = nworkers
        self._ctl = segment.array(np.int64, 0, words)
        self._args = self._ctl[ARGS:ARGS + NARGS]
        self._message = segment.array(np.uint8, msg_offset + rank * MESSAGE_BYTES, MESSAGE_BYTES)
        self._done_idx = _done_index(rank)
        self._spin_ns = int(spin_us * 1e3)
        self._pause_ns = min(self._spin_ns, _PAUSE_NS)
        self._poll_s = poll_ms / 1e3
        self._seq = 0
        self._started_ns = 0
        self._coordinator = int(ctl[H_COORD_PID])
        self._coordinator_is_parent = os.getppid() == self._coordinator
        self.orphaned = False

    @classmethod
    def attach(cls, name, rank, *, spin_us=1000.0, poll_ms=100.0):
        """spin_us: how long wait() spins for the next command before blocking (keep it
        above the coordinator's time between commands, e.g. sampling a token).
        poll_ms: how often a blocked worker checks that the coordinator is alive."""
        seg = SharedSegment.attach(name)
        try:
            return cls(seg, rank, spin_us, poll_ms)
        except BaseException:
            seg.close()
            raise

    def wait(self):
        """The next command as (code, args). args is a view of NARGS int64 values, valid
        until done(). Returns (QUIT, args) when told to quit, when aborted, or when the
        coordinator is gone."""
        ctl = self._ctl
        target = self._seq + 1
        status = wait_until_ge(ctl, CMD_SEQ, target, H_ABORT, self._pause_ns, self._spin_ns)
        while status == TIMED_OUT:
            status = _block_once(ctl, SLEEPERS, CMD_SEQ, target, self._poll_s)
            if status == TIMED_OUT and not self._coordinator_alive():
                self.orphaned = True
                return QUIT, self._args
        if status == ABORTED or ctl[H_ABORT]:
            return QUIT, self._args
        self._seq = target
        self._started_ns = time.perf_counter_ns()
        return int(ctl[CMD]), self._args

    @property
    def aborted(self):
        return bool(self._ctl[H_ABORT])

    def done(self, status=0):
        """Report the current command finished; status != 0 makes the coordinator raise."""
        ctl = self._ctl
        ctl[self._done_idx + _STATUS] = status
        ctl[self._done_idx + _BUSY_NS] += time.perf_counter_ns() - self._started_ns
        if _publish(ctl, self._done_idx, self._seq, COORD_SLEEPING):
            futex_wake(ctl, self._done_idx)

    def fail(self, message):
        """Report the current command failed; the coordinator raises WorkerError with
        this message."""
        data = str(message).encode("utf-8")[:MESSAGE_BYTES]
        self._message[:len(data)] = np.frombuffer(data, np.uint8)
        self._ctl[self._done_idx + _MSG_LEN] = len(data)
        self.done(FAILED)

    def _coordinator_alive(self):
        if self._coordinator_is_parent:
            return os.getppid() == self._coordinator  # re-parented when it dies
        return death(self._coordinator) is None

    def close(self):
        self._ctl = self._args = self._message = None
        self._segment.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
