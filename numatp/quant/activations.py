"""Activations as int16, the form the quantized kernels multiply with.

A quantized block's elements are small integers times a scale, so a block's dot product
is exact in integer arithmetic once the activations are integers too: the CPU's
16-bit multiply-add (pmaddwd on x86) then does 16 products per instruction with no
per-element int->float conversion. That halves the work per block compared with
converting every weight to float32, which is what limits the 4- and 5-bit formats.

Each group of 32 activations gets its own float32 scale (largest |x| / 32767), so an
activation is off by at most 1/65534 of its group's largest magnitude: ~2^-16 relative,
far below the error of the 4-8 bit weights it is multiplied with, though above float32
round-off (2^-24). Groups of 32 divide every block size, and a column shard starts on a
block boundary, so a shard quantizes its part of x exactly as the whole matrix would.

Within a group the int16 values are stored even elements first, then odd ones
(x0, x2, .., x30, x1, x3, .., x31): the kernels split 16-bit words of weight bytes into
their low and high byte (or nibble) halves, which yields exactly those two sets.
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit

from numatp.quant.simd import (convert, deinterleave, hmax, hsum, load, part, round_even,
                               store, vabs)

GROUP = 32
INT16_MAX = 32767
_TINY = np.float32(1e-30)


@njit(cache=True, boundscheck=False)
def quantize_vector(x, xq, xd, xs):
    """x: float32 (n,), n a multiple of 32 -> xq int16 (n,), xd (n/32,) the scale of each
    group, and xs (n/16,) the sum of each half group as quantized, xd * sum(xq), for
    formats with an offset per block or per 16 elements (using the quantized sum makes a
    block's result exactly the dot product of the dequantized weights with the dequantized
    activations, up to float rounding)."""
    for g in range(x.size // GROUP):
        v = load(x, g * GROUP, GROUP)
        top = hmax(vabs(v))
        if top > _TINY:
            xd[g] = top / np.float32(INT16_MAX)
            inv = np.float32(INT16_MAX) / top
        else:  # all zero, or so small that 32767 / top would overflow: count as zero
            xd[g] = np.float32(0)
            inv = np.float32(0)
        q32 = convert(round_even(v * inv), np.int32)
        store(xq, g * GROUP, deinterleave(convert(q32, np.int16)))
        xs[2 * g] = xd[g] * np.float32(hsum(part(q32, 0, 16)))
        xs[2 * g + 1] = xd[g] * np.float32(hsum(part(q32, 16, 16)))


@njit(cache=True, boundscheck=False)
def quantize_rows(X, XQ, XD, XS):
    """Row t of X (T, n) -> row t of XQ (T, n), XD (T, n // 32) and XS (T, n // 16)."""
    for t in range(X.shape[0]):
        quantize_vector(X[t], XQ[t], XD[t], XS[t])


def dequantize_vector(xq, xd):
    """Inverse of quantize_vector (NumPy, for tests): float64 in natural element order."""
    q = xq.reshape(-1, 2, GROUP // 2).astype(np.float64)
    natural = np.empty_like(q.reshape(-1, GROUP))
    natural[:, 0::2] = q[:, 0]
    natural[:, 1::2] = q[:, 1]
    return (natural * xd.astype(np.float64)[:, None]).reshape(-1)
