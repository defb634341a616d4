"""The team's threads: numatp/quant/team.py says what a team is and why. A process
starts one team for its shard's kernels; its threads spin while a step that uses it runs
and sleep on a futex otherwise.

    team = Team(kernels, n_threads)      n_threads - 1 threads, the caller the last one
    with team.session():                 wakes the threads, and lets them sleep after
        step(..., team.ctl)
    team.close()

A thread runs serve() (jitted, without the GIL), which runs jobs as they are published
and returns once no session has been open for SPIN_IDLE spins (a few milliseconds), or
at close; it then sleeps until the next session. A decode's Python work between two
tokens takes well under a millisecond, so the threads stay awake through a generation
and cost nothing once it ends. A step that runs parallel regions parks them first, so
that they sleep at once rather than spin on the cores its regions need.

One-token steps of the dense family use the team (numatp/parallel/local.py's ShardState);
prompts, the MoE family and steps with attention on the GPU keep Numba's parallel
regions. NUMATP_TEAM=0 turns the team off.
"""
import contextlib
import os
import threading

import numpy as np
from numba import njit

from numatp.forward.blocks import attend_job
from numatp.quant.team import (ATTEND, DONE, GEN, KIND, PARK, SESSION, STOP, THREADS,
                               bare, run_kernel_job, team_words, wait_a_little)
from numatp.shm.atomics import fetch_add, load_acquire
from numatp.shm.futex import futex_wait, futex_wake

ENABLED = os.environ.get("NUMATP_TEAM", "1") != "0"
# Spins a thread keeps waiting once no session is open: a few milliseconds (the first
# SPINS_BEFORE_YIELD a pause instruction each, some 40-140 cycles, then a sched_yield
# each, about a microsecond on an idle CPU).
SPIN_IDLE = 3000


@njit(cache=True, nogil=True)
def serve(kernels, team, thread, seen):
    """Thread `thread`'s loop: run each job published after generation `seen`; return
    the last generation run once no session has been open for SPIN_IDLE spins, or has
    been parked, or at close."""
    ctl = bare(team)
    idle = spins = 0
    while True:
        g = load_acquire(ctl, GEN)
        if g != seen:
            seen = g
            kind = ctl[KIND]
            if kind == ATTEND:
                attend_job(ctl, thread)
            else:
                run_kernel_job(kernels, ctl, kind, thread)
            fetch_add(ctl, DONE, 1)
            idle = spins = 0
        elif load_acquire(ctl, STOP) != 0:
            return seen
        else:
            if load_acquire(ctl, SESSION) % 2 == 0:
                idle += 1
                if idle >= SPIN_IDLE or load_acquire(ctl, PARK) != 0:
                    return seen
            spins += 1
            wait_a_little(spins)


class Team:
    """n_threads - 1 threads that take a step's jobs with the thread that runs the step."""

    def __init__(self, kernels, n_threads):
        if n_threads < 2:
            raise ValueError("a team needs at least two threads")
        self.kernels = kernels
        self.ctl = np.zeros(team_words(n_threads), np.int64)
        self.ctl[THREADS] = n_threads
        # compile serve (or load it from the cache) here, not in n threads at once
        stopped = self.ctl.copy()
        stopped[STOP] = 1
        serve(kernels, stopped, 0, 0)
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True,
                                          name=f"numatp-team-{t}")
                         for t in range(1, n_threads)]
        for t in self._threads:
            t.start()

    def _run(self, thread):
        seen = 0
        while True:
            seen = serve(self.kernels, self.ctl, thread, seen)
            if self.ctl[STOP]:
                return
            s = int(self.ctl[SESSION])
            if s % 2 == 0:
                # until a session opens (the word changes); a timeout only re-checks
                futex_wait(self.ctl, SESSION, s, 1.0)

    @contextlib.contextmanager
    def session(self):
        """Wake the threads for the steps run inside."""
        self.ctl[PARK] = 0
        self.ctl[SESSION] += 1   # odd: open
        futex_wake(self.ctl, SESSION)
        try:
            yield self.ctl
        finally:
            self.ctl[SESSION] += 1

    def park(self):
        """Let the threads sleep now, not after SPIN_IDLE spins: a step that does not use
        them (a prompt's, in Numba's parallel regions) needs their cores."""
        self.ctl[PARK] = 1

    def close(self):
        """Stop the threads and wait for them."""
        if self.ctl[STOP]:
            return
        self.ctl[STOP] = 1
        self.ctl[SESSION] += 2   # a changed word: a thread about to sleep returns at once
        futex_wake(self.ctl, SESSION)
        for t in self._threads:
            t.join()
