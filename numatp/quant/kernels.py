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

Arrays: w is a writable, C-contiguous uint8 array; x, X, y, Y, out are C-contiguous
float32. Other layouts or a read-only w still work but make Numba compile the kernels
again for that signature (minutes, once per cache). Call these from serial code: the
matvecs start their own parallel region.

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


# -- rows, by type ---------------------------------------------------------------------------
# The parallel drivers call these instead of branching on the type themselves: Numba types
# the body of a parallel loop twice, and everything called from it would be compiled twice.

@njit(cache=True, boundscheck=False)
def _dot_rows(qtype, w, o, stride, n, nblk, x, xq, xd, xs, y):
    """y[r] = the row at byte o + r * stride (nblk blocks) dotted with x (float types)
    or xq/xd/xs (the others), for r < n."""
    if qtype == Q4_K:
        dot_k(Q4_K, w, o, stride, n, nblk, xq, xd, xs, y)
    elif qtype == Q6_K:
        dot_k(Q6_K, w, o, stride, n, nblk, xq, xd, xs, y)
    elif qtype == Q8_0:
        dot32(Q8_0, w, o, stride, n, nblk, xq, xd, xs, y)
    elif qtype == Q4_0:
        dot32(Q4_0, w, o, stride, n, nblk, xq, xd, xs, y)
    elif qtype == Q5_K:
        dot_k(Q5_K, w, o, stride, n, nblk, xq, xd, xs, y)
    elif qtype == Q5_0:
        dot32(Q5_0, w, o, stride, n, nblk, xq, xd, xs, y)
    elif qtype == Q4_1:
        dot32(Q4_1, w, o, stride, n, nblk, xq, xd, xs, y)
    elif qtype == Q5_1:
        dot32(Q5_1, w, o, stride, n, nblk, xq, xd, xs, y)
    elif qtype == F16:
        dot_float(F16, w, o, stride, n, nblk, x, y)
    elif qtype == BF16:
        dot_float(BF16, w, o, stride, n, nblk, x, y)
    elif qtype == F32:
        dot_float(F32, w, o, stride, n, nblk, x, y)
    elif qtype == Q3_K:
        dot_k(Q3_K, w, o, stride, n, nblk, xq, xd, xs, y)
    elif qtype == Q2_K:
        dot_k(Q2_K, w, o, stride, n, nblk, xq, xd, xs, y)
    elif qtype == IQ4_NL:
        dot32(IQ4_NL, w, o, stride, n, nblk, xq, xd, xs, y)
    else:
        dot_k(IQ4_XS, w, o, stride, n, nblk, xq, xd, xs, y)


@njit(cache=True, boundscheck=False)
def _dot_rows_x4(qtype, w, o, stride, n, nblk, X, XQ, XD, XS, t0, t1, t2, t3, Y, c0):
    """Y[t, c0 + r] = the row at byte o + r * stride (nblk blocks) dotted with token t
    (a row of X or of XQ/XD/XS), for r < n and t in t0..t3."""
    if qtype == Q4_K:
        dot_k_x4(Q4_K, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)
    elif qtype == Q6_K:
        dot_k_x4(Q6_K, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)
    elif qtype == Q8_0:
        dot32x4(Q8_0, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)
    elif qtype == Q4_0:
        dot32x4(Q4_0, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)
    elif qtype == Q5_K:
        dot_k_x4(Q5_K, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)
    elif qtype == Q5_0:
        dot32x4(Q5_0, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)
    elif qtype == Q4_1:
        dot32x4(Q4_1, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)
    elif qtype == Q5_1:
        dot32x4(Q5_1, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)
    elif qtype == F16:
        dot_float_x4(F16, w, o, stride, n, nblk, X, t0, t1, t2, t3, Y, c0)
    elif qtype == BF16:
        dot_float_x4(BF16, w, o, stride, n, nblk, X, t0, t1, t2, t3, Y, c0)
    elif qtype == F32:
        dot_float_x4(F32, w, o, stride, n, nblk, X, t0, t1, t2, t3, Y, c0)
    elif qtype == Q3_K:
        dot_k_x4(Q3_K, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)
    elif qtype == Q2_K:
        dot_k_x4(Q2_K, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)
    elif qtype == IQ4_NL:
        dot32x4(IQ4_NL, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)
    else:
        dot_k_x4(IQ4_XS, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)


