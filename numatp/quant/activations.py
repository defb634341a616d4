"""Activations as int8, the form the quantized kernels multiply with.

Every group of 32 activations gets a float32 scale d = max|x| / 127 and is rounded to
integers q = round(x / d) in [-127, 127], as llama.cpp does for its Q8_0/Q8_1
activations. The weights are small integers too, so a block's dot product is one chain
of integer multiply-adds (vpdpbusd where the CPU has it, see isa.py), scaled once.

Precision: each activation is off by at most d / 2 = max|x| / 254 of its group, so a
dot product with a weight row W is off by at most sum_j |W_j| * max|x| / 254. Groups of
32 divide every block size, and a column shard starts on a block boundary, so a shard
quantizes its part of x exactly as the whole matrix would.

Besides the integers and scales, the sums of each 16 and 32 quantized values (times d)
are kept: formats whose weights are d*q + m (an offset per block or sub-block) add
m * sum(x) once per block instead of once per element.
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit

from numatp.quant.simd import convert, hmax, hsum, load, part, round_even, store, vabs

GROUP = 32
INT8_MAX = 127
_TINY = np.float32(1e-30)


@njit(boundscheck=False)
def quantize_vector(x, xq, xd, xs32, xs16):
    """x: float32 (n,), n a multiple of 32 -> xq int8 (n,), xd (n/32,) each group's
    scale, xs32 (n/32,) and xs16 (n/16,) the sums of each 32 and 16 values as quantized,
    times their scale."""
    for g in range(x.size // GROUP):
        v = load(x, g * GROUP, GROUP)
        top = hmax(vabs(v))
        if top > _TINY:
            d = top / np.float32(INT8_MAX)
            inv = np.float32(INT8_MAX) / top
        else:  # all zero, or so small that 127 / top would overflow: count as zero
            d = np.float32(0)
            inv = np.float32(0)
        q = convert(round_even(v * inv), np.int32)
        store(xq, g * GROUP, convert(q, np.int8))
        xd[g] = d
        lo = d * np.float32(hsum(part(q, 0, 16)))
        hi = d * np.float32(hsum(part(q, 16, 16)))
        xs16[2 * g] = lo
        xs16[2 * g + 1] = hi
        xs32[g] = lo + hi


@njit(boundscheck=False)
def quantize_rows(X, XQ, XD, XS32, XS16):
    """Row t of X (T, n) -> row t of XQ (T, n), XD, XS32 (T, n // 32), XS16 (T, n // 16)."""
    for t in range(X.shape[0]):
        quantize_vector(X[t], XQ[t], XD[t], XS32[t], XS16[t])


def dequantize_vector(xq, xd):
    """Inverse of quantize_vector (NumPy, for tests): float64."""
    return (xq.reshape(-1, GROUP).astype(np.float64) * xd.astype(np.float64)[:, None]).reshape(-1)
