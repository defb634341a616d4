"""`numatp info MODEL`: what is in a GGUF file and how it would be sharded."""
import json
import math
from collections import defaultdict

import typer

from numatp.cli.main import app


def describe(path, n_nodes=1) -> dict:
    from numatp.api import weight_bytes_per_token
    from numatp.model.config import from_gguf
    from numatp.model.gguf_file import GGUFFile
    from numatp.parallel.plan import make_plan
    from numatp.parallel.shard import ffn_unit, shard_bytes
    from numatp.quant.formats import type_name

    g = GGUFFile(path)
    cfg = from_gguf(g)
    types = defaultdict(lambda: [0, 0])
    for t in g.tensors.values():
        types[type_name(t.qtype)][0] += 1
        types[type_name(t.qtype)][1] += t.nbytes
    plan = make_plan(cfg, n_nodes, ffn_unit(g, cfg))
    return {
        "path": str(path), "file_bytes": g.file_size, "architecture": cfg.arch.name,
        "name": g.metadata.get("general.name"),
        "layers": cfg.n_layers, "hidden": cfg.hidden, "heads": cfg.n_heads,
        "kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "ffn": cfg.ffn, "vocab": cfg.vocab,
        "context_length": cfg.ctx_train, "rope_base": cfg.rope_base, "tied_output": cfg.tied_output,
        "tensor_types": {k: {"count": c, "bytes": b} for k, (c, b) in sorted(types.items())},
        "bytes_per_token": weight_bytes_per_token(g, cfg),
        "params": sum(math.prod(t.shape) for t in g.tensors.values()),
        "shards": [{"rank": s.rank, "q_heads": list(s.q_heads), "kv_heads": list(s.kv_heads),
                    "ffn": list(s.ffn), "vocab": list(s.vocab), "bytes": shard_bytes(g, cfg, s)}
                   for s in plan],
    }


@app.command()
def info(model: str = typer.Argument(..., help="GGUF file."),
         nodes: int = typer.Option(1, "--nodes", help="Show the shard plan for this many nodes."),
         as_json: bool = typer.Option(False, "--json")):
    """Metadata, tensor types, bytes read per token, and the shard plan."""
    from numatp.errors import UsageError
    from numatp.parallel.plan import MAX_RANKS
    if not 1 <= nodes <= MAX_RANKS:
        raise UsageError(f"invalid --nodes {nodes}: give 1 to {MAX_RANKS} (the most NUMA nodes "
                         "Linux supports)")
    d = describe(model, nodes)
    if as_json:
        print(json.dumps(d, indent=2))
        return
    mb = lambda b: f"{b / 1e6:,.1f} MB"  # noqa: E731
    print(f"{d['path']}: {d['architecture']} ({d['name']}), {d['params'] / 1e6:,.1f}M parameters, {mb(d['file_bytes'])}")
    print(f"  layers {d['layers']}, hidden {d['hidden']}, heads {d['heads']} / kv {d['kv_heads']} "
          f"(head dim {d['head_dim']}), ffn {d['ffn']}, vocab {d['vocab']}, context {d['context_length']}, "
          f"rope base {d['rope_base']:g}{', tied output' if d['tied_output'] else ''}")
    print("  tensor types:")
    for name, v in d["tensor_types"].items():
        print(f"    {name:8s} {v['count']:5d} tensors {mb(v['bytes']):>14s}")
    print(f"  bytes read per generated token: {mb(d['bytes_per_token'])}")
    print(f"  shard plan over {nodes} node{'s' if nodes > 1 else ''}:")
    for s in d["shards"]:
        print(f"    rank {s['rank']}: q heads {s['q_heads'][0]}:{s['q_heads'][1]}, kv heads "
              f"{s['kv_heads'][0]}:{s['kv_heads'][1]}, ffn {s['ffn'][0]}:{s['ffn'][1]}, "
              f"vocab {s['vocab'][0]}:{s['vocab'][1]}, {mb(s['bytes'])}")
