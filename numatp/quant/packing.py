"""Quantized matrices in row groups: the layout the integer kernels read.

A GGUF matrix stores each row's blocks one after another. The kernels instead compute R
rows at once (R = isa.group_rows(): 16 with 512-bit vectors, 8 otherwise), one row per
int32 lane, so that a dot-product instruction multiplies 4 weight bytes of each of R
rows with the same 4 activation bytes (broadcast) and the sums land in one register per
token, with no horizontal additions. For that the R rows' bytes are interleaved:

  the matrix is cut into groups of R rows (the last one padded with zero rows), and a
  group into its blocks; block b of a group holds, field by field in the GGUF block's
  own order, either R 2-byte values (an fp16 scale of each row) or, for a field of 4k
  bytes, its dword 0 of each of the R rows, then dword 1 of each row, and so on.

Every field of every supported block format is 2 bytes or a multiple of 4, so a field
at byte offset o of a GGUF block sits at R * o in a packed block, whose size is R times
the block's: packing moves bytes, it adds none. Zero rows decode to zero weights (their
fp16 scales are 0).

One format also gets its bits reordered (Q5_0/Q5_1's fifth bits, see _Q5_HIGH_BITS):
whatever makes the kernel's decoding a shift and a mask is done here, once, at load.
"""
import numpy as np

from numatp.quant import formats as F

# (offset, size) of each field of a block, in order; from the GGML format definitions.
FIELDS = {
    F.Q4_0: ((0, 2), (2, 16)),
    F.Q4_1: ((0, 2), (2, 2), (4, 16)),
    F.Q5_0: ((0, 2), (2, 4), (6, 16)),
    F.Q5_1: ((0, 2), (2, 2), (4, 4), (8, 16)),
    F.Q8_0: ((0, 2), (2, 32)),
    F.IQ4_NL: ((0, 2), (2, 16)),
    F.Q2_K: ((0, 16), (16, 64), (80, 2), (82, 2)),
    F.Q3_K: ((0, 32), (32, 64), (96, 12), (108, 2)),
    F.Q4_K: ((0, 2), (2, 2), (4, 12), (16, 128)),
    F.Q5_K: ((0, 2), (2, 2), (4, 12), (16, 32), (48, 128)),
    F.Q6_K: ((0, 128), (128, 64), (192, 16), (208, 2)),
    F.IQ4_XS: ((0, 2), (2, 2), (4, 4), (8, 128)),
}
PACKED = tuple(FIELDS)


def _q5_high_bit_order():
    """Where Q5_0/Q5_1's fifth bit of element e goes in the packed 32-bit qh field.

    The kernels decode 4 elements per row at a time: elements 4k..4k+3 (low nibbles of
    dword k) and 16+4k..16+4k+3 (high nibbles), k < 4, and need each one's fifth bit at
    bit 4 of its byte. With element 4k+b's bit at 8b + k and element 16+4k+b's at
    8b + 4 + k, that is (qh << (4 - k)) & 0x10101010 and (qh >> k) & 0x10101010."""
    order = np.empty(32, np.int64)
    for e in range(32):
        k, b = (e % 16) // 4, e % 4
        order[e] = 8 * b + k + (4 if e >= 16 else 0)
    return order


_Q5_HIGH_BITS = _q5_high_bit_order()
_QH_FIELD = {F.Q5_0: 2, F.Q5_1: 4}   # byte offset of the 32-bit qh field


def _permute_bits(words, order):
    """uint32 words with bit e moved to bit order[e]."""
    bits = (words[..., None] >> np.arange(32, dtype=np.uint32)) & 1
    out = np.zeros_like(words)
    for e in range(32):
        out |= bits[..., e] << np.uint32(order[e])
    return out


def packed_nbytes(qtype, rows, cols, group=None):
    """Bytes of a packed rows x cols matrix: whole row groups of whole blocks."""
    from numatp.quant.isa import group_rows
    group = group or group_rows()
    groups = -(-rows // group)
    return groups * group * F.row_bytes(qtype, cols)


def pack(qtype, raw, group=None, out=None):
    """raw: uint8 (rows, row_bytes) in GGUF layout -> 1-D uint8 in row groups of `group`
    rows (default: what the compiled kernels use), written to `out` if given. Works
    through the matrix a few MB at a time, so packing a large tensor needs little memory
    beyond its result."""
    from numatp.quant.isa import group_rows
    group = group or group_rows()
    rows, row_bytes = raw.shape
    groups = -(-rows // group)
    if out is None:
        out = np.empty(groups * group * row_bytes, np.uint8)
    step = max(1, _CHUNK_BYTES // max(1, group * row_bytes))
    for g0 in range(0, groups, step):
        g1 = min(groups, g0 + step)
        dst = out[g0 * group * row_bytes:g1 * group * row_bytes]
        _pack_groups(qtype, raw[g0 * group:g1 * group], group, g1 - g0, dst)
    return out


_CHUNK_BYTES = 4 << 20


def _pack_groups(qtype, raw, group, groups, dst):
    bb = F.block_bytes(qtype)
    rows, row_bytes = raw.shape
    nblk = row_bytes // bb
    blocks = np.zeros((groups * group, nblk, bb), np.uint8)
    blocks[:rows] = raw.reshape(rows, nblk, bb)
    if qtype in _QH_FIELD:
        at = _QH_FIELD[qtype]
        qh = np.ascontiguousarray(blocks[:, :, at:at + 4]).view("<u4")[..., 0]
        blocks[:, :, at:at + 4] = _permute_bits(qh, _Q5_HIGH_BITS)[..., None].view(np.uint8)
    blocks = blocks.reshape(groups, group, nblk, bb)
    out = dst.reshape(groups, nblk, group * bb)
    for off, size in FIELDS[qtype]:
        field = blocks[:, :, :, off:off + size]
        if size == 2:
            moved = field.transpose(0, 2, 1, 3)                 # (G, nblk, R, 2)
        else:
            moved = field.reshape(groups, group, nblk, size // 4, 4).transpose(0, 2, 3, 1, 4)
        out[:, :, group * off:group * (off + size)] = moved.reshape(groups, nblk, group * size)


def unpack(qtype, packed, rows, cols, group=None):
    """The inverse of pack (for tests): uint8 (rows, row_bytes) in GGUF layout."""
    from numatp.quant.isa import group_rows
    group = group or group_rows()
    bb = F.block_bytes(qtype)
    nblk = cols // F.block_size(qtype)
    groups = -(-rows // group)
    src = packed.reshape(groups, nblk, group * bb)
    blocks = np.empty((groups, group, nblk, bb), np.uint8)
    for off, size in FIELDS[qtype]:
        part = src[:, :, group * off:group * (off + size)]
        if size == 2:
            blocks[:, :, :, off:off + 2] = part.reshape(groups, nblk, group, 2).transpose(0, 2, 1, 3)
        else:
            blocks[:, :, :, off:off + size] = part.reshape(
                groups, nblk, size // 4, group, 4).transpose(0, 3, 1, 2, 4).reshape(
                groups, group, nblk, size)
    blocks = blocks.reshape(groups * group, nblk, bb)
    if qtype in _QH_FIELD:
        at = _QH_FIELD[qtype]
        qh = np.ascontiguousarray(blocks[:, :, at:at + 4]).view("<u4")[..., 0]
        inverse = np.argsort(_Q5_HIGH_BITS)
        blocks[:, :, at:at + 4] = _permute_bits(qh, inverse)[..., None].view(np.uint8)
    return blocks[:rows].reshape(rows, nblk * bb)
