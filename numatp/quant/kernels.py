"""Quantized matrix kernels, jitted with Numba.

A weight matrix is a 1-D uint8 array holding its rows in GGUF block layout, row after row
(row i starts at byte i * row_stride). Activations are float32.

Public entry points (all @njit, callable from other jitted code and from Python):

  linear(qtype, w, rows, cols, X, Y)
      Y[t, :] = W @ X[t, :] for every t; X is (T, cols), Y is (T, rows), both float32
      C-contiguous. T == 1 takes the matvec path, T > 1 the batched path.
  matvec_range(qtype, w, row_stride, r0, r1, blk0, nblk, x, y)
      y[i - r0] = sum over blocks blk0 .. blk0+nblk-1 of row i, dotted with x,
      for i in [r0, r1); x has nblk * block_size elements. Row and column shards of a
      matrix that was not copied out.
  matmul_range(qtype, w, row_stride, r0, r1, blk0, nblk, X, Y)
      the batched form: X is (T, nblk*block_size), Y is (T, r1 - r0).
  dequantize_rows(qtype, w, cols, row_ids, out)
      out[k, :] = row row_ids[k] as float32 (embedding lookup).

Matvecs are parallel over rows (prange), so each output element is summed by one thread
in a fixed order: results do not depend on the thread count. The batched path is
parallel over groups of rows; within a group it takes the tokens four at a time and
decodes each weight block once for the four.

For the float formats (F32, F16, BF16) a "block" is one element and the activations are
used as float32. The quantized formats first turn the activations into int16 with a
scale per 32 elements (activations.py says why and what it costs in precision); the row
kernels are in block32.py (32-element blocks) and kquants.py (256-element super-blocks).
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit, prange

from numatp.quant import block32, floats, kquants
from numatp.quant.activations import GROUP, quantize_rows, quantize_vector
from numatp.quant.block32 import dequant32, dot32, dot32x4
from numatp.quant.floats import dequant_float, dot_float, dot_float_x4
from numatp.quant.formats import (BF16, F16, F32, IQ4_NL, IQ4_XS, Q2_K, Q3_K, Q4_0, Q4_1,
                                  Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0)
from numatp.quant.kquants import dequant_k, dot_k, dot_k_x4

# Block shape by type code, for jitted code (0: no kernel for that code).
_MAX_CODE = 64
BLOCK_ELEMS = np.zeros(_MAX_CODE, np.int64)
BLOCK_BYTES = np.zeros(_MAX_CODE, np.int64)
for _q, _b in floats.ELEMENT_BYTES.items():
    BLOCK_ELEMS[_q], BLOCK_BYTES[_q] = 1, _b
for _q, _b in block32.BLOCK_BYTES.items():
    BLOCK_ELEMS[_q], BLOCK_BYTES[_q] = block32.BLOCK, _b
for _q, _b in kquants.BLOCK_BYTES.items():
    BLOCK_ELEMS[_q], BLOCK_BYTES[_q] = kquants.SUPER, _b

_FLOAT, _BLOCK32, _SUPER = 1, 2, 3
FAMILY = np.zeros(_MAX_CODE, np.int64)
FAMILY[list(floats.TYPES)] = _FLOAT
FAMILY[list(block32.TYPES)] = _BLOCK32
FAMILY[list(kquants.TYPES)] = _SUPER

# The batched path keeps a group of rows in the core's L2 cache while it runs through all
# the tokens: up to 128 KiB of weights per group, and at least 64 groups when there are
# enough rows, so that up to 64 threads share the work. (The thread count itself is not
# used: numba.get_num_threads() in jitted code makes it uncacheable.)
_GROUP_BYTES = 128 * 1024
_MIN_GROUPS = 64
_TOKENS = 4  # tokens per pass over a weight block (the x4 row kernels)


@njit(cache=True)
def _family(qtype):
    if qtype < 0 or qtype >= _MAX_CODE or FAMILY[qtype] == 0:
        raise ValueError("no kernel for this quant type")
    return FAMILY[qtype]


# -- matrix-vector -------------------------------------------------------------------------

@njit(cache=True, parallel=True, boundscheck=False)
def _matvec_float(qtype, w, stride, r0, r1, k0, n, x, y):
    eb = BLOCK_BYTES[qtype]
    for i in prange(r0, r1):
        o = i * stride + k0 * eb
        if qtype == F32:
            y[i - r0] = dot_float(F32, w, o, n, x)
        elif qtype == F16:
            y[i - r0] = dot_float(F16, w, o, n, x)
        else:
            y[i - r0] = dot_float(BF16, w, o, n, x)


@njit(cache=True, parallel=True, boundscheck=False)
def _matvec_block32(qtype, w, stride, r0, r1, blk0, nblk, xq, xd, xs, y):
    bb = BLOCK_BYTES[qtype]
    for i in prange(r0, r1):
        o = i * stride + blk0 * bb
        if qtype == Q8_0:
            y[i - r0] = dot32(Q8_0, w, o, nblk, xq, xd, xs)
        elif qtype == Q4_0:
            y[i - r0] = dot32(Q4_0, w, o, nblk, xq, xd, xs)
        elif qtype == Q4_1:
            y[i - r0] = dot32(Q4_1, w, o, nblk, xq, xd, xs)
        elif qtype == Q5_0:
            y[i - r0] = dot32(Q5_0, w, o, nblk, xq, xd, xs)
        elif qtype == Q5_1:
            y[i - r0] = dot32(Q5_1, w, o, nblk, xq, xd, xs)
        else:
            y[i - r0] = dot32(IQ4_NL, w, o, nblk, xq, xd, xs)


@njit(cache=True, parallel=True, boundscheck=False)
def _matvec_super(qtype, w, stride, r0, r1, blk0, nblk, xq, xd, xs, y):
    bb = BLOCK_BYTES[qtype]
    for i in prange(r0, r1):
        o = i * stride + blk0 * bb
        if qtype == Q4_K:
            y[i - r0] = dot_k(Q4_K, w, o, nblk, xq, xd, xs)
        elif qtype == Q6_K:
            y[i - r0] = dot_k(Q6_K, w, o, nblk, xq, xd, xs)
        elif qtype == Q5_K:
            y[i - r0] = dot_k(Q5_K, w, o, nblk, xq, xd, xs)
        elif qtype == Q3_K:
            y[i - r0] = dot_k(Q3_K, w, o, nblk, xq, xd, xs)
        elif qtype == Q2_K:
            y[i - r0] = dot_k(Q2_K, w, o, nblk, xq, xd, xs)
        else:
            y[i - r0] = dot_k(IQ4_XS, w, o, nblk, xq, xd, xs)


@njit(cache=True)
def matvec_range(qtype, w, row_stride, r0, r1, blk0, nblk, x, y):
    family = _family(qtype)
    n = nblk * BLOCK_ELEMS[qtype]
    if family == _FLOAT:
        _matvec_float(qtype, w, row_stride, r0, r1, blk0, nblk, x, y)
        return
    xq = np.empty(n, np.int16)
    xd = np.empty(n // GROUP, np.float32)
    xs = np.empty(n // GROUP, np.float32)
    quantize_vector(x[:n], xq, xd, xs)
    if family == _BLOCK32:
        _matvec_block32(qtype, w, row_stride, r0, r1, blk0, nblk, xq, xd, xs, y)
    else:
        _matvec_super(qtype, w, row_stride, r0, r1, blk0, nblk, xq, xd, xs, y)


# -- batched -------------------------------------------------------------------------------

@njit(cache=True)
def _row_groups(nrows, row_bytes):
    """(rows per group, number of groups) for the batched path."""
    per = max(1, _GROUP_BYTES // max(1, row_bytes))
    per = max(1, min(per, (nrows + _MIN_GROUPS - 1) // _MIN_GROUPS))
    return per, (nrows + per - 1) // per


@njit(cache=True)
def _store4(Y, t0, T, i, y0, y1, y2, y3):
    Y[t0, i] = y0
    if t0 + 1 < T:
        Y[t0 + 1, i] = y1
    if t0 + 2 < T:
        Y[t0 + 2, i] = y2
    if t0 + 3 < T:
        Y[t0 + 3, i] = y3


@njit(cache=True, parallel=True, boundscheck=False)
def _matmul_float(qtype, w, stride, r0, r1, k0, n, X, Y):
    T = X.shape[0]
    eb = BLOCK_BYTES[qtype]
    per, ngroups = _row_groups(r1 - r0, n * eb)
    for g in prange(ngroups):
        first = r0 + g * per
        last = min(r1, first + per)
        for t0 in range(0, T, _TOKENS):
            t1, t2, t3 = min(t0 + 1, T - 1), min(t0 + 2, T - 1), min(t0 + 3, T - 1)
            for i in range(first, last):
                o = i * stride + k0 * eb
                if qtype == F32:
                    y0, y1, y2, y3 = dot_float_x4(F32, w, o, n, X, t0, t1, t2, t3)
                elif qtype == F16:
                    y0, y1, y2, y3 = dot_float_x4(F16, w, o, n, X, t0, t1, t2, t3)
                else:
                    y0, y1, y2, y3 = dot_float_x4(BF16, w, o, n, X, t0, t1, t2, t3)
                _store4(Y, t0, T, i - r0, y0, y1, y2, y3)


@njit(cache=True, parallel=True, boundscheck=False)
def _matmul_block32(qtype, w, stride, r0, r1, blk0, nblk, XQ, XD, XS, Y):
    T = XQ.shape[0]
    bb = BLOCK_BYTES[qtype]
    per, ngroups = _row_groups(r1 - r0, nblk * bb)
    for g in prange(ngroups):
        first = r0 + g * per
        last = min(r1, first + per)
        for t0 in range(0, T, _TOKENS):
            t1, t2, t3 = min(t0 + 1, T - 1), min(t0 + 2, T - 1), min(t0 + 3, T - 1)
            for i in range(first, last):
                o = i * stride + blk0 * bb
                if qtype == Q8_0:
                    y0, y1, y2, y3 = dot32x4(Q8_0, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3)
                elif qtype == Q4_0:
                    y0, y1, y2, y3 = dot32x4(Q4_0, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3)
                elif qtype == Q4_1:
                    y0, y1, y2, y3 = dot32x4(Q4_1, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3)
                elif qtype == Q5_0:
                    y0, y1, y2, y3 = dot32x4(Q5_0, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3)
                elif qtype == Q5_1:
                    y0, y1, y2, y3 = dot32x4(Q5_1, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3)
                else:
                    y0, y1, y2, y3 = dot32x4(IQ4_NL, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3)
                _store4(Y, t0, T, i - r0, y0, y1, y2, y3)


@njit(cache=True, parallel=True, boundscheck=False)
def _matmul_super(qtype, w, stride, r0, r1, blk0, nblk, XQ, XD, XS, Y):
    T = XQ.shape[0]
    bb = BLOCK_BYTES[qtype]
    per, ngroups = _row_groups(r1 - r0, nblk * bb)
    for g in prange(ngroups):
        first = r0 + g * per
        last = min(r1, first + per)
        for t0 in range(0, T, _TOKENS):
            t1, t2, t3 = min(t0 + 1, T - 1), min(t0 + 2, T - 1), min(t0 + 3, T - 1)
            for i in range(first, last):
                o = i * stride + blk0 * bb
                if qtype == Q4_K:
                    y0, y1, y2, y3 = dot_k_x4(Q4_K, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3)
                elif qtype == Q6_K:
                    y0, y1, y2, y3 = dot_k_x4(Q6_K, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3)
                elif qtype == Q5_K:
                    y0, y1, y2, y3 = dot_k_x4(Q5_K, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3)
                elif qtype == Q3_K:
                    y0, y1, y2, y3 = dot_k_x4(Q3_K, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3)
                elif qtype == Q2_K:
                    y0, y1, y2, y3 = dot_k_x4(Q2_K, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3)
                else:
                    y0, y1, y2, y3 = dot_k_x4(IQ4_XS, w, o, nblk, XQ, XD, XS, t0, t1, t2,
                                              t3)
                _store4(Y, t0, T, i - r0, y0, y1, y2, y3)


@njit(cache=True)
def matmul_range(qtype, w, row_stride, r0, r1, blk0, nblk, X, Y):
    family = _family(qtype)
    if family == _FLOAT:
        _matmul_float(qtype, w, row_stride, r0, r1, blk0, nblk, X, Y)
        return
    T = X.shape[0]
    n = nblk * BLOCK_ELEMS[qtype]
    XQ = np.empty((T, n), np.int16)
    XD = np.empty((T, n // GROUP), np.float32)
    XS = np.empty((T, n // GROUP), np.float32)
    quantize_rows(X, XQ, XD, XS)
    if family == _BLOCK32:
        _matmul_block32(qtype, w, row_stride, r0, r1, blk0, nblk, XQ, XD, XS, Y)
    else:
        _matmul_super(qtype, w, row_stride, r0, r1, blk0, nblk, XQ, XD, XS, Y)


# -- whole matrices, dequantization ----------------------------------------------------------

@njit(cache=True)
def row_stride(qtype, cols):
    """Bytes per row of `cols` elements (cols must be a whole number of blocks)."""
    _family(qtype)
    return cols // BLOCK_ELEMS[qtype] * BLOCK_BYTES[qtype]


@njit(cache=True)
def linear(qtype, w, rows, cols, X, Y):
    stride = row_stride(qtype, cols)
    nblk = cols // BLOCK_ELEMS[qtype]
    if X.shape[0] == 1:
        matvec_range(qtype, w, stride, 0, rows, 0, nblk, X[0], Y[0])
    else:
        matmul_range(qtype, w, stride, 0, rows, 0, nblk, X, Y)


@njit(cache=True, boundscheck=False)
def dequantize_rows(qtype, w, cols, row_ids, out):
    family = _family(qtype)
    stride = row_stride(qtype, cols)
    nblk = cols // BLOCK_ELEMS[qtype]
    for k in range(row_ids.shape[0]):
        o = row_ids[k] * stride
        row = out[k]
        if family == _FLOAT:
            if qtype == F32:
                dequant_float(F32, w, o, cols, row)
            elif qtype == F16:
                dequant_float(F16, w, o, cols, row)
            else:
                dequant_float(BF16, w, o, cols, row)
        elif qtype == Q8_0:
            dequant32(Q8_0, w, o, nblk, row)
        elif qtype == Q4_0:
            dequant32(Q4_0, w, o, nblk, row)
        elif qtype == Q4_1:
            dequant32(Q4_1, w, o, nblk, row)
        elif qtype == Q5_0:
            dequant32(Q5_0, w, o, nblk, row)
        elif qtype == Q5_1:
            dequant32(Q5_1, w, o, nblk, row)
        elif qtype == IQ4_NL:
            dequant32(IQ4_NL, w, o, nblk, row)
        elif qtype == Q4_K:
            dequant_k(Q4_K, w, o, nblk, row)
        elif qtype == Q6_K:
            dequant_k(Q6_K, w, o, nblk, row)
        elif qtype == Q5_K:
            dequant_k(Q5_K, w, o, nblk, row)
        elif qtype == Q3_K:
            dequant_k(Q3_K, w, o, nblk, row)
        elif qtype == Q2_K:
            dequant_k(Q2_K, w, o, nblk, row)
        else:
            dequant_k(IQ4_XS, w, o, nblk, row)
