"""`numatp bench memory`: the kernels compute the right thing and the JSON keeps its shape.
Bandwidth values themselves are not asserted (shared, noisy hosts); only that they exist
and are positive."""
import json
import subprocess
import sys

import numpy as np
import pytest

import numatp  # noqa: F401  (numba settings first)
from numatp.bench import memory
from numatp.errors import UsageError


@pytest.mark.parametrize("n, chunks", [(1, 1), (37, 3), (1000, 2), (4097, 7), (5, 8)])
def test_read_kernel_sums_every_word(n, chunks):
    words = np.random.default_rng(n).integers(0, 2**40, n, dtype=np.uint64)
    assert read_sum(words, chunks) == int(words.sum())


def read_sum(words, chunks):
    return int(memory.read_kernel(words, chunks))


def test_read_kernel_wraps_like_uint64():
    words = np.full(10, 2**63, np.uint64)
    assert read_sum(words, 2) == (10 * 2**63) % 2**64


def test_copy_and_triad_kernels():
    src = np.arange(1000, dtype=np.float64)
    dst = np.zeros_like(src)
    memory.copy_kernel(dst, src)
    assert np.array_equal(dst, src)
    a = np.zeros(1000)
    c = np.full(1000, 2.0)
    memory.triad_kernel(a, src, c, 3.0)
    assert np.array_equal(a, src + 6.0)


def test_as_words_drops_the_partial_tail():
    buf = np.arange(20, dtype=np.uint8)
    words = memory.as_words(buf)
    assert words.dtype == np.uint64 and words.size == 2
    assert words.tobytes() == buf[:16].tobytes()


def test_read_gbps_in_process():
    rate = memory.read_gbps(1, nbytes=1 << 20, repeats=2)
    assert isinstance(rate, float) and rate > 0


def test_read_gbps_rejects_bad_arguments():
    with pytest.raises(UsageError):
        memory.read_gbps(0, nbytes=1 << 20)
    with pytest.raises(UsageError):
        memory.read_gbps(memory.max_threads() + 1, nbytes=1 << 20)
    with pytest.raises(UsageError):
        memory.read_gbps(1, nbytes=100)
    with pytest.raises(UsageError):
        memory.read_gbps(1, nbytes=1 << 20, repeats=0)


def test_thread_counts():
    assert memory.thread_counts(1) == [1]
    assert memory.thread_counts(2) == [1, 2]
    assert memory.thread_counts(6) == [1, 2, 4, 6]
    assert memory.thread_counts(16) == [1, 2, 4, 8, 16]


def check_shape(d):
    assert isinstance(d["read_gbps"], float) and d["read_gbps"] > 0
    n_cpu, n_mem = len(d["cpu_nodes"]), len(d["mem_nodes"])
    assert len(d["matrix_gbps"]) == n_cpu
    assert all(len(row) == n_mem and all(v > 0 for v in row) for row in d["matrix_gbps"])
    assert d["read_gbps"] in d["matrix_gbps"][0]
    assert [p["threads"] for p in d["scaling"]] == memory.thread_counts(d["threads"])
    for p in d["scaling"]:
        assert set(p) >= {"threads", "read_gbps", "copy_gbps", "triad_gbps"}
        assert all(p[k] > 0 for k in ("read_gbps", "copy_gbps", "triad_gbps"))
        assert p["read_median_gbps"] <= p["read_gbps"]
    # The all-threads point of the curve is the local matrix cell (one measurement).
    assert d["scaling"][-1]["read_gbps"] == d["read_gbps"]
    for row in d["matrix_local_fraction"]:
        assert all(f is None or f == 1.0 for f in row)


def test_cli_bench_memory_json():
    # 8 MiB fits in a last-level cache: fine for the shape, not for a real figure.
    r = subprocess.run([sys.executable, "-m", "numatp", "bench", "memory", "--json",
                        "--size-mb", "8", "--repeats", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    check_shape(d)
    assert d["size_mb"] == 8 and d["repeats"] == 2
    text = memory.format_report(d)
    assert "cpu\\mem" in text and "triad" in text


@pytest.mark.parametrize("flag", ["--size-mb=0", "--repeats=0"])
def test_cli_bench_memory_rejects_bad_values(flag):
    r = subprocess.run([sys.executable, "-m", "numatp", "bench", "memory", flag],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("numatp: error: ") and len(r.stderr.splitlines()) == 1
