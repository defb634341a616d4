"""Block until a word in shared memory changes: Linux futex(2), called through ctypes.

    futex_wait(words, idx, expected, timeout_s) -> bool   sleep while words[idx] ==
                                                expected; False if timeout_s passed first
    futex_wake(words, idx)                      wake every process blocked on words[idx]

A futex works on 32 bits; these act on the low half of an int64 element (little-endian:
the first four bytes). The words are sequence numbers that only grow, so the low half
differs whenever the value does (short of 2**32 updates between two reads).

Not FUTEX_PRIVATE: the waiters are other processes mapping the same shared memory, and
the kernel keys a shared futex by the file page, not by the address.
This is the slow path (a worker idle between tokens, a coordinator waiting for a long
step), so a ctypes call per block is fine.
"""
import ctypes
import errno
import os
import platform
import sys

from numatp.errors import NumatpError

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98,
              "ppc64le": 221, "ppc64": 221, "s390x": 238}.get(platform.machine().lower())
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_WAKE_ALL = 0x7FFFFFFF

if sys.byteorder != "little":  # the low half would be the second four bytes
    raise ImportError("numatp's futex wrapper assumes a little-endian machine")

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _address(words, idx):
    return words.ctypes.data + int(idx) * words.itemsize


def futex_wait(words, idx, expected, timeout_s):
    """Sleep while the low 32 bits of words[idx] equal those of `expected`, at most
    timeout_s seconds. Returns False on timeout; True when woken, when the word already
    differed, or when a signal arrived (Python runs its handler after this returns).
    Wake-ups can be spurious: the caller re-checks the word."""
    if _SYS_FUTEX is None:
        raise NumatpError(f"futex: unsupported machine {platform.machine()}")
    sec = int(timeout_s)
    ts = _Timespec(sec, int((timeout_s - sec) * 1e9))
    rc = _syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(_address(words, idx)),
                  ctypes.c_long(_FUTEX_WAIT), ctypes.c_long(int(expected) & 0xFFFFFFFF),
                  ctypes.byref(ts), ctypes.c_void_p(0), ctypes.c_long(0))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ETIMEDOUT:
        return False
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    raise OSError(err, f"futex wait: {os.strerror(err)}")


def futex_wake(words, idx):
    if _SYS_FUTEX is None:
        raise NumatpError(f"futex: unsupported machine {platform.machine()}")
    rc = _syscall(ctypes.c_long(_SYS_FUTEX), ctypes.c_void_p(_address(words, idx)),
                  ctypes.c_long(_FUTEX_WAKE), ctypes.c_long(_WAKE_ALL),
                  ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_long(0))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"futex wake: {os.strerror(err)}")
