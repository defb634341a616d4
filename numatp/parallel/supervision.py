"""Watching worker processes: which ones died and how, which ones are stopped (SIGSTOP)
and for how long, and ending them. The control channel asks these questions while it
waits for a command to finish; the coordinator asks them while workers load.

Processes are multiprocessing.Process objects or plain pids (a test or a benchmark may
watch processes it did not start itself).
"""
import os
import signal
import time

import numpy as np
import psutil

def death(proc):
    """None while `proc` runs, else how it ended, in words."""
    if isinstance(proc, (int, np.integer)):
        try:
            if psutil.Process(int(proc)).status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            pass
        return "exited"
    if proc.is_alive():
        return None
    code = proc.exitcode
    if code is None:
        return "exited"
    return f"exit code {code}" if code >= 0 else f"killed by signal {-code}"


def pid_of(proc):
    return int(proc) if isinstance(proc, (int, np.integer)) else proc.pid


STOPPED_LIMIT_S = 5.0     # a worker stopped this long is given up on
STOP_CHECK_AFTER_S = 1.0  # waits shorter than this (every step) read nothing from /proc


class StopWatch:
    """Tells when a process has stayed stopped (state T: SIGSTOP, or SIGTSTP sent to it
    alone) for `limit_s`. Stopped time counts only between checks at most GAP_S apart: a
    longer gap means the watcher itself was not running (a whole process group stopped
    with Ctrl-Z and resumed), and then the count starts again. A tracing stop (a
    debugger attached) does not count."""

    GAP_S = 2.0

    def __init__(self, limit_s=STOPPED_LIMIT_S):
        self.limit_s = limit_s
        self._since = {}   # pid -> (seen stopped since, last check)

    def stopped_too_long(self, pid):
        now = time.monotonic()
        try:
            stopped = psutil.Process(pid).status() == psutil.STATUS_STOPPED
        except psutil.Error:  # gone: the liveness check reports that
            stopped = False
        if not stopped:
            self._since.pop(pid, None)
            return False
        since, last = self._since.get(pid, (now, now))
        if now - last > self.GAP_S:
            since = now
        self._since[pid] = (since, now)
        return now - since >= self.limit_s


def stop(proc, deadline):
    """Wait for `proc` until the deadline, then terminate it, then kill it."""
    if isinstance(proc, (int, np.integer)):
        try:
            p = psutil.Process(int(proc))
            try:
                p.wait(max(deadline - time.monotonic(), 0))
            except psutil.TimeoutExpired:
                p.terminate()
                try:
                    p.wait(1.0)
                except psutil.TimeoutExpired:
                    p.kill()
        except psutil.NoSuchProcess:
            pass
        return
    if proc.pid is None:  # never started
        return
    proc.join(max(deadline - time.monotonic(), 0))
    if proc.is_alive():
        proc.terminate()
        proc.join(1.0)
    if proc.is_alive():
        proc.kill()
        proc.join(1.0)


def kill_stopped(proc):
    """A stopped process cannot act on a request to quit (SIGTERM waits for SIGCONT)."""
    try:
        os.kill(pid_of(proc), signal.SIGKILL)
    except ProcessLookupError:
        pass


def stopped_message(who, limit_s):
    return (f"{who} was stopped (SIGSTOP or SIGTSTP sent to it) and did not run for "
            f"{limit_s:g} s; it was killed")


class WatchedWorkers:
    """Worker processes in rank order, with where each runs ("node 1") for the messages
    that name them."""

    def __init__(self, processes=(), labels=()):
        self.processes = list(processes)
        self.labels = list(labels)
        self._stops = StopWatch()

    def who(self, rank):
        if rank < len(self.labels):
            return f"worker {rank} ({self.labels[rank]})"
        return f"worker {rank}"

    def first_dead(self):
        """(rank, how it ended) of the first worker that is gone, or None."""
        for rank, proc in enumerate(self.processes):
            how = death(proc)
            if how is not None:
                return rank, how
        return None

    def first_stopped_too_long(self):
        """The message naming the first worker stopped for longer than the limit, which
        is then killed (a stopped process cannot act on a request to quit); or None."""
        for rank, proc in enumerate(self.processes):
            if self._stops.stopped_too_long(pid_of(proc)):
                kill_stopped(proc)
                return stopped_message(self.who(rank), self._stops.limit_s)
        return None

    def stop_all(self, timeout):
        """Give every worker until `timeout` seconds from now to exit, then terminate,
        then kill what is left."""
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            stop(proc, deadline)
