"""The shared-memory all-reduce: exact sums, identical on every rank, across processes;
aborts and timeouts instead of hangs; shared memory that neither leaks nor vanishes.

Exactness: every rank adds the same float32 slots in rank order (4 ranks as
(x0 + x1) + (x2 + x3)), so the result must equal, bit for bit, numpy's float32 sum taken
in that order (IEEE float32 addition, no fused or reordered operations). No tolerance is
needed or used.
"""
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time

import numatp  # noqa: F401  (sets up numba before it is imported)
import numpy as np
import pytest

from numba import njit

from numatp.shm.allreduce import (ABORTED, BAD_ARGS, OK, TIMED_OUT, AllReduceGroup,
                                       PARALLEL_FLOATS, allreduce, allreduce_parts,
                                       fold_parts)
from numatp.shm.atomics import fetch_add, load_acquire, store_release
from numatp.shm.segment import SharedSegment, leftover_segments

SPAWN = mp.get_context("spawn")
SIZES = [1, 7, 33, 576, 1001, 4099]
BIG_SIZES = [65536, 16383, 40001]


@pytest.fixture(autouse=True)
def no_leaked_segments():
    assert leftover_segments(os.getpid()) == []
    yield
    assert leftover_segments(os.getpid()) == []


@njit(nogil=True)
def _spin_until_set(flag, limit):
    # Nothing in the loop but the load and a counter. Written with a plain `flag[0]`,
    # LLVM reads the flag once and folds the loop into "return -1" (seen with Numba
    # 0.68); the atomic load must be re-read on every pass. The counter only keeps a
    # broken build from hanging the test (2e10 passes: tens of seconds).
    spins = 0
    while load_acquire(flag, 0) == 0:
        spins += 1
        if spins > limit:
            return -1
    return load_acquire(flag, 1)


def test_jitted_spin_sees_a_flag_set_by_another_process():
    with SharedSegment.create("testflag", 64) as seg:
        flag = seg.array(np.int64, 0, 2)
        _spin_until_set(np.ones(2, np.int64), 1)  # compile now, not while the flag flips
        code = ("import time, numpy as np\nfrom numatp.shm.segment import SharedSegment\n"
                f"s = SharedSegment.attach({seg.name!r})\na = s.array(np.int64, 0, 2)\n"
                "time.sleep(0.3)\na[1] = 7\na[0] = 1\ndel a\ns.close()\n")
        setter = subprocess.Popen([sys.executable, "-c", code])
        try:
            assert _spin_until_set(flag, 2 * 10**10) == 7
        finally:
            setter.wait(60)
        del flag


@njit(nogil=True)
def _count(words, n):
    for _ in range(n):
        fetch_add(words, 0, 1)
    store_release(words, 1, n)


