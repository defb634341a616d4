"""Dequantization of GGUF-layout rows of the 256-element super-block formats: Q2_K ..
Q6_K and IQ4_XS (the embedding lookup; the matrix kernels read packed row groups, see
rowgroups.py).

A super-block holds one or two fp16 numbers, small scales (and offsets) per 16 or 32
elements, and the packed integers. For each format there are two decoders:

  scales(w, ob) -> (S, M), once per super-block, vectorized:
      S  float32 x 8, the scale of each 32-element chunk, or x 16, one per 16 elements;
      M  float32 x 16, a fixed offset per 16 elements. An element is S * q + M, with q
         the unsigned integer stored for it.
  chunk(w, ob, j) -> (even, odd) int16 lanes of chunk j's 32 integers q, in the order the
      activations are stored (see activations.py), like block32.py's decoders.

Byte layouts follow the GGML format definitions; each decoder says where its bytes are.
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit
from numba.extending import overload

from numatp.quant.block32 import IQ4_LEVELS, literal_qtype
from numatp.quant.formats import IQ4_XS, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
from numatp.quant.simd import (bitcast, convert, fma, interleave, join, lane, load,
                               load_bytes, lookup16, read_bytes,
                               repeat_lanes, splat, splat_half, store)

SUPER = 256
CHUNK = 32
CHUNKS = SUPER // CHUNK
BLOCK_BYTES = {Q2_K: 84, Q3_K: 110, Q4_K: 144, Q5_K: 176, Q6_K: 210, IQ4_XS: 136}
TYPES = tuple(BLOCK_BYTES)
_SCALE_PER_16 = (Q2_K, Q3_K, Q6_K)   # S has 16 lanes
_NO_OFFSET = (IQ4_XS,)               # M is zero

_NIBBLE_SHIFTS = np.array([0, 0, 0, 0, 4, 4, 4, 4], np.uint32)
_PAIR_SHIFTS = np.arange(0, 16, 2, dtype=np.uint32)


@njit(boundscheck=False)
def _split(words, shift, mask):
    """(even, odd) int16 lanes of the bit field at `shift` of every byte."""
    return (bitcast((words >> shift) & mask, np.int16),
            bitcast((words >> (shift + 8)) & mask, np.int16))


# -- Q4_K, Q5_K: d@0 dmin@2 scales@4 (12 bytes), then Q5_K's qh@16, then qs ----------------

@njit(boundscheck=False)
def _scales_k4(w, ob):
    # 6-bit scale and offset per chunk: bytes 0-3 hold scales 0-3 in their low 6 bits,
    # bytes 4-7 offsets 0-3, bytes 8-11 the low 4 bits of scales (and, high nibble,
    # offsets) 4-7, whose top 2 bits are the top bits of bytes 0-3 (4-7).
    a = load_bytes(w, ob + 4, np.uint8, 4)
    b = load_bytes(w, ob + 8, np.uint8, 4)
    c = load_bytes(w, ob + 12, np.uint8, 4)
    sc = join(a & 63, (c & 15) | ((a >> 6) << 4))
    mn = join(b & 63, (c >> 4) | ((b >> 6) << 4))
    S = convert(sc, np.float32) * splat_half(w, ob, 8)
    M = repeat_lanes(convert(mn, np.float32) * -splat_half(w, ob + 2, 8), 2)
    return S, M


@njit(boundscheck=False)
def _chunk_q4_k(w, ob, j):
    # qs@16: chunk j is the low (j even) or high nibbles of the 32 bytes at 32*(j//2)
    return _split(load_bytes(w, ob + 16 + 32 * (j >> 1), np.uint16, 16), 4 * (j & 1), 15)


@njit(boundscheck=False)
def _chunk_q5_k(w, ob, j):
    # qh@16 qs@48: element 32j+l has its fifth bit at bit j of qh[l]
    ev, od = _split(load_bytes(w, ob + 48 + 32 * (j >> 1), np.uint16, 16), 4 * (j & 1), 15)
    he, ho = _split(load_bytes(w, ob + 16, np.uint16, 16), j, 1)
    return ev | (he << 4), od | (ho << 4)


# -- Q6_K: ql@0 qh@128 scales(int8, one per 16)@192 d@208; q - 32 --------------------------

@njit(boundscheck=False)
def _scales_q6_k(w, ob):
    S = convert(load_bytes(w, ob + 192, np.int8, 16), np.float32) * splat_half(w, ob + 208, 16)
    return S, S * np.float32(-32)


@njit(boundscheck=False)
def _chunk_q6_k(w, ob, j):
    # chunk j = 4h + s: low 4 bits at ql[64h + 32(s%2) + l] >> 4(s//2),
    # high 2 bits at qh[32h + l] >> 2s
    h = j >> 2
    s = j & 3
    le, lo = _split(load_bytes(w, ob + 64 * h + 32 * (s & 1), np.uint16, 16), 4 * (s >> 1), 15)
    he, ho = _split(load_bytes(w, ob + 128 + 32 * h, np.uint16, 16), 2 * s, 3)
    return le | (he << 4), lo | (ho << 4)


# -- Q3_K: hmask@0 qs@32 scales@96 (12 bytes) d@108; q - 4 ---------------------------------

@njit(boundscheck=False)
def _scales_q3_k(w, ob):
    # 16 signed 6-bit scales (stored + 32): low 4 bits in the low (scales 0-7) or high
    # nibble (8-15) of bytes 0-7; high 2 bits of scale i at bits 2(i//4) of byte 8 + i%4.
    lowb = load_bytes(w, ob + 96, np.uint8, 8)
    highb = load_bytes(w, ob + 104, np.uint8, 4)
    low = join(lowb & 15, lowb >> 4)
    high = join(join(highb, highb >> 2), join(highb >> 4, highb >> 6)) & 3
    S = (convert(low | (high << 4), np.float32) - np.float32(32)) * splat_half(w, ob + 108, 16)
    return S, S * np.float32(-4)


@njit(boundscheck=False)
def _chunk_q3_k(w, ob, j):
    # element 32j+l: low 2 bits (qs[32h + l] >> 2s) & 3 with j = 4h + s, and bit j of
    # hmask[l] adds 4
    le, lo = _split(load_bytes(w, ob + 32 + 32 * (j >> 2), np.uint16, 16), 2 * (j & 3), 3)
    he, ho = _split(load_bytes(w, ob, np.uint16, 16), j, 1)
    return le | (he << 2), lo | (ho << 2)


# -- Q2_K: scales@0 (16 bytes: low nibble scale, high nibble offset) qs@16 d@80 dmin@82 ----

@njit(boundscheck=False)
def _scales_q2_k(w, ob):
    packed = load_bytes(w, ob, np.uint8, 16)
    return (convert(packed & 15, np.float32) * splat_half(w, ob + 80, 16),
            convert(packed >> 4, np.float32) * -splat_half(w, ob + 82, 16))


@njit(boundscheck=False)
def _chunk_q2_k(w, ob, j):
    # chunk j = 4h + s: element 32j+l is (qs[32h + l] >> 2s) & 3
    return _split(load_bytes(w, ob + 16 + 32 * (j >> 2), np.uint16, 16), 2 * (j & 3), 3)


# -- IQ4_XS: d@0 scales_h(u16)@2 scales_l@4 qs@8 -------------------------------------------

@njit(boundscheck=False)
def _scales_iq4_xs(w, ob):
    # 6-bit scale - 32 per chunk: low 4 bits in nibble j%2 of scales_l[j//2], high 2 bits
    # at bits 2j of scales_h
    low4 = load_bytes(w, ob + 4, np.uint8, 4)
    low = convert(interleave(low4 & 15, low4 >> 4), np.uint32)
    high = (splat(np.uint32(read_bytes(w, ob + 2, np.uint16)), 8)
            >> load(_PAIR_SHIFTS, 0, 8)) & 3
    S = (convert(low | (high << 4), np.float32) - np.float32(32)) * splat_half(w, ob, 8)
    return S, splat(np.float32(0), 16)


@njit(boundscheck=False)
def _chunk_iq4_xs(w, ob, j):
    # 16 bytes at qs + 16j: low nibbles elements 0-15, high nibbles 16-31, each an index
    # into the IQ4 levels
    v = load_bytes(w, ob + 8 + 16 * j, np.uint32, 4)
    idx = bitcast((join(v, v) >> load(_NIBBLE_SHIFTS, 0, 8)) & 0x0F0F0F0F, np.uint8)
    q = bitcast(lookup16(load(IQ4_LEVELS, 0, 16), idx), np.int16)
    return (q << 8) >> 8, q >> 8


_SCALES = {Q2_K: _scales_q2_k, Q3_K: _scales_q3_k, Q4_K: _scales_k4, Q5_K: _scales_k4,
           Q6_K: _scales_q6_k, IQ4_XS: _scales_iq4_xs}
_CHUNKS = {Q2_K: _chunk_q2_k, Q3_K: _chunk_q3_k, Q4_K: _chunk_q4_k, Q5_K: _chunk_q5_k,
           Q6_K: _chunk_q6_k, IQ4_XS: _chunk_iq4_xs}


def _specialize(qtype):
    q = literal_qtype(qtype, TYPES)
    if q is None:
        return None
    return BLOCK_BYTES[q], _SCALES[q], _CHUNKS[q], q in _SCALE_PER_16


def dequant_k(qtype, w, o, nsb, out):
    """out[:nsb*256] = the row at byte o as float32."""


@overload(dequant_k, prefer_literal=True)
def _dequant_k_ov(qtype, w, o, nsb, out):
    spec = _specialize(qtype)
    if spec is None:
        return None
    bb, scales, chunk, per16 = spec

    def impl(qtype, w, o, nsb, out):
        for sb in range(nsb):
            ob = o + sb * bb
            S, M = scales(w, ob)
            for j in range(CHUNKS):
                ev, od = chunk(w, ob, j)
                q = convert(convert(interleave(ev, od), np.int32), np.float32)
                if per16:
                    scale = join(splat(lane(S, 2 * j), 16), splat(lane(S, 2 * j + 1), 16))
                else:
                    scale = splat(lane(S, j), 32)
                shift = join(splat(lane(M, 2 * j), 16), splat(lane(M, 2 * j + 1), 16))
                store(out, (sb * CHUNKS + j) * CHUNK, fma(q, scale, shift))

    return impl
