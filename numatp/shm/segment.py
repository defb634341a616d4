"""POSIX shared memory segments that the coordinator creates and workers attach by name.

    seg = SharedSegment.create("allreduce", nbytes)      # coordinator: owns the segment
    seg = SharedSegment.attach(name)                     # worker
    view = seg.array(np.int64, offset=0, count=16)       # numpy view, no copy
    seg.close()                                          # creator also unlinks

Names are numatp_<creator pid>_<purpose>_<random>, so leftovers can be traced to the
process that made them (leftover_segments() lists them; tests use it to check for leaks).

Leftovers of a creator that died without closing them (its whole process group
SIGKILLed, resource tracker included) are removed by the next coordinator:
reclaim_stale_segments(). A creator holds a shared flock on each of its segments for as
long as it lives, and the kernel drops the lock when the process ends however it ends.
A segment is stale when its lock is free *and* no process has the pid in its name: the
lock alone would misjudge the instant between creating a segment and locking it, the pid
alone a pid reused by another program or a creator in another pid namespace that shares
this /dev/shm (a container).

Space is reserved when a segment is made (posix_fallocate), not at first touch: a page
of a full /dev/shm kills the process touching it with SIGBUS, with no reason given.

Why not multiprocessing.shared_memory: on Python < 3.13 every *attach* registers the
segment with the resource tracker, which then unlinks it (and warns about a "leak") when
the attaching worker exits, under the feet of the coordinator. Here only the creator
registers, so the tracker still removes the segment if the coordinator is killed before
it can close, and workers never touch the tracker.

On Linux shm_open(name) is open("/dev/shm/" + name); this module opens that path
directly, which keeps it free of private CPython modules.

Reserving a range allocates its pages, on the NUMA node of the reserving process's memory
policy; a segment whose parts belong to different workers (the all-reduce slots) is made
with reserve=False, and each worker reserves its own part with reserve().
"""
import errno
import fcntl
import mmap
import os
import re
import secrets
import signal
import stat
import weakref
from multiprocessing import resource_tracker

import numpy as np

from numatp.errors import NumatpError

SHM_DIR = "/dev/shm"
PREFIX = "numatp_"
_TRACKER_TYPE = "shared_memory"  # the tracker unlinks these with shm_unlink("/" + name)


def _path(name):
    return os.path.join(SHM_DIR, name)


def _release(name, creator_pid, fd):
    """Close the descriptor (dropping the creator's lock) and, in the creating process,
    remove the name: a forked child that inherited the object must not remove the
    segment its parent still uses."""
    if os.getpid() == creator_pid:
        try:
            os.unlink(_path(name))
        except FileNotFoundError:
            pass
        try:
            resource_tracker.unregister("/" + name, _TRACKER_TYPE)
        except Exception:  # tracker already gone at interpreter shutdown: nothing to undo
            pass
    os.close(fd)


def _start_tracker():
    """The resource tracker (it removes our segments if we are killed) must survive a
    hang-up: a shell whose terminal closes sends SIGHUP to the whole process group, and
    multiprocessing shields the tracker from SIGINT and SIGTERM only. It keeps blocked
    what it starts with blocked. (No effect if it is running already.)"""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _megabytes(nbytes):
    return f"{nbytes / 1e6:,.1f} MB"


