"""The NUMA layer: topology discovery, warnings, virtual-node CPU splits, and placement.

On a one-node machine every page lands on node 0; tests/numa checks real two-node
placement inside a VM. Anything that changes process-wide state (memory policy, CPU
affinity) runs in a subprocess so it cannot leak into other tests.
"""
import errno
import gc
import json
import mmap
import os
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numatp.errors import NumatpError, UsageError
from numatp.numa import libnuma, placement, topology
from numatp.numa.topology import Node, Topology, split_cpus


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def memory_node() -> int:
    """A node this machine can allocate on (node 0 on the one-node dev machines)."""
    return next(n.id for n in topology.discover().nodes if n.mem_total > 0)


# --- discovery on this machine ---------------------------------------------------------

def test_discover_lists_exactly_the_affinity_cpus():
    topo = topology.discover()
    assert topo.nodes
    cpus = [c for n in topo.nodes for c in n.cpus]
    assert sorted(cpus) == sorted(os.sched_getaffinity(0))
    assert len(cpus) == len(set(cpus)), "a CPU listed under two nodes"
    assert all(n.mem_total >= n.mem_free >= 0 for n in topo.nodes)
    assert sum(n.mem_total for n in topo.nodes) > 0


def test_discover_distances_are_square_with_local_diagonal():
    topo = topology.discover()
    n = len(topo.nodes)
    assert len(topo.distances) == n and all(len(row) == n for row in topo.distances)
    assert all(topo.distances[i][i] == topology.LOCAL_DISTANCE for i in range(n))


def test_discover_uses_libnuma_where_it_works():
    expected = "libnuma" if libnuma.pynuma() is not None else "sysfs"
    if expected == "sysfs" and not topology.SYSFS_NODES.is_dir():
        expected = "affinity"
    assert topology.discover().source == expected


def test_discover_reports_kernel_settings_as_the_files_say():
    topo = topology.discover()
    assert topo.numa_balancing == topology.read_numa_balancing()
    assert topo.thp == topology.read_thp()
    assert topo.thp in (None, "always", "madvise", "never")


# --- the sysfs fallback, on a fake tree -------------------------------------------------

def write_node(root, node_id, cpulist, total_kb, free_kb, distances):
    d = root / f"node{node_id}"
    d.mkdir(parents=True)
    (d / "cpulist").write_text(cpulist + "\n")
    (d / "meminfo").write_text(
        f"Node {node_id} MemTotal:       {total_kb} kB\n"
        f"Node {node_id} MemFree:        {free_kb} kB\n"
        f"Node {node_id} MemUsed:        {total_kb - free_kb} kB\n")
    (d / "distance").write_text(" ".join(str(x) for x in distances) + "\n")


@pytest.fixture
def two_node_sysfs(tmp_path):
    root = tmp_path / "node"
    write_node(root, 0, "0-3,8-11", 16 << 20, 12 << 20, [10, 21])
    write_node(root, 1, "4-7,12-15", 16 << 20, 2 << 20, [21, 10])
    (root / "online").write_text("0-1\n")
    (root / "possible").write_text("0-1\n")
    return root


def test_sysfs_parser_reads_two_nodes(two_node_sysfs):
    nodes, distances = topology.read_sysfs_nodes(two_node_sysfs, affinity=range(16))
    assert nodes == [Node(0, [0, 1, 2, 3, 8, 9, 10, 11], (16 << 20) * 1024, (12 << 20) * 1024),
                     Node(1, [4, 5, 6, 7, 12, 13, 14, 15], (16 << 20) * 1024, (2 << 20) * 1024)]
    assert distances == [[10, 21], [21, 10]]


def test_sysfs_parser_keeps_only_affinity_cpus(two_node_sysfs):
    nodes, _ = topology.read_sysfs_nodes(two_node_sysfs, affinity={1, 2, 13})
    assert [n.cpus for n in nodes] == [[1, 2], [13]]


