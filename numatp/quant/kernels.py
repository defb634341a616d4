"""Matrix kernels, jitted with Numba.

Public entry points (all @njit, callable from other jitted code and from Python):

  linear(kernels, qtype, w, rows, cols, X, Y)
      Y[t, :] = W @ X[t, :] for every t; X is (T, cols), Y is (T, rows), both float32
      C-contiguous. w is the matrix as `prepare` returns it.
  linear_units(kernels, qtype, w, rows, cols, units, X, Yu)
      a row-split product as reduce units' partial sums, for the reduce to add up
      (numatp/parallel/plan.py says why).
  linear3(...), glu(...)
      three products of one input (Q, K, V), and a SwiGLU's gate and up with its silu,
      each in one parallel region.
  dequantize_rows(kernels, qtype, w, cols, row_ids, out)
      out[k, :] = row row_ids[k] of a matrix in GGUF layout, as float32 (embedding
      lookup).
and, in NumPy, prepare(qtype, raw) -> w: a GGUF-layout matrix (rows, row_bytes) as
linear reads it: quantized formats in row groups (packing.py), float formats unchanged.

`kernels` is a KernelSet (kernel_set.py): the types this compilation handles; qtype must
be one of them (ValueError otherwise).

Quantized formats. The activations are rounded to int8 (activations.py) and every
row-group tile multiplies R weight rows (one per int32 lane) with up to TOKENS tokens:
per unit of 32 or 16 elements, the unit's weight bytes are decoded once into registers
(rowgroups.py), then for each token one chain of integer dot products, broadcasting 4
activation bytes at a time, gives R integer sums, which are scaled into R float
accumulators. The 256-element super-blocks (Q2_K .. Q6_K, IQ4_XS) have integer unit
scales: their units' sums are multiplied by them and added up as integers, and scaled
into floats once per block, with one activation scale per 256 values (activations.py),
as llama.cpp does. No horizontal sums: a tile's result is one vector store per token.
The tile's code is generated per format and token count (_tile_source), since it is the
same few lines unrolled over the units of a block and the tokens of a tile.

With AMX (amx.py; Xeons since Sapphire Rapids), a prompt's tokens in whole groups of 16
go through amx_span instead (_amx_span_source, _amx_super_source): tile instructions
give the same integer sums, scaled by the same float operations in the same order, so
the results are the same bits (tests/test_amx.py); on the 16-core device it made
prompt processing 1.16-1.42x faster. NUMATP_AMX=0 turns it off (numatp/_env.py).

Float formats (F32, F16, BF16) multiply the float32 activations as they are, row by row
(floats.py).

Threads split the rows (row groups or runs of rows, shared out as schedule.py says), so
each output element is summed by one thread in a fixed order: results depend neither on
the thread count nor on which thread took which rows.

Arrays: w is a writable, C-contiguous uint8 array; X, Y, out are C-contiguous float32.
Other layouts still work but make Numba compile the kernels again for that signature.
Call these from serial code: they start their own parallel region. team.py runs the
same items (linear3_item, glu_stream_item, float_chunk, the row groups) as jobs of a
thread team instead.
"""
from numatp import _env  # noqa: F401  (before numba)

import inspect
import math

import numpy as np
from numba import njit, prange
from numba.extending import overload

from numatp import _env
from numatp.quant import amx, block32, floats, formats, kquants, packing
from numatp.quant.activations import GROUP, SUPER_GROUP, empty_activations, quantize_row
from numatp.quant.block32 import dequant32
from numatp.quant.floats import dequant_float, dot_float, dot_float_x4
from numatp.quant.kernel_set import KernelSet, KernelSetType  # noqa: F401 (re-exported)
from numatp.quant.kquants import dequant_k
from numatp.quant.rowgroups import FORMATS, R
from numatp.quant.schedule import fetch_add, split, take, threads
from numatp.quant import rowgroups
from numatp.quant.isa import dot_isa, target_features
from numatp.quant.simd import (PREFETCH_AHEAD, CACHE_LINE, bcast4, bitcast, convert, dot4,
                               fma, load, prefetch, splat, stack_empty, store)

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

# Tokens per tile of the quantized batched path, and independent chains of dot products
# per token and unit. vpdpbusd waits ~5 cycles for its accumulator, so a tile needs some 8
# chains in flight to issue one per cycle: 8 tokens x 2 chains measured 26-30% faster than
# 4 x 1 on a Xeon (Emerald Rapids, one thread, weights in L2: Q4_0 121 -> 153, Q8_0
# 122 -> 158, Q4_K 106 -> 133 GMAC/s; Q6_K 93 -> 91). The pmaddubsw forms add their
# products in a 1-cycle vpaddd: one chain (a second was slower on AVX2).
TOKENS = 8
_CHAINS = 2 if dot_isa(target_features()) in ("vnni512", "avxvnni") else 1
_FLOAT_TOKENS = 4   # rows of X per pass of the float batched path
# Tokens per AMX tile (amx.py), 0 where the kernels do not use AMX: its tiles need the
# 16-row groups of the 512-bit kernels.
AMX_TOKENS = amx.ROWS if _env.AMX and R == amx.ROW_BYTES // 4 else 0
AMX_REGS = ((0, 1), (3, 4))   # two sets of tile registers: sums, activations
AMX_B = 2                     # the tile register of a unit's weights
# super-blocks (_amx_super_source): sums of the low, high and offset planes, activations,
# the three planes' weights
AMX_SUPER_REGS = (0, 1, 2, 3, 4, 5, 6)


# -- packed tiles, generated per format and token count ----------------------------------------

