"""Matvec throughput of every kernel, against the read bandwidth measured in the same run.

Decode is one matvec per weight matrix per token, and a matvec reads each weight byte
once: the best a kernel can do is to stream its matrix as fast as the cores can read
memory. So each kernel is timed on a matrix far larger than the last-level cache (by
default 256 MB of weights, or four times the last-level cache where that is larger: a
16-core Xeon had 300 MiB, in which a 256 MB matrix ran at 1.4x the read bandwidth;
random blocks with sane scales), and its rate in weight bytes per second is put next to
the read bandwidth with the same number of threads.

The development machines are shared, and their bandwidth drifts by 2x within seconds. So
each timed matvec is paired with a timed pass of numatp.bench.memory's read kernel over a
buffer of the default matrix's size right after it, and a kernel's figures are medians
over the pairs: its GB/s, the read GB/s beside it, and pct_of_read, the median of the
per-pair ratios. The top-level read_gbps is numatp.bench.memory.read_gbps with all
threads, measured first.
"""
from numatp import _env  # noqa: F401  (before numba)

import time

import numba
import numpy as np

from numatp.bench import memory
from numatp.errors import UsageError
from numatp.quant import formats as F
from numatp.quant.kernels import KernelSet, linear, prepare, row_stride

GB = 1e9
MIN_STREAM_BYTES = 256 << 20
DEFAULT_COLS = 4096
FLOATS = (F.F32, F.F16, F.BF16)


def parse_types(text: str | None) -> list[int]:
    if not text:
        return list(F.SUPPORTED)
    out = []
    for name in text.split(","):
        try:
            q = F.parse_type(name)
        except ValueError as e:
            raise UsageError(f"{e}; supported: {F.supported_names()}") from None
        if q not in F.SUPPORTED:
            raise UsageError(f"no kernel for {F.type_name(q)}; supported: {F.supported_names()}")
        out.append(q)
    return out


def parse_threads(text: str | None) -> list[int]:
    """'1,2,4' or '1-4'; default 1..all threads Numba has."""
    top = memory.max_threads()
    if not text:
        return list(range(1, top + 1))
    out = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UsageError(f"--threads wants a list like 1,2 or 1-4, got {text!r}") from None
    bad = [t for t in out if not 1 <= t <= top]
    if bad or not out:
        raise UsageError(f"--threads must be between 1 and {top}, got {text!r}")
    return sorted(set(out))


def stream_bytes() -> int:
    """The size of the default matrix and of the read buffer paired with it."""
    from numatp.numa.topology import last_level_cache_bytes
    return max(MIN_STREAM_BYTES, 4 * last_level_cache_bytes())


