"""The coordinator <-> worker command channel: round trips (including across the
spin/sleep boundary, where a lost wake-up would hang), failures, dead workers and a dead
coordinator turning into errors or exits, never hangs, and no shared memory left behind.

Every wait here has a deadline (wait(timeout=...), join(timeout)), so a bug fails a test
instead of hanging the run.
"""
import multiprocessing as mp
import os
import signal
import threading
import time
import types
from multiprocessing import resource_tracker

import numatp  # noqa: F401  (sets up numba before it is imported)
import numpy as np
import psutil
import pytest

from numatp.errors import WorkerError
from numatp.parallel import supervision
from numatp.parallel.control import NARGS, QUIT, ControlChannel, WorkerChannel
from numatp.parallel.supervision import STOPPED_LIMIT_S
from numatp.shm.allreduce import ABORTED, OK, AllReduceGroup, allreduce
from numatp.shm.segment import SharedSegment, leftover_segments

SPAWN = mp.get_context("spawn")
ECHO, SLEEP, FAIL, REDUCE_FOREVER = range(4)
WAIT_S = 60  # deadline for anything that should take well under a second


@pytest.fixture(autouse=True, scope="module")
def no_leaked_segments():
    assert leftover_segments(os.getpid()) == []
    yield
    assert leftover_segments(os.getpid()) == []


def _worker(chan_name, rank, out_name, group_name=None, nranks=0):
    """Serves commands until QUIT. Exit code 0 means a clean stop; 7 means an allreduce
    ended with something other than ABORTED."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    chan = WorkerChannel.attach(chan_name, rank, spin_us=1000, poll_ms=50)
    out_seg = SharedSegment.attach(out_name)
    out = out_seg.array(np.int64, 0, out_seg.size // 8).reshape(-1, 2)
    group = AllReduceGroup.attach(group_name, nranks, 64, rank=rank) if group_name else None
    code = 0
    while True:
        cmd, args = chan.wait()
        if cmd == QUIT:
            break
        if cmd == ECHO:  # args: k, a, b -> out[k, rank] = a * (rank + 1) + b + sum(args[3:])
            out[args[0], rank] = args[1] * (rank + 1) + args[2] + args[3:].sum()
        elif cmd == SLEEP:
            time.sleep(args[0] / 1e3)
        elif cmd == FAIL and args[0] == rank:
            chan.fail(f"boom from rank {rank}")
            continue
        elif cmd == REDUCE_FOREVER:  # args: who dies, after how many calls
            ctl, data = group.arrays()
            calls = 0
            while True:
                if rank == args[0] and calls == args[1]:
                    os._exit(3)
                status = allreduce(ctl, data, rank, nranks, np.ones(64, np.float32))
                calls += 1
                if status != OK:
                    code = 0 if status == ABORTED else 7
                    break
            del ctl, data
        chan.done()
    if group is not None:
        group.close()
    del out
    out_seg.close()
    chan.close()
    os._exit(code)


class Workers:
    """n workers on a fresh channel, with a shared int64 (rows, 2) output table."""

    def __init__(self, n, rows=1, group=None):
        self.out_seg = SharedSegment.create("testout", rows * 2 * 8)
        self.out = self.out_seg.array(np.int64, 0, rows * 2).reshape(rows, 2)
        self.chan = ControlChannel.create(n, groups=[group] if group else [], poll_ms=25)
        gname = group.name if group else None
        self.procs = [SPAWN.Process(target=_worker, daemon=True,
                                    args=(self.chan.name, r, self.out_seg.name, gname, n))
                      for r in range(n)]
        for p in self.procs:
            p.start()
        self.chan.watch(self.procs)

    def close(self):
        self.chan.close(timeout=WAIT_S)
        del self.out
        self.out_seg.close()


@pytest.fixture(scope="module")
def pool():
    """Two workers shared by the tests that leave them running (starting processes is
    the slow part of this file)."""
    w = Workers(2, rows=400)
    yield w
    w.close()


@pytest.fixture
def two_workers():
    w = Workers(2)
    yield w
    w.close()


def test_round_trips_with_the_workers_spinning_and_sleeping(pool):
    w = pool
    rng = np.random.default_rng(0)
    # Gaps around the workers' 1 ms spin: some commands find them spinning, others
    # blocked on the futex, others just between the two.
    gaps = rng.choice([0.0, 0.0002, 0.0009, 0.0011, 0.002, 0.01], size=300)
    for k, gap in enumerate(gaps):
        time.sleep(gap)
        a, b = int(rng.integers(-1000, 1000)), int(rng.integers(-1000, 1000))
        w.chan.call(ECHO, k, a, b, 0, 0, 0, 0, k, timeout=WAIT_S)
        assert w.out[k].tolist() == [a + b + k, 2 * a + b + k]
    # A command that outlasts the coordinator's spin: it blocks and must be woken.
    w.chan.call(SLEEP, 30, timeout=WAIT_S)
    w.chan.call(ECHO, 399, 5, 6, timeout=WAIT_S)  # unset arguments read as 0
    assert w.out[399].tolist() == [11, 16]


def test_the_time_of_commands_is_counted_on_both_sides(pool):
    """A 30 ms command adds at least 30 ms to every worker's busy time and to the
    coordinator's time in call(), and one to the commands sent."""
    w = pool
    commands, call_ns, busy = w.chan.commands, w.chan.call_ns, w.chan.busy_ns()
    w.chan.call(SLEEP, 30, timeout=WAIT_S)
    assert w.chan.commands == commands + 1
    assert w.chan.call_ns - call_ns >= 30e6
    added = [after - before for before, after in zip(busy, w.chan.busy_ns())]
    assert min(added) >= 30e6 and max(added) <= w.chan.call_ns - call_ns, added


