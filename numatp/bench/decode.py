"""Prompt-processing and decode speed, the way llama.cpp's llama-bench measures them.

Every combination of model, --nodes and thread count is loaded once and runs every test:
a prompt test "ppP" processes P random tokens from position 0 (numatp's prefill, in
chunks), a generation test "tgN" decodes N tokens one at a time after a one-token prompt
(greedy sampling included, as `generate` does). Each test runs one unmeasured repetition
first: loading the kernels, first-touching the KV cache pages and warming the caches
belong to no sample.

Decode reads every weight once per token (of a Mixture-of-Experts model, the shared
weights and the active experts': bytes_per_token counts those), so for tg rows
bytes/token x tok/s is an effective bandwidth, set against the read bandwidth of the same thread count measured in
the same run: how close to the memory roofline numatp streams. A prompt chunk reads the
weights once for many tokens, so pp rows have no such figure.
"""
import itertools
import math
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np

from numatp.errors import UsageError
from numatp.quant.formats import type_name
from numatp.sampling import SamplingParams

GB = 1e9
MIN_CTX = 512


@dataclass(frozen=True)
class Test:
    kind: str    # "pp" (prompt processing) or "tg" (text generation)
    n: int
    # Positions already in the KV cache, filled with synthetic keys and values
    # (LLM.fill_synthetic_kv) rather than by a prompt: the test runs at positions depth..
    depth: int = 0

    @property
    def name(self) -> str:
        # llama-bench's label of a test at depth (its -d): "tg64 @ d8192"
        return f"{self.kind}{self.n}" + (f" @ d{self.depth}" if self.depth else "")


def plan_tests(n_prompts, n_gens, depths=(0,)) -> list[Test]:
    """llama-bench's order and its convention that a size of 0 means no such test."""
    return [Test(kind, n, d) for d in depths
            for kind, sizes in (("pp", n_prompts), ("tg", n_gens)) for n in sizes if n > 0]


def sample_stats(samples) -> dict:
    """Mean, sample standard deviation (n - 1, as llama-bench; 0 for one sample), median."""
    samples = [float(s) for s in samples]
    return {"avg_ts": statistics.fmean(samples),
            "stddev_ts": statistics.stdev(samples) if len(samples) > 1 else 0.0,
            "median_ts": statistics.median(samples),
            "samples_ts": samples}


class Progress:
    """What a run reports while it goes; the command line draws it, tests record it."""

    def loading(self, model, nodes, threads):
        pass

    def loaded(self, config):
        pass

    def note(self, message):
        pass

    def test_started(self, label, warmup, repeats):
        pass

    def warmed_up(self, label):
        pass

    def sampled(self, label, index, tps):
        pass

    def test_done(self, label, row):
        pass

    def measuring_read(self, threads):
        pass


def run(models=(None,), nodes_list=("auto",), threads_list=(None,), n_prompts=(128,),
        n_gens=(64,), repeats=3, warmup=True, read_bytes=None, progress=None, gpus=(None,),
        depths=(0,), moe_split="rows") -> list[dict]:
    """One row per (model, nodes, threads, gpu, test), in that nesting order. read_bytes:
    the buffer of the read-bandwidth measurement (None: memory.read_gbps's default; 0: no
    measurement, and no read_gbps / pct_of_read in the rows). gpus: None (CPU only) and/or
    "attn". depths: run the tests after filling that many positions of the KV cache with
    synthetic keys and values (LLM.fill_synthetic_kv). moe_split: how a Mixture-of-Experts
    model's experts are split over several nodes (numatp.load's)."""
    progress = progress or Progress()
    tests = plan_tests(n_prompts, n_gens, depths)
    if not tests:
        raise UsageError("no test to run: every -p and -n is 0")
    read_by_threads, rows = {}, []
    for model, nodes, threads, gpu in itertools.product(models, nodes_list, threads_list, gpus):
        config_rows = run_config(model, nodes, threads, tests, repeats, warmup, progress, gpu,
                                 moe_split)
        used = config_rows[0]["threads"]
        # Measured with the model closed, so that its workers' memory and threads are gone.
        if read_bytes != 0 and any(r["n_gen"] for r in config_rows):
            if used not in read_by_threads:
                progress.measuring_read(used)
                read_by_threads[used] = measure_read(used, read_bytes)
            for row in config_rows:
                add_read_share(row, read_by_threads[used])
        rows.extend(config_rows)
    return rows


