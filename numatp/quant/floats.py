"""Row kernels for unquantized weights: F32, F16 and BF16.

These multiply with the float32 activations as they are. A "block" is one element, so
column ranges are element ranges. F16 converts 8 lanes per instruction where the CPU has
F16C; BF16 is the upper half of a float32, so a shift converts it.

Like block32.py, functions take the quant type as a literal int and specialize on it.
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit

from numatp.quant.formats import BF16, F16, F32
from numatp.quant.block32 import literal_qtype
from numatp.quant.simd import (CACHE_LINE, PREFETCH_AHEAD, bf16_to_float, fma,
                               half_to_float, hsum, load, load_bytes, prefetch, read_bytes,
                               read_half, store, zeros4)
from numba.extending import overload

ELEMENT_BYTES = {F32: 4, F16: 2, BF16: 2}
TYPES = tuple(ELEMENT_BYTES)
_LANES = 8      # float32 lanes per vector
_STEP = 32      # elements per loop step: four vectors, four accumulation chains


@njit(boundscheck=False)
def _f32x8(w, at):
    return load_bytes(w, at, np.float32, 8)


@njit(boundscheck=False)
def _f16x8(w, at):
    return half_to_float(load_bytes(w, at, np.uint16, 8))


@njit(boundscheck=False)
def _bf16x8(w, at):
    return bf16_to_float(load_bytes(w, at, np.uint16, 8))


@njit(boundscheck=False)
def _f32x1(w, at):
    return read_bytes(w, at, np.float32)


@njit(boundscheck=False)
def _bf16x1(w, at):
    return hsum(bf16_to_float(load_bytes(w, at, np.uint16, 1)))


_VECTOR = {F32: _f32x8, F16: _f16x8, BF16: _bf16x8}
_SCALAR = {F32: _f32x1, F16: read_half, BF16: _bf16x1}


def dot_float(qtype, w, o, stride, nrows, n, x, y):
    """y[r] = sum(w_row[k] * x[k] for k < n), the row's first element at byte
    o + r * stride, for r < nrows (the row loop is here for block32.dot32's reason)."""


@overload(dot_float, prefer_literal=True)
def _dot_float_ov(qtype, w, o, stride, nrows, n, x, y):
    q = literal_qtype(qtype, TYPES)
    if q is None:
        return None
    eb = ELEMENT_BYTES[q]
    vec, one = _VECTOR[q], _SCALAR[q]

    def impl(qtype, w, o, stride, nrows, n, x, y):
        for r in range(nrows):
            row = o + r * stride
            a0, a1, a2, a3 = zeros4(_LANES)
            k = 0
            while k + _STEP <= n:
                # a step reads 64 (F16, BF16) or 128 (F32) bytes of weights
                prefetch(w, row + k * eb + PREFETCH_AHEAD)
                if eb == 4:
                    prefetch(w, row + k * eb + PREFETCH_AHEAD + CACHE_LINE)
                a0 = fma(vec(w, row + k * eb), load(x, k, _LANES), a0)
                a1 = fma(vec(w, row + (k + 8) * eb), load(x, k + 8, _LANES), a1)
                a2 = fma(vec(w, row + (k + 16) * eb), load(x, k + 16, _LANES), a2)
                a3 = fma(vec(w, row + (k + 24) * eb), load(x, k + 24, _LANES), a3)
                k += _STEP
            while k + _LANES <= n:
                a0 = fma(vec(w, row + k * eb), load(x, k, _LANES), a0)
                k += _LANES
            total = hsum((a0 + a1) + (a2 + a3))
            while k < n:
                total += one(w, row + k * eb) * x[k]
                k += 1
            y[r] = total

    return impl


def dot_float_x4(qtype, w, o, stride, nrows, n, X, t0, t1, t2, t3, Y, c0):
    """Y[t, c0 + r] = the row at byte o + r * stride dotted with token t, for r < nrows
    and t in t0..t3 (repeats allowed: they get the same value); the weights are read
    once for the four rows of X."""


@overload(dot_float_x4, prefer_literal=True)
def _dot_float_x4_ov(qtype, w, o, stride, nrows, n, X, t0, t1, t2, t3, Y, c0):
    q = literal_qtype(qtype, TYPES)
    if q is None:
        return None
    eb = ELEMENT_BYTES[q]
    vec, one = _VECTOR[q], _SCALAR[q]

    def impl(qtype, w, o, stride, nrows, n, X, t0, t1, t2, t3, Y, c0):
        x0, x1, x2, x3 = X[t0], X[t1], X[t2], X[t3]
        for r in range(nrows):
            row = o + r * stride
            a0, a1, a2, a3 = zeros4(_LANES)
            k = 0
            while k + _LANES <= n:
                v = vec(w, row + k * eb)
                a0 = fma(v, load(x0, k, _LANES), a0)
                a1 = fma(v, load(x1, k, _LANES), a1)
                a2 = fma(v, load(x2, k, _LANES), a2)
                a3 = fma(v, load(x3, k, _LANES), a3)
                k += _LANES
            y0, y1, y2, y3 = hsum(a0), hsum(a1), hsum(a2), hsum(a3)
            while k < n:
                v1 = one(w, row + k * eb)
                y0 += v1 * x0[k]
                y1 += v1 * x1[k]
                y2 += v1 * x2[k]
                y3 += v1 * x3[k]
                k += 1
            Y[t0, c0 + r] = y0
            Y[t1, c0 + r] = y1
            Y[t2, c0 + r] = y2
            Y[t3, c0 + r] = y3

    return impl


def dequant_float(qtype, w, o, n, out):
    """out[:n] = the n elements at byte o as float32."""


@overload(dequant_float, prefer_literal=True)
def _dequant_float_ov(qtype, w, o, n, out):
    q = literal_qtype(qtype, TYPES)
    if q is None:
        return None
    eb = ELEMENT_BYTES[q]
    vec, one = _VECTOR[q], _SCALAR[q]

    def impl(qtype, w, o, n, out):
        k = 0
        while k + _LANES <= n:
            store(out, k, vec(w, o + k * eb))
            k += _LANES
        while k < n:
            out[k] = one(w, o + k * eb)
            k += 1

    return impl
