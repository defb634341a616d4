#!/usr/bin/env python3
"""Is numatp's read ceiling honest? Compare `numatp bench memory` with a C read kernel.

Builds bench/stream_read.c (gcc -O3 -march=native -fopenmp), then alternates, round by
round, `numatp bench memory --json` and the C program on the same CPUs (those of the first
NUMA node), the same buffer size, and each thread count of numatp's scaling curve. Prints
both read figures and their ratio. The verdict is on the figure numatp reports as
`read_gbps` (all threads of the node): alternating rounds, and the median over them, keep
a noisy shared host from favouring whichever side ran while it was quiet. Exits 1 when
numatp's median is more than 10% below C's.

usage: python3 bench/check_stream.py [--rounds 3] [--size-mb 1024] [--repeats 10]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOLERANCE = 0.10


def build() -> Path:
    exe = HERE / "stream_read"
    cmd = ["gcc", "-O3", "-march=native", "-fopenmp", str(HERE / "stream_read.c"), "-o", str(exe)]
    subprocess.run(cmd, check=True)
    return exe


def first_node_cpus() -> list[int]:
    from numatp.numa.topology import discover
    return next(n.cpus for n in discover().nodes if n.cpus)


def run_c(exe: Path, cpus: list[int], threads: int, size_mb: int, repeats: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([str(exe), str(size_mb), str(repeats)], env=env, check=True,
                         capture_output=True, text=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, cpus)).stdout
    return json.loads(out)


def run_numatp(size_mb: int, repeats: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "numatp", "bench", "memory", "--json",
                          "--size-mb", str(size_mb), "--repeats", str(repeats)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    exe = build()
    cpus = first_node_cpus()
    print(f"read bandwidth, GB/s, best of {args.repeats} passes over {args.size_mb} MiB, "
          f"CPUs of the first node: {len(cpus)}")
    print(f"{'round':>5} {'threads':>7} {'C':>8} {'numatp':>8} {'ratio':>7}")
    c_all, n_all = [], []
    for r in range(args.rounds):
        ours = run_numatp(args.size_mb, args.repeats)
        for point in ours["scaling"]:
            t = point["threads"]
            c = run_c(exe, cpus, t, args.size_mb, args.repeats)["read_gbps"]
            n = point["read_gbps"]
            print(f"{r + 1:>5} {t:>7} {c:>8.1f} {n:>8.1f} {n / c:>7.3f}", flush=True)
        c_all.append(c)                  # the last point: all threads, numatp's read_gbps
        n_all.append(ours["read_gbps"])
    c_med, n_med = statistics.median(c_all), statistics.median(n_all)
    ratio = n_med / c_med
    print(f"all {len(cpus)} threads, median over rounds: C {c_med:.1f}, numatp {n_med:.1f} GB/s")
    ok = ratio >= 1 - TOLERANCE
    print(f"numatp/C = {ratio:.3f}: {'within' if ok else 'NOT within'} {TOLERANCE:.0%} of C "
          f"(or above it)")
    sys.exit(0 if ok else 1)

if __name__ == "__main__":
    main()
