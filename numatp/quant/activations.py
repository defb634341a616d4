"""Activations as int8, the form the quantized kernels multiply with.

Every group of activations gets a float32 scale d = max|x| / 127 and is rounded to
integers q = round(x / d) in [-127, 127], as llama.cpp does for its activations: groups
of 32 for the 32-element block formats (its Q8_0/Q8_1), of 256 for the super-block
formats (its Q8_K), whose kernels sum a super-block's units as integers and so need one
activation scale for all of them. The weights are small integers too, so a unit's dot
product is one chain of integer multiply-adds (vpdpbusd where the CPU has it, see
isa.py), scaled once.

Precision: each activation is off by at most d / 2 = max|x| / 254 of its group, so a
dot product with a weight row W is off by at most sum_j |W_j| * max|x| / 254. Groups
divide their formats' blocks, and a column shard starts on a block boundary, so a shard
quantizes its part of x exactly as the whole matrix would.

Besides the integers and scales, the sums of each 16 and 32 quantized values are kept,
as integers and times d: formats whose weights are d*q + m (an offset per block or
sub-block) add m * sum(x) once per block or unit instead of once per element, and
formats with a fixed zero point z (Q4_0's q - 8) start the integer dot product at
-z * sum(q).
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit

from numatp.quant.simd import convert, hmax, hsum, load, part, round_even, store, vabs

GROUP = 32          # values per scale for the 32-element block formats
SUPER_GROUP = 256   # and for the super-block formats
INT8_MAX = 127
_TINY = np.float32(1e-30)


@njit(boundscheck=False)
def quantize_vector(x, xq, xd, xs32, xs16, xi32, xi16):
    """x: float32 (n,), n a multiple of the group (n / xd.size: 32 or 256) -> xq int8
    (n,), xd each group's scale, xi32 (n/32,) and xi16 (n/16,) the int32 sums of each 32
    and 16 values as quantized, xs32 and xs16 those sums times their group's scale."""
    per = x.size // xd.size // GROUP   # 32-value pieces per group
    for g in range(xd.size):
        top = np.float32(0)
        for c in range(g * per, g * per + per):
            top = max(top, hmax(vabs(load(x, c * GROUP, GROUP))))
        if top > _TINY:
            d = top / np.float32(INT8_MAX)
            inv = np.float32(INT8_MAX) / top
        else:  # all zero, or so small that 127 / top would overflow: count as zero
            d = np.float32(0)
            inv = np.float32(0)
        xd[g] = d
        for c in range(g * per, g * per + per):
            q = convert(round_even(load(x, c * GROUP, GROUP) * inv), np.int32)
            store(xq, c * GROUP, convert(q, np.int8))
            lo, hi = hsum(part(q, 0, 16)), hsum(part(q, 16, 16))
            xi16[2 * c], xi16[2 * c + 1], xi32[c] = lo, hi, lo + hi
            xs16[2 * c] = d * np.float32(lo)
            xs16[2 * c + 1] = d * np.float32(hi)
            xs32[c] = d * np.float32(lo + hi)


@njit
def empty_activations(T, n, group):
    """(XQ, XD, XS32, XS16, XI32, XI16) for T rows of n values in groups of `group` (32
    or 256), as quantize_row fills them."""
    return (np.empty((T, n), np.int8), np.empty((T, n // group), np.float32),
            np.empty((T, n // GROUP), np.float32), np.empty((T, 2 * n // GROUP), np.float32),
            np.empty((T, n // GROUP), np.int32), np.empty((T, 2 * n // GROUP), np.int32))


@njit(boundscheck=False)
def quantize_row(X, acts, t):
    """Row t of X (T, n) into row t of each array of acts (empty_activations)."""
    XQ, XD, XS32, XS16, XI32, XI16 = acts
    quantize_vector(X[t], XQ[t], XD[t], XS32[t], XS16[t], XI32[t], XI16[t])


def dequantize_vector(xq, xd):
    """Inverse of quantize_vector (NumPy, for tests): float64."""
    groups = xq.reshape(xd.size, -1).astype(np.float64)
    return (groups * xd.astype(np.float64)[:, None]).reshape(-1)