@njit(cache=True, boundscheck=False)
def _dequant_row(qtype, w, o, nblk, out):
    if qtype == F32:
        dequant_float(F32, w, o, nblk, out)
    elif qtype == F16:
        dequant_float(F16, w, o, nblk, out)
    elif qtype == BF16:
        dequant_float(BF16, w, o, nblk, out)
    elif qtype == Q8_0:
        dequant32(Q8_0, w, o, nblk, out)
    elif qtype == Q4_0:
        dequant32(Q4_0, w, o, nblk, out)
    elif qtype == Q4_1:
        dequant32(Q4_1, w, o, nblk, out)
    elif qtype == Q5_0:
        dequant32(Q5_0, w, o, nblk, out)
    elif qtype == Q5_1:
        dequant32(Q5_1, w, o, nblk, out)
    elif qtype == IQ4_NL:
        dequant32(IQ4_NL, w, o, nblk, out)
    elif qtype == Q4_K:
        dequant_k(Q4_K, w, o, nblk, out)
    elif qtype == Q6_K:
        dequant_k(Q6_K, w, o, nblk, out)
    elif qtype == Q5_K:
        dequant_k(Q5_K, w, o, nblk, out)
    elif qtype == Q3_K:
        dequant_k(Q3_K, w, o, nblk, out)
    elif qtype == Q2_K:
        dequant_k(Q2_K, w, o, nblk, out)
    else:
        dequant_k(IQ4_XS, w, o, nblk, out)


# -- matrix-vector -------------------------------------------------------------------------

@njit(cache=True)
def _rows_per_chunk(nrows):
    """Rows per call of a row-range kernel in a matvec: as many as 16 (a call costs about
    what a short row does), while leaving at least 256 chunks, 4 each for up to 64 threads."""
    return max(1, min(16, nrows // 256))


@njit(cache=True, parallel=True, boundscheck=False)
def _matvec(qtype, w, stride, r0, r1, blk0, nblk, x, xq, xd, xs, y):
    bb = BLOCK_BYTES[qtype]
    per = _rows_per_chunk(r1 - r0)
    for c in prange((r1 - r0 + per - 1) // per):
        first = r0 + c * per
        last = min(r1, first + per)
        _dot_rows(qtype, w, first * stride + blk0 * bb, stride, last - first, nblk, x, xq, xd,
                  xs, y[first - r0:last - r0])


@njit(cache=True)
def matvec_range(qtype, w, row_stride, r0, r1, blk0, nblk, x, y):
    # int64() keeps a jitted caller's constant arguments (typed as literals) from making
    # a separate compilation of the kernels below for every call site.
    q = np.int64(qtype)
    n = np.int64(nblk) * BLOCK_ELEMS[q]
    groups = n // GROUP if _family(q) != _FLOAT else 0
    xq = np.empty(groups * GROUP, np.int16)
    xd = np.empty(groups, np.float32)
    xs = np.empty(2 * groups, np.float32)
    if groups:
        quantize_vector(x[:n], xq, xd, xs)
    _matvec(q, w, np.int64(row_stride), np.int64(r0), np.int64(r1), np.int64(blk0),
            np.int64(nblk), x, xq, xd, xs, y)


# -- batched -------------------------------------------------------------------------------

@njit(cache=True)
def _row_groups(nrows, row_bytes):
    """(rows per group, number of groups) for the batched path."""
    per = max(1, _GROUP_BYTES // max(1, row_bytes))
    per = max(1, min(per, (nrows + _MIN_GROUPS - 1) // _MIN_GROUPS))
    return per, (nrows + per - 1) // per


@njit(cache=True, parallel=True, boundscheck=False)
def _matmul(qtype, w, stride, r0, r1, blk0, nblk, X, XQ, XD, XS, Y):
    T = X.shape[0]
    bb = BLOCK_BYTES[qtype]
    per, ngroups = _row_groups(r1 - r0, nblk * bb)
    for g in prange(ngroups):
        first = r0 + g * per
        last = min(r1, first + per)
        for t0 in range(0, T, _TOKENS):
            # past the last token, repeat it: the same value is stored twice
            t1, t2, t3 = min(t0 + 1, T - 1), min(t0 + 2, T - 1), min(t0 + 3, T - 1)
            _dot_rows_x4(qtype, w, first * stride + blk0 * bb, stride, last - first, nblk, X,
                         XQ, XD, XS, t0, t1, t2, t3, Y, first - r0)


@njit(cache=True)
def matmul_range(qtype, w, row_stride, r0, r1, blk0, nblk, X, Y):
    q = np.int64(qtype)
    T = X.shape[0]
    n = np.int64(nblk) * BLOCK_ELEMS[q]
    groups = n // GROUP if _family(q) != _FLOAT else 0
    XQ = np.empty((T, groups * GROUP), np.int16)
    XD = np.empty((T, groups), np.float32)
    XS = np.empty((T, 2 * groups), np.float32)
    if groups:
        quantize_rows(X, XQ, XD, XS)
    _matmul(q, w, np.int64(row_stride), np.int64(r0), np.int64(r1), np.int64(blk0),
            np.int64(nblk), X, XQ, XD, XS, Y)


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
    q = np.int64(qtype)
    stride = row_stride(q, cols)
    nblk = cols // BLOCK_ELEMS[q]
    for k in range(row_ids.shape[0]):
        _dequant_row(q, w, row_ids[k] * stride, nblk, out[k])
