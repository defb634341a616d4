"""Dequantization of GGUF-layout rows of the formats with 32-element blocks: Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1, IQ4_NL (the embedding lookup; the matrix kernels read packed row
groups, see rowgroups.py).

Every one of them stores a block as one or two fp16 numbers and 32 small integers q,
meaning d*q (Q8_0, IQ4_NL), d*(q - 8) (Q4_0), d*(q - 16) (Q5_0) or d*q + m (Q4_1, Q5_1).
A block's decoder turns the integers, fixed offset included, into two vectors of 16 int16
lanes, the even-numbered elements and the odd-numbered ones, which is what splitting the
packed bytes as 16-bit words gives for free. d and m come as 8 float32 lanes.

Functions here take the quant type as a compile-time constant (a literal int): each call
site gets code for exactly one format, with the decoder inlined into the block loop.
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit, types
from numba.extending import overload

from numatp.quant.formats import IQ4_NL, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
from numatp.quant.simd import (bitcast, convert, fma, interleave, join, lane, load,
                               load_bytes, lookup16, repeat_lanes, splat, splat_half, store)

BLOCK = 32
BLOCK_BYTES = {Q8_0: 34, Q4_0: 18, Q4_1: 20, Q5_0: 22, Q5_1: 24, IQ4_NL: 18}
TYPES = tuple(BLOCK_BYTES)
_STORED_OFFSET = (Q4_1, Q5_1)  # d*q + m

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


# Decoders: (even q, odd q, d, m) of the block at byte ob; d and m as 8 float32 lanes
# (m is zero, and unused, for the formats without a stored offset).

@njit(boundscheck=False)
def _decode_q8_0(w, ob):
    v = load_bytes(w, ob + 2, np.int16, 16)
    return (v << 8) >> 8, v >> 8, splat_half(w, ob, 8), splat(np.float32(0), 8)


@njit(boundscheck=False)
def _decode_q4_0(w, ob):
    ev, od = _nibbles(w, ob + 2)
    return ev - 8, od - 8, splat_half(w, ob, 8), splat(np.float32(0), 8)


@njit(boundscheck=False)
def _decode_q4_1(w, ob):
    ev, od = _nibbles(w, ob + 4)
    return ev, od, splat_half(w, ob, 8), splat_half(w, ob + 2, 8)


@njit(boundscheck=False)
def _decode_q5_0(w, ob):
    ev, od = _nibbles(w, ob + 6)
    he, ho = _fifth_bits(w, ob + 2)
    # q - 16 with q = nibble + 16 * bit: subtract 16 where the bit is clear
    return (ev + (~he & -16), od + (~ho & -16), splat_half(w, ob, 8),
            splat(np.float32(0), 8))


@njit(boundscheck=False)
def _decode_q5_1(w, ob):
    ev, od = _nibbles(w, ob + 8)
    he, ho = _fifth_bits(w, ob + 4)
    return ev | (he & 16), od | (ho & 16), splat_half(w, ob, 8), splat_half(w, ob + 2, 8)


@njit(boundscheck=False)
def _decode_iq4_nl(w, ob):
    v = load_bytes(w, ob + 2, np.uint32, 4)
    idx = bitcast(join(v, v >> 4) & 0x0F0F0F0F, np.uint8)   # byte e = element e's index
    q = bitcast(lookup16(load(IQ4_LEVELS, 0, 16), idx), np.int16)
    return (q << 8) >> 8, q >> 8, splat_half(w, ob, 8), splat(np.float32(0), 8)


_DECODERS = {Q8_0: _decode_q8_0, Q4_0: _decode_q4_0, Q4_1: _decode_q4_1,
             Q5_0: _decode_q5_0, Q5_1: _decode_q5_1, IQ4_NL: _decode_iq4_nl}


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
            store(out, b * BLOCK, fma(v, splat(lane(d, 0), 32), splat(lane(m, 0), 32)))

    return impl
