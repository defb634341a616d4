"""`numatp info MODEL`: what is in a GGUF file and how it would be sharded; for a file
numatp cannot run, what is in it and why."""
import json
import math
import re
from collections import defaultdict
from typing import Optional

import typer

from numatp.cli.app import app
from numatp.cli.options import HF_REPO_HELP, MOE_SPLIT, model_option


def describe(path, n_nodes=1, ctx=None, moe_split="rows") -> dict:
    from numatp.api import weight_bytes_per_token
    from numatp.errors import ModelFileError
    from numatp.model.config import from_gguf
    from numatp.model.gguf_file import GGUFFile
    from numatp.parallel.shard import shard_bytes, shard_identical_counts, shard_plan

    g = GGUFFile(path)
    contents = file_contents(g)
    try:
        cfg = from_gguf(g)
    except ModelFileError as e:
        # The header parsed, so there is a file to describe: say what is in it, and why
        # numatp cannot run it (unsupported architecture or type, experts, ...).
        reason = str(e).removeprefix(f"{g.path}: ")
        return {**contents, "cannot_run": reason}
    plan = shard_plan(g, cfg, n_nodes, moe_split)
    # A MoE model's FFN is its experts; only qwen2moe's shared expert is a dense one.
    dense_ffn = any(n.startswith(("blk.0.ffn_gate.", "blk.0.ffn_gate_shexp.")) for n in g.tensors)
    return {
        **contents, "cannot_run": None, "architecture": cfg.arch.name,
        "layers": cfg.n_layers, "hidden": cfg.hidden, "heads": cfg.n_heads,
        "kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
        "ffn": cfg.ffn if dense_ffn else None, "vocab": cfg.vocab,
        "context_length": cfg.ctx_train, "rope_base": cfg.rope_base, "tied_output": cfg.tied_output,
        "bytes_per_token": weight_bytes_per_token(g, cfg),
        "experts": cfg.n_experts, "experts_used": cfg.n_experts_used,
        "expert_ffn": cfg.expert_ffn, "moe_split": moe_split if cfg.n_experts else None,
        "shards": [{"rank": s.rank, "q_heads": list(s.q_heads), "kv_heads": list(s.kv_heads),
                    "ffn": list(s.ffn) if dense_ffn else None, "vocab": list(s.vocab),
                    **({"experts": list(s.experts), "expert_ffn": list(s.expert_ffn)}
                       if cfg.n_experts else {}),
                    "reduce_units": s.n_units, "bytes": shard_bytes(g, cfg, s)}
                   for s in plan],
        # node counts whose logits are the same bits (numatp/parallel/plan.py)
        "identical_nodes": list(shard_identical_counts(g, cfg)
                                if moe_split == "rows" or not cfg.n_experts else (1,)),
        "gpu": gpu_placement(g, cfg, ctx),
    }


def gpu_placement(gguf, cfg, ctx=None) -> dict:
    """The GPU (or why there is none) and what --gpu attn would place on it at `ctx`
    (default: what generate would use)."""
    from numatp.api import DEFAULT_CTX, PREFILL_CHUNK
    from numatp.gpu.budget import gpu_budget
    from numatp.gpu.device import probe
    ctx = ctx or min(cfg.ctx_train, DEFAULT_CTX)
    budget = gpu_budget(gguf, cfg, ctx, PREFILL_CHUNK)
    info, why = probe()
    return {"device": None if info is None else info.describe(), "unavailable": why,
            "free_bytes": None if info is None else info.free_bytes,
            "attn": budget.as_dict(), "attn_text": budget.describe(),
            "fits": None if info is None else budget.total_bytes <= info.free_bytes}


def gpu_text(gpu) -> list:
    """The lines `info` and `topology` print about the GPU and --gpu attn."""
    lines = [f"gpu: {gpu['device']}" if gpu["device"] else f"gpu: none ({gpu['unavailable']})"]
    verdict = ("" if gpu["fits"] is None else ": fits" if gpu["fits"] else
               ": does NOT fit the free memory (lower -c/--ctx-size)")
    lines.append(f"--gpu attn would place there: {gpu['attn_text']}{verdict}")
    return lines


