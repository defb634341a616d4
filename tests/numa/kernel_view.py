"""What the kernel says about a process's threads and memory, read straight from /proc.

The NUMA tests check numatp's placement against these readings rather than against
numatp's own reporting, so a bug in both cannot hide itself. No numatp imports here.
"""
from pathlib import Path


def parse_cpulist(text: str) -> set[int]:
    """'0-2,5' -> {0, 1, 2, 5}"""
    cpus = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def threads(pid="self") -> dict[int, dict]:
    """For each thread of `pid`: {'allowed': CPUs its affinity mask allows,
    'last_cpu': the CPU it last ran on}."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended while we looked
            continue
        allowed = next(line.split(":", 1)[1] for line in status.splitlines()
                       if line.startswith("Cpus_allowed_list:"))
        # proc(5): field 39 of stat is `processor`; fields are counted from 1 and the
        # command name (field 2, in parentheses) may itself contain spaces.
        after_comm = stat.rsplit(")", 1)[1].split()
        out[int(task.name)] = {"allowed": parse_cpulist(allowed),
                               "last_cpu": int(after_comm[39 - 3])}
    return out


def mapping_node_pages(address: int, pid="self") -> tuple[str, dict[int, int]]:
    """The memory policy and the pages per node of the mapping that holds `address`,
    from /proc/PID/numa_maps (which lists each mapping by its start address; the start
    is found in /proc/PID/maps)."""
    start = None
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= address < hi:
            start = lo
            break
    if start is None:
        raise LookupError(f"no mapping holds address {address:#x}")
    for line in Path(f"/proc/{pid}/numa_maps").read_text().splitlines():
        fields = line.split()
        if int(fields[0], 16) == start:
            pages = {int(f[1:].split("=")[0]): int(f.split("=")[1])
                     for f in fields[2:] if f.startswith("N") and "=" in f}
            return fields[1], pages
    raise LookupError(f"no numa_maps entry for the mapping at {start:#x}")