def test_idle_workers_do_not_burn_cpu(pool):
    w = pool
    w.chan.call(ECHO, 0, 1, 2, timeout=WAIT_S)
    time.sleep(0.1)  # past the spin phase
    procs = [psutil.Process(p.pid) for p in w.procs]
    before = [sum(p.cpu_times()[:2]) for p in procs]
    time.sleep(0.5)
    used = [sum(p.cpu_times()[:2]) - b for p, b in zip(procs, before)]
    # A spinning worker would use ~0.5 s here; a blocked one wakes every 50 ms to check
    # on the coordinator. 0.1 s leaves a wide margin for a loaded machine.
    assert max(used) < 0.1, used


def test_worker_failure_raises_with_its_message(two_workers):
    w = two_workers
    w.chan.call(ECHO, 0, 1, 1, timeout=WAIT_S)
    with pytest.raises(WorkerError, match="worker 1 failed: boom from rank 1"):
        w.chan.call(FAIL, 1, timeout=WAIT_S)
    with pytest.raises(WorkerError):
        w.chan.send(ECHO, 0)  # the channel stays stopped after a failure
    for p in w.procs:  # a failure stops everyone
        p.join(WAIT_S)
        assert p.exitcode == 0


def test_dead_worker_is_named_and_releases_peers_stuck_in_allreduce():
    group = AllReduceGroup.create(3, 64, timeout_s=WAIT_S)
    w = Workers(3, group=group)
    try:
        # "died", not "did not answer": the liveness check, not the timeout, ended it.
        with pytest.raises(WorkerError, match=r"worker 2 died \(exit code 3\)"):
            w.chan.call(REDUCE_FOREVER, 2, 50, timeout=WAIT_S)
        for p in w.procs[:2]:
            p.join(WAIT_S)
            assert p.exitcode == 0  # their allreduce returned ABORTED, then they quit
    finally:
        w.close()
        group.close()


