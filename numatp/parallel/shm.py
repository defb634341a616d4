"""POSIX shared memory segments that the coordinator creates and workers attach by name.

    seg = SharedSegment.create("allreduce", nbytes)      # coordinator: owns the segment
    seg = SharedSegment.attach(name)                     # worker
    view = seg.array(np.int64, offset=0, count=16)       # numpy view, no copy
    seg.close()                                          # creator also unlinks

Names are numatp_<creator pid>_<purpose>_<random>, so leftovers can be traced to the
process that made them (leftover_segments() lists them; tests use it to check for leaks).

Why not multiprocessing.shared_memory: on Python < 3.13 every *attach* registers the
segment with the resource tracker, which then unlinks it (and warns about a "leak") when
the attaching worker exits, under the feet of the coordinator. Here only the creator
registers, so the tracker still removes the segment if the coordinator is killed before
it can close, and workers never touch the tracker.

On Linux shm_open(name) is open("/dev/shm/" + name); this module opens that path
directly, which keeps it free of private CPython modules.

Pages are not touched at creation: each page lands on the NUMA node of the first process
that writes it, so a worker that writes its own part first gets it in local memory.
"""
import mmap
import os
import re
import secrets
import weakref
from multiprocessing import resource_tracker

import numpy as np

from numatp.errors import NumatpError

SHM_DIR = "/dev/shm"
PREFIX = "numatp_"
_TRACKER_TYPE = "shared_memory"  # the tracker unlinks these with shm_unlink("/" + name)


def _path(name):
    return os.path.join(SHM_DIR, name)


def _unlink(name, creator_pid):
    # Only in the creating process: a forked child that inherited the object must not
    # remove the segment its parent still uses.
    if os.getpid() != creator_pid:
        return
    try:
        os.unlink(_path(name))
    except FileNotFoundError:
        pass
    try:
        resource_tracker.unregister("/" + name, _TRACKER_TYPE)
    except Exception:  # tracker already gone at interpreter shutdown: nothing to undo
        pass


class SharedSegment:
    """One mapped shared memory segment. Use create() or attach()."""

    def __init__(self, name, mm, size, creator):
        self.name = name
        self.size = size
        self._mmap = mm
        self._closed = False
        # The creator unlinks at close(), or at garbage collection / interpreter exit
        # if close() was never called.
        self._unlinker = weakref.finalize(self, _unlink, name, os.getpid()) if creator else None

    @classmethod
    def create(cls, purpose, size):
        if not os.path.isdir(SHM_DIR):
            raise NumatpError(f"{SHM_DIR} is missing: numatp needs POSIX shared memory")
        purpose = re.sub(r"[^a-z0-9]", "", purpose.lower()) or "seg"
        size = max(int(size), 1)
        name = f"{PREFIX}{os.getpid()}_{purpose}_{secrets.token_hex(4)}"
        fd = os.open(_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            resource_tracker.register("/" + name, _TRACKER_TYPE)
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            _unlink(name, os.getpid())
            raise
        os.close(fd)  # the mapping keeps the memory; the descriptor is not needed
        return cls(name, mm, size, creator=True)

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
        finally:
            os.close(fd)
        return cls(name, mm, size, creator=False)

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
        if self._unlinker is not None:
            self._unlinker()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._closed else f"{self.size} bytes"
        return f"SharedSegment({self.name}, {state})"


def leftover_segments(creator_pid=None):
    """Names of numatp segments in /dev/shm, optionally only those `creator_pid` made."""
    try:
        names = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    prefix = PREFIX if creator_pid is None else f"{PREFIX}{creator_pid}_"
    return sorted(n for n in names if n.startswith(prefix))
