"""Row kernels for the formats with 32-element blocks: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL.

Every one of them stores a block as one or two fp16 numbers and 32 small integers q,
meaning d*q + c (c = 0, a stored offset m, or a fixed -8d / -16d). A block's decoder turns
the integers into two vectors of 16 int16 lanes, the even-numbered elements and the
odd-numbered ones, which is what splitting the packed bytes as 16-bit words gives for
free (the activations are stored in the same order, see activations.py). Then one block is
    d * x_scale * sum(q * x_int16)  +  c * sum(x)
with the integer sum done by two multiply-add instructions, and the offset applied once
per block rather than to every lane.

Functions here take the quant type as a compile-time constant (a literal int): each call
site gets code for exactly one format, with the decoder inlined into the block loop.
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit, types
from numba.extending import overload

from numatp.quant.formats import IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
from numatp.quant.simd import (bitcast, convert, fma, hsum, interleave, join, load,
                               load_bytes, lookup16, madd_pairs, read_half, repeat_lanes,
                               splat, store)

BLOCK = 32
BLOCK_BYTES = {Q8_0: 34, Q4_0: 18, Q4_1: 20, Q5_0: 22, Q5_1: 24, IQ4_NL: 18}
TYPES = tuple(BLOCK_BYTES)
_WITH_OFFSET = (Q4_0, Q4_1, Q5_0, Q5_1)  # d*q + c, c != 0

# IQ4_NL's 16 levels (a non-linear 4-bit code book, from the format definition).
IQ4_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                       1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
# Shift counts per 32-bit lane: the low half of a 16-byte load unchanged, the high half
# moved down by 4 bits, so that both halves' low nibbles are elements.
_NIBBLE_SHIFTS = np.array([0, 0, 0, 0, 4, 4, 4, 4], np.uint32)
# Multipliers that move bit 2k (even lanes) or 2k+1 (odd lanes) of a 16-bit word to the
# sign bit, k = lane % 8: how the fifth bits of Q5_0/Q5_1 reach their lanes.
_HIGH_BIT_EVEN = np.array([1 << (15 - 2 * k) for k in range(8)] * 2, np.uint16).view(np.int16)
_HIGH_BIT_ODD = np.array([1 << (14 - 2 * k) for k in range(8)] * 2, np.uint16).view(np.int16)


def literal_qtype(qtype, allowed):
    """The int value of a literal quant-type argument, or None (typing falls through)."""
    if isinstance(qtype, types.IntegerLiteral) and qtype.literal_value in allowed:
        return qtype.literal_value
    return None


# -- decoding one block --------------------------------------------------------------------

@njit(boundscheck=False)
def _nibbles(w, at):
    """16 bytes of packed 4-bit values at byte `at` (element e < 16 in the low nibble of
    byte e, element 16+e in its high nibble) -> even, odd elements as int16 lanes."""
    v = load_bytes(w, at, np.uint32, 4)
    s = bitcast(join(v, v) >> load(_NIBBLE_SHIFTS, 0, 8), np.int16)
    return s & 15, (s >> 8) & 15


@njit(boundscheck=False)
def _fifth_bits(w, at):
    """The 32 one-bit extensions of Q5_0/Q5_1 at byte `at` as (even, odd) int16 lanes
    holding 0 (bit clear) or -1 (bit set)."""
    h = repeat_lanes(load_bytes(w, at, np.int16, 2), 8)
    even = (h * load(_HIGH_BIT_EVEN, 0, 16)) >> 15
    odd = (h * load(_HIGH_BIT_ODD, 0, 16)) >> 15
    return even, odd


@njit(boundscheck=False)
def _decode_q8_0(w, ob):
    v = load_bytes(w, ob + 2, np.int16, 16)
    return (v << 8) >> 8, v >> 8, read_half(w, ob), np.float32(0)


@njit(boundscheck=False)
def _decode_q4_0(w, ob):
    # d * (q - 8): the offset is applied to the block sum, not to every lane.
    ev, od = _nibbles(w, ob + 2)
    d = read_half(w, ob)
    return ev, od, d, np.float32(-8) * d


@njit(boundscheck=False)
def _decode_q4_1(w, ob):
    ev, od = _nibbles(w, ob + 4)
    return ev, od, read_half(w, ob), read_half(w, ob + 2)


@njit(boundscheck=False)
def _decode_q5_0(w, ob):
    ev, od = _nibbles(w, ob + 6)
    he, ho = _fifth_bits(w, ob + 2)
    d = read_half(w, ob)
    return ev | (he & 16), od | (ho & 16), d, np.float32(-16) * d


@njit(boundscheck=False)
def _decode_q5_1(w, ob):
    ev, od = _nibbles(w, ob + 8)
    he, ho = _fifth_bits(w, ob + 4)
    return ev | (he & 16), od | (ho & 16), read_half(w, ob), read_half(w, ob + 2)


@njit(boundscheck=False)
def _decode_iq4_nl(w, ob):
    v = load_bytes(w, ob + 2, np.uint32, 4)
    idx = bitcast(join(v, v >> 4) & 0x0F0F0F0F, np.uint8)   # byte e = element e's index
    q = bitcast(lookup16(load(IQ4_LEVELS, 0, 16), idx), np.int16)
    return (q << 8) >> 8, q >> 8, read_half(w, ob), np.float32(0)


_DECODERS = {Q8_0: _decode_q8_0, Q4_0: _decode_q4_0, Q4_1: _decode_q4_1,
             Q5_0: _decode_q5_0, Q5_1: _decode_q5_1, IQ4_NL: _decode_iq4_nl}


# -- one row against one activation vector (decode) ----------------------------------------

@njit(boundscheck=False)
def _block_int_dot(ev, od, xq, at):
    """int32 lanes of sum(q * x) for one block; lane i holds elements 4i .. 4i+3."""
    return madd_pairs(ev, load(xq, at, 16)) + madd_pairs(od, load(xq, at + 16, 16))


def dot32(qtype, w, o, nblk, xq, xd, xs):
    """Row starting at byte o, nblk blocks, dotted with quantized activations (xq, xd, xs
    as activations.quantize_vector makes them)."""


@overload(dot32, prefer_literal=True)
def _dot32_ov(qtype, w, o, nblk, xq, xd, xs):
    q = literal_qtype(qtype, TYPES)
    if q is None:
        return None
    bb = BLOCK_BYTES[q]
    offset = q in _WITH_OFFSET
    decode = _DECODERS[q]
    bdot = _block_int_dot

    def impl(qtype, w, o, nblk, xq, xd, xs):
        # Two independent chains (even and odd blocks): one chain would wait on the
        # latency of every fused multiply-add.
        acc0 = splat(np.float32(0), 8)
        acc1 = splat(np.float32(0), 8)
        off0 = np.float32(0)
        off1 = np.float32(0)
        b = 0
        while b + 1 < nblk:
            ev, od, d, m = decode(w, o + b * bb)
            acc0 = fma(convert(bdot(ev, od, xq, b * BLOCK), np.float32),
                       splat(d * xd[b], 8), acc0)
            if offset:
                off0 += m * (xs[2 * b] + xs[2 * b + 1])
            ev, od, d, m = decode(w, o + (b + 1) * bb)
            acc1 = fma(convert(bdot(ev, od, xq, (b + 1) * BLOCK), np.float32),
                       splat(d * xd[b + 1], 8), acc1)
            if offset:
                off1 += m * (xs[2 * b + 2] + xs[2 * b + 3])
            b += 2
        if b < nblk:
            ev, od, d, m = decode(w, o + b * bb)
            acc0 = fma(convert(bdot(ev, od, xq, b * BLOCK), np.float32),
                       splat(d * xd[b], 8), acc0)
            if offset:
                off0 += m * (xs[2 * b] + xs[2 * b + 1])
        return hsum(acc0 + acc1) + (off0 + off1)

    return impl


# -- one row against four activation vectors (prompt batches) -------------------------------

def dot32x4(qtype, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3):
    """Row at byte o dotted with tokens t0..t3 (rows of XQ/XD/XS); each block is decoded
    once for the four of them."""


@overload(dot32x4, prefer_literal=True)
def _dot32x4_ov(qtype, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3):
    q = literal_qtype(qtype, TYPES)
    if q is None:
        return None
    bb = BLOCK_BYTES[q]
    decode = _DECODERS[q]
    bdot = _block_int_dot
    # A fixed offset (-8d, -16d) costs one subtraction per lane vector here, shared by
    # the four tokens, instead of one multiply-add per token; stored offsets (m) stay.
    lane_shift = {Q4_0: 8, Q5_0: 16}.get(q, 0)
    offset = q in (Q4_1, Q5_1)

    def impl(qtype, w, o, nblk, XQ, XD, XS, t0, t1, t2, t3):
        x0, x1, x2, x3 = XQ[t0], XQ[t1], XQ[t2], XQ[t3]
        d0, d1, d2, d3 = XD[t0], XD[t1], XD[t2], XD[t3]
        s0, s1, s2, s3 = XS[t0], XS[t1], XS[t2], XS[t3]
        a0 = splat(np.float32(0), 8)
        a1 = a0
        a2 = a0
        a3 = a0
        f0 = np.float32(0)
        f1 = f0
        f2 = f0
        f3 = f0
        for b in range(nblk):
            ev, od, d, m = decode(w, o + b * bb)
            if lane_shift:
                ev = ev - lane_shift
                od = od - lane_shift
            at = b * BLOCK
            a0 = fma(convert(bdot(ev, od, x0, at), np.float32), splat(d * d0[b], 8), a0)
            a1 = fma(convert(bdot(ev, od, x1, at), np.float32), splat(d * d1[b], 8), a1)
            a2 = fma(convert(bdot(ev, od, x2, at), np.float32), splat(d * d2[b], 8), a2)
            a3 = fma(convert(bdot(ev, od, x3, at), np.float32), splat(d * d3[b], 8), a3)
            if offset:
                f0 += m * (s0[2 * b] + s0[2 * b + 1])
                f1 += m * (s1[2 * b] + s1[2 * b + 1])
                f2 += m * (s2[2 * b] + s2[2 * b + 1])
                f3 += m * (s3[2 * b] + s3[2 * b + 1])
        return hsum(a0) + f0, hsum(a1) + f1, hsum(a2) + f2, hsum(a3) + f3

    return impl


# -- dequantization ------------------------------------------------------------------------

def dequant32(qtype, w, o, nblk, out):
    """out[:nblk*32] = the row at byte o as float32."""


@overload(dequant32, prefer_literal=True)
def _dequant32_ov(qtype, w, o, nblk, out):
    q = literal_qtype(qtype, TYPES)
    if q is None:
        return None
    bb = BLOCK_BYTES[q]
    decode = _DECODERS[q]

    def impl(qtype, w, o, nblk, out):
        for b in range(nblk):
            ev, od, d, m = decode(w, o + b * bb)
            v = convert(convert(interleave(ev, od), np.int32), np.float32)
            store(out, b * BLOCK, fma(v, splat(d, 32), splat(m, 32)))

    return impl