def matrix_shape(qtype: int, rows: int | None, cols: int | None,
                 nbytes: int | None = None) -> tuple[int, int]:
    """rows x cols of the matrix to time; rows by default fill `nbytes` (stream_bytes())."""
    cols = DEFAULT_COLS if cols is None else cols
    bs = F.block_size(qtype)
    if cols < 1 or cols % bs:
        raise UsageError(f"--cols must be a positive multiple of {bs} for "
                         f"{F.type_name(qtype)}, got {cols}")
    if rows is None:
        rows = max(1, (nbytes or stream_bytes()) // F.row_bytes(qtype, cols))
    if rows < 1:
        raise UsageError(f"--rows must be at least 1, got {rows}")
    return rows, cols


def check_fits_memory(qtype: int, rows: int, cols: int, batch: int):
    """Refuse --rows/--cols/--batch whose arrays could never fit this machine's memory,
    before numpy is asked for them."""
    import psutil
    need = rows * F.row_bytes(qtype, cols) + (rows * cols * 4 if qtype in FLOATS else 0)
    need += batch * (cols + rows) * 4   # the batched path's inputs and outputs
    total = psutil.virtual_memory().total
    if need > total:
        raise UsageError(f"a {rows} x {cols} {F.type_name(qtype)} matrix"
                         f"{f' with a batch of {batch}' if batch else ''} needs {need / 2**30:,.1f} GiB, "
                         f"more than this machine's {total / 2**30:.1f} GiB (lower --rows, --cols "
                         "or --batch)")


def random_matrix(qtype: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """rows x cols of `qtype` as one uint8 array: normal floats for the float types,
    random bytes with finite fp16 scales (about 0.01) for the quantized ones."""
    rng = np.random.default_rng(seed)
    if qtype in FLOATS:
        values = rng.standard_normal((rows, cols), dtype=np.float32)
        if qtype == F.F16:
            values = values.astype(np.float16)
        elif qtype == F.BF16:
            values = (values.view(np.uint32) >> 16).astype(np.uint16)
        return values.view(np.uint8).reshape(-1)
    w = rng.integers(0, 256, rows * F.row_bytes(qtype, cols), dtype=np.uint8)
    blocks = w.reshape(-1, F.block_bytes(qtype))
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    for at in F.HALF_FIELDS[qtype]:
        blocks[:, at:at + 2] = scale
    return w


def time_matvec(qtype: int, w: np.ndarray, rows: int, cols: int, threads: int,
                repeats: int, words: np.ndarray) -> dict:
    """`repeats` pairs of (timed matvec, timed read pass over `words`) with `threads`
    threads, after one untimed matvec (compilation, first touch)."""
    kernels = KernelSet([qtype])
    stride = row_stride(qtype, cols)
    x = np.random.default_rng(1).standard_normal((1, cols), dtype=np.float32)
    y = np.empty((1, rows), np.float32)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        linear(kernels, qtype, w, rows, cols, x, y)
        rates, reads = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            linear(kernels, qtype, w, rows, cols, x, y)
            rates.append(rows * stride / (time.perf_counter() - t0) / GB)
            t0 = time.perf_counter()
            memory.read_kernel(words, threads)
            reads.append(words.nbytes / (time.perf_counter() - t0) / GB)
    finally:
        numba.set_num_threads(previous)
    ratios = [k / r for k, r in zip(rates, reads)]
    return {"gbps": float(np.median(rates)), "read_gbps": float(np.median(reads)),
            "pct_of_read": 100.0 * float(np.median(ratios))}


BATCH_MATRIX_BYTES = 16 << 20


def time_matmul(qtype: int, raw: np.ndarray, cols: int, threads: int, batch: int,
                repeats: int) -> tuple[float, float]:
    """Median 'effective' GB/s of the batched path: batch x the bytes of the first
    16 MB of rows of the matrix per second (what decoding those tokens one at a time
    would have to stream), and its multiply-adds per second (GMAC/s); compute-bound, so
    a smaller matrix than the matvec's will do."""
    kernels = KernelSet([qtype])
    stride = row_stride(qtype, cols)
    rows = max(1, min(raw.size // stride, BATCH_MATRIX_BYTES // stride))
    w = prepare(qtype, raw[:rows * stride].reshape(rows, stride))
    X = np.random.default_rng(2).standard_normal((batch, cols), dtype=np.float32)
    Y = np.empty((batch, rows), np.float32)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        linear(kernels, qtype, w, rows, cols, X, Y)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            linear(kernels, qtype, w, rows, cols, X, Y)
            times.append(time.perf_counter() - t0)
    finally:
        numba.set_num_threads(previous)
    best = float(np.median(times))
    return batch * rows * stride / best / GB, batch * rows * cols / best / GB


def run(types: str | None = None, threads: str | None = None, rows: int | None = None,
        cols: int | None = None, repeats: int = 5, batch: int = 0, progress=None) -> dict:
    """The whole `numatp bench kernels`; returns the JSON-ready result."""
    qtypes = parse_types(types)
    counts = parse_threads(threads)
    if repeats < 1:
        raise UsageError(f"--repeats must be at least 1, got {repeats}")
    if batch < 0 or batch == 1:
        raise UsageError(f"--batch must be 0 (off) or at least 2, got {batch}")
    nbytes = stream_bytes()   # reads sysfs: once
    shapes = {q: matrix_shape(q, rows, cols, nbytes) for q in qtypes}
    for q, (r, c) in shapes.items():
        check_fits_memory(q, r, c, batch)
    read_all = memory.read_gbps(max(counts))
    words = memory.as_words(np.ones(nbytes // 8, np.uint64))
    for t in counts:
        memory.time_read(words, t, 1)  # compiles the read kernel, starts the threads
    results = []
    for q in qtypes:
        r, c = shapes[q]
        raw = random_matrix(q, r, c)
        w = prepare(q, raw.reshape(r, -1))
        for t in counts:
            item = {"type": F.type_name(q), "threads": t}
            item.update(time_matvec(q, w, r, c, t, repeats, words))
            item.update({"rows": r, "cols": c, "matrix_mb": raw.nbytes / 1e6})
            if batch:
                item["batch"] = batch
                item["batch_gbps"], item["batch_gmacs"] = time_matmul(q, raw, c, t, batch,
                                                                      repeats)
            results.append(item)
            if progress:
                progress(item)
        del w, raw
    return {"read_gbps": read_all, "threads": counts, "repeats": repeats, "batch": batch,
            "kernels": results}


def format_report(r: dict) -> str:
    counts = r["threads"]
    lines = [f"Matvec throughput, GB/s of weights read, and as % of the read bandwidth with "
             f"as many threads, measured alternately with it ({r['repeats']} pairs, medians)",
             f"read bandwidth, {max(counts)} threads (numatp.bench.memory.read_gbps): "
             f"{r['read_gbps']:.1f} GB/s"]
    head = f"{'type':<8}{'rows x cols':>16}{'MB':>7}"
    head += "".join(f"{f'{t}T GB/s':>10}{'read':>7}{'%read':>7}" for t in counts)
    lines.append(head)
    by_type: dict[str, dict[int, dict]] = {}
    for k in r["kernels"]:
        by_type.setdefault(k["type"], {})[k["threads"]] = k
    for name, per in by_type.items():
        first = next(iter(per.values()))
        line = f"{name:<8}{first['rows']:>9} x {first['cols']:<5}{first['matrix_mb']:>6.0f}"
        for t in counts:
            k = per.get(t)
            if k:
                line += f"{k['gbps']:>10.1f}{k['read_gbps']:>7.1f}{k['pct_of_read']:>6.0f}%"
            else:
                line += " " * 24
        lines.append(line)
    if r.get("batch"):
        lines.append("")
        lines.append(f"Batched path, {r['batch']} tokens at a time: {r['batch']} x weight GB "
                     f"per second (what one-token matvecs would have to stream)")
        lines.append(f"{'type':<8}" + "".join(f"{f'{t}T GB/s':>10}{'x matvec':>10}{'GMAC/s':>9}"
                                               for t in counts))
        for name, per in by_type.items():
            line = f"{name:<8}"
            for t in counts:
                k = per.get(t)
                line += (f"{k['batch_gbps']:>10.1f}{k['batch_gbps'] / k['gbps']:>9.1f}x"
                         f"{k['batch_gmacs']:>9.1f}" if k else " " * 29)
            lines.append(line)
    return "\n".join(lines)
