"""Shared memory segments: space is reserved when a segment is made, so a full /dev/shm
is one clear error up front instead of SIGBUS at some later first touch; and segments
whose creator is gone (its whole process group SIGKILLed, resource tracker included) are
reclaimed by the next coordinator, while those of live processes are left alone.
"""
import errno
import fcntl
import os
import signal
import subprocess
import sys

import pytest

import numatp
from models import STORIES
from numatp.errors import NumatpError
from numatp.shm.allreduce import AllReduceGroup
from numatp.shm.segment import (PREFIX, SHM_DIR, SharedSegment, leftover_segments,
                                 reclaim_stale_segments)
from robust import error_line, run_main

NO_ROOM = r"not enough shared memory in /dev/shm: need [\d,]+\.\d MB, [\d,]+\.\d MB free"
WAIT_S = 60


def _more_than_shm_holds():
    """A size that a tmpfs refuses at once: larger than the whole file system, so the
    kernel fails the reservation before allocating anything."""
    st = os.statvfs(SHM_DIR)
    return st.f_blocks * st.f_frsize + (1 << 20)


def test_a_segment_larger_than_free_shared_memory_is_refused():
    with pytest.raises(NumatpError, match=NO_ROOM):
        SharedSegment.create("test", _more_than_shm_holds())
    assert leftover_segments(os.getpid()) == []


def test_a_worker_without_room_for_its_all_reduce_slots_is_refused():
    """create() reserves only the control lines; each rank reserves its own slots (on its
    own NUMA node) when it attaches."""
    group = AllReduceGroup.create(2, _more_than_shm_holds() // 4)
    try:
        with pytest.raises(NumatpError, match=NO_ROOM):
            AllReduceGroup.attach(group.name, 2, _more_than_shm_holds() // 4, rank=1)
    finally:
        group.close()
    assert leftover_segments(os.getpid()) == []


@pytest.fixture
def shm_full(monkeypatch):
    """/dev/shm with no room left, for this process (the coordinator): the workers never
    start, since its own segments come first."""
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "posix_fallocate", no_space)


def test_full_shared_memory_at_load(shm_full, monkeypatch, capsys):
    with pytest.raises(NumatpError, match=NO_ROOM):
        numatp.load(STORIES, nodes=2, ctx_size=64)
    assert leftover_segments(os.getpid()) == []
    code, out, err = run_main(["generate", "Once", "-m", STORIES, "--nodes", 2], monkeypatch,
                              capsys)
    assert code == 1 and out == ""
    assert "not enough shared memory in /dev/shm" in error_line(err)
    assert leftover_segments(os.getpid()) == []


# ---- stale segments ---------------------------------------------------------------------

_MAKE_SEGMENT = """
import sys, time
from numatp.shm.segment import SharedSegment
seg = SharedSegment.create("stale", 4096)
print(seg.name, flush=True)
time.sleep(600)
"""


def test_segments_of_a_killed_process_group_are_reclaimed():
    """A process in its own session makes a segment; killing its whole group takes its
    resource tracker too, so the segment stays until reclaimed."""
    proc = subprocess.Popen([sys.executable, "-c", _MAKE_SEGMENT], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        name = proc.stdout.readline().strip()
        assert name.startswith(f"{PREFIX}{proc.pid}_")
        mine = SharedSegment.create("live", 4096)
        try:
            assert name not in reclaim_stale_segments()  # its creator is alive
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(WAIT_S)
            assert name in leftover_segments(proc.pid)
            assert name in reclaim_stale_segments()
            assert leftover_segments(proc.pid) == []
            assert mine.name in leftover_segments(os.getpid())  # ours is alive
        finally:
            mine.close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(WAIT_S)
        for leftover in leftover_segments(proc.pid):
            os.unlink(os.path.join(SHM_DIR, leftover))


def _unlocked_file(pid):
    path = os.path.join(SHM_DIR, f"{PREFIX}{pid}_test_{os.urandom(4).hex()}")
    return path, os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)


def test_a_locked_segment_is_not_reclaimed_even_if_its_pid_is_gone():
    """The pid in a name may belong to another pid namespace sharing this /dev/shm (a
    container): its creator's lock says that it is alive."""
    path, fd = _unlocked_file(_dead_pid())
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert os.path.basename(path) not in reclaim_stale_segments()
        assert os.path.exists(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert os.path.basename(path) in reclaim_stale_segments()
        assert not os.path.exists(path)
    finally:
        os.close(fd)
        if os.path.exists(path):
            os.unlink(path)


def test_an_unlocked_segment_of_a_live_pid_is_not_reclaimed():
    """No lock but a live pid: a creator between making the file and locking it, or the
    pid reused by another program (then a later run reclaims it)."""
    path, fd = _unlocked_file(os.getpid())
    try:
        assert os.path.basename(path) not in reclaim_stale_segments()
        assert os.path.exists(path)
    finally:
        os.close(fd)
        os.unlink(path)


def _dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid
