"""Row kernels for the 256-element super-block formats: Q2_K .. Q6_K and IQ4_XS.

A super-block holds one or two fp16 numbers, small per-sub-block scales (and offsets),
and the packed integers. The kernels walk it as eight chunks of 32 elements. A chunk's
decoder returns what block32.py's decoders return for a whole block: the integers as
(even, odd) int16 lanes, in the order the activations are stored, plus how to scale them:

  svec   float32 x 8, the scale of each int32 lane of the chunk's integer dot
         (lane i covers elements 4i..4i+3, so formats with a scale per 16 elements put
         two different values in lanes 0-3 and 4-7),
  c      an offset per chunk: value = svec * q + c   (Q4_K, Q5_K; 0 for the others),
  mvec   an offset per lane, for Q2_K only: value = svec * q - mvec.

Byte layouts follow the GGML format definitions: each decoder says where its bytes are.
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit
from numba.extending import overload

from numatp.quant.block32 import IQ4_LEVELS, literal_qtype
from numatp.quant.formats import IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
from numatp.quant.simd import (bitcast, convert, fma, hsum, interleave, join, load,
                               load_bytes, lookup16, madd_pairs, read_half, repeat_lanes,
                               splat, store)

SUPER = 256
CHUNK = 32
CHUNKS = SUPER // CHUNK
BLOCK_BYTES = {Q2_K: 84, Q3_K: 110, Q4_K: 144, Q5_K: 176, Q6_K: 210, IQ4_XS: 136}
TYPES = tuple(BLOCK_BYTES)
_CHUNK_OFFSET = (Q4_K, Q5_K)
_LANE_OFFSET = (Q2_K,)

_NIBBLE_SHIFTS = np.array([0, 0, 0, 0, 4, 4, 4, 4], np.uint32)


@njit(boundscheck=False)
def _words(w, at):
    """32 bytes at `at` as 16 uint16 words: word i holds elements 2i (low byte) and 2i+1."""
    return load_bytes(w, at, np.uint16, 16)


@njit(boundscheck=False)
def _split(words, shift, mask):
    """(even, odd) int16 lanes of the bit field at `shift` of every byte."""
    return (bitcast((words >> shift) & mask, np.int16),
            bitcast((words >> (shift + 8)) & mask, np.int16))


@njit(boundscheck=False)
def _pair_scales(w, at):
    """Two int8 scales at `at` (elements 0-15 and 16-31 of a chunk) as lane scales."""
    return repeat_lanes(convert(load_bytes(w, at, np.int8, 2), np.float32), 4)


@njit(boundscheck=False)
def _k4_scale_min(w, ob, j):
    """Q4_K/Q5_K: the 6-bit scale and offset of sub-block j, packed in 12 bytes at ob+4:
    bytes 0-3 hold scales 0-3 (low 6 bits), 4-7 offsets 0-3, and 8-11 the low 4 bits of
    scales/offsets 4-7, whose top 2 bits ride in the top bits of bytes 0-7."""
    s = ob + 4
    if j < 4:
        sc = w[s + j] & 63
        m = w[s + 4 + j] & 63
    else:
        sc = (w[s + 4 + j] & 15) | ((w[s + j - 4] >> 6) << 4)
        m = (w[s + 4 + j] >> 4) | ((w[s + j] >> 6) << 4)
    return np.float32(sc), np.float32(m)


@njit(boundscheck=False)
def _decode_q4_k(w, ob, j):
    # d@0 dmin@2 scales@4 qs@16; chunk j: low (j even) or high nibbles of qs[32*(j//2):]
    ev, od = _split(_words(w, ob + 16 + 32 * (j >> 1)), 4 * (j & 1), 15)
    sc, m = _k4_scale_min(w, ob, j)
    return (ev, od, splat(read_half(w, ob) * sc, 8), -read_half(w, ob + 2) * m,
            splat(np.float32(0), 8))


@njit(boundscheck=False)
def _decode_q5_k(w, ob, j):
    # d@0 dmin@2 scales@4 qh@16 qs@48; element 32j+l has its fifth bit at bit j of qh[l]
    ev, od = _split(_words(w, ob + 48 + 32 * (j >> 1)), 4 * (j & 1), 15)
    he, ho = _split(_words(w, ob + 16), j, 1)
    sc, m = _k4_scale_min(w, ob, j)
    return (ev | (he << 4), od | (ho << 4), splat(read_half(w, ob) * sc, 8),
            -read_half(w, ob + 2) * m, splat(np.float32(0), 8))


@njit(boundscheck=False)
def _decode_q6_k(w, ob, j):
    # ql@0 qh@128 scales(int8, one per 16)@192 d@208. Chunk j = 4h + s: low 4 bits at
    # ql[64h + 32(s%2) + l] >> 4(s//2), high 2 bits at qh[32h + l] >> 2s; q - 32.
    h = j >> 2
    s = j & 3
    le, lo = _split(_words(w, ob + 64 * h + 32 * (s & 1)), 4 * (s >> 1), 15)
    he, ho = _split(_words(w, ob + 128 + 32 * h), 2 * s, 3)
    svec = _pair_scales(w, ob + 192 + 2 * j) * read_half(w, ob + 208)
    return ((le | (he << 4)) - 32, (lo | (ho << 4)) - 32, svec, np.float32(0),
            splat(np.float32(0), 8))


@njit(boundscheck=False)
def _decode_q2_k(w, ob, j):
    # scales@0 (low 4 bits: scale, high 4: offset; one per 16) qs@16 d@80 dmin@82.
    # Chunk j = 4h + s: element 32j+l is (qs[32h + l] >> 2s) & 3.
    ev, od = _split(_words(w, ob + 16 + 32 * (j >> 2)), 2 * (j & 3), 3)
    packed = load_bytes(w, ob + 2 * j, np.uint8, 2)
    sc = repeat_lanes(convert(packed & 15, np.float32), 4)
    mn = repeat_lanes(convert(packed >> 4, np.float32), 4)
    return ev, od, sc * read_half(w, ob + 80), np.float32(0), mn * read_half(w, ob + 82)


@njit(boundscheck=False)
def _q3_k_scale(w, ob, i):
    """Q3_K's signed 6-bit scale i (0..15), 12 bytes at ob+96: low 4 bits in the low
    (i < 8) or high nibble of byte i%8, high 2 bits at bits 2(i//4) of byte 8 + i%4."""
    s = ob + 96
    low = (w[s + (i & 7)] >> (4 * (i >> 3))) & 15
    high = (w[s + 8 + (i & 3)] >> (2 * (i >> 2))) & 3
    return np.float32(np.int32(low | (high << 4)) - 32)


@njit(boundscheck=False)
def _decode_q3_k(w, ob, j):
    # hmask@0 qs@32 scales@96 d@108. Element 32j+l: low 2 bits (qs[32h + l] >> 2s) & 3
    # with j = 4h + s; bit j of hmask[l] clear means subtract 4.
    le, lo = _split(_words(w, ob + 32 + 32 * (j >> 2)), 2 * (j & 3), 3)
    he, ho = _split(_words(w, ob), j, 1)
    d = read_half(w, ob + 108)
    sa = _q3_k_scale(w, ob, 2 * j)
    sb = _q3_k_scale(w, ob, 2 * j + 1)
    svec = join(splat(sa * d, 4), splat(sb * d, 4))
    return ((le | (he << 2)) - 4, (lo | (ho << 2)) - 4, svec, np.float32(0),
            splat(np.float32(0), 8))


@njit(boundscheck=False)
def _decode_iq4_xs(w, ob, j):
    # d@0 scales_h(u16)@2 scales_l@4 qs@8. Sub-block j: 16 bytes at qs + 16j, low nibbles
    # elements 0-15, high 16-31, each an index into the IQ4 levels; 6-bit scale - 32.
    v = load_bytes(w, ob + 8 + 16 * j, np.uint32, 4)
    idx = bitcast((join(v, v) >> load(_NIBBLE_SHIFTS, 0, 8)) & 0x0F0F0F0F, np.uint8)
    q = bitcast(lookup16(load(IQ4_LEVELS, 0, 16), idx), np.int16)
    low = (w[ob + 4 + (j >> 1)] >> (4 * (j & 1))) & 15
    high = (np.uint32(w[ob + 2]) | (np.uint32(w[ob + 3]) << 8)) >> (2 * j) & 3
    scale = np.float32(np.int32(low | (high << 4)) - 32) * read_half(w, ob)
    return (q << 8) >> 8, q >> 8, splat(scale, 8), np.float32(0), splat(np.float32(0), 8)


_DECODERS = {Q2_K: _decode_q2_k, Q3_K: _decode_q3_k, Q4_K: _decode_q4_k,
             Q5_K: _decode_q5_k, Q6_K: _decode_q6_k, IQ4_XS: _decode_iq4_xs}


@njit(boundscheck=False)
def _chunk_int_dot(ev, od, xq, at):
    return madd_pairs(ev, load(xq, at, 16)) + madd_pairs(od, load(xq, at + 16, 16))


_ONES = np.ones(16, np.int16)


@njit(boundscheck=False)
def _lane_sums(xq, at):
    """int32 lanes of the activation sums that pair with _chunk_int_dot's lanes."""
    ones = load(_ONES, 0, 16)
    return madd_pairs(ones, load(xq, at, 16)) + madd_pairs(ones, load(xq, at + 16, 16))


def _specialize(qtype):
    q = literal_qtype(qtype, TYPES)
    if q is None:
        return None
    return BLOCK_BYTES[q], _DECODERS[q], q in _CHUNK_OFFSET, q in _LANE_OFFSET


@njit(boundscheck=False)
def _apply(ev, od, svec, c, mvec, xq, xd, xs, g, acc, off, chunk_offset, lane_offset):
    """Add chunk g's contribution to the lane accumulator and the scalar offset sum."""
    sx = splat(xd[g], 8)
    acc = fma(convert(_chunk_int_dot(ev, od, xq, g * CHUNK), np.float32), svec * sx, acc)
    if lane_offset:
        acc = acc - convert(_lane_sums(xq, g * CHUNK), np.float32) * (mvec * sx)
    if chunk_offset:
        off += c * xs[g]
    return acc, off


def dot_k(qtype, w, o, nsb, xq, xd, xs):
    """Row starting at byte o, nsb super-blocks, dotted with quantized activations."""


@overload(dot_k, prefer_literal=True)
def _dot_k_ov(qtype, w, o, nsb, xq, xd, xs):
    spec = _specialize(qtype)
    if spec is None:
        return None
    bb, decode, chunk_offset, lane_offset = spec

    def impl(qtype, w, o, nsb, xq, xd, xs):
        # Even and odd chunks feed separate accumulators: two dependency chains.
        acc0 = splat(np.float32(0), 8)
        acc1 = acc0
        off0 = np.float32(0)
        off1 = off0
        for sb in range(nsb):
            ob = o + sb * bb
            for j in range(0, CHUNKS, 2):
                g = sb * CHUNKS + j
                ev, od, svec, c, mvec = decode(w, ob, j)
                acc0, off0 = _apply(ev, od, svec, c, mvec, xq, xd, xs, g, acc0, off0,
                                    chunk_offset, lane_offset)
                ev, od, svec, c, mvec = decode(w, ob, j + 1)
                acc1, off1 = _apply(ev, od, svec, c, mvec, xq, xd, xs, g + 1, acc1, off1,
                                    chunk_offset, lane_offset)
        return hsum(acc0 + acc1) + (off0 + off1)

    return impl


def dot_k_x4(qtype, w, o, nsb, XQ, XD, XS, t0, t1, t2, t3):
    """The row at byte o dotted with tokens t0..t3, decoding each chunk once."""


@overload(dot_k_x4, prefer_literal=True)
def _dot_k_x4_ov(qtype, w, o, nsb, XQ, XD, XS, t0, t1, t2, t3):
    spec = _specialize(qtype)
    if spec is None:
        return None
    bb, decode, chunk_offset, lane_offset = spec

    def impl(qtype, w, o, nsb, XQ, XD, XS, t0, t1, t2, t3):
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
        for sb in range(nsb):
            ob = o + sb * bb
            for j in range(CHUNKS):
                g = sb * CHUNKS + j
                ev, od, svec, c, mvec = decode(w, ob, j)
                a0, f0 = _apply(ev, od, svec, c, mvec, x0, d0, s0, g, a0, f0,
                                chunk_offset, lane_offset)
                a1, f1 = _apply(ev, od, svec, c, mvec, x1, d1, s1, g, a1, f1,
                                chunk_offset, lane_offset)
                a2, f2 = _apply(ev, od, svec, c, mvec, x2, d2, s2, g, a2, f2,
                                chunk_offset, lane_offset)
                a3, f3 = _apply(ev, od, svec, c, mvec, x3, d3, s3, g, a3, f3,
                                chunk_offset, lane_offset)
        return hsum(a0) + f0, hsum(a1) + f1, hsum(a2) + f2, hsum(a3) + f3

    return impl


def dequant_k(qtype, w, o, nsb, out):
    """out[:nsb*256] = the row at byte o as float32."""


@overload(dequant_k, prefer_literal=True)
def _dequant_k_ov(qtype, w, o, nsb, out):
    spec = _specialize(qtype)
    if spec is None:
        return None
    bb, decode = spec[0], spec[1]

    def impl(qtype, w, o, nsb, out):
        for sb in range(nsb):
            ob = o + sb * bb
            for j in range(CHUNKS):
                ev, od, svec, c, mvec = decode(w, ob, j)
                q = convert(convert(interleave(ev, od), np.int32), np.float32)
                # Lane i of svec/mvec covers elements 4i..4i+3 in natural order too.
                scale = repeat_lanes(svec, 4)
                shift = repeat_lanes(mvec, 4)
                store(out, (sb * CHUNKS + j) * CHUNK, fma(q, scale, splat(c, 32)) - shift)

    return impl