def run_config(model, nodes, threads, tests, repeats, warmup, progress, gpu=None,
               moe_split="rows") -> list[dict]:
    """Load the model once for this --nodes and -t and run every test on it. The thread
    count is set at load: per worker process, or for one in-process node by Numba's
    set_num_threads for this thread, which the step's parallel loops then follow (one
    process alternating -t 2,1,2,1 ran the step on 2, 1, 2, 1 busy OS threads)."""
    import numatp
    ctx = max([MIN_CTX] + [t.depth + t.n + (t.kind == "tg") for t in tests])
    progress.loading(model, nodes, threads)
    t0 = time.perf_counter()
    with numatp.load(model, nodes=nodes, threads=threads, ctx_size=ctx,
                     announce=progress.note, gpu=gpu, moe_split=moe_split) as llm:
        load_s = time.perf_counter() - t0
        used = threads_of(llm)
        if threads is not None and used != threads:
            progress.note(f"-t {threads} with --nodes {nodes}: ran {used} threads "
                          "(one per node at least, the nodes' CPUs at most)")
        config = describe(llm) | {"nodes": llm.nodes, "threads": used, "load_s": load_s,
                                  "gpu": gpu or "none"}
        progress.loaded(config)
        where = (f"{llm.nodes} node{'s' if llm.nodes > 1 else ''}, "
                 f"{used} thread{'s' if used > 1 else ''}" + (f", --gpu {gpu}" if gpu else ""))
        rows, filled = [], None
        for test in tests:
            if test.depth and test.depth != filled:
                llm.fill_synthetic_kv(test.depth)
                filled = test.depth
                progress.note(f"KV cache filled with synthetic keys and values to depth "
                              f"{test.depth}")
            rows.append(config | measure(llm, test, repeats, warmup, progress,
                                         label=f"{test.name}, {where}"))
        peak = peak_rss(llm)
        return [row | {"peak_rss": peak,
                       "moe_split": moe_split if llm.config.n_experts and llm.nodes > 1
                       else None} for row in rows]


def peak_rss(llm) -> int:
    """The peak resident memory (VmHWM) of this process plus the model's worker processes,
    in bytes: what the model cost in memory, to compare with its file's size. This
    process's peak includes what it held before the model (the interpreter, Numba: tens of
    MB)."""
    pids = [os.getpid()] + [p.pid for p in getattr(llm.model, "processes", [])]
    return sum(_vm_hwm(pid) for pid in pids)


def _vm_hwm(pid) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(llm, test, repeats, warmup=True, progress=None, label=None) -> dict:
    """One test's row fields: its sizes, the tok/s of each measured repetition and their
    statistics, and for tg the effective bandwidth at the mean speed."""
    progress = progress or Progress()
    rng = np.random.default_rng(0)
    # Random token ids: the speed of a step does not depend on which tokens they are.
    tokens = [int(t) for t in rng.integers(0, llm.config.vocab, max(test.n, 1))]
    greedy = SamplingParams(temperature=0)

    def once():
        if test.depth:
            return at_depth(llm, test, tokens)
        if test.kind == "pp":
            llm.reset()   # else the prompt would be found in the cache, all but 2 tokens
            drain(llm.generate_ids(tokens, 0, greedy, stop_at_eog=False))
            return llm.stats.prompt_tps
        drain(llm.generate_ids(tokens[:1], test.n + 1, greedy, stop_at_eog=False))
        return llm.stats.decode_tps

    label = label or test.name
    progress.test_started(label, warmup, repeats)
    if warmup:
        once()
        progress.warmed_up(label)
    samples = []
    counters = sync_counters(llm)
    for i in range(repeats):
        samples.append(once())
        progress.sampled(label, i, samples[-1])
    row = {"test": test.name, "n_prompt": test.n if test.kind == "pp" else 0,
           "n_gen": test.n if test.kind == "tg" else 0, "n_depth": test.depth,
           "synthetic_kv": bool(test.depth), "repetitions": repeats,
           **sample_stats(samples), "effective_gbps": None, "read_gbps": None,
           "pct_of_read": None, **step_times(counters, sync_counters(llm))}
    if test.kind == "tg":
        row["effective_gbps"] = llm.bytes_per_token * row["avg_ts"] / GB
    progress.test_done(label, row)
    return row