def file_contents(g) -> dict:
    """What the header says, whether or not numatp can run the file: architecture, name,
    tensors by type, and tensors by kind (the same tensor of every layer as one entry)."""
    from numatp.quant.formats import type_name
    types = defaultdict(lambda: [0, 0])
    kinds = {}
    for t in g.tensors.values():
        types[type_name(t.qtype)][0] += 1
        types[type_name(t.qtype)][1] += t.nbytes
        kind = re.sub(r"^blk\.\d+\.", "blk.N.", t.name)
        entry = kinds.setdefault(kind, {"name": kind, "count": 0, "types": [],
                                        "shape": list(t.shape), "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += t.nbytes
        if type_name(t.qtype) not in entry["types"]:
            entry["types"].append(type_name(t.qtype))
    arch = g.metadata.get("general.architecture")
    name = g.metadata.get("general.name")
    return {
        "path": str(g.path), "file_bytes": g.file_size,
        "architecture": arch if isinstance(arch, str) else None,
        "name": name if isinstance(name, str) else None,
        "params": sum(math.prod(t.shape) for t in g.tensors.values()),
        "tensor_count": len(g.tensors),
        "tensor_types": {k: {"count": c, "bytes": b} for k, (c, b) in sorted(types.items())},
        "tensors": list(kinds.values()),
    }


@app.command()
def info(model: Optional[str] = typer.Argument(None, help="GGUF file, known model name "
                                                          "(numatp pull --list) or "
                                                          "hf://OWNER/REPO/FILE.gguf."),
         hf_repo: Optional[str] = typer.Option(None, "-hf", "-hfr", "--hf-repo", help=HF_REPO_HELP),
         nodes: int = typer.Option(1, "--nodes", help="Show the shard plan for this many nodes."),
         moe_split: str = MOE_SPLIT,
         ctx_size: int = typer.Option(0, "-c", "--ctx-size",
                                      help="Context for what --gpu attn would place on the GPU "
                                           "(0: the model's, at most 4096)."),
         as_json: bool = typer.Option(False, "--json")):
    """Metadata, tensors, bytes read per token, the shard plan; or why numatp cannot run it."""
    from numatp.errors import UsageError
    from numatp.parallel.plan import MAX_RANKS, check_moe_split
    from numatp.registry import resolve_model
    model = model_option(model, hf_repo)
    if model is None:
        raise UsageError("no model: give a GGUF file, a known model name, or -hf OWNER/REPO")
    if not 1 <= nodes <= MAX_RANKS:
        raise UsageError(f"invalid --nodes {nodes}: give 1 to {MAX_RANKS} (the most NUMA nodes "
                         "Linux supports)")
    check_moe_split(moe_split)
    if ctx_size < 0:
        raise UsageError(f"invalid --ctx-size {ctx_size}: must be >= 0")
    d = describe(resolve_model(model), nodes, ctx_size or None, moe_split)
    if as_json:
        print(json.dumps(d, indent=2))
        return
    mb = lambda b: f"{b / 1e6:,.1f} MB"  # noqa: E731
    print(f"{d['path']}: {d['architecture']} ({d['name']}), {d['params'] / 1e6:,.1f}M "
          f"parameters, {mb(d['file_bytes'])}")
    if d["cannot_run"] is None:
        print(f"  layers {d['layers']}, hidden {d['hidden']}, heads {d['heads']} / kv "
              f"{d['kv_heads']} (head dim {d['head_dim']}), "
              + (f"{_ffn_label(d)} {d['ffn']}, " if d["ffn"] is not None else "")
              + f"vocab {d['vocab']}, "
              f"context {d['context_length']}, rope base {d['rope_base']:g}"
              f"{', tied output' if d['tied_output'] else ''}")
    print("  tensor types:")
    for name, v in d["tensor_types"].items():
        print(f"    {name:8s} {v['count']:5d} tensors {mb(v['bytes']):>14s}")
    print(f"  {d['tensor_count']} tensors:")
    width = max((len(t["name"]) for t in d["tensors"]), default=0)
    for t in d["tensors"]:
        shape = "x".join(map(str, t["shape"]))
        print(f"    {t['name']:{width}s} {t['count']:5d} x {shape:<16s} {'/'.join(t['types'])}")
    if d["cannot_run"] is not None:
        print(f"  numatp cannot run this file: {d['cannot_run']}")
        return
    if d["experts"]:
        print(f"  experts: {d['experts']} per layer, {d['experts_used']} used per token, "
              f"expert ffn {d['expert_ffn']}")
        print(f"  bytes read per generated token: {mb(d['bytes_per_token'])} (the "
              f"{d['experts_used']} active experts of {d['experts']} only)")
    else:
        print(f"  bytes read per generated token: {mb(d['bytes_per_token'])}")
    print(f"  shard plan over {nodes} node{'s' if nodes > 1 else ''}"
          + (f", experts split by {d['moe_split']}" if d["experts"] and nodes > 1 else "") + ":")
    units = sum(s["reduce_units"] for s in d["shards"])
    counts = d["identical_nodes"]
    same = f"the same logits on {', '.join(map(str, counts[:-1]))} and {counts[-1]} nodes"
    if nodes in counts and len(counts) > 1:
        rounding = same
    else:
        rounding = "the node count changes the float round-off" + (
            f" ({same})" if len(counts) > 1 else "")
    print(f"    row-split products summed as {units} reduce unit{'s' if units > 1 else ''}: "
          + rounding)
    for s in d["shards"]:
        print(f"    rank {s['rank']}: q heads {s['q_heads'][0]}:{s['q_heads'][1]}, kv heads "
              f"{s['kv_heads'][0]}:{s['kv_heads'][1]}, "
              + (f"{_ffn_label(d)} {s['ffn'][0]}:{s['ffn'][1]}, " if s["ffn"] is not None else "")
              + f"vocab {s['vocab'][0]}:{s['vocab'][1]}"
              + (f", experts {s['experts'][0]}:{s['experts'][1]} rows "
                 f"{s['expert_ffn'][0]}:{s['expert_ffn'][1]}" if "experts" in s else "")
              + f", {mb(s['bytes'])}")
    for line in gpu_text(d["gpu"]):
        print(f"  {line}")


def _ffn_label(d):
    return "shared expert ffn" if d["experts"] else "ffn"
