"""What the machine looks like: NUMA nodes, their CPUs and memory, the distances between
them, and the kernel settings that decide whether node-local placement sticks.

Sources, best first: libnuma (through py-libnuma), the sysfs tree libnuma itself reads
(/sys/devices/system/node), and, where neither exists (no NUMA support in the kernel or
a sandbox without sysfs), one node holding this process's CPUs and all memory.
Only CPUs in this process's affinity mask are listed: a worker can use no others
(taskset, cgroups cpusets and containers all narrow it).
"""
import os
from dataclasses import dataclass
from pathlib import Path

from numatp.errors import UsageError
from numatp.numa import libnuma

SYSFS_NODES = Path("/sys/devices/system/node")
SYSFS_CPUS = Path("/sys/devices/system/cpu")
NUMA_BALANCING = Path("/proc/sys/kernel/numa_balancing")
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# numa_distance() and sysfs use 10 for "local"; the ACPI SLIT convention.
LOCAL_DISTANCE = 10


@dataclass
class Node:
    id: int
    cpus: list[int]  # in this process's affinity mask, ascending
    mem_total: int   # bytes
    mem_free: int    # bytes


@dataclass
class Topology:
    nodes: list[Node]
    distances: list[list[int]]  # distances[a][b] between nodes[a] and nodes[b] (list positions)
    numa_balancing: bool | None  # None: unknown (file missing)
    thp: str | None              # "always", "madvise", "never"; None: unknown
    source: str                  # "libnuma", "sysfs", or "affinity" (single-node fallback)


def discover() -> Topology:
    """The topology of this machine as this process sees it."""
    affinity = os.sched_getaffinity(0)
    numa_balancing, thp = read_numa_balancing(), read_thp()
    if libnuma.pynuma() is not None:
        nodes, distances = _from_libnuma(affinity)
        source = "libnuma"
    elif SYSFS_NODES.is_dir() and _node_dirs(SYSFS_NODES):
        nodes, distances = read_sysfs_nodes(SYSFS_NODES, affinity)
        source = "sysfs"
    else:
        nodes, distances = _single_node(affinity)
        source = "affinity"
    return Topology(nodes, distances, numa_balancing, thp, source)


def _from_libnuma(affinity):
    numa = libnuma.pynuma()
    from ctypes import POINTER
    # numa_nodes_ptr: every configured node, including CPU-less (memory-only) ones.
    configured = POINTER(numa.bitmask_t).in_dll(numa.LIBNUMA, "numa_nodes_ptr")
    ids = numa.utils.get_bitset_list(configured)
    nodes = []
    for i in ids:
        total, free = numa.memory.node_memory_info(i)
        cpus = sorted(c for c in numa.info.node_to_cpus(i) if c in affinity)
        nodes.append(Node(i, cpus, max(int(total), 0), max(int(free), 0)))
    distances = [[numa.info.numa_distance(a, b) for b in ids] for a in ids]
    return nodes, distances


def _node_dirs(root: Path) -> list[tuple[int, Path]]:
    found = []
    for d in root.glob("node[0-9]*"):
        if d.name[4:].isdigit():
            found.append((int(d.name[4:]), d))
    return sorted(found)


def read_sysfs_nodes(root: Path, affinity=None) -> tuple[list[Node], list[list[int]]]:
    """Nodes and distances from a /sys/devices/system/node-shaped tree at `root`.
    `affinity`: the CPUs to keep (default: this process's affinity mask)."""
    affinity = os.sched_getaffinity(0) if affinity is None else set(affinity)
    dirs = _node_dirs(Path(root))
    nodes, rows = [], []
    for node_id, d in dirs:
        cpus = parse_cpulist(_read(d / "cpulist") or "")
        meminfo = _parse_meminfo(_read(d / "meminfo") or "")
        nodes.append(Node(node_id, [c for c in cpus if c in affinity],
                          meminfo.get("MemTotal", 0), meminfo.get("MemFree", 0)))
        rows.append([int(x) for x in (_read(d / "distance") or "").split()])
    # Each distance file lists one entry per online node, in ascending node order, which
    # is also the order of the node directories.
    n = len(nodes)
    distances = [[row[b] if b < len(row) else (LOCAL_DISTANCE if a == b else 0)
                  for b in range(n)] for a, row in enumerate(rows)]
    return nodes, distances


