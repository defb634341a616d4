"""Putting a worker and its memory on one node, and checking that they are there.

A worker calls pin_to_cpus() and bind_memory() first thing, before Numba starts its
thread pool (threads inherit the affinity of the thread that creates them) and before it
allocates anything big. alloc_on_node() places one buffer explicitly, whatever the
process policy; page_nodes() asks the kernel where each page of a buffer really is.
"""
import ctypes
import errno
import mmap
import os

import numpy as np

from numatp.errors import NumatpError, UsageError
from numatp.numa import libnuma
from numatp.numa.topology import format_cpulist

PAGE = mmap.PAGESIZE
# <linux/mempolicy.h>
MPOL_DEFAULT = 0
MPOL_BIND = 2
_MASK_BITS = 8 * ctypes.sizeof(ctypes.c_ulong)


def pin_to_cpus(cpus) -> None:
    """Restrict every thread of this process (and the threads it starts later) to `cpus`.

    os.sched_setaffinity(0, ...) alone moves only the calling thread; threads that already
    exist (a started Numba pool, library helpers) would keep running anywhere."""
    cpus = sorted({int(c) for c in cpus})
    if not cpus:
        raise UsageError("cannot pin to an empty set of CPUs")
    try:
        os.sched_setaffinity(0, cpus)
    except (OSError, ValueError) as e:
        allowed = sorted(os.sched_getaffinity(0))
        raise NumatpError(f"cannot pin to CPUs {format_cpulist(cpus)}: {getattr(e, 'strerror', None) or e} "
                          f"(this process may use CPUs {format_cpulist(allowed)})") from None
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def _nodemask(node: int):
    """A one-node mask for the mempolicy calls, and the maxnode value to pass with it."""
    if node < 0:
        raise UsageError(f"NUMA node must be >= 0, got {node}")
    words = node // _MASK_BITS + 1
    mask = (ctypes.c_ulong * words)()
    mask[node // _MASK_BITS] = 1 << (node % _MASK_BITS)
    # The kernel reads maxnode - 1 bits (a historical off-by-one that libnuma also follows).
    return mask, words * _MASK_BITS + 1


def _policy_error(what: str, node: int, err: int) -> NumatpError:
    if err == errno.EINVAL:
        why = "it does not exist, has no memory, or is outside this process's cpuset"
    elif err in (errno.ENOSYS, errno.EPERM):
        why = "the kernel refuses NUMA memory policies here (no NUMA support, or a sandbox)"
    else:
        why = os.strerror(err)
    return NumatpError(f"cannot {what} NUMA node {node}: {why}")


def bind_memory(node: int) -> None:
    """Make every later page this process first touches come from `node` (MPOL_BIND)."""
    lib = libnuma.library()
    mask, maxnode = _nodemask(int(node))
    if lib.set_mempolicy(MPOL_BIND, mask, maxnode) != 0:
        raise _policy_error("bind memory to", node, ctypes.get_errno())


def unbind_memory() -> None:
    """Back to the default policy: pages come from the node of the CPU touching them."""
    lib = libnuma.library()
    if lib.set_mempolicy(MPOL_DEFAULT, None, 0) != 0:
        raise NumatpError(f"cannot reset the memory policy: {os.strerror(ctypes.get_errno())}")


def alloc_on_node(nbytes: int, node: int) -> np.ndarray:
    """A zeroed uint8 array of `nbytes` whose every page is on `node`.

    The mapping is bound before any page exists, then touched, so placement does not
    depend on which CPU runs this or on the process policy. The memory goes back to the
    system when the array (and every view of it) is garbage collected.
    MPOL_BIND does not fall back to other nodes: if `node` runs out, the kernel's OOM
    killer ends the process, so callers check free memory first (topology.warnings)."""
    nbytes = int(nbytes)
    if nbytes <= 0:
        raise UsageError(f"allocation size must be positive, got {nbytes}")
    lib = libnuma.library()
    mask, maxnode = _nodemask(int(node))
    try:
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as e:
        raise NumatpError(f"cannot map {nbytes} bytes: {e}") from None
    # The array holds the only reference to the mmap object: when the array dies, so does
    # the mapping (mmap's destructor unmaps it).
    arr = np.frombuffer(region, dtype=np.uint8)
    if lib.mbind(arr.ctypes.data, nbytes, MPOL_BIND, mask, maxnode, 0) != 0:
        err = ctypes.get_errno()
        del arr
        region.close()
        raise _policy_error("place memory on", node, err)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        # Weights are streamed linearly: 2 MiB pages cut TLB misses when THP is 'madvise'.
        region.madvise(mmap.MADV_HUGEPAGE)
    arr[::PAGE] = 0  # first touch, one write per page: each page now exists on `node`
    return arr


def page_nodes(arr: np.ndarray) -> np.ndarray:
    """The node of every page `arr` spans (int32, one entry per page, in address order);
    a negative entry is -errno for that page, e.g. -ENOENT for a page not yet touched."""
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        raise UsageError("page_nodes needs a contiguous array")
    if arr.nbytes == 0:
        return np.zeros(0, np.int32)
    lib = libnuma.library()
    start = arr.ctypes.data // PAGE * PAGE
    end = arr.ctypes.data + arr.nbytes
    pages = np.arange(start, end, PAGE, dtype=np.uint64)
    status = np.empty(pages.size, np.int32)
    # nodes=NULL: move nothing, only report where each page is.
    if lib.move_pages(0, pages.size, pages.ctypes.data, None, status.ctypes.data, 0) != 0:
        err = ctypes.get_errno()
        raise NumatpError(f"cannot query page placement (move_pages): {os.strerror(err)}")
    return status


def local_fraction(arr: np.ndarray, node: int) -> float:
    """Fraction of `arr`'s pages that are on `node` (pages not present count as remote);
    1.0 for an empty array."""
    nodes = page_nodes(arr)
    return float(np.count_nonzero(nodes == node)) / nodes.size if nodes.size else 1.0