def test_stopped_worker_is_named_and_killed(two_workers):
    """A worker stopped by SIGSTOP is alive but never answers: after STOPPED_LIMIT_S it is
    killed and named, instead of being waited for forever."""
    w = two_workers
    w.chan.call(ECHO, 0, 1, 1, timeout=WAIT_S)
    os.kill(w.procs[1].pid, signal.SIGSTOP)
    try:
        with pytest.raises(WorkerError, match=r"^worker 1 was stopped \(SIGSTOP or SIGTSTP sent "
                                              r"to it\) and did not run for 5 s; it was killed$"):
            w.chan.call(SLEEP, 10, timeout=WAIT_S)
        w.procs[1].join(WAIT_S)
        assert w.procs[1].exitcode == -signal.SIGKILL
    finally:
        if w.procs[1].is_alive():
            os.kill(w.procs[1].pid, signal.SIGCONT)


def test_briefly_stopped_worker_is_waited_for(two_workers):
    w = two_workers
    w.chan.call(ECHO, 0, 1, 1, timeout=WAIT_S)
    os.kill(w.procs[1].pid, signal.SIGSTOP)
    resume = threading.Timer(STOPPED_LIMIT_S / 2, os.kill, (w.procs[1].pid, signal.SIGCONT))
    resume.start()
    try:
        w.chan.call(ECHO, 0, 3, 4, timeout=WAIT_S)
        assert w.out[0].tolist() == [7, 10]
    finally:
        resume.join()


def test_stop_watch_does_not_count_time_it_was_not_watching(monkeypatch):
    """Stopped time counts only between checks close together: a gap means the watcher
    was itself stopped (Ctrl-Z stops the whole process group), and then it starts over."""
    clock = [1000.0]
    monkeypatch.setattr(supervision, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    proc = SPAWN.Process(target=time.sleep, args=(WAIT_S,), daemon=True)
    proc.start()
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        while psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED:
            time.sleep(0.01)
        watch = supervision.StopWatch(limit_s=5.0)
        assert not watch.stopped_too_long(proc.pid)
        clock[0] += 600.0          # the watcher was away: no count
        assert not watch.stopped_too_long(proc.pid)
        for _ in range(4):
            clock[0] += 1.0
            assert not watch.stopped_too_long(proc.pid)
        clock[0] += 1.0
        assert watch.stopped_too_long(proc.pid)
        os.kill(proc.pid, signal.SIGCONT)
        while psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED:
            time.sleep(0.01)
        clock[0] += 1.0
        assert not watch.stopped_too_long(proc.pid)  # running again: the count is reset
    finally:
        proc.kill()
        proc.join(WAIT_S)


def test_bad_commands_are_refused(pool):
    with pytest.raises(ValueError):
        pool.chan.send(-5)
    with pytest.raises(ValueError):
        pool.chan.send(ECHO, *range(NARGS + 1))
    pool.chan.call(ECHO, 0, 1, 2, timeout=WAIT_S)  # still usable


def _short_lived_coordinator(report):
    """Creates a channel and one worker, reports them, then waits to be killed."""
    chan = ControlChannel.create(1)
    out = SharedSegment.create("testout", 16)
    p = SPAWN.Process(target=_worker, args=(chan.name, 0, out.name))
    p.start()
    chan.watch([p])
    chan.call(ECHO, 0, 1, 1, timeout=WAIT_S)  # the worker is up and serving
    report.send(p.pid)
    time.sleep(WAIT_S)


def test_worker_quits_when_the_coordinator_is_killed():
    resource_tracker.ensure_running()  # so that the coordinator shares ours (see below)
    parent, child = SPAWN.Pipe(duplex=False)
    coordinator = SPAWN.Process(target=_short_lived_coordinator, args=(child,))
    coordinator.start()
    try:
        assert parent.poll(WAIT_S)
        worker = psutil.Process(parent.recv())
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.join(WAIT_S)
        worker.wait(WAIT_S)  # raises psutil.TimeoutExpired if the worker stays behind
    finally:
        if coordinator.is_alive():
            coordinator.kill()
        # A killed coordinator cannot unlink its segments; the resource tracker it shares
        # with this process would, when this process exits. Do it now instead, so that
        # the leak check passes and the tracker has nothing left to warn about.
        for name in leftover_segments(coordinator.pid):
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:  # reclaimed by a coordinator starting meanwhile
                pass
            resource_tracker.unregister(f"/{name}", "shared_memory")
