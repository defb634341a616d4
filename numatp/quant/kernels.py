"""Quantized matrix kernels, jitted with Numba.

A weight matrix is a 1-D uint8 array holding its rows in GGUF block layout, row after row
(row i starts at byte i * row_stride). Activations are float32.

Public entry points (all @njit, callable from other jitted code and from Python):

  linear(kernels, qtype, w, rows, cols, X, Y)
      Y[t, :] = W @ X[t, :] for every t; X is (T, cols), Y is (T, rows), both float32
      C-contiguous. T == 1 takes the matvec path, T > 1 the batched path.
  matvec_range(kernels, qtype, w, row_stride, r0, r1, blk0, nblk, x, y)
      y[i - r0] = sum over blocks blk0 .. blk0+nblk-1 of row i, dotted with x,
      for i in [r0, r1); x has nblk * block_size elements. Row and column shards of a
      matrix that was not copied out.
  matmul_range(kernels, qtype, w, row_stride, r0, r1, blk0, nblk, X, Y)
      the batched form: X is (T, nblk*block_size), Y is (T, r1 - r0).
  dequantize_rows(kernels, qtype, w, cols, row_ids, out)
      out[k, :] = row row_ids[k] as float32 (embedding lookup).

`kernels` is a KernelSet (kernel_set.py): the types this compilation handles; qtype must
be one of them (ValueError otherwise). KernelSet([qtype]) compiles one type's kernels.

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

import inspect

import numpy as np
from numba import njit, prange
from numba.extending import overload

from numatp.quant import block32, floats, kquants
from numatp.quant.activations import GROUP, quantize_rows, quantize_vector
from numatp.quant.block32 import dequant32, dot32, dot32x4
from numatp.quant.floats import dequant_float, dot_float, dot_float_x4
from numatp.quant.kernel_set import KernelSet, KernelSetType  # noqa: F401 (re-exported)
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


# -- the type dispatch, generated for a KernelSet --------------------------------------------
# The parallel drivers call these instead of branching on the type themselves: Numba types
# the body of a parallel loop twice, and everything called from it would be compiled twice.
# Each is an `if qtype == A: <A's kernel> elif qtype == B: ...` chain over the types of
# the kernel set it is compiled for (kernel_set.py says why not over all types).

def _dot_rows(kernels, qtype, w, o, stride, n, nblk, x, xq, xd, xs, y):
    """y[r] = the row at byte o + r * stride (nblk blocks) dotted with x (float types)
    or xq/xd/xs (the others), for r < n."""


def _dot_rows_x4(kernels, qtype, w, o, stride, n, nblk, X, XQ, XD, XS, t0, t1, t2, t3, Y, c0):
    """Y[t, c0 + r] = the row at byte o + r * stride (nblk blocks) dotted with token t
    (a row of X or of XQ/XD/XS), for r < n and t in t0..t3."""


def _dequant_row(kernels, qtype, w, o, nblk, out):
    """out[:nblk * block size] = the row at byte o as float32."""


# Each family's kernel call, per dispatcher; {q} is the type code.
_CALLS = {
    _dot_rows: {
        _FLOAT: "dot_float({q}, w, o, stride, n, nblk, x, y)",
        _BLOCK32: "dot32({q}, w, o, stride, n, nblk, xq, xd, xs, y)",
        _SUPER: "dot_k({q}, w, o, stride, n, nblk, xq, xd, xs, y)"},
    _dot_rows_x4: {
        _FLOAT: "dot_float_x4({q}, w, o, stride, n, nblk, X, t0, t1, t2, t3, Y, c0)",
        _BLOCK32: "dot32x4({q}, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)",
        _SUPER: "dot_k_x4({q}, w, o, stride, n, nblk, XQ, XD, XS, t0, t1, t2, t3, Y, c0)"},
    _dequant_row: {
        _FLOAT: "dequant_float({q}, w, o, nblk, out)",
        _BLOCK32: "dequant32({q}, w, o, nblk, out)",
        _SUPER: "dequant_k({q}, w, o, nblk, out)"},
}
_KERNELS = {f.__name__: f for f in (dot_float, dot32, dot_k, dot_float_x4, dot32x4, dot_k_x4,
                                    dequant_float, dequant32, dequant_k)}


def _generate_dispatch(stub):
    """Register the overload of `stub` that, for a KernelSetType first argument, compiles
    the if/elif chain over the set's types (an unknown type does nothing: the serial
    entry points check membership first, outside the parallel loops)."""
    params = ", ".join(inspect.signature(stub).parameters)

    def typer(kernels, *args):
        if not isinstance(kernels, KernelSetType):
            return None
        lines = [f"def impl({params}):"]
        for i, q in enumerate(kernels.qtypes):
            lines.append(f"    {'if' if i == 0 else 'elif'} qtype == {q}:")
            lines.append("        " + _CALLS[stub][FAMILY[q]].format(q=q))
        namespace = dict(_KERNELS)
        exec("\n".join(lines), namespace)
        return namespace["impl"]

    typer.__signature__ = inspect.signature(stub)  # Numba matches typer and stub by name
    overload(stub, prefer_literal=True)(typer)


for _stub in _CALLS:
    _generate_dispatch(_stub)


def has_kernel(kernels, qtype):
    """Whether qtype is in the kernel set (callable from jitted code)."""


@overload(has_kernel)
def _has_kernel_ov(kernels, qtype):
    if not isinstance(kernels, KernelSetType):
        return None
    members = kernels.qtypes

    def impl(kernels, qtype):
        for q in members:
            if q == qtype:
                return True
        return False

    return impl


@njit(cache=True)
def _check(kernels, qtype):
    """qtype's family; ValueError if the kernel set has no kernel for it."""
    if not has_kernel(kernels, qtype):
        raise ValueError("no kernel for this quant type in the kernel set")
    return FAMILY[qtype]