def _single_node(affinity):
    import psutil
    vm = psutil.virtual_memory()
    return [Node(0, sorted(affinity), int(vm.total), int(vm.free))], [[LOCAL_DISTANCE]]


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.extend(range(int(lo), int(hi) + 1))
        else:
            cpus.append(int(part))
    return sorted(set(cpus))


def format_cpulist(cpus) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the inverse of parse_cpulist)."""
    parts, cpus = [], sorted(set(cpus))
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def _parse_meminfo(text: str) -> dict[str, int]:
    """Lines like 'Node 0 MemTotal:  5859104 kB' -> {'MemTotal': bytes}."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2].endswith(":"):
            try:
                value = int(fields[3])
            except ValueError:
                continue
            unit = fields[4] if len(fields) > 4 else ""
            out[fields[2][:-1]] = value * 1024 if unit == "kB" else value
    return out


def _read(path: Path) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def read_numa_balancing(path: Path = NUMA_BALANCING) -> bool | None:
    """True when the kernel migrates pages towards the CPUs touching them (any mode)."""
    text = _read(path)
    try:
        return int(text.strip()) != 0 if text is not None else None
    except ValueError:
        return None


def read_thp(path: Path = THP_ENABLED) -> str | None:
    """The selected transparent-hugepage mode: 'always [madvise] never' -> 'madvise'."""
    text = _read(path)
    if text is None:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def last_level_cache_bytes(root: Path = SYSFS_CPUS) -> int:
    """The machine's last-level cache, all its instances together (one per socket, or
    per CCD on EPYC), in bytes; 0 where sysfs does not say. A buffer must be several
    times this size for a timed pass over it to stream from memory."""
    instances = {}   # shared_cpu_list -> size, of the deepest level seen
    deepest = 0
    for index in sorted(Path(root).glob("cpu[0-9]*/cache/index[0-9]*")):
        kind, level, size, shared = (_read(index / f) for f in
                                     ("type", "level", "size", "shared_cpu_list"))
        if None in (kind, level, size, shared) or kind.strip() == "Instruction":
            continue
        try:
            level, nbytes = int(level), _parse_size(size.strip())
        except ValueError:
            continue
        if level > deepest:
            deepest, instances = level, {}
        if level == deepest:
            instances[shared.strip()] = nbytes
    return sum(instances.values())


def _parse_size(text: str) -> int:
    """sysfs cache sizes: "32768K", "300M", or plain bytes."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    return int(text[:-1] if scale > 1 else text) * scale


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


def warnings(topo: Topology, need_bytes_per_node: int | None = None) -> list[str]:
    """Settings and shapes that would undo or break node-local placement, one line each."""
    out = []
    if topo.numa_balancing:
        out.append("automatic NUMA balancing is on (/proc/sys/kernel/numa_balancing): the "
                   "kernel may migrate pinned workers' memory between nodes; turn it off with "
                   "'sysctl kernel.numa_balancing=0'")
    if topo.thp == "never":
        out.append("transparent hugepages are 'never': weights sit on 4 KiB pages (many more "
                   "TLB misses); set /sys/kernel/mm/transparent_hugepage/enabled to 'madvise' "
                   "or 'always'")
    for n in topo.nodes:
        if not n.cpus:
            out.append(f"node {n.id} has no CPUs this process may use (a memory-only node, or "
                       f"outside the affinity mask): it cannot run a worker")
        if n.mem_total <= 0:
            out.append(f"node {n.id} has no memory: a worker there would read its weights "
                       f"from another node")
        elif need_bytes_per_node is not None and n.mem_free < need_bytes_per_node:
            out.append(f"node {n.id} has {_gib(n.mem_free)} free, less than the "
                       f"{_gib(need_bytes_per_node)} needed per node")
    return out


def split_cpus(cpus: list[int], n: int) -> list[list[int]]:
    """`cpus` cut into `n` contiguous groups whose sizes differ by at most one (the
    first len(cpus) % n groups get the extra CPU): the CPUs of n virtual nodes."""
    cpus = list(cpus)
    if n < 1:
        raise UsageError(f"the number of nodes must be at least 1, got {n}")
    if n > len(cpus):
        raise UsageError(f"cannot split {len(cpus)} CPU{'s' if len(cpus) != 1 else ''} "
                         f"into {n} nodes: each node needs at least one CPU")
    size, extra = divmod(len(cpus), n)
    groups, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        groups.append(cpus[start:end])
        start = end
    return groups
