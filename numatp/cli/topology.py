"""`numatp topology`: the NUMA nodes this process can use, and what would spoil placement."""
import json
from dataclasses import asdict

import typer

from numatp.cli.app import app


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


@app.command()
def topology(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")):
    """Nodes, CPUs, memory, distances, NUMA balancing and THP state, and warnings."""
    from numatp.numa.topology import discover, format_cpulist, warnings
    topo = discover()
    notes = warnings(topo)
    if as_json:
        print(json.dumps({**asdict(topo), "warnings": notes}, indent=2))
        return
    print(f"{len(topo.nodes)} NUMA node{'s' if len(topo.nodes) != 1 else ''} (from {topo.source}); "
          f"CPUs are those this process may run on")
    print(f"{'node':>4}  {'cpus':>5}  {'cpu list':<24} {'memory':>10} {'free':>10}")
    for n in topo.nodes:
        print(f"{n.id:>4}  {len(n.cpus):>5}  {format_cpulist(n.cpus) or '-':<24} {_gib(n.mem_total):>10} "
              f"{_gib(n.mem_free):>10}")
    print("\ndistances (10 = local)")
    print("    " + "".join(f"{n.id:>5}" for n in topo.nodes))
    for n, row in zip(topo.nodes, topo.distances):
        print(f"{n.id:>4}" + "".join(f"{d:>5}" for d in row))
    state = {None: "unknown", True: "on", False: "off"}[topo.numa_balancing]
    print(f"\nautomatic NUMA balancing: {state}")
    print(f"transparent hugepages:    {topo.thp or 'unknown'}")
    for line in notes:
        print(f"warning: {line}")
