#!/usr/bin/env python3
"""Peak memory of a `numatp generate` run, all its processes together (coordinator and
workers), against the model file size plus the KV cache.

    python3 bench/peak_memory.py MODEL [--nodes 1] [-n 64] [-c 0] [--interval 0.05]

Memory is PSS summed over the process tree, sampled every --interval seconds: PSS splits
each shared page (the mmapped GGUF, shared memory segments) between the processes that
map it, so the sum counts every page once, which a sum of RSS would not. The KV cache
size is computed from the model's shape and the context size the run uses (float32 K and
V per layer, KV head and position; a KV head replicated on two workers counts twice).
Prints one JSON object.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil


def tree_pss(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def kv_bytes(model: str, nodes: str, ctx: int) -> tuple:
    """(KV cache bytes over all workers, context size used)."""
    from numatp.model.config import from_gguf
    from numatp.model.declare import cache_nbytes
    from numatp.model.gguf_file import GGUFFile
    from numatp.parallel.plan import make_plan
    from numatp.registry import resolve_model
    g = GGUFFile(resolve_model(model))
    cfg = from_gguf(g)
    ctx = ctx or min(cfg.ctx_train, 4096)   # generate's default (-c 0)
    n = 1 if nodes in ("auto", "1") else len(nodes.split(",")) if "," in nodes else int(nodes)
    return sum(cache_nbytes(cfg, ctx, s) for s in make_plan(cfg, n)), ctx, str(g.path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--nodes", default="auto")
    ap.add_argument("-n", type=int, default=64, help="tokens to generate")
    ap.add_argument("-c", "--ctx-size", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.05)
    args = ap.parse_args()
    kv, ctx, path = kv_bytes(args.model, args.nodes, args.ctx_size)
    cmd = [sys.executable, "-m", "numatp", "generate", "-m", path, "-p", "Once upon a time",
           "-n", str(args.n), "--temp", "0", "--nodes", args.nodes, "-c", str(ctx)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(root))
        time.sleep(args.interval)
    err = proc.stderr.read()
    if proc.returncode != 0:
        sys.exit(f"peak_memory: numatp exited {proc.returncode}: {err.strip()[-300:]}")
    size = Path(path).stat().st_size
    print(json.dumps({"model": path, "nodes": args.nodes, "ctx": ctx, "file_bytes": size,
                      "kv_bytes": kv, "peak_pss_bytes": peak,
                      "ratio_to_file_plus_kv": peak / (size + kv)}))


if __name__ == "__main__":
    main()