# -- matrix-vector -------------------------------------------------------------------------

@njit(cache=True)
def _rows_per_chunk(nrows):
    """Rows per call of a row-range kernel in a matvec: as many as 16 (a call costs about
    what a short row does), while leaving at least 256 chunks, 4 each for up to 64 threads."""
    return max(1, min(16, nrows // 256))


@njit(cache=True, parallel=True, boundscheck=False)
def _matvec(kernels, qtype, w, stride, r0, r1, blk0, nblk, x, xq, xd, xs, y):
    bb = BLOCK_BYTES[qtype]
    per = _rows_per_chunk(r1 - r0)
    for c in prange((r1 - r0 + per - 1) // per):
        first = r0 + c * per
        last = min(r1, first + per)
        _dot_rows(kernels, qtype, w, first * stride + blk0 * bb, stride, last - first, nblk,
                  x, xq, xd, xs, y[first - r0:last - r0])


@njit(cache=True)
def matvec_range(kernels, qtype, w, row_stride, r0, r1, blk0, nblk, x, y):
    # int64() keeps a jitted caller's constant arguments (typed as literals) from making
    # a separate compilation of the kernels below for every call site.
    q = np.int64(qtype)
    n = np.int64(nblk) * BLOCK_ELEMS[q]
    groups = n // GROUP if _check(kernels, q) != _FLOAT else 0
    xq = np.empty(groups * GROUP, np.int16)
    xd = np.empty(groups, np.float32)
    xs = np.empty(2 * groups, np.float32)
    if groups:
        quantize_vector(x[:n], xq, xd, xs)
    _matvec(kernels, q, w, np.int64(row_stride), np.int64(r0), np.int64(r1), np.int64(blk0),
            np.int64(nblk), x, xq, xd, xs, y)


# -- batched -------------------------------------------------------------------------------

@njit(cache=True)
def _row_groups(nrows, row_bytes):
    """(rows per group, number of groups) for the batched path."""
    per = max(1, _GROUP_BYTES // max(1, row_bytes))
    per = max(1, min(per, (nrows + _MIN_GROUPS - 1) // _MIN_GROUPS))
    return per, (nrows + per - 1) // per


@njit(cache=True, parallel=True, boundscheck=False)
def _matmul(kernels, qtype, w, stride, r0, r1, blk0, nblk, X, XQ, XD, XS, Y):
    T = X.shape[0]
    bb = BLOCK_BYTES[qtype]
    per, ngroups = _row_groups(r1 - r0, nblk * bb)
    for g in prange(ngroups):
        first = r0 + g * per
        last = min(r1, first + per)
        for t0 in range(0, T, _TOKENS):
            # past the last token, repeat it: the same value is stored twice
            t1, t2, t3 = min(t0 + 1, T - 1), min(t0 + 2, T - 1), min(t0 + 3, T - 1)
            _dot_rows_x4(kernels, qtype, w, first * stride + blk0 * bb, stride, last - first,
                         nblk, X, XQ, XD, XS, t0, t1, t2, t3, Y, first - r0)


@njit(cache=True)
def matmul_range(kernels, qtype, w, row_stride, r0, r1, blk0, nblk, X, Y):
    q = np.int64(qtype)
    T = X.shape[0]
    n = np.int64(nblk) * BLOCK_ELEMS[q]
    groups = n // GROUP if _check(kernels, q) != _FLOAT else 0
    XQ = np.empty((T, groups * GROUP), np.int16)
    XD = np.empty((T, groups), np.float32)
    XS = np.empty((T, 2 * groups), np.float32)
    if groups:
        quantize_rows(X, XQ, XD, XS)
    _matmul(kernels, q, w, np.int64(row_stride), np.int64(r0), np.int64(r1), np.int64(blk0),
            np.int64(nblk), X, XQ, XD, XS, Y)


# -- whole matrices, dequantization ----------------------------------------------------------

@njit(cache=True)
def row_stride(qtype, cols):
    """Bytes per row of `cols` elements (cols must be a whole number of blocks)."""
    if qtype < 0 or qtype >= _MAX_CODE or FAMILY[qtype] == 0:
        raise ValueError("no kernel for this quant type")
    return cols // BLOCK_ELEMS[qtype] * BLOCK_BYTES[qtype]


@njit(cache=True)
def linear(kernels, qtype, w, rows, cols, X, Y):
    stride = row_stride(qtype, cols)
    nblk = cols // BLOCK_ELEMS[qtype]
    if X.shape[0] == 1:
        matvec_range(kernels, qtype, w, stride, 0, rows, 0, nblk, X[0], Y[0])
    else:
        matmul_range(kernels, qtype, w, stride, 0, rows, 0, nblk, X, Y)


@njit(cache=True, boundscheck=False)
def dequantize_rows(kernels, qtype, w, cols, row_ids, out):
    q = np.int64(qtype)
    _check(kernels, q)
    stride = row_stride(q, cols)
    nblk = cols // BLOCK_ELEMS[q]
    for k in range(row_ids.shape[0]):
        _dequant_row(kernels, q, w, row_ids[k] * stride, nblk, out[k])