def sync_counters(llm):
    """The worker processes' running totals (ProcessGroupModel.sync_counters), or None
    for a model run in this process."""
    counters = getattr(llm.model, "sync_counters", None)
    return counters() if counters else None


def step_times(before, after) -> dict:
    """Where a test's steps spent their time, in milliseconds per step, from the worker
    processes' counters before and after it: `step_ms` as the coordinator saw it, and per
    rank `worker_ms` (the worker's time on the step) and `peer_wait_ms` (the part of it
    spent waiting for slower peers in the all-reduces). What a step takes beyond the
    slowest worker is the hand-over between processes; a rank's wait is what the split
    costs it beyond its own work. All three are None for a model run in this process."""
    if before is None or after["steps"] == before["steps"]:
        return {"step_ms": None, "worker_ms": None, "peer_wait_ms": None}
    steps = after["steps"] - before["steps"]

    def per_step(key):
        return [(b - a) / steps / 1e6 for a, b in zip(before[key], after[key])]

    return {"step_ms": (after["call_ns"] - before["call_ns"]) / steps / 1e6,
            "worker_ms": per_step("busy_ns"), "peer_wait_ms": per_step("waited_ns")}


def at_depth(llm, test, tokens) -> float:
    """tok/s of a test at positions test.depth.. after a synthetic KV fill: a prompt
    processed in the usual chunks, or greedy decoding one token at a time."""
    from numatp.api import _chunks
    depth = test.depth
    start = time.perf_counter()
    if test.kind == "pp":
        for a, b in _chunks(depth, depth + test.n):
            llm._forward(tokens[a - depth:b - depth], a)
    else:
        tok = tokens[0]
        for i in range(test.n):
            tok = int(np.argmax(llm._forward([tok], depth + i)))
    elapsed = time.perf_counter() - start
    # The slot's record of its tokens now lacks the synthetic positions before `depth`:
    # forget it, or a later prompt could "reuse" positions it never filled.
    llm.reset()
    return test.n / elapsed


def drain(tokens):
    for _ in tokens:
        pass


def measure_read(threads, read_bytes=None) -> float:
    from numatp.bench.memory import max_threads, read_gbps
    # Virtual nodes may share CPUs, so their threads can outnumber what one process runs.
    return read_gbps(min(threads, max_threads()), nbytes=read_bytes)


def add_read_share(row, read):
    if row["effective_gbps"] is not None:
        row["read_gbps"] = read
        row["pct_of_read"] = 100 * row["effective_gbps"] / read


def threads_of(llm) -> int:
    """Threads that really run the model: -t is capped by the CPUs of the chosen nodes."""
    model = llm.model
    if hasattr(model, "reports"):
        return sum(r["threads"] for r in model.reports)
    import numba
    return numba.get_num_threads()


def describe(llm) -> dict:
    """The model columns of a row. model_type reads like llama-bench's ("llama 135M
    Q4_1"), its type being the one that holds most of the weight bytes."""
    cfg = llm.config
    params = active = 0
    by_type = {}
    for name, t in llm.gguf.tensors.items():
        n = math.prod(t.shape)
        params += n
        active += n * cfg.n_experts_used // cfg.n_experts if "_exps." in name else n
        by_type[t.qtype] = by_type.get(t.qtype, 0) + t.nbytes
    main_type = type_name(max(by_type, key=by_type.get))
    # llama-bench's label of a MoE model: total and active parameters ("30B.A3B").
    size = count_label(params) + (f".A{count_label(active)}" if cfg.n_experts else "")
    return {"model": llm.path, "model_type": f"{cfg.arch.name} {size} {main_type}",
            "size": sum(by_type.values()), "params": params, "active_params": active,
            "bytes_per_token": llm.bytes_per_token}


def count_label(n) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)
