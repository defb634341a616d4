"""Decoders of packed row groups (packing.py): R rows at once, one row per lane.

A block is cut into units of 32 or 16 elements that share one scale per row. For unit u
of the packed block at byte ob, each format gives

  vectors(w, ob, u) -> UNIT/4 vectors of 4R unsigned bytes: vector k holds elements
      4k .. 4k+3 of the unit for each of the R rows (row r in bytes 4r .. 4r+3), so that
      one dot-product instruction against those 4 activation bytes, broadcast, sums 4
      products per row;
  scales(w, ob, u) -> (S, M), float32 x R: row r's weights in the unit are S[r] * q + M[r]
      for the stored unsigned integers q (32-element blocks); or, for the 256-element
      super-blocks, the unit's integer scale and offset, int32 x R, which
  supers(w, ob) -> (D, DM), float32 x R, turn into weights D[r] * S[r] * q + DM[r] * M[r]
      (DM = 0 where the format has no offsets). The kernels sum a super-block's units
      as integers (each unit's dot product times S, and M times the unit's activation
      sum) and scale the two sums once, as llama.cpp does with its Q8_K activations.

Signed formats store q + a zero point (Q4_0's q - 8 becomes q with M = -8 S); Q8_0 and
the IQ4 code books are shifted by 128 to make them unsigned, the only formats whose q
reach 128 or more (`SMALL` is False for them: see simd.dot4).

Byte layouts follow the GGML format definitions, with every field of a GGUF block at R
times its offset (packing.py); each decoder says where its fields are, as GGUF offsets.
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit

from numatp.quant import formats as F
from numatp.quant.isa import group_rows
from numatp.quant.simd import (bitcast, convert, half_to_float, load, load_bytes, lookup16,
                               splat)

R = group_rows()
LO4 = np.uint32(0x0F0F0F0F)
LO2 = np.uint32(0x03030303)
BIT4 = np.uint32(0x10101010)
BIT2 = np.uint32(0x04040404)
SIGN = np.uint32(0x80808080)

# IQ4_NL / IQ4_XS's 16 levels (a non-linear 4-bit code book, from the format definition)
# plus 128: unsigned bytes.
IQ4_LEVELS_U8 = (np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                           1, 13, 25, 38, 53, 69, 89, 113]) + 128).astype(np.uint8)


@njit(boundscheck=False)
def _dwords(w, at):
    """Dword k of a field, for the R rows: at = packed block + R * (field offset + 4k)."""
    return load_bytes(w, at, np.uint32, R)


@njit(boundscheck=False)
def _bytes(v):
    return bitcast(v, np.uint8)


@njit(boundscheck=False)
def _halves(w, at):
    """The R fp16 numbers of a 2-byte field, as float32."""
    return half_to_float(load_bytes(w, at, np.uint16, R))


@njit(boundscheck=False)
def _byte_of(v, i):
    """Byte i of each uint32 lane, as uint32."""
    return (v >> np.uint32(8 * i)) & np.uint32(0xFF)


@njit(boundscheck=False)
def _nibble_pairs(w, at):
    """The 4 dwords of a 16-byte field of packed nibbles (element e < 16 in the low
    nibble of byte e, 16 + e in its high nibble): elements 0-15, then 16-31."""
    v0, v1, v2, v3 = _dwords(w, at), _dwords(w, at + 4 * R), _dwords(w, at + 8 * R), \
        _dwords(w, at + 12 * R)
    return (v0 & LO4, v1 & LO4, v2 & LO4, v3 & LO4,
            (v0 >> 4) & LO4, (v1 >> 4) & LO4, (v2 >> 4) & LO4, (v3 >> 4) & LO4)


@njit(boundscheck=False)
def _as_bytes8(t):
    return (_bytes(t[0]), _bytes(t[1]), _bytes(t[2]), _bytes(t[3]),
            _bytes(t[4]), _bytes(t[5]), _bytes(t[6]), _bytes(t[7]))


# -- 32-element blocks: one unit -------------------------------------------------------------

# Q4_0: d@0 qs@2; q - 8
@njit(boundscheck=False)
def _vec_q4_0(w, ob, u):
    return _as_bytes8(_nibble_pairs(w, ob + 2 * R))


@njit(boundscheck=False)
def _sc_q4_0(w, ob, u):
    d = _halves(w, ob)
    return d, d * np.float32(-8)


# Q4_1: d@0 m@2 qs@4; d*q + m
@njit(boundscheck=False)
def _vec_q4_1(w, ob, u):
    return _as_bytes8(_nibble_pairs(w, ob + 4 * R))


@njit(boundscheck=False)
def _sc_q4_1(w, ob, u):
    return _halves(w, ob), _halves(w, ob + 2 * R)


@njit(boundscheck=False)
def _with_fifth_bits(n, qh):
    """Nibbles plus the fifth bits of a packed (reordered) Q5 qh field at bit 4."""
    return (_bytes(n[0] | ((qh << 4) & BIT4)), _bytes(n[1] | ((qh << 3) & BIT4)),
            _bytes(n[2] | ((qh << 2) & BIT4)), _bytes(n[3] | ((qh << 1) & BIT4)),
            _bytes(n[4] | (qh & BIT4)), _bytes(n[5] | ((qh >> 1) & BIT4)),
            _bytes(n[6] | ((qh >> 2) & BIT4)), _bytes(n[7] | ((qh >> 3) & BIT4)))


# Q5_0: d@0 qh@2 qs@6; q - 16
@njit(boundscheck=False)
def _vec_q5_0(w, ob, u):
    return _with_fifth_bits(_nibble_pairs(w, ob + 6 * R), _dwords(w, ob + 2 * R))


@njit(boundscheck=False)
def _sc_q5_0(w, ob, u):
    d = _halves(w, ob)
    return d, d * np.float32(-16)


# Q5_1: d@0 m@2 qh@4 qs@8; d*q + m
@njit(boundscheck=False)
def _vec_q5_1(w, ob, u):
    return _with_fifth_bits(_nibble_pairs(w, ob + 8 * R), _dwords(w, ob + 4 * R))


@njit(boundscheck=False)
def _sc_q5_1(w, ob, u):
    return _halves(w, ob), _halves(w, ob + 2 * R)


# Q8_0: d@0 qs@2 (int8); stored + 128
@njit(boundscheck=False)
def _vec_q8_0(w, ob, u):
    a = ob + 2 * R
    return (_bytes(_dwords(w, a) ^ SIGN), _bytes(_dwords(w, a + 4 * R) ^ SIGN),
            _bytes(_dwords(w, a + 8 * R) ^ SIGN), _bytes(_dwords(w, a + 12 * R) ^ SIGN),
            _bytes(_dwords(w, a + 16 * R) ^ SIGN), _bytes(_dwords(w, a + 20 * R) ^ SIGN),
            _bytes(_dwords(w, a + 24 * R) ^ SIGN), _bytes(_dwords(w, a + 28 * R) ^ SIGN))


@njit(boundscheck=False)
def _sc_q8_0(w, ob, u):
    d = _halves(w, ob)
    return d, d * np.float32(-128)


@njit(boundscheck=False)
def _iq4(n):
    """Nibble indices -> code book values + 128."""
    table = load(IQ4_LEVELS_U8, 0, 16)
    return (lookup16(table, _bytes(n[0])), lookup16(table, _bytes(n[1])),
            lookup16(table, _bytes(n[2])), lookup16(table, _bytes(n[3])),
            lookup16(table, _bytes(n[4])), lookup16(table, _bytes(n[5])),
            lookup16(table, _bytes(n[6])), lookup16(table, _bytes(n[7])))


# IQ4_NL: d@0 qs@2 (indices into the code book)
@njit(boundscheck=False)
def _vec_iq4_nl(w, ob, u):
    return _iq4(_nibble_pairs(w, ob + 2 * R))


_sc_iq4_nl = _sc_q8_0


# -- 256-element super-blocks ------------------------------------------------------------

@njit(boundscheck=False)
def _k_nibbles(w, at, u):
    """Unit u (32 elements) of a 128-byte K-quant nibble field at `at`: the low (u even)
    or high nibbles of bytes 32 * (u // 2) .. + 31."""
    a = at + 32 * R * (u >> 1)
    s = np.uint32(4 * (u & 1))
    return ((_dwords(w, a) >> s) & LO4, (_dwords(w, a + 4 * R) >> s) & LO4,
            (_dwords(w, a + 8 * R) >> s) & LO4, (_dwords(w, a + 12 * R) >> s) & LO4,
            (_dwords(w, a + 16 * R) >> s) & LO4, (_dwords(w, a + 20 * R) >> s) & LO4,
            (_dwords(w, a + 24 * R) >> s) & LO4, (_dwords(w, a + 28 * R) >> s) & LO4)


@njit(boundscheck=False)
def _sc_k4(w, ob, u):
    # Q4_K/Q5_K: d@0 dmin@2 scales@4 (12 bytes): 6-bit scale and offset per unit; bytes
    # 0-3 hold scales 0-3 in their low 6 bits, bytes 4-7 offsets 0-3, bytes 8-11 the
    # low 4 bits of scales (high nibble: offsets) 4-7, whose top 2 bits are the top
    # bits of bytes 0-3 (offsets: 4-7).
    a = _dwords(w, ob + 4 * R)
    b = _dwords(w, ob + 8 * R)
    if u < 4:
        sc = _byte_of(a, u) & np.uint32(63)
        mn = _byte_of(b, u) & np.uint32(63)
    else:
        c = _dwords(w, ob + 12 * R)
        sc = (_byte_of(c, u - 4) & np.uint32(15)) | ((_byte_of(a, u - 4) >> 6) << 4)
        mn = (_byte_of(c, u - 4) >> 4) | ((_byte_of(b, u - 4) >> 6) << 4)
    return bitcast(sc, np.int32), bitcast(mn, np.int32)


@njit(boundscheck=False)
def _d_dmin(w, at):
    """(D, DM) = (d, -dmin), the fp16 pair at `at` (GGUF offset 0 in Q4_K/Q5_K, 80 in Q2_K)."""
    return _halves(w, at), -_halves(w, at + 2 * R)


# Q4_K: qs@16
@njit(boundscheck=False)
def _vec_q4_k(w, ob, u):
    return _as_bytes8(_k_nibbles(w, ob + 16 * R, u))


# Q5_K: qh@16 qs@48; element 32u + l has its fifth bit at bit u of qh[l]
@njit(boundscheck=False)
def _vec_q5_k(w, ob, u):
    n = _k_nibbles(w, ob + 48 * R, u)
    at = ob + 16 * R
    if u < 4:
        s = np.uint32(4 - u)
        return (_bytes(n[0] | ((_dwords(w, at) << s) & BIT4)),
                _bytes(n[1] | ((_dwords(w, at + 4 * R) << s) & BIT4)),
                _bytes(n[2] | ((_dwords(w, at + 8 * R) << s) & BIT4)),
                _bytes(n[3] | ((_dwords(w, at + 12 * R) << s) & BIT4)),
                _bytes(n[4] | ((_dwords(w, at + 16 * R) << s) & BIT4)),
                _bytes(n[5] | ((_dwords(w, at + 20 * R) << s) & BIT4)),
                _bytes(n[6] | ((_dwords(w, at + 24 * R) << s) & BIT4)),
                _bytes(n[7] | ((_dwords(w, at + 28 * R) << s) & BIT4)))
    s = np.uint32(u - 4)
    return (_bytes(n[0] | ((_dwords(w, at) >> s) & BIT4)),
            _bytes(n[1] | ((_dwords(w, at + 4 * R) >> s) & BIT4)),
            _bytes(n[2] | ((_dwords(w, at + 8 * R) >> s) & BIT4)),
            _bytes(n[3] | ((_dwords(w, at + 12 * R) >> s) & BIT4)),
            _bytes(n[4] | ((_dwords(w, at + 16 * R) >> s) & BIT4)),
            _bytes(n[5] | ((_dwords(w, at + 20 * R) >> s) & BIT4)),
            _bytes(n[6] | ((_dwords(w, at + 24 * R) >> s) & BIT4)),
            _bytes(n[7] | ((_dwords(w, at + 28 * R) >> s) & BIT4)))


# IQ4_XS: d@0 scales_h@2 (u16) scales_l@4 qs@8; unit u: 16 bytes at qs + 16u like IQ4_NL
@njit(boundscheck=False)
def _vec_iq4_xs(w, ob, u):
    return _iq4(_nibble_pairs(w, ob + (8 + 16 * u) * R))


@njit(boundscheck=False)
def _sc_iq4_xs(w, ob, u):
    # 6-bit scale - 32: low 4 bits in nibble u%2 of scales_l[u//2], high 2 bits at
    # bits 2u of scales_h
    low = (_byte_of(_dwords(w, ob + 4 * R), u >> 1) >> np.uint32(4 * (u & 1))) & np.uint32(15)
    high = (convert(load_bytes(w, ob + 2 * R, np.uint16, R), np.uint32)
            >> np.uint32(2 * u)) & np.uint32(3)
    sc = bitcast(low | (high << 4), np.int32) - np.int32(32)
    return sc, sc


@njit(boundscheck=False)
def _d_only(w, at):
    """A format's one fp16 scale per super-block, at GGUF offset `at`; no offsets."""
    return _halves(w, at), splat(np.float32(0), R)


# -- 256-element super-blocks with a scale per 16 elements: 16 units of 4 vectors ----------

@njit(boundscheck=False)
def _crumbs(w, at, s):
    """Bits s, s+1 of each byte of 4 consecutive dwords of a field."""
    return ((_dwords(w, at) >> s) & LO2, (_dwords(w, at + 4 * R) >> s) & LO2,
            (_dwords(w, at + 8 * R) >> s) & LO2, (_dwords(w, at + 12 * R) >> s) & LO2)


# Q6_K: ql@0 qh@128 scales@192 (int8 per unit) d@208; q - 32. Unit u lies in chunk
# c = u // 2 = 4h + s of 32 elements, half u % 2 of it: low 4 bits at
# ql[64h + 32(s%2) + l] >> 4(s//2), high 2 bits at qh[32h + l] >> 2s, l = 16 (u%2) + ..
@njit(boundscheck=False)
def _vec_q6_k(w, ob, u):
    c = u >> 1
    h, s = c >> 2, c & 3
    half = 16 * (u & 1)
    lo = ob + (64 * h + 32 * (s & 1) + half) * R
    ls = np.uint32(4 * (s >> 1))
    hi = _crumbs(w, ob + (128 + 32 * h + half) * R, np.uint32(2 * s))
    return (_bytes(((_dwords(w, lo) >> ls) & LO4) | (hi[0] << 4)),
            _bytes(((_dwords(w, lo + 4 * R) >> ls) & LO4) | (hi[1] << 4)),
            _bytes(((_dwords(w, lo + 8 * R) >> ls) & LO4) | (hi[2] << 4)),
            _bytes(((_dwords(w, lo + 12 * R) >> ls) & LO4) | (hi[3] << 4)))


@njit(boundscheck=False)
def _sc_q6_k(w, ob, u):
    v = bitcast(_dwords(w, ob + (192 + 4 * (u >> 2)) * R), np.int32)
    sc = (v << np.int32(24 - 8 * (u & 3))) >> np.int32(24)
    return sc, sc


@njit(boundscheck=False)
def _su_q6_k(w, ob):
    return _d_only(w, ob + 208 * R)


# Q3_K: hmask@0 qs@32 scales@96 (12 bytes) d@108; q - 4 + 4 * (hmask bit). Chunk
# c = u // 2 = 4h + s: low 2 bits (qs[32h + l] >> 2s) & 3, high bit: bit c of hmask[l].
@njit(boundscheck=False)
def _vec_q3_k(w, ob, u):
    c = u >> 1
    h, s = c >> 2, c & 3
    half = 16 * (u & 1)
    lo = _crumbs(w, ob + (32 + 32 * h + half) * R, np.uint32(2 * s))
    at = ob + half * R
    if c < 2:
        sh = np.uint32(2 - c)
        return (_bytes(lo[0] | ((_dwords(w, at) << sh) & BIT2)),
                _bytes(lo[1] | ((_dwords(w, at + 4 * R) << sh) & BIT2)),
                _bytes(lo[2] | ((_dwords(w, at + 8 * R) << sh) & BIT2)),
                _bytes(lo[3] | ((_dwords(w, at + 12 * R) << sh) & BIT2)))
    sh = np.uint32(c - 2)
    return (_bytes(lo[0] | ((_dwords(w, at) >> sh) & BIT2)),
            _bytes(lo[1] | ((_dwords(w, at + 4 * R) >> sh) & BIT2)),
            _bytes(lo[2] | ((_dwords(w, at + 8 * R) >> sh) & BIT2)),
            _bytes(lo[3] | ((_dwords(w, at + 12 * R) >> sh) & BIT2)))


@njit(boundscheck=False)
def _sc_q3_k(w, ob, u):
    # 16 signed 6-bit scales (stored + 32): low 4 bits in the low (scales 0-7) or high
    # nibble (8-15) of bytes 0-7; high 2 bits of scale i at bits 2(i//4) of byte 8 + i%4.
    i = u & 7
    low = (_byte_of(_dwords(w, ob + (96 + 4 * (i >> 2)) * R), i & 3)
           >> np.uint32(4 * (u >> 3))) & np.uint32(15)
    high = (_byte_of(_dwords(w, ob + 104 * R), u & 3) >> np.uint32(2 * (u >> 2))) & np.uint32(3)
    sc = bitcast(low | (high << 4), np.int32) - np.int32(32)
    return sc, sc


@njit(boundscheck=False)
def _su_q3_k(w, ob):
    return _d_only(w, ob + 108 * R)


# Q2_K: scales@0 (a byte per unit: low nibble scale, high nibble offset) qs@16 d@80
# dmin@82. Chunk c = u // 2 = 4h + s: element l is (qs[32h + l] >> 2s) & 3.
@njit(boundscheck=False)
def _vec_q2_k(w, ob, u):
    c = u >> 1
    h, s = c >> 2, c & 3
    q = _crumbs(w, ob + (16 + 32 * h + 16 * (u & 1)) * R, np.uint32(2 * s))
    return (_bytes(q[0]), _bytes(q[1]), _bytes(q[2]), _bytes(q[3]))


@njit(boundscheck=False)
def _sc_q2_k(w, ob, u):
    b = _byte_of(_dwords(w, ob + 4 * (u >> 2) * R), u & 3)
    return bitcast(b & np.uint32(15), np.int32), bitcast(b >> 4, np.int32)


@njit(boundscheck=False)
def _su_q2_k(w, ob):
    return _d_dmin(w, ob + 80 * R)


class Format:
    """What the kernel generator needs to know of a packed format: elements per unit,
    units per block, whether q < 128, the decoders (`supers` for the super-blocks, whose
    units' scales are integers; None for 32-element blocks), how many consecutive units
    make the decoders' shifts and offsets constants (unit u as unroll * p + j, j
    constant), and the zero point z when the weights are S * (q - z) (the kernels then
    subtract z * sum(x) in integers; M is not used), else 0."""

    def __init__(self, unit, units, small, vectors, scales, unroll, zero=0, supers=None):
        self.unit, self.units, self.small = unit, units, small
        self.vectors, self.scales, self.unroll, self.zero = vectors, scales, unroll, zero
        self.supers = supers


FORMATS = {
    F.Q4_0: Format(32, 1, True, _vec_q4_0, _sc_q4_0, 1, zero=8),
    F.Q4_1: Format(32, 1, True, _vec_q4_1, _sc_q4_1, 1),
    F.Q5_0: Format(32, 1, True, _vec_q5_0, _sc_q5_0, 1, zero=16),
    F.Q5_1: Format(32, 1, True, _vec_q5_1, _sc_q5_1, 1),
    F.Q8_0: Format(32, 1, False, _vec_q8_0, _sc_q8_0, 1, zero=128),
    F.IQ4_NL: Format(32, 1, False, _vec_iq4_nl, _sc_iq4_nl, 1, zero=128),
    # low/high nibbles of a pair
    F.Q4_K: Format(32, 8, True, _vec_q4_k, _sc_k4, 2, supers=_d_dmin),
    F.Q5_K: Format(32, 8, True, _vec_q5_k, _sc_k4, 2, supers=_d_dmin),
    F.IQ4_XS: Format(32, 8, False, _vec_iq4_xs, _sc_iq4_xs, 2, zero=128, supers=_d_only),
    # 128 elements: shift 2s
    F.Q6_K: Format(16, 16, True, _vec_q6_k, _sc_q6_k, 8, zero=32, supers=_su_q6_k),
    F.Q3_K: Format(16, 16, True, _vec_q3_k, _sc_q3_k, 8, zero=4, supers=_su_q3_k),
    F.Q2_K: Format(16, 16, True, _vec_q2_k, _sc_q2_k, 8, supers=_su_q2_k),
}
