"""Which nodes (real or virtual) the ranks run on: `--nodes auto|N|0,1` and `-t`."""
from dataclasses import dataclass

from numatp.errors import UsageError

# Virtual nodes may share CPUs (to test uneven splits on a small machine), up to this
# many: each is a process with its own copy of Numba, and --nodes 1000 is a typo.
MAX_SHARED_VIRTUAL = 8


@dataclass(frozen=True)
class Placement:
    node: int           # NUMA node whose memory the rank binds to (-1: virtual, no binding)
    cpus: tuple         # CPUs the rank's process and threads are pinned to
    bind: bool          # bind memory to `node` (real nodes only)

    @property
    def label(self) -> str:
        return f"node {self.node}" if self.bind else f"virtual node (cpus {_ranges(self.cpus)})"


def _ranges(cpus) -> str:
    out, cpus = [], sorted(cpus)
    start = prev = cpus[0] if cpus else None
    for c in cpus[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = c
    return ",".join(out)


def shared_cpus_warning(placement) -> str | None:
    """A warning for ranks that share CPUs (--nodes above the CPU count, or above -t):
    they take turns on the same cores, so the run is slower than with fewer nodes."""
    cpus = {c for p in placement for c in p.cpus}
    if len(placement) <= len(cpus):
        return None
    return (f"warning: --nodes {len(placement)} is more than the {len(cpus)} CPU"
            f"{'s' if len(cpus) > 1 else ''} in use, so the virtual nodes share CPUs "
            "(slower; meant for testing)")


def _parse(nodes):
    if isinstance(nodes, int) and not isinstance(nodes, bool):
        return nodes
    invalid = UsageError(f"invalid --nodes {nodes!r}: use auto, a count N, or a list like 0,1")
    if isinstance(nodes, (list, tuple)):
        ids = [int(n) for n in nodes]
    else:
        text = str(nodes).strip().lower()
        if text in ("auto", ""):
            return "auto"
        try:
            if "," not in text:
                return int(text)
            ids = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise invalid from None
    if not ids:   # "," or []: a list of no nodes
        raise invalid
    return ids


def resolve_nodes(nodes="auto", threads=None) -> list:
    """One Placement per rank.

    auto: one rank per node that has CPUs (a single node runs in-process, unbound).
    N: N real nodes if the machine has that many, else N virtual nodes: the CPUs split
       into N groups, no memory binding (for testing and measuring TP on one node).
    0,1: exactly these real nodes.
    threads: total threads over all ranks (default: every CPU of the chosen nodes)."""
    from numatp.numa.topology import discover, split_cpus
    topo = discover()
    real = [n for n in topo.nodes if n.cpus]
    want = _parse(nodes)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UsageError(f"invalid thread count {threads!r}: must be a positive integer")
    if want == "auto":
        chosen = real
    elif isinstance(want, int):
        if want < 1:
            raise UsageError(f"invalid --nodes {want}: need at least 1")
        if want <= len(real) and len(real) > 1:
            chosen = real[:want]
        else:
            cpus = sorted(c for n in real for c in n.cpus)
            if threads is not None:
                cpus = cpus[:threads]
            if want == 1:
                return [Placement(real[0].id if len(real) == 1 else -1, tuple(cpus), False)]
            if want > max(len(cpus), MAX_SHARED_VIRTUAL):
                raise UsageError(f"invalid --nodes {want}: this machine has {len(cpus)} CPUs; at most "
                                 f"{max(len(cpus), MAX_SHARED_VIRTUAL)} virtual nodes")
            if want > len(cpus):
                # More virtual nodes than CPUs: they share CPUs. Only useful for testing.
                return [Placement(-1, (cpus[i % len(cpus)],), False) for i in range(want)]
            return [Placement(-1, tuple(g), False) for g in split_cpus(cpus, want)]
    else:
        by_id = {n.id: n for n in topo.nodes}
        missing = [i for i in want if i not in by_id]
        if missing:
            raise UsageError(f"--nodes {nodes}: no such node {missing[0]} (this machine has nodes "
                             f"{', '.join(str(n.id) for n in topo.nodes)})")
        if len(set(want)) != len(want):
            raise UsageError(f"--nodes {nodes}: a node is listed twice")
        chosen = [by_id[i] for i in want]
        empty = [n.id for n in chosen if not n.cpus]
        if empty:
            raise UsageError(f"--nodes {nodes}: node {empty[0]} has no CPUs")
    per_node = None
    if threads is not None:
        per_node = max(1, threads // len(chosen))
    if len(chosen) == 1:
        n = chosen[0]
        return [Placement(n.id, tuple(n.cpus[:per_node] if per_node else n.cpus), len(real) > 1)]
    return [Placement(n.id, tuple(n.cpus[:per_node] if per_node else n.cpus), True) for n in chosen]
