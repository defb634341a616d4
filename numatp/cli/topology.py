"""`numatp topology`: the NUMA nodes this process can use, and what would spoil placement."""
import json
from dataclasses import asdict
from typing import Optional

import typer

from numatp.cli.app import app


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


@app.command()
def topology(as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
             model: Optional[str] = typer.Option(
                 None, "-m", "--model", help="Also say what --gpu attn would place on the GPU "
                                             "for this model."),
             ctx_size: int = typer.Option(0, "-c", "--ctx-size",
                                          help="With -m: the context (0: the model's, at most "
                                               "4096).")):
    """Nodes, CPUs, memory, distances, NUMA balancing and THP state, the GPU, and warnings."""
    from numatp.cli.info import gpu_placement, gpu_text
    from numatp.errors import UsageError
    from numatp.numa.topology import discover, format_cpulist, warnings
    if ctx_size < 0:
        raise UsageError(f"invalid --ctx-size {ctx_size}: must be >= 0")
    topo = discover()
    notes = warnings(topo)
    gpu = _gpu(model, ctx_size)
    if as_json:
        print(json.dumps({**asdict(topo), "warnings": notes, "gpu": gpu}, indent=2))
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
    if gpu.get("attn_text"):
        print()
        for line in gpu_text(gpu):
            print(line)
    else:
        print("\ngpu: " + (gpu["device"] or f"none ({gpu['unavailable']})"))
    for line in notes:
        print(f"warning: {line}")


def _gpu(model, ctx) -> dict:
    """The GPU; with a model, what --gpu attn would place there (numatp info's lines)."""
    from numatp.cli.info import gpu_placement
    from numatp.gpu.device import probe
    if model is None:
        info, why = probe()
        return {"device": None if info is None else info.describe(), "unavailable": why,
                "free_bytes": None if info is None else info.free_bytes}
    from numatp.model.config import from_gguf
    from numatp.model.gguf_file import GGUFFile
    from numatp.registry import resolve_model
    g = GGUFFile(resolve_model(model))
    return gpu_placement(g, from_gguf(g), ctx or None)
