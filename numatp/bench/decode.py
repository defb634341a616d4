"""Decode and prompt-processing speed of a model, against the read bandwidth measured in
the same run: decode reads every weight once per token, so bytes/token x tok/s over the
read bandwidth says how close to the memory roofline numatp streams."""
import statistics
import time

import numpy as np

from numatp.sampling import SamplingParams

GB = 1e9


def run(model, nodes="auto", threads=None, n_prompt=128, n_gen=64, repeats=3, ctx=None,
        measure_read=True) -> dict:
    import numatp
    from numatp.bench.memory import read_gbps
    t0 = time.perf_counter()
    with numatp.load(model, nodes=nodes, threads=threads, ctx_size=ctx or max(512, n_prompt + n_gen + 8)) as llm:
        load_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        # Random token ids: the speed of a step does not depend on which tokens they are.
        prompt = [int(t) for t in rng.integers(0, llm.config.vocab, n_prompt)]
        greedy = SamplingParams(temperature=0)
        prompt_tps, decode_tps = [], []
        for _ in range(repeats):
            for _tok in llm.generate_ids(prompt, n_gen, greedy, stop_at_eog=False):
                pass
            prompt_tps.append(llm.stats.prompt_tps)
            decode_tps.append(llm.stats.decode_tps)
        n_threads = threads or _threads_of(llm)
        result = {
            "model": llm.path, "nodes": llm.nodes, "threads": n_threads,
            "n_prompt": n_prompt, "n_gen": n_gen, "repeats": repeats, "load_s": load_s,
            "prompt_tps": statistics.median(prompt_tps), "decode_tps": statistics.median(decode_tps),
            "prompt_tps_all": prompt_tps, "decode_tps_all": decode_tps,
            "bytes_per_token": llm.bytes_per_token,
        }
    result["effective_gbps"] = result["bytes_per_token"] * result["decode_tps"] / GB
    if measure_read:
        result["read_gbps"] = read_gbps(n_threads)
        result["pct_of_read"] = 100 * result["effective_gbps"] / result["read_gbps"]
    return result


def _threads_of(llm) -> int:
    model = llm.model
    if hasattr(model, "reports"):
        return sum(r["threads"] for r in model.reports)
    import numba
    return numba.get_num_threads()


def format_report(r: dict) -> str:
    lines = [f"{r['model']}: nodes {r['nodes']}, threads {r['threads']}, load {r['load_s']:.1f} s",
             f"  prompt ({r['n_prompt']} tokens): {r['prompt_tps']:.1f} tok/s (median of {r['repeats']})",
             f"  decode ({r['n_gen']} tokens):  {r['decode_tps']:.1f} tok/s, "
             f"{r['bytes_per_token'] / 1e6:.1f} MB/token -> {r['effective_gbps']:.1f} GB/s effective"]
    if "read_gbps" in r:
        lines.append(f"  read bandwidth, same run: {r['read_gbps']:.1f} GB/s -> decode at "
                     f"{r['pct_of_read']:.0f}% of it")
    return "\n".join(lines)
