"""The integer dot product's instruction-set forms (numatp/quant/isa.py), each compiled
for its own target in a subprocess: VNNI on 512 and 256 bits, pmaddubsw on AVX-512BW
and AVX2, and the generic LLVM form. A form runs where this machine's CPU has its
instructions; the forms it lacks cannot execute here, so they are left out of the
parameter list (the list printed by `pytest -v` shows which ran).

Per form: simd.dot4 against NumPy for unsigned bytes below and above 128 (the
pmaddubsw forms split the latter), simd.lookup16 on 64 lanes, and the packed matrix
kernels for a small-integer format (Q4_0), one that needs the split (IQ4_NL, a lookup
table too) and a 16-element-unit K-quant (Q6_K), whose row groups are 16 rows on
512-bit targets and 8 on the others.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HASWELL = ("+64bit,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,+cx8,+cmov,+fxsr,"
           "+mmx,+sahf,+xsave,+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe")
AVX512 = HASWELL + ",+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512cd"
# form: (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES, /proc/cpuinfo flags it needs)
TARGETS = {
    # no AVX2: Ivy Bridge (F16C, which the fp16 scales need, came with it)
    "generic": ("ivybridge", "+64bit,+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,"
                "+cx8,+cmov,+fxsr,+mmx,+sahf,+xsave,+avx,+f16c", {"avx", "f16c"}),
    "avx2": ("haswell", HASWELL, {"avx2", "fma", "f16c", "bmi2"}),
    "avx512bw": ("skylake-avx512", AVX512, {"avx2", "fma", "f16c", "bmi2", "avx512bw",
                                            "avx512vl"}),
    "avxvnni": ("alderlake", HASWELL + ",+avxvnni", {"avx2", "fma", "f16c", "bmi2",
                                                      "avx_vnni"}),
    "vnni512": ("cascadelake", AVX512 + ",+avx512vnni", {"avx2", "fma", "f16c", "bmi2",
                                                         "avx512bw", "avx512vl",
                                                         "avx512_vnni"}),
}


def _cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


RUNNABLE = [name for name, (_, _, need) in TARGETS.items() if need <= _cpu_flags()]

CHECK = r'''
import json, sys
import numpy as np
import numatp
from numba import njit
from numatp.quant import formats as F, isa
from numatp.quant.kernels import KernelSet, R, linear, prepare
from numatp.quant.simd import dot4, load, lookup16, splat, store
sys.path.insert(0, sys.argv[1])
from test_kernels import assert_close, make_matrix

@njit
def dots(u, s, out16, out8):
    store(out16, 0, dot4(splat(np.int32(0), 16), load(u, 0, 64), load(s, 0, 64), False))
    store(out8, 0, dot4(splat(np.int32(0), 8), load(u, 0, 32), load(s, 0, 32), False))
    store(out16, 16, dot4(splat(np.int32(0), 16), load(u, 0, 64) & np.uint8(127),
                          load(s, 0, 64), True))

@njit
def look(table, idx, out):
    store(out, 0, lookup16(load(table, 0, 16), load(idx, 0, 64)))

rng = np.random.default_rng(7)
u = rng.integers(0, 256, 64).astype(np.uint8)
s = rng.integers(-127, 128, 64).astype(np.int8)
o16, o8 = np.zeros(32, np.int32), np.zeros(8, np.int32)
dots(u, s, o16, o8)
full = (u.astype(np.int64) * s).reshape(16, 4).sum(1)
small = ((u & 127).astype(np.int64) * s).reshape(16, 4).sum(1)
assert np.array_equal(o16[:16], full) and np.array_equal(o8, full[:8])
assert np.array_equal(o16[16:], small)
table = rng.integers(0, 256, 16).astype(np.uint8)
idx = rng.integers(0, 16, 64).astype(np.uint8)
got = np.zeros(64, np.uint8)
look(table, idx, got)
assert np.array_equal(got, table[idx])

types = [F.Q4_0, F.IQ4_NL, F.Q6_K]
kernels = KernelSet(types)
for q in types:
    for rows, T in ((R + 5, 1), (2 * R - 1, 6)):
        cols = 2 * F.block_size(q)
        raw, W = make_matrix(q, rows, cols, rng)
        X = rng.standard_normal((T, cols)).astype(np.float32)
        Y = np.full((T, rows), np.nan, np.float32)
        linear(kernels, q, prepare(q, raw), rows, cols, X, Y)
        assert_close(q, Y, W, X)
print(json.dumps({"isa": isa.dot_isa(isa.target_features()), "rows": R}))
'''


@pytest.mark.parametrize("form", RUNNABLE)
def test_dot_product_form(form, tmp_path):
    cpu, features, _ = TARGETS[form]
    env = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CPU_FEATURES=features)
    r = subprocess.run([sys.executable, "-c", CHECK, str(Path(__file__).parent)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["isa"] == form
    assert result["rows"] == (16 if form in ("vnni512", "avx512bw") else 8)