def test_fetch_add_loses_no_updates():
    words = np.zeros(2, np.int64)
    _count(words, 1)
    threads = [threading.Thread(target=_count, args=(words, 200_000)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert words[0] == 1 + 400_000 and words[1] == 200_000


def _inputs(seed, call, rank, n, parts=1):
    """Rank `rank`'s parts in call `call`: (parts, n) float32."""
    rng = np.random.default_rng([seed, call, rank])
    return (rng.standard_normal((parts, n)) * 10.0 ** rng.integers(-3, 4, (parts, 1))
            ).astype(np.float32)


def _n_parts(call, rank, max_parts):
    """How many parts a rank holds in a call: varying by rank and by call, as reduce units
    do (a rank of 4 holds 1 or 2 units of 6; the GPU's attention output is one part)."""
    return 1 + (call + rank) % max_parts


def _expected(seed, call, nranks, n, max_parts):
    """Every rank's parts added one at a time, in rank order, float32."""
    acc = None
    for r in range(nranks):
        for x in _inputs(seed, call, r, n, _n_parts(call, r, max_parts)):
            acc = x.copy() if acc is None else acc + x
    return acc


# One job = one group; job fields: (group name, nranks, max_floats, seed, calls, sizes,
# slow_rank, max_parts). Process p takes part, as rank p, in every job with nranks > p.
def _rank_process(jobs, p, report_name, start):
    # Start together: ranks waiting on a peer that is still importing numba would spend
    # most of the run yielding to the importers of the other jobs.
    start.wait(120)
    report_seg = SharedSegment.attach(report_name)
    report = report_seg.array(np.int64, 0, len(jobs) * 8 * 3).reshape(len(jobs), 8, 3)
    delays = np.random.default_rng(p)
    for j, (name, nranks, max_floats, seed, calls, sizes, slow_rank, max_parts) in enumerate(jobs):
        if p >= nranks:
            continue
        group = AllReduceGroup.attach(name, nranks, max_floats, rank=p)
        ctl, data = group.arrays()
        for call in range(calls):
            n = sizes[call % len(sizes)]
            if p == slow_rank and delays.random() < 0.4:
                time.sleep(delays.random() * 0.003)  # arrive late, and at random
            parts = _inputs(seed, call, p, n, _n_parts(call, p, max_parts))
            if max_parts == 1:
                x = parts[0]
                status = allreduce(ctl, data, p, nranks, x)
            else:
                x = np.empty(n, np.float32)
                status = allreduce_parts(ctl, data, p, nranks, parts, x)
            if status != OK:
                report[j, p, 0] = status
                break
            want = _expected(seed, call, nranks, n, max_parts)
            if not np.array_equal(x.view(np.uint32), want.view(np.uint32)):
                report[j, p, 1] += 1
            report[j, p, 2] += 1
        del ctl, data
        group.close()
    del report
    report_seg.close()


def test_sums_are_exact_and_identical_on_every_rank():
    specs = [  # nranks, calls, sizes, slow rank, most parts a rank holds
        (2, 60, SIZES, -1, 1),
        (3, 60, SIZES, -1, 1),
        (4, 48, SIZES, -1, 1),
        (7, 30, SIZES, -1, 1),
        # Ranks with 1-3 parts each, a different count each call: the counts of two
        # consecutive calls must not mix.
        (3, 60, SIZES, 2, 3),
        (4, 40, SIZES, -1, 2),
        # A rank that is often late while the others race ahead, with vectors large
        # enough that summing takes a while: a fast rank that overwrote a slot still
        # being read would show up as a mismatch here.
        (3, 40, BIG_SIZES, 1, 1),
    ]
    groups, jobs = [], []
    report_seg = SharedSegment.create("testreport", len(specs) * 8 * 3 * 8)
    procs = []
    try:
        for seed, (nranks, calls, sizes, slow, max_parts) in enumerate(specs):
            g = AllReduceGroup.create(nranks, max_parts * max(sizes), timeout_s=60)
            groups.append(g)
            jobs.append((g.name, nranks, max_parts * max(sizes), seed, calls, sizes, slow,
                         max_parts))
        ctl, data = groups[0].arrays()
        allreduce(ctl, data, 0, 1, np.zeros(4, np.float32))  # compile (or load) once here
        del ctl, data
        start = SPAWN.Barrier(7)
        procs = [SPAWN.Process(target=_rank_process, args=(jobs, p, report_seg.name, start))
                 for p in range(7)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
        assert [proc.exitcode for proc in procs] == [0] * 7
        report = report_seg.array(np.int64, 0, len(specs) * 8 * 3).reshape(len(specs), 8, 3)
        for j, (nranks, calls, *_) in enumerate(specs):
            assert report[j, :nranks, 0].tolist() == [OK] * nranks, f"job {j}: statuses"
            assert report[j, :nranks, 1].tolist() == [0] * nranks, f"job {j}: wrong sums"
            assert report[j, :nranks, 2].tolist() == [calls] * nranks, f"job {j}: calls"
        del report
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        for g in groups:
            g.close()
        report_seg.close()


def test_single_rank_returns_at_once_and_leaves_x_alone():
    x = np.arange(5, dtype=np.float32)
    assert allreduce(np.zeros(1, np.int64), np.zeros(1, np.float32), 0, 1, x) == OK
    assert x.tolist() == [0, 1, 2, 3, 4]


def test_one_rank_folds_its_parts_as_ranks_add_them():
    """One rank holding all the reduce units adds them in the order N ranks do, also in
    the threaded fold of a prompt-sized vector (over PARALLEL_FLOATS)."""
    for n in (3000, PARALLEL_FLOATS + 12345):
        parts = _inputs(9, n, 0, n, 5)
        out = np.empty(n, np.float32)
        assert allreduce_parts(np.zeros(1, np.int64), np.zeros(1, np.float32), 0, 1, parts,
                               out) == OK
        want = (((parts[0] + parts[1]) + parts[2]) + parts[3]) + parts[4]
        assert np.array_equal(out.view(np.uint32), want.view(np.uint32))
        again = np.empty((1, n), np.float32)
        fold_parts(parts.reshape(5, 1, n), again)
        assert np.array_equal(again[0].view(np.uint32), want.view(np.uint32))


def test_more_parts_than_the_group_holds_are_refused():
    with AllReduceGroup.create(2, 100) as g:
        ctl, data = g.arrays()
        assert allreduce_parts(ctl, data, 0, 2, np.zeros((3, 40), np.float32),
                               np.zeros(40, np.float32)) == BAD_ARGS


def test_bad_arguments_are_refused():
    with AllReduceGroup.create(2, 100, timeout_s=5) as g:
        ctl, data = g.arrays()
        assert allreduce(ctl, data, 0, 2, np.zeros(101, np.float32)) == BAD_ARGS
        assert allreduce(ctl, data, 2, 2, np.zeros(10, np.float32)) == BAD_ARGS
        assert allreduce(ctl, data, 0, 3, np.zeros(10, np.float32)) == BAD_ARGS
        del ctl, data


def test_abort_word_releases_a_waiting_rank():
    with AllReduceGroup.create(2, 64, timeout_s=60) as g:
        ctl, data = g.arrays()
        timer = threading.Timer(0.2, g.abort)  # allreduce releases the GIL while it waits
        timer.start()
        assert allreduce(ctl, data, 0, 2, np.ones(64, np.float32)) == ABORTED
        timer.join()
        assert g.aborted
        del ctl, data


def test_each_rank_counts_its_wait_for_peers():
    """Rank 1 arrives 0.2 s late: rank 0 has waited at least that long, rank 1 (whose
    peer had already arrived) less."""
    late_s = 0.2
    with AllReduceGroup.create(2, 64, timeout_s=60) as g:
        ctl, data = g.arrays()
        assert g.waited_ns() == [0, 0]

        def late_rank():
            time.sleep(late_s)
            results.append(allreduce(ctl, data, 1, 2, np.ones(64, np.float32)))

        results = []
        peer = threading.Thread(target=late_rank)
        peer.start()
        results.append(allreduce(ctl, data, 0, 2, np.ones(64, np.float32)))
        peer.join(60)
        assert results == [OK, OK]
        waited = g.waited_ns()
        assert waited[0] >= late_s * 1e9 and waited[1] < waited[0]
        del ctl, data


def test_missing_peer_times_out():
    with AllReduceGroup.create(2, 64, timeout_s=0.2) as g:
        ctl, data = g.arrays()
        assert allreduce(ctl, data, 0, 2, np.ones(64, np.float32)) == TIMED_OUT
        del ctl, data


def _dying_rank(name, calls):
    group = AllReduceGroup.attach(name, 2, 64, rank=1)
    ctl, data = group.arrays()
    for _ in range(calls):
        allreduce(ctl, data, 1, 2, np.ones(64, np.float32))
    os._exit(3)  # no goodbye: what a crash looks like to the peers


def test_dead_peer_turns_into_an_error_not_a_hang():
    # The coordinator's job (ControlChannel) is played here by the test: it notices the
    # dead process and sets the abort word; rank 0 must then return ABORTED.
    with AllReduceGroup.create(2, 64, timeout_s=60) as g:
        proc = SPAWN.Process(target=_dying_rank, args=(g.name, 5))
        proc.start()
        statuses = []

        def rank0():
            ctl, data = g.arrays()
            while True:
                status = allreduce(ctl, data, 0, 2, np.ones(64, np.float32))
                statuses.append(status)
                if status != OK:
                    return

        t = threading.Thread(target=rank0)
        t.start()
        proc.join(60)
        assert proc.exitcode == 3
        g.abort()
        t.join(60)
        assert not t.is_alive()
        assert statuses[:5] == [OK] * 5 and statuses[5:] == [ABORTED]


def test_segment_survives_an_attaching_process_and_close_is_idempotent():
    # The attaching process runs in a fresh interpreter with its own resource tracker:
    # had it registered the segment, its tracker would unlink it when it exits.
    seg = SharedSegment.create("testsurvive", 4096)
    try:
        view = seg.array(np.int64, 0, 4)
        code = ("import numpy as np\nfrom numatp.shm.segment import SharedSegment\n"
                f"s = SharedSegment.attach({seg.name!r})\n"
                "a = s.array(np.int64, 0, 4)\na[1] = 42\ndel a\ns.close()\ns.close()\n")
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        assert view[1] == 42
        assert seg.name in leftover_segments(os.getpid())
        del view
    finally:
        seg.close()
        seg.close()
    assert not os.path.exists(f"/dev/shm/{seg.name}")


def test_attach_checks_the_layout():
    with AllReduceGroup.create(3, 100) as g:
        with pytest.raises(numatp.NumatpError, match="3 ranks x 100 floats"):
            AllReduceGroup.attach(g.name, 2, 100)
    with pytest.raises(numatp.NumatpError, match="does not exist"):
        SharedSegment.attach("numatp_0_nothing_00000000")