def test_sysfs_parser_ignores_non_node_entries(tmp_path):
    root = tmp_path / "node"
    write_node(root, 0, "0", 1024, 512, [10, 20, 20])
    write_node(root, 2, "", 1024, 1024, [20, 20, 10])   # CPU-less node with a gap in the ids
    write_node(root, 1, "1", 1024, 512, [20, 10, 20])
    (root / "has_cpu").write_text("0-1\n")
    (root / "nodeX").mkdir()
    nodes, distances = topology.read_sysfs_nodes(root, affinity={0, 1})
    assert [n.id for n in nodes] == [0, 1, 2]
    assert nodes[2].cpus == []
    assert distances == [[10, 20, 20], [20, 10, 20], [20, 20, 10]]


def test_discover_falls_back_to_sysfs_without_libnuma(monkeypatch, two_node_sysfs):
    monkeypatch.setattr(libnuma, "_pynuma", None)
    monkeypatch.setattr(topology, "SYSFS_NODES", two_node_sysfs)
    topo = topology.discover()
    assert topo.source == "sysfs"
    assert [n.id for n in topo.nodes] == [0, 1]
    assert topo.distances == [[10, 21], [21, 10]]


def test_discover_falls_back_to_one_node_without_sysfs(monkeypatch, tmp_path):
    monkeypatch.setattr(libnuma, "_pynuma", None)
    monkeypatch.setattr(topology, "SYSFS_NODES", tmp_path / "missing")
    topo = topology.discover()
    assert topo.source == "affinity"
    assert len(topo.nodes) == 1
    assert topo.nodes[0].cpus == sorted(os.sched_getaffinity(0))
    assert topo.nodes[0].mem_total > 0
    assert topo.distances == [[10]]


@pytest.mark.parametrize("text, expected", [("0\n", False), ("1\n", True), ("2\n", True),
                                            ("junk", None)])
def test_read_numa_balancing(tmp_path, text, expected):
    f = tmp_path / "numa_balancing"
    f.write_text(text)
    assert topology.read_numa_balancing(f) is expected


def test_read_numa_balancing_missing_file(tmp_path):
    assert topology.read_numa_balancing(tmp_path / "absent") is None


@pytest.mark.parametrize("text, expected", [("always [madvise] never\n", "madvise"),
                                            ("[always] madvise never\n", "always"),
                                            ("always madvise [never]\n", "never")])
def test_read_thp(tmp_path, text, expected):
    f = tmp_path / "enabled"
    f.write_text(text)
    assert topology.read_thp(f) == expected
    assert topology.read_thp(tmp_path / "absent") is None


def _cache_dirs(root, cpu, caches):
    for i, (level, kind, size, shared) in enumerate(caches):
        d = root / f"cpu{cpu}" / "cache" / f"index{i}"
        d.mkdir(parents=True)
        for name, text in (("level", level), ("type", kind), ("size", size),
                           ("shared_cpu_list", shared)):
            (d / name).write_text(f"{text}\n")


def test_last_level_cache_counts_each_instance_once(tmp_path):
    """Two sockets of two CPUs, each socket's L3 shared by both: 2 x 32 MiB. The L1
    and L2 levels, and an instruction cache, do not count."""
    for cpu in range(4):
        socket = "0-1" if cpu < 2 else "2-3"
        _cache_dirs(tmp_path, cpu, [(1, "Data", "48K", cpu), (1, "Instruction", "32K", cpu),
                                    (2, "Unified", "2048K", cpu),
                                    (3, "Unified", "32768K", socket)])
    assert topology.last_level_cache_bytes(tmp_path) == 2 * 32 << 20
    (tmp_path / "cpu9").mkdir()             # no cache directory: ignored
    assert topology.last_level_cache_bytes(tmp_path) == 2 * 32 << 20


def test_last_level_cache_unknown_is_zero(tmp_path):
    assert topology.last_level_cache_bytes(tmp_path / "absent") == 0
    _cache_dirs(tmp_path, 0, [(2, "Unified", "300M", "0-15")])
    assert topology.last_level_cache_bytes(tmp_path) == 300 << 20


