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
in a fixed order: results do not depend on the thread count.
"""
import numpy as np
from numba import njit, prange

from numatp.quant.formats import F32


@njit(cache=True, parallel=True)
def _matvec_f32(w, row_stride, r0, r1, blk0, nblk, x, y):
    wf = w.view(np.float32)
    stride = row_stride // 4
    for i in prange(r0, r1):
        base = i * stride + blk0
        acc = np.float32(0.0)
        for j in range(nblk):
            acc += wf[base + j] * x[j]
        y[i - r0] = acc


@njit(cache=True)
def matvec_range(qtype, w, row_stride, r0, r1, blk0, nblk, x, y):
    if qtype == F32:
        _matvec_f32(w, row_stride, r0, r1, blk0, nblk, x, y)
    else:
        raise ValueError("no kernel for this quant type")


@njit(cache=True)
def matmul_range(qtype, w, row_stride, r0, r1, blk0, nblk, X, Y):
    for t in range(X.shape[0]):
        matvec_range(qtype, w, row_stride, r0, r1, blk0, nblk, X[t], Y[t])


@njit(cache=True)
def _row_stride(qtype, cols):
    if qtype == F32:
        return cols * 4
    raise ValueError("no kernel for this quant type")


@njit(cache=True)
def linear(qtype, w, rows, cols, X, Y):
    stride = _row_stride(qtype, cols)
    nblk = cols  # placeholder: F32 blocks are single elements
    if X.shape[0] == 1:
        matvec_range(qtype, w, stride, 0, rows, 0, nblk, X[0], Y[0])
    else:
        matmul_range(qtype, w, stride, 0, rows, 0, nblk, X, Y)


@njit(cache=True)
def dequantize_rows(qtype, w, cols, row_ids, out):
    if qtype == F32:
        wf = w.view(np.float32)
        for k in range(row_ids.shape[0]):
            r = row_ids[k]
            for j in range(cols):
                out[k, j] = wf[r * cols + j]
    else:
        raise ValueError("no kernel for this quant type")
