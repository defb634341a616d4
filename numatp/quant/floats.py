"""Row kernels for unquantized weights: F32, F16 and BF16.

These multiply with the float32 activations as they are. A "block" is one element, so
column ranges are element ranges. F16 converts 8 lanes per instruction where the CPU has
F16C; BF16 is the upper half of a float32, so a shift converts it.

Like block32.py, functions take the quant type as a literal int and specialize on it.
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit

from numatp.quant.formats import BF16, F16, F32, type_name
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


def _dot_source(q, tokens):
    """The impl of dot_float (tokens=1) or dot_float_x4 (tokens=4), generated from one
    template so that a token's sum is the same sequence of operations in both: four fma
    chains over 32-element steps, the 8-element rest into the first chain, one horizontal
    sum of ((c0 + c1) + (c2 + c3)), then the scalar tail. A batched decode's rows equal
    single decodes because of it. The single row prefetches its weights; four tokens
    share each load, so theirs arrive once per four products anyway."""
    ts = range(tokens)
    xs = ["x"] if tokens == 1 else [f"x{t}" for t in ts]
    outs = ["y[r]"] if tokens == 1 else [f"Y[t{t}, c0 + r]" for t in ts]
    args = ("x, y" if tokens == 1 else "X, t0, t1, t2, t3, Y, c0")
    acc = lambda t, c: f"a{t}{c}"  # noqa: E731
    lines = [f"def {_dot_name(q, tokens)}(qtype, w, o, stride, nrows, n, {args}):"]
    if tokens > 1:
        lines.append("    " + ", ".join(xs) + " = " + ", ".join(f"X[t{t}]" for t in ts))
    lines += ["    for r in range(nrows):",
              "        row = o + r * stride"]
    lines += [f"        {', '.join(acc(t, c) for c in range(4))} = zeros4(LANES)" for t in ts]
    lines += ["        k = 0",
              "        while k + STEP <= n:"]
    if tokens == 1:   # a step reads 64 (F16, BF16) or 128 (F32) bytes of weights
        lines += ["            prefetch(w, row + k * eb + PREFETCH_AHEAD)",
                  "            if eb == 4:",
                  "                prefetch(w, row + k * eb + PREFETCH_AHEAD + CACHE_LINE)"]
    lines += [f"            u{c} = vec(w, row + (k + {8 * c}) * eb)" for c in range(4)]
    lines += [f"            {acc(t, c)} = fma(u{c}, load({xs[t]}, k + {8 * c}, LANES), {acc(t, c)})"
              for t in ts for c in range(4)]
    lines += ["            k += STEP",
              "        while k + LANES <= n:",
              "            v = vec(w, row + k * eb)"]
    lines += [f"            {acc(t, 0)} = fma(v, load({xs[t]}, k, LANES), {acc(t, 0)})" for t in ts]
    lines += ["            k += LANES"]
    lines += [f"        s{t} = hsum(({acc(t, 0)} + {acc(t, 1)}) + ({acc(t, 2)} + {acc(t, 3)}))"
              for t in ts]
    lines += ["        while k < n:",
              "            v1 = one(w, row + k * eb)"]
    lines += [f"            s{t} += v1 * {xs[t]}[k]" for t in ts]
    lines += ["            k += 1"]
    lines += [f"        {outs[t]} = s{t}" for t in ts]
    return "\n".join(lines)


def _dot_name(q, tokens):
    """A name of its own per type and token count (kernels.py's _tile_name says why)."""
    return f"dot_{type_name(q)}_x{tokens}"


def _dot_impl(qtype, tokens):
    q = literal_qtype(qtype, TYPES)
    if q is None:
        return None
    namespace = dict(eb=ELEMENT_BYTES[q], vec=_VECTOR[q], one=_SCALAR[q], zeros4=zeros4,
                     fma=fma, load=load, hsum=hsum, prefetch=prefetch, LANES=_LANES,
                     STEP=_STEP, PREFETCH_AHEAD=PREFETCH_AHEAD, CACHE_LINE=CACHE_LINE)
    exec(_dot_source(q, tokens), namespace)
    return namespace[_dot_name(q, tokens)]


@overload(dot_float, prefer_literal=True)
def _dot_float_ov(qtype, w, o, stride, nrows, n, x, y):
    return _dot_impl(qtype, 1)


def dot_float_x4(qtype, w, o, stride, nrows, n, X, t0, t1, t2, t3, Y, c0):
    """Y[t, c0 + r] = the row at byte o + r * stride dotted with token t, for r < nrows
    and t in t0..t3 (repeats allowed: they get the same value); the weights are read
    once for the four rows of X. Each token's sum is dot_float's, operation for
    operation (four chains over 32-element steps, the 8-element rest into the first,
    the same horizontal sum and scalar tail): a token gets bitwise the result it gets
    alone, whatever the batch (a batched decode's rows equal single decodes)."""


@overload(dot_float_x4, prefer_literal=True)
def _dot_float_x4_ov(qtype, w, o, stride, nrows, n, X, t0, t1, t2, t3, Y, c0):
    return _dot_impl(qtype, 4)


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