def test_cpulist_round_trip():
    assert topology.parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert topology.parse_cpulist("") == []
    assert topology.format_cpulist([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"


# --- warnings ---------------------------------------------------------------------------

def make_topo(nodes, balancing=False, thp="madvise"):
    n = len(nodes)
    dist = [[10 if i == j else 20 for j in range(n)] for i in range(n)]
    return Topology(nodes, dist, balancing, thp, "sysfs")


GIB = 1 << 30


def test_no_warnings_for_a_healthy_machine():
    topo = make_topo([Node(0, [0, 1], 8 * GIB, 6 * GIB), Node(1, [2, 3], 8 * GIB, 6 * GIB)])
    assert topology.warnings(topo) == []
    assert topology.warnings(topo, need_bytes_per_node=5 * GIB) == []


def test_warns_about_numa_balancing_and_thp_never():
    topo = make_topo([Node(0, [0], GIB, GIB)], balancing=True, thp="never")
    notes = topology.warnings(topo)
    assert len(notes) == 2
    assert "NUMA balancing" in notes[0]
    assert "hugepages" in notes[1] and "never" in notes[1]


def test_unknown_settings_are_not_warned_about():
    assert topology.warnings(make_topo([Node(0, [0], GIB, GIB)], balancing=None, thp=None)) == []


def test_warns_about_cpuless_and_memoryless_nodes():
    topo = make_topo([Node(0, [0, 1], 8 * GIB, 6 * GIB), Node(1, [], 8 * GIB, 8 * GIB),
                      Node(2, [2, 3], 0, 0)])
    notes = topology.warnings(topo)
    assert len(notes) == 2
    assert notes[0].startswith("node 1 has no CPUs")
    assert notes[1].startswith("node 2 has no memory")


def test_warns_about_a_node_short_of_memory():
    topo = make_topo([Node(0, [0], 8 * GIB, 6 * GIB), Node(1, [1], 8 * GIB, 2 * GIB)])
    notes = topology.warnings(topo, need_bytes_per_node=3 * GIB)
    assert notes == ["node 1 has 2.0 GiB free, less than the 3.0 GiB needed per node"]


# --- split_cpus -------------------------------------------------------------------------

def test_split_cpus_examples():
    assert split_cpus([0, 1, 2, 3], 2) == [[0, 1], [2, 3]]
    assert split_cpus(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split_cpus([5, 7], 2) == [[5], [7]]
    assert split_cpus([3], 1) == [[3]]


def test_split_cpus_rejects_more_nodes_than_cpus():
    with pytest.raises(UsageError, match="cannot split 2 CPUs into 3 nodes"):
        split_cpus([0, 1], 3)
    with pytest.raises(UsageError):
        split_cpus([0, 1], 0)


@given(st.lists(st.integers(0, 4095), min_size=1, max_size=300, unique=True), st.data())
def test_split_cpus_properties(cpus, data):
    n = data.draw(st.integers(1, len(cpus)))
    groups = split_cpus(cpus, n)
    assert len(groups) == n
    assert [c for g in groups for c in g] == cpus          # contiguous, order kept, nothing lost
    sizes = [len(g) for g in groups]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)            # the larger groups come first


# --- placement --------------------------------------------------------------------------

def test_alloc_on_node_puts_every_page_there():
    node = memory_node()
    nbytes = 8 * placement.PAGE + 123                     # a partial last page too
    arr = placement.alloc_on_node(nbytes, node)
    assert arr.dtype == np.uint8 and arr.shape == (nbytes,)
    assert not arr.any()
    nodes = placement.page_nodes(arr)
    assert nodes.dtype == np.int32 and nodes.size == 9
    assert (nodes == node).all()
    assert placement.local_fraction(arr, node) == 1.0
    arr[:] = 7                                            # writable, all of it
    assert int(arr.sum()) == 7 * nbytes


def test_page_nodes_of_a_view_and_of_untouched_memory():
    node = memory_node()
    arr = placement.alloc_on_node(16 * placement.PAGE, node)
    view = arr[placement.PAGE + 10: 3 * placement.PAGE].view()
    assert placement.page_nodes(view).tolist() == [node, node]
    untouched = np.frombuffer(mmap.mmap(-1, 4 * placement.PAGE), np.uint8)
    assert placement.page_nodes(untouched).tolist() == [-errno.ENOENT] * 4
    assert placement.local_fraction(untouched, node) == 0.0
    assert placement.page_nodes(arr[:0]).size == 0


def test_page_nodes_needs_a_contiguous_array():
    arr = placement.alloc_on_node(4 * placement.PAGE, memory_node())
    with pytest.raises(UsageError):
        placement.page_nodes(arr[::2])


def mapped(addr: int) -> bool:
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return True
    return False


def test_alloc_on_node_memory_is_released_with_the_array():
    arr = placement.alloc_on_node(64 * placement.PAGE, memory_node())
    addr = arr.ctypes.data
    region = weakref.ref(arr.base.obj)                    # the mmap behind the array
    assert mapped(addr)
    del arr
    gc.collect()
    assert region() is None
    assert not mapped(addr)


def test_placement_rejects_a_node_that_does_not_exist():
    missing = max(n.id for n in topology.discover().nodes) + 1
    with pytest.raises(NumatpError, match=f"NUMA node {missing}"):
        placement.alloc_on_node(placement.PAGE, missing)
    with pytest.raises(NumatpError, match=f"NUMA node {missing}"):
        placement.bind_memory(missing)
    with pytest.raises(UsageError):
        placement.alloc_on_node(placement.PAGE, -1)
    with pytest.raises(UsageError):
        placement.alloc_on_node(0, 0)


def test_placement_without_libnuma_says_so(monkeypatch):
    monkeypatch.setattr(libnuma, "_lib", None)
    for call in (lambda: placement.alloc_on_node(placement.PAGE, 0),
                 lambda: placement.bind_memory(0),
                 lambda: placement.page_nodes(np.zeros(8, np.uint8))):
        with pytest.raises(NumatpError, match="libnuma is not available"):
            call()


def test_bind_memory_places_later_first_touch(tmp_path):
    node = memory_node()
    r = run_python(f"""
        import numpy as np
        from numatp.numa import placement
        placement.bind_memory({node})
        a = np.ones(1 << 22, np.uint8)    # first touched after the bind
        print(placement.local_fraction(a, {node}))
        placement.unbind_memory()
    """)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == 1.0


def test_pin_to_cpus_moves_every_thread():
    cpu = min(os.sched_getaffinity(0))
    r = run_python(f"""
        import os, threading, time
        from numatp.numa.placement import pin_to_cpus
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)       # a thread that exists before pinning
        t.start()
        pin_to_cpus([{cpu}])
        tids = [int(x) for x in os.listdir("/proc/self/task")]
        print(sorted({{c for tid in tids for c in os.sched_getaffinity(tid)}}), len(tids) >= 2)
        later = []
        t2 = threading.Thread(target=lambda: later.append(sorted(os.sched_getaffinity(0))))
        t2.start(); t2.join()
        print(later[0])
        stop.set(); t.join()
    """)
    assert r.returncode == 0, r.stderr
    first, later = r.stdout.splitlines()
    assert first == f"[{cpu}] True"
    assert later == f"[{cpu}]"


def test_pin_to_cpus_rejects_cpus_outside_the_mask():
    r = run_python("""
        from numatp.errors import NumatpError
        from numatp.numa.placement import pin_to_cpus
        try:
            pin_to_cpus([100000])
        except (NumatpError, ValueError) as e:
            print(type(e).__name__, e)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("NumatpError cannot pin to CPUs 100000")
    with pytest.raises(UsageError):
        placement.pin_to_cpus([])


# --- the CLI ----------------------------------------------------------------------------

def test_cli_topology_json():
    r = subprocess.run([sys.executable, "-m", "numatp", "topology", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) >= {"nodes", "distances", "numa_balancing", "thp", "source", "warnings"}
    assert sorted(c for n in d["nodes"] for c in n["cpus"]) == sorted(os.sched_getaffinity(0))
    assert all(set(n) == {"id", "cpus", "mem_total", "mem_free"} for n in d["nodes"])
    assert len(d["distances"]) == len(d["nodes"])


def test_cli_topology_text():
    r = subprocess.run([sys.executable, "-m", "numatp", "topology"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "distances" in r.stdout and "transparent hugepages" in r.stdout
