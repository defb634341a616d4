"""Finding libnuma, the one system library numatp's NUMA layer needs.

py-libnuma (import name `numa`) loads libnuma when it is imported and fails with an
AttributeError, not an ImportError, when the library is absent, so any failure to import
it means "no libnuma". Topology discovery uses py-libnuma's functions; placement needs
the memory-policy calls it does not wrap (mbind, set_mempolicy, move_pages), so this
module also opens the same library through ctypes with errno capture, which
py-libnuma's handle lacks.
"""
import ctypes
import ctypes.util
from ctypes import POINTER, c_int, c_long, c_uint, c_ulong, c_void_p

from numatp.errors import NumatpError

_UNSET = object()
_pynuma = _UNSET
_lib = _UNSET


def pynuma():
    """The py-libnuma module, or None when it or libnuma is missing or the kernel has no
    NUMA support (numa_available() == -1)."""
    global _pynuma
    if _pynuma is _UNSET:
        try:
            import numa
            _pynuma = numa if numa.info.numa_available() else None
        except Exception:  # AttributeError from a missing libnuma.so, OSError, ImportError
            _pynuma = None
    return _pynuma


def _open():
    mod = pynuma()
    name = getattr(getattr(mod, "LIBNUMA", None), "_name", None) or ctypes.util.find_library("numa")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    # The numaif.h system-call wrappers: they return -1 and set errno.
    lib.mbind.argtypes = [c_void_p, c_ulong, c_int, POINTER(c_ulong), c_ulong, c_uint]
    lib.mbind.restype = c_long
    lib.set_mempolicy.argtypes = [c_int, POINTER(c_ulong), c_ulong]
    lib.set_mempolicy.restype = c_long
    lib.get_mempolicy.argtypes = [POINTER(c_int), POINTER(c_ulong), c_ulong, c_void_p, c_ulong]
    lib.get_mempolicy.restype = c_long
    lib.move_pages.argtypes = [c_int, c_ulong, c_void_p, c_void_p, c_void_p, c_int]
    lib.move_pages.restype = c_long
    return lib


def library():
    """libnuma through ctypes (with errno), or NumatpError saying how to get it."""
    global _lib
    if _lib is _UNSET:
        _lib = _open()
    if _lib is None:
        raise NumatpError("libnuma is not available (libnuma.so.1 not found); install it "
                          "(Debian/Ubuntu: apt install libnuma1, Fedora: dnf install numactl-libs)")
    return _lib

