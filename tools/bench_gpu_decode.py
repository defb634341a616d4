"""Time one decoded token's attention block per layer on the GPU (--gpu attn's hot path),
for each of numatp/gpu/decode.py's paths, at several cache depths, without a model file:

    python tools/bench_gpu_decode.py --depths 512,8192,32768 --layers 8

Random f16 weights of a 7B's attention shape (hidden 4096, 32 query heads and 8 KV heads
of 128: the defaults) are made on the GPU, and every path's cache is filled with the
same random keys and values up to the deepest position. Each timed call is what the
offload loop makes per layer: host vector in (pinned), attention block, host vector out,
synchronised. Per depth and path: the mean and the best of `--repeats` sweeps over the
layers, µs a layer. The first call per layer (the graph's capture, the kernels' load) is
not timed. Then each path's output against the array path's ("xp"), as a relative
difference, so a wrong number shows beside its time.
"""
import argparse
import time
from types import SimpleNamespace

import numpy as np

from numatp.gpu.attention import CupyBackend, GpuAttention
from numatp.gpu.decode import MODES


def random_weights(cp, cfg, seed):
    """Per layer, (wqkv, bias, q_norm, k_norm, wo) on the device: N(0, 1/fan_in) f16 weights,
    so that products of unit-scale inputs stay at unit scale."""
    rng = cp.random.default_rng(seed)
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    scale = lambda n: np.float32(1 / np.sqrt(n))  # noqa: E731
    return [((rng.standard_normal((q_dim + 2 * kv_dim, cfg.hidden), dtype=np.float32)
              * scale(cfg.hidden)).astype(np.float16), None, None, None,
             (rng.standard_normal((cfg.hidden, q_dim), dtype=np.float32)
              * scale(q_dim)).astype(np.float16))
            for _ in range(cfg.n_layers)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="512,8192,32768")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--modes", default=",".join(MODES))
    args = p.parse_args()
    import cupy as cp
    import cupyx

    depths = [int(d) for d in args.depths.split(",")]
    modes = sorted(args.modes.split(","), key=lambda m: m != "xp")   # the reference first
    ctx = max(depths) + 16
    cfg = SimpleNamespace(n_layers=args.layers, hidden=args.hidden, n_heads=args.heads,
                          n_kv_heads=args.kv_heads, head_dim=args.head_dim,
                          group=args.heads // args.kv_heads, norm_eps=1e-5,
                          rope_dim=args.head_dim, rope_base=10000.0, rope_scale=1.0,
                          rope_freq_factors=None, arch=SimpleNamespace(rope_neox=False))
    weights = random_weights(cp, cfg, 0)
    backend = CupyBackend()
    paths = {m: GpuAttention(backend, None, cfg, ctx, 1, weights=weights, decode=m)
             for m in modes}
    fill = cp.random.default_rng(1)
    for name in ("k", "v"):
        values = fill.standard_normal((cfg.n_layers, cfg.n_kv_heads, max(depths), cfg.head_dim),
                                      dtype=np.float32).astype(np.float16)
        for a in paths.values():
            getattr(a, name)[:, :, :max(depths)] = values
    cp.cuda.Device().synchronize()
    x = cupyx.empty_pinned((1, cfg.hidden), np.float32)
    out = cupyx.empty_pinned((1, cfg.hidden), np.float32)
    x[...] = np.random.default_rng(2).standard_normal((1, cfg.hidden), dtype=np.float32)
    a0 = next(iter(paths.values()))
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    print(f"GPU: {name}, CuPy {cp.__version__}; "
          f"hidden {cfg.hidden}, {cfg.n_heads}/{cfg.n_kv_heads} heads of {cfg.head_dim}, "
          f"{cfg.n_layers} layers, ctx {ctx}")
    print(f"host->GPU->host round trip of one vector: "
          f"{1e6 * a0.round_trip_seconds(x, out):.1f} us")
    print("| depth | path | us/layer mean | us/layer best | max rel diff vs xp |")
    print("|---:|---|---:|---:|---:|")
    for depth in depths:
        outputs = {}
        for mode, a in paths.items():
            for layer in range(cfg.n_layers):        # untimed: capture, first launches
                a(layer, x, depth, 0, out)
            sweeps = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                for layer in range(cfg.n_layers):
                    a(layer, x, depth, 0, out)
                sweeps.append((time.perf_counter() - start) / cfg.n_layers)
            outputs[mode] = out.copy()
            diff = ""
            if "xp" in outputs:
                ref = outputs["xp"]
                diff = f"{np.abs(outputs[mode] - ref).max() / np.abs(ref).max():.2e}"
            print(f"| {depth} | {mode} | {1e6 * np.mean(sweeps):.1f} | {1e6 * min(sweeps):.1f} "
                  f"| {diff} |", flush=True)


if __name__ == "__main__":
    main()