class SharedSegment:
    """One mapped shared memory segment. Use create() or attach()."""

    def __init__(self, name, mm, size, fd, creator):
        self.name = name
        self.size = size
        self._mmap = mm
        self._closed = False
        # The descriptor stays open: reserve() needs it, and it holds the creator's lock.
        # Closed, and the name removed by the creator, at close(), or at garbage
        # collection / interpreter exit if close() was never called.
        self._closer = weakref.finalize(self, _release, name, os.getpid() if creator else None, fd)
        self._fd = fd

    @classmethod
    def create(cls, purpose, size, reserve=True):
        """reserve=False leaves the space to be reserved by reserve() (by the processes
        whose NUMA node should hold each part); not reserving at all risks SIGBUS."""
        if not os.path.isdir(SHM_DIR):
            raise NumatpError(f"{SHM_DIR} is missing: numatp needs POSIX shared memory")
        purpose = re.sub(r"[^a-z0-9]", "", purpose.lower()) or "seg"
        size = max(int(size), 1)
        name = f"{PREFIX}{os.getpid()}_{purpose}_{secrets.token_hex(4)}"
        fd = os.open(_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            _start_tracker()
            resource_tracker.register("/" + name, _TRACKER_TYPE)
            fcntl.flock(fd, fcntl.LOCK_SH)
            os.ftruncate(fd, size)
            if reserve:
                _reserve(fd, 0, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            _release(name, os.getpid(), fd)
            raise
        return cls(name, mm, size, fd, creator=True)

    @classmethod
    def attach(cls, name):
        if not name.startswith(PREFIX) or "/" in name:
            raise NumatpError(f"not a numatp shared memory segment: {name!r}")
        try:
            fd = os.open(_path(name), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NumatpError(f"shared memory segment {name} does not exist "
                              "(did the coordinator exit?)") from None
        try:
            size = os.fstat(fd).st_size
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(name, mm, size, fd, creator=False)

    def reserve(self, offset, nbytes):
        """Allocate the pages of [offset, offset + nbytes) now, on this process's NUMA
        node (by its memory policy). Raises NumatpError if /dev/shm has no room."""
        if self._closed:
            raise ValueError(f"segment {self.name} is closed")
        _reserve(self._fd, offset, nbytes)

    def array(self, dtype, offset, count):
        """A numpy view of `count` items of `dtype` starting at byte `offset`."""
        if self._closed:
            raise ValueError(f"segment {self.name} is closed")
        dtype = np.dtype(dtype)
        if offset < 0 or offset % dtype.itemsize or offset + count * dtype.itemsize > self.size:
            raise ValueError(f"view [{offset}, +{count} x {dtype}] outside segment "
                             f"{self.name} of {self.size} bytes or misaligned")
        return np.frombuffer(self._mmap, dtype=dtype, count=count, offset=offset)

    @property
    def closed(self):
        return self._closed

    def close(self):
        """Unmap, and unlink if this process created the segment. Safe to call twice.
        Numpy views still alive keep the mapping (not the name) until they are freed."""
        if self._closed:
            return
        self._closed = True
        try:
            self._mmap.close()
        except BufferError:
            pass  # views exist; the mapping goes away with the last of them
        self._closer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._closed else f"{self.size} bytes"
        return f"SharedSegment({self.name}, {state})"


def _reserve(fd, offset, nbytes):
    try:
        os.posix_fallocate(fd, offset, nbytes)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            st = os.statvfs(SHM_DIR)
            raise NumatpError(f"not enough shared memory in {SHM_DIR}: need "
                              f"{_megabytes(nbytes)}, {_megabytes(st.f_bavail * st.f_frsize)} "
                              "free") from None
        if e.errno == errno.ENOMEM:  # e.g. a memory cgroup's limit
            raise NumatpError(f"not enough memory for {_megabytes(nbytes)} of shared memory "
                              f"in {SHM_DIR}") from None
        raise


def reclaim_stale_segments():
    """Remove the numatp segments whose creator is gone (see the module docstring);
    returns their names. Segments of live processes, and files that are not ours to
    remove, are left alone."""
    removed = []
    for name in leftover_segments():
        if _pid_exists(_creator_pid(name)):
            continue
        try:
            fd = os.open(_path(name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # gone already, or not a file we may open
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(_path(name))
            removed.append(name)
        except OSError:  # a live creator holds the lock, or the file is not ours
            pass
        finally:
            os.close(fd)
    return removed


def _creator_pid(name):
    try:
        return int(name[len(PREFIX):].split("_", 1)[0])
    except ValueError:
        return None


def _pid_exists(pid):
    if pid is None or pid <= 0:
        return True  # not a name we made: not ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def leftover_segments(creator_pid=None):
    """Names of numatp segments in /dev/shm, optionally only those `creator_pid` made."""
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    prefix = PREFIX if creator_pid is None else f"{PREFIX}{creator_pid}_"
    return sorted(n for n in names if n.startswith(prefix))
