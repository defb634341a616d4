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
    once for the four rows of X. Each token's sum is dot_float's, operation for
    operation (four chains over 32-element steps, the 8-element rest into the first,
    the same horizontal sum and scalar tail): a token gets bitwise the result it gets
    alone, whatever the batch (a batched decode's rows equal single decodes)."""


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
            # a<token><chain>: 16 accumulators, in registers with AVX-512's 32
            a00, a01, a02, a03 = zeros4(_LANES)
            a10, a11, a12, a13 = zeros4(_LANES)
            a20, a21, a22, a23 = zeros4(_LANES)
            a30, a31, a32, a33 = zeros4(_LANES)
            k = 0
            while k + _STEP <= n:
                u0 = vec(w, row + k * eb)
                u1 = vec(w, row + (k + 8) * eb)
                u2 = vec(w, row + (k + 16) * eb)
                u3 = vec(w, row + (k + 24) * eb)
                a00 = fma(u0, load(x0, k, _LANES), a00)
                a01 = fma(u1, load(x0, k + 8, _LANES), a01)
                a02 = fma(u2, load(x0, k + 16, _LANES), a02)
                a03 = fma(u3, load(x0, k + 24, _LANES), a03)
                a10 = fma(u0, load(x1, k, _LANES), a10)
                a11 = fma(u1, load(x1, k + 8, _LANES), a11)
                a12 = fma(u2, load(x1, k + 16, _LANES), a12)
                a13 = fma(u3, load(x1, k + 24, _LANES), a13)
                a20 = fma(u0, load(x2, k, _LANES), a20)
                a21 = fma(u1, load(x2, k + 8, _LANES), a21)
                a22 = fma(u2, load(x2, k + 16, _LANES), a22)
                a23 = fma(u3, load(x2, k + 24, _LANES), a23)
                a30 = fma(u0, load(x3, k, _LANES), a30)
                a31 = fma(u1, load(x3, k + 8, _LANES), a31)
                a32 = fma(u2, load(x3, k + 16, _LANES), a32)
                a33 = fma(u3, load(x3, k + 24, _LANES), a33)
                k += _STEP
            while k + _LANES <= n:
                v = vec(w, row + k * eb)
                a00 = fma(v, load(x0, k, _LANES), a00)
                a10 = fma(v, load(x1, k, _LANES), a10)
                a20 = fma(v, load(x2, k, _LANES), a20)
                a30 = fma(v, load(x3, k, _LANES), a30)
                k += _LANES
            y0 = hsum((a00 + a01) + (a02 + a03))
            y1 = hsum((a10 + a11) + (a12 + a13))
            y2 = hsum((a20 + a21) + (a22 + a23))
            y3 = hsum((a30 + a31) + (a32 + a33))
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