def _tile_source(q, tokens, units=False):
    """Source of tile(): R rows x `tokens` tokens of format q, over all blocks; with
    `units`, of tile_units(): one sum per reduce unit (cuts)."""
    fmt = FORMATS[q]
    per16 = fmt.unit == 16
    n_vec = fmt.unit // 4
    block_elems = formats.block_size(q)
    sup = fmt.supers is not None   # integer unit scales, summed per super-block
    offsets = not fmt.zero         # weights S * q + M: sums of M * sum(x) in f
    out = "Y[k * ystride + t{}]" if units else "Y[t{}]"
    L = [f"def {_tile_name(q, tokens, units)}(qtype, tokens, w, go, "
         f"{'cuts' if units else 'nblk'}, e0, acts, t0, T, Y, {'ystride, ' if units else ''}"
         "r0, nvalid):",
         "    XQ, XD, XS32, XS16, XI32, XI16 = acts",
         "    zi = splat(np.int32(0), R)",
         "    zf = splat(np.float32(0), R)"]
    for t in range(tokens):
        L += [f"    t{t} = min(t0 + {t}, T - 1)",
              f"    x{t}, d{t} = XQ[t{t}], XD[t{t}]",
              f"    s{t} = {'XI16' if per16 else 'XI32'}[t{t}]" if fmt.zero or sup else
              f"    s{t} = {'XS16' if per16 else 'XS32'}[t{t}]",
              f"    a{t} = zf", f"    f{t} = zf"]

    def store(ind, k_value=None):
        return [f"{ind}_store_rows({out.format(t)}, r0, nvalid, "
                f"{k_value or (f'a{t}' if fmt.zero else f'a{t} + f{t}')})" for t in range(tokens)]

    if units:
        # Units k run one after another through the row's blocks: at the end of one, its
        # sums go out and the next starts from zero, as if each were a span of its own
        # (the same operations in the same order). Empty units store zeros. (A loop over
        # units around a loop over their blocks measured 10% slower, in the one-unit
        # case too; so the plain products keep tile().)
        L += ["    n_units = cuts.shape[0] - 1", "    nblk = cuts[n_units]", "    k = 0",
              "    while k < n_units and cuts[k + 1] == cuts[k]:"]
        L += store("        ", "zf") + ["        k += 1"]
    L += ["    for b in range(nblk):",
          f"        ob = go + b * {R * formats.block_bytes(q)}",
          f"        e = e0 + b * {block_elems}"]
    if sup:
        L += [f"        ia{t} = zi" for t in range(tokens)]
        L += [f"        im{t} = zi" for t in range(tokens) if offsets]
    # A 256-element block's units run in a loop of `fmt.unroll` units at a time: unrolled
    # in full, the kernels took minutes to compile; one unit at a time, decoding made
    # the prompt path 20-30% slower. With the units a loop step covers, the decoders'
    # shifts and offsets are constants again (e.g. Q4_K's unit pair shares its bytes).
    step = fmt.unroll
    if fmt.units > step:
        L.append(f"        for p in range({fmt.units // step}):")
        ind = "            "
    else:
        ind = "        "
    if tokens < TOKENS:  # a decode's tiles stream the weights: ask for them ahead of use
        L += _prefetches(ind, R * formats.block_bytes(q), fmt.units // step)
    for j in range(step):
        unit = f"p * {step} + {j}" if fmt.units > step else f"{j}"
        L += [f"{ind}u = {unit}",
              f"{ind}S, M = scales(w, ob, u)", f"{ind}v = vectors(w, ob, u)",
              f"{ind}eu = e + u * {fmt.unit}"]
        for t in range(tokens):
            for k in range(n_vec):
                c = k % _CHAINS
                if k >= _CHAINS:
                    src = f"i{c}"
                elif k == 0 and fmt.zero:  # weights q - zero: start at -zero * sum(x)
                    src = f"splat(np.int32(s{t}[eu // {fmt.unit}] * {-fmt.zero}), R)"
                else:
                    src = "zi"
                L.append(f"{ind}i{c} = dot4({src}, v[{k}], bcast4(x{t}, eu + {4 * k}, R), "
                         f"{fmt.small})")
            isum = " + ".join(f"i{c}" for c in range(_CHAINS))
            if sup:
                L.append(f"{ind}ia{t} = ia{t} + ({isum}) * S")
                if offsets:
                    L.append(f"{ind}im{t} = im{t} + M * s{t}[eu // {fmt.unit}]")
            else:
                L.append(f"{ind}a{t} = fma(convert({isum}, np.float32), S * d{t}[eu >> 5], a{t})")
                if offsets:
                    L.append(f"{ind}f{t} = fma(M, splat(s{t}[eu // {fmt.unit}], R), f{t})")
    if sup:   # the super-block's integer sums, scaled once (as _amx_super_source does)
        L.append("        D, DM = supers(w, ob)")
        for t in range(tokens):
            L.append(f"        a{t} = fma(convert(ia{t}, np.float32), D * d{t}[e >> 8], a{t})")
            if offsets:
                L.append(f"        f{t} = fma(convert(im{t}, np.float32), DM * d{t}[e >> 8], f{t})")
    if not units:
        return "\n".join(L + store("    "))
    L.append("        if b + 1 == cuts[k + 1]:")
    L += store("            ")
    L += [f"            {acc}{t} = zf" for t in range(tokens) for acc in "af"]
    L += ["            k += 1", "            while k < n_units and cuts[k + 1] == cuts[k]:"]
    L += store("                ", "zf") + ["                k += 1"]
    return "\n".join(L)


def _prefetches(ind, block_bytes, steps):
    """prefetch() lines for a row group's block of `block_bytes`, PREFETCH_AHEAD bytes
    ahead of the tile, spread over the `steps` steps (p) of the block's unit loop. A
    K-quant row group's block is 36 cache lines or more: asked for all at once at the
    block's start, they held Q4_K's matvec on 2 threads to 33-35 GB/s, spread over the
    steps it reached 40-56 GB/s (2-core development host, 268 MB matrix), and a 1.1B
    Q4_K_M decoded 1.15-1.36x faster."""
    lines = -(-block_bytes // CACHE_LINE)
    per = -(-lines // steps)
    if steps == 1:
        return [f"{ind}prefetch(w, ob + {PREFETCH_AHEAD + k * CACHE_LINE})"
                for k in range(lines)]
    return [f"{ind}prefetch(w, ob + p * {per * CACHE_LINE} + {PREFETCH_AHEAD + k * CACHE_LINE})"
            for k in range(per)]


def _amx_span_source(q):
    """Source of amx_span(): R rows x the first n tokens (n a multiple of AMX_TOKENS) of
    a 32-element block format q (super-blocks: _amx_super_source), over all blocks,
    with the same integer sums as _tile_source's and the same float operations on them,
    in the same order.

    Units run outside, tokens inside: a unit's weights are decoded into one B tile once
    for all the tokens, and each 16 tokens' activations are an A tile; their product is
    stored and scaled into float accumulators that stay in L1. Tile registers are not
    renamed, so consecutive token groups use two sets of A and C registers (and of
    scratch): one group's product runs while the other's sums are being scaled."""
    fmt = FORMATS[q]
    if fmt.supers is not None:
        return _amx_super_source(q)
    g = AMX_TOKENS
    block_elems = formats.block_size(q)
    block_bytes = R * formats.block_bytes(q)
    per = "XS16" if fmt.unit == 16 else "XS32"   # sums of the activations, for offsets
    L = [f"def {_tile_name(q, 'amx')}(qtype, w, go, nblk, e0, acts, P, n, Y, r0, nvalid):",
         "    XQ, XD, XS32, XS16, XI32, XI16 = acts",
         f"    B = stack_empty({R * fmt.unit}, np.uint8)",
         f"    C0 = stack_empty({g * R}, np.int32)",
         f"    C1 = stack_empty({g * R}, np.int32)",
         f"    acc = np.zeros(n * R, np.float32)",
         f"    off = np.zeros(n * R, np.float32)" if not fmt.zero else "",
         f"    groups = n // {g}",
         "    tile_config(CONFIG)"]

    def group(ind, first, k):
        """Lines for the token group starting at token `first`, with register set k."""
        c, a = AMX_REGS[k]
        # P's layout (_quantize_tiles): GROUP columns at a time, each token's in turn
        body = [f"{ind}tile_load({a}, P, (eu // {GROUP} * n + {first}) * {GROUP} + eu % {GROUP}, "
                f"{GROUP})",
                f"{ind}tile_zero({c})",
                f"{ind}tile_dot_{'ss' if fmt.zero else 'su'}({c}, {a}, {AMX_B})",
                f"{ind}tile_store({c}, C{k}, 0, {4 * R})",
                f"{ind}for i in range({g}):",
                f"{ind}    t = {first} + i",
                f"{ind}    isum = load(C{k}, i * R, R)"]
        body.append(f"{ind}    store(acc, t * R, fma(convert(isum, np.float32), "
                    f"S * XD[t, eu >> 5], load(acc, t * R, R)))")
        if not fmt.zero:
            body.append(f"{ind}    store(off, t * R, fma(M, splat({per}[t, eu // {fmt.unit}], R), "
                        f"load(off, t * R, R)))")
        return body

    def unit_body(ind, u):
        body = [f"{ind}u = {u}",
                f"{ind}S, M = scales(w, ob, u)", f"{ind}v = vectors(w, ob, u)",
                f"{ind}eu = e + u * {fmt.unit}"]
        # q - zero as signed bytes (mod 256), for tdpbssd: the same integer sums as the
        # vector tiles' sum of q x minus zero x sum(x)
        body += [f"{ind}store(B, {4 * R * i}, v[{i}]{f' - np.uint8({fmt.zero})' if fmt.zero else ''})"
                 for i in range(fmt.unit // 4)]
        body += [f"{ind}tile_load({AMX_B}, B, 0, {4 * R})",
                 f"{ind}for h in range(0, groups - 1, 2):"]
        body += group(ind + "    ", f"h * {g}", 0) + group(ind + "    ", f"h * {g} + {g}", 1)
        body.append(f"{ind}if groups % 2:")
        body += group(ind + "    ", f"(groups - 1) * {g}", 0)
        return body

    L += ["    for b in range(nblk):",
          f"        ob = go + b * {block_bytes}",
          f"        e = e0 + b * {block_elems}"]
    step = fmt.unroll
    if fmt.units > step:
        L.append(f"        for p in range({fmt.units // step}):")
        for j in range(step):
            L += unit_body("            ", f"p * {step} + {j}")
    else:
        for j in range(step):
            L += unit_body("        ", f"{j}")
    L += ["    tile_release()",
          "    for t in range(n):",
          "        _store_rows(Y[t], r0, nvalid, load(acc, t * R, R)" +
          (")" if fmt.zero else " + load(off, t * R, R))")]
    return "\n".join(line for line in L if line)


def _amx_super_source(q):
    """Source of amx_span() for a super-block format q: the integer sums of
    _tile_source's, then the same float operations on them, in the same order.

    Applying each unit's integer scale to its 16 tokens' sums took vector work after
    every tile product (and a unit of 16 or 32 elements fills a quarter or half of a
    tile's 64 bytes). Instead the scale goes into the weights: a unit's q - z times its
    scale S fits 13 signed bits, so it is split into two signed-byte planes, low 7 bits
    and the rest (p = 128 hi + lo), each a tile of 64 elements (2 or 4 units); with a
    third plane of each unit's offset M for the offset formats, three tile products per
    64 elements sum a whole block's Σ S (q - z) x, Σ M sum(x) in the tile registers,
    which go out to be scaled once per block and 16 tokens. The planes are made once
    per block for all the tokens; token groups run outside, the block's four 64-element
    slabs inside."""
    fmt = FORMATS[q]
    g = AMX_TOKENS
    offsets = not fmt.zero
    n_vec = fmt.unit // 4
    plane = R * formats.block_size(q)    # bytes of a block's plane: 4R per 4 elements
    slabs = formats.block_size(q) // amx.ROW_BYTES
    slab = plane // slabs
    cl, ch, cm, a, bl, bh, bm = AMX_SUPER_REGS
    L = [f"def {_tile_name(q, 'amx')}(qtype, w, go, nblk, e0, acts, P, n, Y, r0, nvalid):",
         "    XQ, XD, XS32, XS16, XI32, XI16 = acts",
         f"    BL = stack_empty({plane}, np.uint8)",
         f"    BH = stack_empty({plane}, np.uint8)",
         f"    BM = stack_empty({plane}, np.uint8)" if offsets else "",
         f"    CL = stack_empty({g * R}, np.int32)",
         f"    CH = stack_empty({g * R}, np.int32)",
         f"    CM = stack_empty({g * R}, np.int32)" if offsets else "",
         "    acc = np.zeros(n * R, np.float32)",
         "    off = np.zeros(n * R, np.float32)" if offsets else "",
         f"    groups = n // {g}",
         "    tile_config(CONFIG)",
         "    for b in range(nblk):",
         f"        ob = go + b * {R * formats.block_bytes(q)}",
         f"        e = e0 + b * {formats.block_size(q)}"]
    step = fmt.unroll
    L.append(f"        for p in range({fmt.units // step}):")
    for j in range(step):
        L += [f"            u = p * {step} + {j}",
              "            S, M = scales(w, ob, u)", "            v = vectors(w, ob, u)",
              "            S16 = _scale_pairs(S)"]
        if offsets:
            L.append("            mb = bitcast(M * np.int32(0x01010101), np.uint8)")
        for i in range(n_vec):
            at = f"(u * {n_vec} + {i}) * {4 * R}"
            L += [f"            lo, hi = _scaled_planes(v[{i}]"
                  f"{f' - np.uint8({fmt.zero})' if fmt.zero else ''}, S16)",
                  f"            store(BL, {at}, lo)", f"            store(BH, {at}, hi)"]
            if offsets:
                L.append(f"            store(BM, {at}, mb)")
    L += ["        D, DM = supers(w, ob)",
          "        for h in range(groups):",
          f"            first = h * {g}",
          f"            tile_zero({cl})", f"            tile_zero({ch})"]
    if offsets:
        L.append(f"            tile_zero({cm})")
    # P's layout (_quantize_tiles): 64 columns at a time, each token's in turn
    L += [f"            for s in range({slabs}):",
          f"                tile_load({a}, P, ((e // {amx.ROW_BYTES} + s) * n + first) * "
          f"{amx.ROW_BYTES}, {amx.ROW_BYTES})",
          f"                tile_load({bl}, BL, s * {slab}, {4 * R})",
          f"                tile_load({bh}, BH, s * {slab}, {4 * R})",
          f"                tile_dot_ss({cl}, {a}, {bl})",
          f"                tile_dot_ss({ch}, {a}, {bh})"]
    if offsets:
        L += [f"                tile_load({bm}, BM, s * {slab}, {4 * R})",
              f"                tile_dot_ss({cm}, {a}, {bm})"]
    L += [f"            tile_store({cl}, CL, 0, {4 * R})",
          f"            tile_store({ch}, CH, 0, {4 * R})"]
    if offsets:
        L.append(f"            tile_store({cm}, CM, 0, {4 * R})")
    L += [f"            for i in range({g}):",
          "                t = first + i",
          "                xd = XD[t, e >> 8]",
          "                isum = load(CL, i * R, R) + (load(CH, i * R, R) << 7)",
          "                store(acc, t * R, fma(convert(isum, np.float32), D * xd, "
          "load(acc, t * R, R)))"]
    if offsets:
        L.append("                store(off, t * R, fma(convert(load(CM, i * R, R), np.float32), "
                 "DM * xd, load(off, t * R, R)))")
    L += ["    tile_release()",
          "    for t in range(n):",
          "        _store_rows(Y[t], r0, nvalid, load(acc, t * R, R)" +
          (" + load(off, t * R, R))" if offsets else ")")]
    return "\n".join(line for line in L if line)


@njit(boundscheck=False)
def _scale_pairs(S):
    """int32 lanes (|S| < 2^15) -> int16 lanes, each lane's S in both of its halves."""
    return bitcast((S & np.int32(0xFFFF)) | (S << 16), np.int16)


@njit(boundscheck=False)
def _scaled_planes(v, S16):
    """Bytes v (signed; lane r's 4 bytes belong to row r) times their row's scale (S16:
    _scale_pairs), as two byte planes: low 7 bits, and the rest (arithmetic shift), so
    that v * S = 128 hi + lo with both in signed-byte range."""
    x = bitcast(v, np.int16)
    even = ((x << 8) >> 8) * S16
    odd = (x >> 8) * S16
    low = np.int16(127)
    lo = (even & low) | ((odd & low) << 8)
    hi = ((even >> 7) & np.int16(0xFF)) | ((odd >> 7) << 8)
    return bitcast(lo, np.uint8), bitcast(hi, np.uint8)


def _tile_name(q, tokens, units=False):
    """Generated functions get names of their own: Numba's symbol for a function is its
    name, its argument types and a per-process counter, so two generated functions of
    one name and signature (the one-token and TOKENS-token tiles, say) could get the
    same symbol in different processes, and a step compiled in one process against a
    kernel loaded from another's cache would call the wrong one."""
    return f"tile_{formats.type_name(q)}_x{tokens}{'_units' if units else ''}"


def tile(qtype, tokens, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid):
    """Y[t, r0 + r] = row r of the row group at byte `go` (nblk packed blocks) dotted with
    token t's activations from element e0 on, for r < nvalid and t in t0 .. t0 + tokens - 1
    (clamped to T - 1: a repeated token stores the same value twice). qtype and tokens
    are literal ints."""


def _compile_tile(qtype, tokens, units):
    q = getattr(qtype, "literal_value", None)
    n = getattr(tokens, "literal_value", None)
    if q not in FORMATS or not isinstance(n, int):
        return None
    fmt = FORMATS[q]
    namespace = {"np": np, "R": R, "splat": splat, "dot4": dot4, "bcast4": bcast4,
                 "convert": convert, "fma": fma, "prefetch": prefetch,
                 "scales": fmt.scales, "vectors": fmt.vectors, "supers": fmt.supers,
                 "_store_rows": _store_rows}
    exec(_tile_source(q, n, units), namespace)
    return namespace[_tile_name(q, n, units)]


@overload(tile, prefer_literal=True)
def _tile_ov(qtype, tokens, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid):
    return _compile_tile(qtype, tokens, False)


def tile_units(qtype, tokens, w, go, cuts, e0, acts, t0, T, Y, ystride, r0, nvalid):
    """tile() per reduce unit: Y[k * ystride + t, r0 + r] is unit k's share (blocks
    cuts[k] to cuts[k + 1] of the row group's cuts[-1]) of what tile() computes, summed
    alone, as tile() over those blocks alone would."""


@overload(tile_units, prefer_literal=True)
def _tile_units_ov(qtype, tokens, w, go, cuts, e0, acts, t0, T, Y, ystride, r0, nvalid):
    return _compile_tile(qtype, tokens, True)


def amx_span(qtype, w, go, nblk, e0, acts, P, n, Y, r0, nvalid):
    """Y[t, r0 + r] as tile() computes it, for tokens t < n (a multiple of AMX_TOKENS,
    P their activations as _quantize_tiles orders them), with AMX: the same bits.
    qtype is a literal int."""


@overload(amx_span, prefer_literal=True)
def _amx_span_ov(qtype, w, go, nblk, e0, acts, P, n, Y, r0, nvalid):
    q = getattr(qtype, "literal_value", None)
    if q not in FORMATS or not AMX_TOKENS:
        return None
    fmt = FORMATS[q]
    if fmt.supers is not None:   # all tiles 16 x 64 bytes: _amx_super_source
        shapes = {reg: (AMX_TOKENS, amx.ROW_BYTES) for reg in AMX_SUPER_REGS}
    else:
        shapes = {AMX_B: (fmt.unit // 4, 4 * R)}
        for c, a in AMX_REGS:
            shapes[c], shapes[a] = (AMX_TOKENS, 4 * R), (AMX_TOKENS, fmt.unit)
    namespace = {"np": np, "R": R, "splat": splat, "convert": convert, "fma": fma,
                 "bitcast": bitcast, "_scale_pairs": _scale_pairs,
                 "_scaled_planes": _scaled_planes,
                 "load": load, "store": store, "stack_empty": stack_empty,
                 "tile_config": amx.tile_config, "tile_release": amx.tile_release,
                 "tile_load": amx.tile_load, "tile_store": amx.tile_store,
                 "tile_zero": amx.tile_zero, "tile_dot_su": amx.tile_dot_su,
                 "tile_dot_ss": amx.tile_dot_ss, "CONFIG": amx.tile_shapes(shapes),
                 "scales": fmt.scales, "vectors": fmt.vectors, "supers": fmt.supers,
                 "_store_rows": _store_rows}
    exec(_amx_span_source(q), namespace)
    return namespace[_tile_name(q, "amx")]


@njit(boundscheck=False)
def _store_rows(y, r0, nvalid, v):
    if nvalid == R:
        store(y, r0, v)
    else:  # the last, partial row group
        buf = stack_empty(R, np.float32)
        store(buf, 0, v)
        for r in range(nvalid):
            y[r0 + r] = buf[r]


# -- the type dispatch, generated for a KernelSet --------------------------------------------
# The parallel drivers call these instead of branching on the type themselves: Numba types
# the body of a parallel loop twice, and everything called from it would be compiled twice.
# Each is an `if qtype == A: <A's kernel> elif qtype == B: ...` chain over the types of
# the kernel set it is compiled for (kernel_set.py says why not over all types) that
# have a kernel of that kind.

def _tiles(kernels, qtype, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid):
    """tile() for TOKENS tokens."""


def _tile1(kernels, qtype, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid):
    """tile() for one token."""


def _amx_span(kernels, qtype, w, go, nblk, e0, acts, P, n, Y, r0, nvalid):
    """amx_span(), or nothing where the kernels do not use AMX."""


def _tiles_half(kernels, qtype, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid):
    """tile() for TOKENS // 2 tokens."""


def _tiles_u(kernels, qtype, w, go, cuts, e0, acts, t0, T, Y, ystride, r0, nvalid):
    """tile_units() for TOKENS tokens."""


def _tile1_u(kernels, qtype, w, go, cuts, e0, acts, t0, T, Y, ystride, r0, nvalid):
    """tile_units() for one token."""


def _tiles_half_u(kernels, qtype, w, go, cuts, e0, acts, t0, T, Y, ystride, r0, nvalid):
    """tile_units() for TOKENS // 2 tokens."""


def _float_rows(kernels, qtype, w, o, stride, n, cols, x, y):
    """y[r] = the float row at byte o + r * stride dotted with x, for r < n."""


def _float_rows_x4(kernels, qtype, w, o, stride, n, cols, X, t0, t1, t2, t3, Y, c0):
    """Y[t, c0 + r] = the float row at byte o + r * stride dotted with token t."""


def _dequant_row(kernels, qtype, w, o, nblk, out):
    """out[:nblk * block size] = the GGUF-layout row at byte o as float32."""


# Each family's call, per dispatcher; {q} is the type code.
_CALLS = {
    _tiles: {
        _BLOCK32: f"tile({{q}}, {TOKENS}, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid)",
        _SUPER: f"tile({{q}}, {TOKENS}, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid)"},
    _amx_span: {
        _BLOCK32: "amx_span({q}, w, go, nblk, e0, acts, P, n, Y, r0, nvalid)",
        _SUPER: "amx_span({q}, w, go, nblk, e0, acts, P, n, Y, r0, nvalid)"} if AMX_TOKENS else {},
    _tile1: {
        _BLOCK32: "tile({q}, 1, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid)",
        _SUPER: "tile({q}, 1, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid)"},
    _tiles_half: {
        _BLOCK32: f"tile({{q}}, {TOKENS // 2}, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid)",
        _SUPER: f"tile({{q}}, {TOKENS // 2}, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid)"},
    **{stub: {fam: f"tile_units({{q}}, {n}, w, go, cuts, e0, acts, t0, T, Y, ystride, r0, nvalid)"
              for fam in (_BLOCK32, _SUPER)}
       for stub, n in ((_tiles_u, TOKENS), (_tile1_u, 1), (_tiles_half_u, TOKENS // 2))},
    _float_rows: {_FLOAT: "dot_float({q}, w, o, stride, n, cols, x, y)"},
    _float_rows_x4: {
        _FLOAT: "dot_float_x4({q}, w, o, stride, n, cols, X, t0, t1, t2, t3, Y, c0)"},
    _dequant_row: {
        _FLOAT: "dequant_float({q}, w, o, nblk, out)",
        _BLOCK32: "dequant32({q}, w, o, nblk, out)",
        _SUPER: "dequant_k({q}, w, o, nblk, out)"},
}
_CALLEES = {"tile": tile, "tile_units": tile_units, "amx_span": amx_span, "dot_float": dot_float,
            "dot_float_x4": dot_float_x4, "dequant_float": dequant_float, "dequant32": dequant32,
            "dequant_k": dequant_k}


def _generate_dispatch(stub):
    """Register the overload of `stub` that, for a KernelSetType first argument, compiles
    the if/elif chain over the set's types (an unknown type does nothing: the serial
    entry points check membership first, outside the parallel loops)."""
    params = ", ".join(inspect.signature(stub).parameters)

    def typer(kernels, *args):
        if not isinstance(kernels, KernelSetType):
            return None
        name = f"{stub.__name__}_for_{'_'.join(map(str, kernels.qtypes))}"  # see _tile_name
        lines = [f"def {name}({params}):"]
        for q in kernels.qtypes:
            call = _CALLS[stub].get(FAMILY[q])
            if call is not None:
                lines.append(f"    {'elif' if len(lines) > 1 else 'if'} qtype == {q}:")
                lines.append("        " + call.format(q=q))
        if len(lines) == 1:
            lines.append("    pass")
        namespace = dict(_CALLEES)
        exec("\n".join(lines), namespace)
        return namespace[name]

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


@njit
def _check(kernels, qtype):
    """qtype's family; ValueError if the kernel set has no kernel for it."""
    if not has_kernel(kernels, qtype):
        raise ValueError("no kernel for this quant type in the kernel set")
    return FAMILY[qtype]


# -- quantized: row groups --------------------------------------------------------------------

@njit(boundscheck=False)
def _group_rows(kernels, qtype, w, nblk, acts, P, Y, g, rows):
    """Row group g of a packed matrix of `rows` rows against every token."""
    _group_span(kernels, qtype, w, g * nblk * R * BLOCK_BYTES[qtype], nblk, 0, acts, P, Y, g * R,
                min(R, rows - g * R))


@njit(boundscheck=False)
def _group_span(kernels, qtype, w, go, nblk, e0, acts, P, Y, r0, nvalid):
    """Rows r0 .. r0 + nvalid - 1 (a row group, its nblk blocks from byte go on) against
    every token's activations from element e0 on."""
    T = acts[0].shape[0]
    full = 0
    if AMX_TOKENS and P.size:
        full = P.size // acts[0].shape[1]
        _amx_span(kernels, qtype, w, go, nblk, e0, acts, P, full, Y, r0, nvalid)
    if T > 1:
        for t0 in range(full, T - (T - full) % TOKENS, TOKENS):
            _tiles(kernels, qtype, w, go, nblk, e0, acts, t0, T, Y, r0, nvalid)
        full = T - (T - full) % TOKENS
    # A batched decode of a few sequences is mostly the rest: half a tile reads the
    # weights once for 4 of them (one-token tiles re-read them from L1 for each, and a
    # full tile's repeated lanes would do twice the work). Every tile sums a token alike.
    if T - full >= TOKENS // 2:
        _tiles_half(kernels, qtype, w, go, nblk, e0, acts, full, T, Y, r0, nvalid)
        full += TOKENS // 2
    for t in range(full, T):
        _tile1(kernels, qtype, w, go, nblk, e0, acts, t, T, Y, r0, nvalid)


@njit(boundscheck=False)
def _group_units(kernels, qtype, w, nblk, units, acts, P, Yu, g, rows, s):
    """Row group g against every token (acts: the rows s: of Yu's tokens), each reduce
    unit u (blocks units[u] to units[u + 1] of the row) summed alone into Yu[u][s:]: the
    same operations whatever the blocks around it, so a unit's sum does not depend on
    which rank holds it. The vector tiles serve all units in one pass over the row's
    blocks: a unit of a few blocks as a span of its own paid a tile's setup and token
    tails for little work (an expert's down, 768 columns in 6 units, ran 2.6x slower
    than one span). AMX spans stay one per unit."""
    n, T = Yu.shape[0], Yu.shape[1]
    Y = Yu.reshape((n * T, Yu.shape[2]))[s:]   # unit u, token t: row u * T + t
    bb, be = BLOCK_BYTES[qtype], BLOCK_ELEMS[qtype]
    go = g * nblk * R * bb
    r0 = g * R
    nvalid = min(R, rows - r0)
    full = 0
    if AMX_TOKENS and P.size:
        full = P.size // acts[0].shape[1]
        for u in range(n):
            b0, b1 = units[u], units[u + 1]
            if b1 > b0:
                _amx_span(kernels, qtype, w, go + b0 * R * bb, b1 - b0, b0 * be, acts, P, full,
                          Y[u * T:], r0, nvalid)
            else:
                Y[u * T:u * T + full, r0:r0 + nvalid] = 0
    ntok = acts[0].shape[0]
    if ntok > 1:
        for t0 in range(full, ntok - (ntok - full) % TOKENS, TOKENS):
            _tiles_u(kernels, qtype, w, go, units, 0, acts, t0, ntok, Y, T, r0, nvalid)
        full = ntok - (ntok - full) % TOKENS
    if ntok - full >= TOKENS // 2:   # as in _group_span
        _tiles_half_u(kernels, qtype, w, go, units, 0, acts, full, ntok, Y, T, r0, nvalid)
        full += TOKENS // 2
    for t in range(full, ntok):
        _tile1_u(kernels, qtype, w, go, units, 0, acts, t, ntok, Y, T, r0, nvalid)


@njit(parallel=True, boundscheck=False)
def _packed_linear(kernels, qtype, w, rows, nblk, acts, P, Y):
    groups = (rows + R - 1) // R
    runs = split(groups)
    for thread in prange(threads(runs)):
        while True:
            g = take(runs, thread)
            if g < 0:
                break
            _group_rows(kernels, qtype, w, nblk, acts, P, Y, g, rows)


@njit(parallel=True, boundscheck=False)
def _packed_linear_units(kernels, qtype, w, rows, nblk, units, acts, P, Yu):
    groups = (rows + R - 1) // R
    runs = split(groups)
    for thread in prange(threads(runs)):
        while True:
            g = take(runs, thread)
            if g < 0:
                break
            _group_units(kernels, qtype, w, nblk, units, acts, P, Yu, g, rows, 0)


@njit(parallel=True, boundscheck=False)
def _packed_linear3(kernels, qa, wa, ra, qb, wb, rb, qc, wc, rc, nblk, acts, P, Ya, Yb, Yc):
    runs = split(groups3(ra, rb, rc))
    for thread in prange(threads(runs)):
        while True:
            i = take(runs, thread)
            if i < 0:
                break
            linear3_item(kernels, qa, wa, ra, qb, wb, rb, qc, wc, rc, nblk, acts, P, Ya, Yb,
                         Yc, i)


@njit
def groups3(ra, rb, rc):
    """The items of linear3: the row groups of its three matrices."""
    return (ra + R - 1) // R + (rb + R - 1) // R + (rc + R - 1) // R


@njit(boundscheck=False)
def linear3_item(kernels, qa, wa, ra, qb, wb, rb, qc, wc, rc, nblk, acts, P, Ya, Yb, Yc, i):
    """Item i of linear3: the first matrix's row groups, then the second's, the third's."""
    ga, gb = (ra + R - 1) // R, (rb + R - 1) // R
    # one call site: each one compiles the whole tile dispatch
    if i < ga:
        q, w, Y, g, rows = qa, wa, Ya, i, ra
    elif i < ga + gb:
        q, w, Y, g, rows = qb, wb, Yb, i - ga, rb
    else:
        q, w, Y, g, rows = qc, wc, Yc, i - ga - gb, rc
    _group_rows(kernels, q, w, nblk, acts, P, Y, g, rows)


@njit(parallel=True, boundscheck=False)
def _packed_glu(kernels, qg, wg, qu, wu, rows, nblk, acts, P, G, U, H, pad):
    T = acts[0].shape[0]
    groups = (rows + R - 1) // R
    runs = split(groups)
    for thread in prange(threads(runs)):
        while True:
            g = take(runs, thread)
            if g < 0:
                break
            for m in range(2):
                if m == 0:
                    q, w, Y = qg, wg, G
                else:
                    q, w, Y = qu, wu, U
                _group_rows(kernels, q, w, nblk, acts, P, Y, g, rows)
            for t in range(T):
                for r in range(g * R, min(rows, (g + 1) * R)):
                    H[t, pad + r] = _silu(G[t, r]) * U[t, r]


@njit(parallel=True, boundscheck=False)
def _packed_glu_streams(kernels, qg, wg, qu, wu, rows, nblk, acts, P, G, U, H, pad):
    """One token's gate and up rows as two streams (see glu), and H's rows of a row
    group by the thread that finishes the second of its two halves: no region of its
    own for the silu."""
    groups = (rows + R - 1) // R
    halves_done = np.zeros(groups, np.int64)
    runs = split(2 * groups)
    for thread in prange(threads(runs)):
        while True:
            i = take(runs, thread)
            if i < 0:
                break
            glu_stream_item(kernels, qg, wg, qu, wu, rows, nblk, acts, P, G, U, H, pad,
                            halves_done, i)


@njit(boundscheck=False)
def glu_stream_item(kernels, qg, wg, qu, wu, rows, nblk, acts, P, G, U, H, pad, halves_done,
                    i):
    """Item i of one token's gate and up: gate's row groups, then up's; the second of a
    row group's two items to finish writes its silu (halves_done: zeros, one per group)."""
    groups = (rows + R - 1) // R
    if i < groups:
        q, w, Y, g = qg, wg, G, i
    else:
        q, w, Y, g = qu, wu, U, i - groups
    _group_rows(kernels, q, w, nblk, acts, P, Y, g, rows)
    if fetch_add(halves_done, g) == 1:
        for r in range(g * R, min(rows, (g + 1) * R)):
            H[0, pad + r] = _silu(G[0, r]) * U[0, r]


@njit(parallel=True, boundscheck=False)
def _silu_rows(G, U, H, pad):
    rows = G.shape[1]
    for c in prange((rows + 255) // 256):
        for t in range(G.shape[0]):
            for r in range(c * 256, min(rows, c * 256 + 256)):
                H[t, pad + r] = _silu(G[t, r]) * U[t, r]


@njit
def _silu(x):
    return x / (np.float32(1.0) + np.float32(math.exp(-x)))


@njit(parallel=True, boundscheck=False)
def _quantize_tokens(X, acts):
    for t in prange(X.shape[0]):
        quantize_row(X, acts, t)


# Row-wise passes (quantizing activations, norms, RoPE) over fewer values than this run on
# one thread: a batched decode's few rows take a few microseconds, less than the entry
# and exit of a parallel region on a busy machine (a step of a 30-layer model enters
# some 8 of them per layer); a prompt chunk's rows still share the threads.
PARALLEL_ROWS_MIN = 1 << 16


@njit
def rows_in_parallel(rows, cols):
    """Whether a row-wise pass over a (rows, cols) array is worth a parallel region."""
    return rows > 1 and rows * cols >= PARALLEL_ROWS_MIN


@njit
def act_group(family):
    """Values per activation scale for matrices of a family (activations.py)."""
    return SUPER_GROUP if family == _SUPER else GROUP


@njit
def _quantize(X, group):
    """X (T, cols) in activations.py's int8 form (empty_activations) with a scale per
    `group` values, tokens in parallel when there are enough (rows_in_parallel)."""
    acts = empty_activations(X.shape[0], X.shape[1], group)
    if rows_in_parallel(X.shape[0], X.shape[1]):
        _quantize_tokens(X, acts)
    else:
        for t in range(X.shape[0]):
            quantize_row(X, acts, t)
    return acts


@njit(boundscheck=False)
def _panel_row(XQ, n, t, P, width):
    for b in range(XQ.shape[1] // width):
        for c in range(0, width, GROUP):
            store(P, (b * n + t) * width + c, load(XQ[t], b * width + c, GROUP))


@njit(parallel=True, boundscheck=False)
def _panel_tokens(XQ, n, P, width):
    for t in prange(n):
        _panel_row(XQ, n, t, P, width)


@njit
def _quantize_tiles(X, group):
    """(_quantize(X, group), P): P holds the int8 activations of the first n tokens, n = T -
    T % AMX_TOKENS, in the order AMX tiles read them: for each 32 columns (64 for the
    super-blocks' 64-element tiles, group 256), each token's 32 (64) bytes in turn, so
    that 16 tokens' part of a unit is one run of contiguous bytes (read from rows 2 KiB
    or more apart, it took AMX tiles 2x longer). Empty without AMX, or with fewer than
    AMX_TOKENS tokens."""
    acts = _quantize(X, group)
    XQ = acts[0]
    T, cols = XQ.shape
    n = T - T % max(AMX_TOKENS, 1) if AMX_TOKENS else 0
    width = amx.ROW_BYTES if group == SUPER_GROUP else GROUP
    P = np.empty(n * cols, np.int8)
    if rows_in_parallel(n, cols):
        _panel_tokens(XQ, n, P, width)
    else:
        for t in range(n):
            _panel_row(XQ, n, t, P, width)
    return acts, P


# -- float formats: rows ----------------------------------------------------------------------

@njit
def rows_per_chunk(nrows):
    """Rows per call of a row-range kernel in a matvec: as many as 16 (a call costs about
    what a short row does), while leaving at least 256 chunks, 4 each for up to 64 threads."""
    return max(1, min(16, nrows // 256))


@njit(parallel=True, boundscheck=False)
def _float_matvec(kernels, qtype, w, stride, rows, cols, x, y):
    per = rows_per_chunk(rows)
    runs = split((rows + per - 1) // per)
    for thread in prange(threads(runs)):
        while True:
            c = take(runs, thread)
            if c < 0:
                break
            float_chunk(kernels, qtype, w, stride, rows, cols, x, y, per, c)


@njit(boundscheck=False)
def float_chunk(kernels, qtype, w, stride, rows, cols, x, y, per, c):
    """Item c of a float matvec: its rows c * per .. (c + 1) * per - 1."""
    first = c * per
    last = min(rows, first + per)
    _float_rows(kernels, qtype, w, first * stride, stride, last - first, cols, x,
                y[first:last])


# The batched path keeps a group of rows in the core's L2 cache while it runs through all
# the tokens: up to 128 KiB of weights per group, and at least 64 groups when there are
# enough rows, so that up to 64 threads share the work.
_GROUP_BYTES = 128 * 1024
_MIN_GROUPS = 64


@njit(parallel=True, boundscheck=False)
def _float_matmul(kernels, qtype, w, stride, rows, cols, X, Y):
    T = X.shape[0]
    per = max(1, _GROUP_BYTES // max(1, stride))
    per = max(1, min(per, (rows + _MIN_GROUPS - 1) // _MIN_GROUPS))
    chunks = (rows + per - 1) // per
    runs = split(chunks)
    for thread in prange(threads(runs)):
        while True:
            g = take(runs, thread)
            if g < 0:
                break
            first = g * per
            last = min(rows, first + per)
            for t0 in range(0, T, _FLOAT_TOKENS):
                # past the last token, repeat it: the same value is stored twice
                t1, t2, t3 = min(t0 + 1, T - 1), min(t0 + 2, T - 1), min(t0 + 3, T - 1)
                _float_rows_x4(kernels, qtype, w, first * stride, stride, last - first, cols,
                               X, t0, t1, t2, t3, Y, first)


# -- entry points -----------------------------------------------------------------------------

@njit
def row_stride(qtype, cols):
    """Bytes per GGUF-layout row of `cols` elements (cols a whole number of blocks)."""
    if qtype < 0 or qtype >= _MAX_CODE or FAMILY[qtype] == 0:
        raise ValueError("no kernel for this quant type")
    return cols // BLOCK_ELEMS[qtype] * BLOCK_BYTES[qtype]


@njit
def linear(kernels, qtype, w, rows, cols, X, Y):
    # int64() keeps a jitted caller's constant arguments (typed as literals) from making
    # a separate compilation of the kernels below for every call site.
    q = np.int64(qtype)
    rows, cols = np.int64(rows), np.int64(cols)
    family = _check(kernels, q)
    if family != _FLOAT:
        acts, P = _quantize_tiles(X, act_group(family))
        _packed_linear(kernels, q, w, rows, cols // BLOCK_ELEMS[q], acts, P, Y)
    elif X.shape[0] == 1:
        _float_matvec(kernels, q, w, row_stride(q, cols), rows, cols, X[0], Y[0])
    else:
        _float_matmul(kernels, q, w, row_stride(q, cols), rows, cols, X, Y)


@njit
def linear_units(kernels, qtype, w, rows, cols, units, X, Yu):
    """Yu[u, t, :] = the product of X[t] with the columns of reduce unit u alone, for the
    units u: blocks units[u] to units[u + 1] of the matrix's columns (a partial sum that
    the reduce adds up as every rank count does; numatp/parallel/plan.py). One unit
    (units (0, all blocks)) is linear()."""
    n = units.shape[0] - 1
    if n == 1:
        linear(kernels, qtype, w, rows, cols, X, Yu[0])
        return
    q = np.int64(qtype)
    rows, cols = np.int64(rows), np.int64(cols)
    family = _check(kernels, q)
    if family != _FLOAT:
        acts, P = _quantize_tiles(X, act_group(family))
        _packed_linear_units(kernels, q, w, rows, cols // BLOCK_ELEMS[q], units, acts, P, Yu)
        return
    # Float rows: a unit is a range of each row's elements, times its slice of X.
    eb = row_stride(q, np.int64(1))
    stride = row_stride(q, cols)
    for u in range(n):
        c0, c1 = units[u], units[u + 1]
        if c1 == c0:
            Yu[u] = 0
            continue
        Xu = np.ascontiguousarray(X[:, c0:c1])
        if X.shape[0] == 1:
            _float_matvec(kernels, q, w[c0 * eb:], stride, rows, c1 - c0, Xu[0], Yu[u, 0])
        else:
            _float_matmul(kernels, q, w[c0 * eb:], stride, rows, c1 - c0, Xu, Yu[u])


@njit
def linear3(kernels, qa, wa, ra, qb, wb, rb, qc, wc, rc, cols, X, Ya, Yb, Yc):
    """Ya, Yb, Yc = X @ A.T, X @ B.T, X @ C.T for three matrices of `cols` columns that
    read the same input (a layer's Q, K and V; rc = 0 for two): X is quantized once and
    one parallel region covers all their row groups, where all three are quantized
    formats of one family (one activation form, activations.py)."""
    qa, qb, qc = np.int64(qa), np.int64(qb), np.int64(qc)
    fa, fb, fc = _check(kernels, qa), _check(kernels, qb), _check(kernels, qc)
    if fa != _FLOAT and fa == fb and (fa == fc or rc == 0):
        acts, P = _quantize_tiles(X, act_group(fa))
        _packed_linear3(kernels, qa, wa, np.int64(ra), qb, wb, np.int64(rb), qc, wc,
                        np.int64(rc), np.int64(cols) // BLOCK_ELEMS[qa], acts, P, Ya, Yb, Yc)
    else:
        linear(kernels, qa, wa, ra, cols, X, Ya)
        linear(kernels, qb, wb, rb, cols, X, Yb)
        if rc:
            linear(kernels, qc, wc, rc, cols, X, Yc)


@njit
def glu(kernels, qg, wg, qu, wu, rows, cols, X, G, U, H, pad):
    """H[t, pad + r] = silu(G[t, r]) * U[t, r] with G = X @ gate.T, U = X @ up.T (a SwiGLU
    FFN's first half): X is quantized once (where gate and up are quantized formats of
    one family), and each row group's silu is taken by the thread that computed it."""
    qg, qu = np.int64(qg), np.int64(qu)
    rows, cols = np.int64(rows), np.int64(cols)
    family = _check(kernels, qg)
    if family != _FLOAT and family == _check(kernels, qu):
        acts, P = _quantize_tiles(X, act_group(family))
        # One token: the threads' contiguous runs of row groups cover gate's, then up's,
        # each a stream of one matrix. Alternating the two by row group (as below) made
        # a 1.1B Q4_K_M's gate and up 1.25x slower on one thread, 1.08x on two, than two
        # products one after the other.
        if X.shape[0] == 1:
            _packed_glu_streams(kernels, qg, wg, qu, wu, rows, cols // BLOCK_ELEMS[qg], acts, P,
                                G, U, H, np.int64(pad))
        else:
            _packed_glu(kernels, qg, wg, qu, wu, rows, cols // BLOCK_ELEMS[qg], acts, P, G, U, H,
                        np.int64(pad))
    else:
        linear(kernels, qg, wg, rows, cols, X, G)
        linear(kernels, qu, wu, rows, cols, X, U)
        _silu_rows(G, U, H, np.int64(pad))


@njit(cache=True, boundscheck=False)
def dequantize_rows(kernels, qtype, w, cols, row_ids, out):
    q = np.int64(qtype)
    _check(kernels, q)
    stride = row_stride(q, cols)
    nblk = cols // BLOCK_ELEMS[q]
    for k in range(row_ids.shape[0]):
        _dequant_row(kernels, q, w, row_ids[k] * stride, nblk, out[k])


def prepare(qtype, raw, out=None):
    """A GGUF-layout matrix, uint8 (rows, row_bytes), as linear() reads it: 1-D, in
    `out` (prepared_nbytes long) if given."""
    if qtype in packing.PACKED:
        return packing.pack(qtype, raw, R, out)
    if out is None:
        return np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1).copy()
    out.reshape(raw.shape)[:] = raw
    return out


def prepared_nbytes(qtype, rows, cols):
    """Bytes of prepare()'s result for a rows x cols matrix."""
    if qtype in packing.PACKED:
        return packing.packed_nbytes(qtype, rows, cols, R)
    return rows * formats.row_bytes(qtype, cols)


__all__ = ["KernelSet", "linear", "linear_units", "dequantize_rows", "prepare", "prepared_nbytes",
           "row_stride", "rowgroups"]
