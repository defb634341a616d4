"""tests/numa check real NUMA placement, so they need a kernel that sees several nodes.

They run inside the throw-away VM that `make test-numa` boots (tools/numavm.py), which
tells them its shape through NUMAVM_* variables. Anywhere else every test here fails with
a message saying so: nothing is skipped, and `make test` does not collect this directory.

Adding a test is adding a test_*.py file here: it runs in the same VM boot. Use the `vm`
fixture for the VM's shape. Guest code runs ~20-45x slower than on the host (software
emulation), and each Python subprocess pays its imports again: keep tests few and small,
and start the subprocesses a test needs at the same time.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

import numatp

REPO = Path(__file__).resolve().parents[2]
HOW_TO_RUN = ("tests/numa run inside a NUMA test VM: use `make test-numa` "
              "(tools/numavm.py; tools/install-numavm-deps.sh installs what it needs)")


@dataclass(frozen=True)
class VMShape:
    nodes: int
    cpus_per_node: int
    mem_per_node: int  # bytes

    def cpus(self, node: int) -> set[int]:
        """The CPUs QEMU gave `node` (numavm.py assigns them in node order)."""
        return set(range(node * self.cpus_per_node, (node + 1) * self.cpus_per_node))


def _kernel_nodes() -> list[str]:
    root = Path("/sys/devices/system/node")
    return sorted(d.name for d in root.glob("node[0-9]*")) if root.is_dir() else []


def _problem() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.environ.get("NUMAVM_GUEST") != "1":
        return f"{HOW_TO_RUN}; this machine shows {len(_kernel_nodes())} NUMA node(s)"
    expected = int(os.environ["NUMAVM_NODES"])
    if len(_kernel_nodes()) < 2:
        return (f"the VM was asked for {expected} NUMA nodes but its kernel shows "
                f"{len(_kernel_nodes())}: check tools/numavm.py's --numa options")
    where = Path(numatp.__file__).resolve()
    if REPO not in where.parents:
        return (f"numatp is imported from {where}, not from the repository under test "
                f"({REPO}): the guest must see the editable install (pip install -e .) "
                f"at the same path as the host")
    return None


@pytest.fixture(scope="session", autouse=True)
def vm() -> VMShape:
    problem = _problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    mem = os.environ["NUMAVM_MEM_PER_NODE"]
    assert mem.endswith("M"), mem
    return VMShape(nodes=int(os.environ["NUMAVM_NODES"]),
                   cpus_per_node=int(os.environ["NUMAVM_CPUS_PER_NODE"]),
                   mem_per_node=int(mem[:-1]) * 2**20)
