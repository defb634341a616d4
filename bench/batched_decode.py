"""Aggregate decode tok/s of N sequences decoded together (LLM(parallel=N).slots, one step
for all rows) against one sequence alone, on one model in one process.

    python3 bench/batched_decode.py -m tests/data/stories260K.gguf -n 4
    python3 bench/batched_decode.py -m synth-q8_0 -n 4 --steps 32    # bench_models' 1.1B

Each round runs the single sequence, then the N slots, each from the same short prompt
(re-prefilled, mostly reused) for --steps greedy decode steps; the figures are medians over
the rounds (alternating keeps a noisy shared machine's drift out of the ratio)."""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True,
                    help="a GGUF file, or a bench_models name (synth-q8_0, ...)")
    ap.add_argument("-n", "--parallel", type=int, default=4)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--nodes", default="1")
    ap.add_argument("-t", "--threads", type=int, default=None)
    args = ap.parse_args()
    import numatp
    path = args.model
    if not Path(path).exists():
        from bench_models import model_path
        path = str(model_path(path))
    prompt = [1, 5, 9, 13, 17, 21, 25, 29]
    ctx = len(prompt) + args.steps + 8
    with numatp.load(path, nodes=args.nodes, threads=args.threads, ctx_size=ctx, parallel=args.parallel) as llm:
        def tok_per_s(n):
            for s in range(n):
                llm.slots.prefill(s, prompt)
            toks = [3] * n
            t0 = time.perf_counter()
            for _ in range(args.steps):
                rows = llm.slots.decode([(s, toks[s]) for s in range(n)])
                toks = [int(r.argmax()) for r in rows]
            return n * args.steps / (time.perf_counter() - t0)

        tok_per_s(1), tok_per_s(args.parallel)   # warm-up (a first run compiles)
        one, many = [], []
        for _ in range(args.rounds):
            one.append(tok_per_s(1))
            many.append(tok_per_s(args.parallel))
    m1, mn = statistics.median(one), statistics.median(many)
    print(f"{Path(path).name}: 1 sequence {m1:.1f} tok/s; {args.parallel} slots {mn:.1f} tok/s "
          f"aggregate: {mn / m1:.2f}x (medians of {args.rounds}; all: 1: "
          f"{[round(x, 1) for x in one]}, {args.parallel}: {[round(x, 1) for x in many]})")


if __name__ == "__main__":
    main()
