"""The jitted blocks the steps are built from: reading a shard's index, RMSNorm, RoPE,
attention with its KV cache, the dense (SwiGLU) FFN and the reduce across ranks.

A block reads its tensors through the index (numatp/forward/layout.py) at the slots of
numatp/model/slots.py, and this shard's sizes from the dims vector. It runs whatever
heads and FFN rows its shard was given; the only trace of the other ranks is the reduce
of the partial sums that attn_output and ffn_down leave (`group`, passed through).

None of these is cache=True: only the steps, the entry points, are (see
numatp/forward/__init__.py).
"""
import math

import numpy as np
from numba import njit, prange

from numatp import _env  # noqa: F401
from numatp.forward.layout import (COLS, D_FFN, D_GROUP, D_HEAD_DIM, D_HIDDEN, D_KV0,
                                   D_LAYERS, D_NKV, D_NQ, D_Q0, D_ROPE_DIM, D_ROPE_NEOX, NBYTES,
                                   OFFSET, PAD, QTYPE, ROWS, UNIT0, UNITS)
from numatp.model.declare import POSITION_TILE
from numatp.model.slots import (ATTN_NORM, BK, BQ, BV, K_NORM, LAYER_SLOTS, OUTPUT_NORM, Q_NORM,
                                W_DOWN, W_GATE, W_UP, WK, WO, WQ, WV)
from numatp.quant.kernels import rows_in_parallel
from numatp.quant.schedule import take
from numatp.quant.team import (ARGS, ATTEND, bare, get1, get2, get4, get5, join, put, runs,
                               start, team_glu, team_linear, team_linear3, team_linear_units)
from numatp.quant.simd import (bitcast, convert, fma, hmax, hsum, load, round_even, splat,
                               store, vmax)
from numatp.shm.allreduce import allreduce_parts

# ---- the index --------------------------------------------------------------------------


@njit
def has(index, e):
    """Whether the shard holds a tensor at index row e (architectures without q/k norms
    or biases leave those slots empty)."""
    return index[e, OFFSET] >= 0


@njit
def vector(arena, index, e):
    off = index[e, OFFSET]
    return arena[off:off + index[e, NBYTES]].view(np.float32)


@njit
def matrix(arena, index, e):
    off = index[e, OFFSET]
    return arena[off:off + index[e, NBYTES]]


@njit
def matmul(team, kernels, arena, index, e, X, Y):
    """Y = X @ (the matrix at index row e).T"""
    team_linear(team, kernels, index[e, QTYPE], matrix(arena, index, e), index[e, ROWS],
                index[e, COLS], X, Y)


@njit
def units(index, e):
    """The reduce units of the matrix at index row e: their first blocks and the end."""
    return index[e, UNIT0:UNIT0 + index[e, UNITS] + 1]


@njit
def unit_buffer(index, slot, T, width):
    """Room for the reduce units' partial sums (unit_view) of T tokens' products of
    `width` rows with the matrices in `slot` (every layer's have the units of layer
    0's); empty for one unit, which needs none."""
    n = index[slot, UNITS]
    return np.empty(n * T * width if n > 1 else 0, dtype=np.float32)


@njit
def unit_view(buf, n, T, width):
    """The (n, T, width) partial sums in a unit_buffer, for any T up to the buffer's."""
    return buf[:n * T * width].reshape((n, T, width))


@njit
def unit_product(team, kernels, arena, index, e, X, Yu):
    """Yu[u] = X @ (reduce unit u of the matrix at index row e).T, for each of its units
    (numatp/parallel/plan.py)."""
    team_linear_units(team, kernels, index[e, QTYPE], matrix(arena, index, e), index[e, ROWS],
                      index[e, COLS], units(index, e), X, Yu)


@njit
def partial_product(team, kernels, arena, index, e, X, buf, Y):
    """X @ (the matrix at index row e).T for a matrix of this rank's input columns, as
    the partial sums of its reduce units (numatp/parallel/plan.py) for the reduce to add
    up: returns them as (n_units, T, width), in buf (unit_buffer's), or for one unit in
    Y itself."""
    n = index[e, UNITS]
    if n == 1:
        matmul(team, kernels, arena, index, e, X, Y)
        return whole(Y)
    Yu = unit_view(buf, n, X.shape[0], Y.shape[1])
    unit_product(team, kernels, arena, index, e, X, Yu)
    return Yu


@njit
def whole(Y):
    """Y (T, width) as the one part of a partial sum: (1, T, width)."""
    return Y.reshape((1, Y.shape[0], Y.shape[1]))


@njit
def widest(index, n_layers, slot):
    """The most input columns any layer's matrix in `slot` has: the width of a buffer
    that feeds all of them (a column shard's blocks, padding included)."""
    cols = 0
    for layer in range(n_layers):
        cols = max(cols, index[layer * LAYER_SLOTS + slot, COLS])
    return cols


# ---- norms ------------------------------------------------------------------------------


@njit
def _rmsnorm_row(x, w, eps, out):
    n = x.shape[0]
    ss = 0.0
    for j in range(n):
        ss += np.float64(x[j]) * x[j]
    scale = np.float32(1.0 / math.sqrt(ss / n + eps))
    for j in range(n):
        out[j] = x[j] * scale * w[j]


@njit(parallel=True)
def _rmsnorm_tokens(x, w, eps, out):
    for t in prange(x.shape[0]):
        _rmsnorm_row(x[t], w, eps, out[t])


@njit
def rmsnorm(x, w, eps, out):
    """Each row of x; tokens in parallel when there are enough (rows_in_parallel: a
    decode's few rows are too little work for a parallel region)."""
    if rows_in_parallel(x.shape[0], x.shape[1]):
        _rmsnorm_tokens(x, w, eps, out)
    else:
        for t in range(x.shape[0]):
            _rmsnorm_row(x[t], w, eps, out[t])


@njit(parallel=True)
def _add_rmsnorm_tokens(x, d, w, eps, out):
    for t in prange(x.shape[0]):
        x[t] += d[t]
        _rmsnorm_row(x[t], w, eps, out[t])


@njit
def add_rmsnorm(x, d, w, eps, out):
    """x += d (the residual), then out = rmsnorm(x), in one pass."""
    if rows_in_parallel(x.shape[0], x.shape[1]):
        _add_rmsnorm_tokens(x, d, w, eps, out)
    else:
        for t in range(x.shape[0]):
            x[t] += d[t]
            _rmsnorm_row(x[t], w, eps, out[t])


@njit
def _head_rmsnorm(v, n_heads, hd, w, eps):
    """In place, each head of each row separately (qwen3's q/k norm)."""
    for t in range(v.shape[0]):
        for h in range(n_heads):
            ss = 0.0
            for j in range(hd):
                ss += np.float64(v[t, h * hd + j]) * v[t, h * hd + j]
            scale = np.float32(1.0 / math.sqrt(ss / hd + eps))
            for j in range(hd):
                v[t, h * hd + j] = v[t, h * hd + j] * scale * w[j]


# ---- RoPE -------------------------------------------------------------------------------


def rope_tables(ctx: int, rope_dim: int, base: float, scale: float, freq_factors=None):
    """(cos, sin) of pos * base^(-2i/rope_dim) (/ factor_i), computed in float64: what
    `rope` reads, made once per model at load."""
    i = np.arange(rope_dim // 2, dtype=np.float64)
    inv_freq = base ** (-2.0 * i / rope_dim)
    if freq_factors is not None:
        inv_freq = inv_freq / np.asarray(freq_factors, dtype=np.float64)
    angles = np.outer(np.arange(ctx, dtype=np.float64) / scale, inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@njit
def _rope_token(v, t, n_heads, hd, rope_dim, neox, cos, sin, p):
    half = rope_dim // 2
    for h in range(n_heads):
        b = h * hd
        for i in range(half):
            if neox:
                a, c = b + i, b + i + half
            else:
                a, c = b + 2 * i, b + 2 * i + 1
            x0, x1 = v[t, a], v[t, c]
            v[t, a] = x0 * cos[p, i] - x1 * sin[p, i]
            v[t, c] = x0 * sin[p, i] + x1 * cos[p, i]


@njit(parallel=True)
def _rope_tokens(v, n_heads, hd, rope_dim, neox, cos, sin, pos):
    for t in prange(v.shape[0]):
        _rope_token(v, t, n_heads, hd, rope_dim, neox, cos, sin, pos[t])


@njit
def rope(v, n_heads, hd, rope_dim, neox, rope_cs, pos):
    """Rotate the first rope_dim dims of each head of row t by its position pos[t].
    neox: pairs (i, i + rope_dim/2); otherwise adjacent pairs (2i, 2i+1), which is what
    llama-architecture GGUFs expect."""
    cos, sin = rope_cs
    if rows_in_parallel(v.shape[0], v.shape[1]):
        _rope_tokens(v, n_heads, hd, rope_dim, neox, cos, sin, pos)
    else:
        for t in range(v.shape[0]):
            _rope_token(v, t, n_heads, hd, rope_dim, neox, cos, sin, pos[t])


# ---- attention --------------------------------------------------------------------------


@njit
def attention_work(index, dims, T):
    """Buffers of `attention` for T tokens: q, k, v, the heads' outputs (zeros where
    attn_output's padding columns are) and attn_output's reduce units."""
    hd = dims[D_HEAD_DIM]
    return (np.empty((T, dims[D_NQ] * hd), dtype=np.float32),
            np.empty((T, dims[D_NKV] * hd), dtype=np.float32),
            np.empty((T, dims[D_NKV] * hd), dtype=np.float32),
            np.zeros((T, widest(index, dims[D_LAYERS], WO)), dtype=np.float32),
            unit_buffer(index, WO, T, dims[D_HIDDEN]))


@njit
def _qkv(team, kernels, arena, index, e, X, q, k, v):
    """The layer's Q, K and V projections of X, in one parallel region (or team job)."""
    eq, ek, ev = e + WQ, e + WK, e + WV
    team_linear3(team, kernels, index[eq, QTYPE], matrix(arena, index, eq), index[eq, ROWS],
                 index[ek, QTYPE], matrix(arena, index, ek), index[ek, ROWS],
                 index[ev, QTYPE], matrix(arena, index, ev), index[ev, ROWS], index[eq, COLS],
                 X, q, k, v)


@njit
def _add_bias(v, b):
    for t in range(v.shape[0]):
        for j in range(v.shape[1]):
            v[t, j] += b[j]


# Lanes of the vectorized exponential: 16 float32 are one AVX-512 register (two on AVX2).
EXP_LANES = 16
# Positions per block of attention's weighted sum of V: 32 rows of a 128-dim head are
# 16 KiB, which stay in L1 while the sum runs over the head's dims.
V_BLOCK = 32
# Vectors of a head's dims summed at once over a block of positions (see _weigh_values).
VALUE_VECTORS = 4


@njit
def _vexp(x):
    """e**x lane-wise for the lanes x <= 0 of a softmax (scores minus their maximum), to
    within a few float32 ulps: x = n ln2 + r with |r| <= ln2 / 2, e**r by Cephes' expf
    polynomial, times 2**n made in the exponent bits. Lanes below -87 (where e**x is
    under float32's smallest normal number) give e**-87, about 1.6e-38, not 0."""
    x = vmax(x, splat(np.float32(-87.0), EXP_LANES))
    n = round_even(x * np.float32(1.4426950408889634))
    r = fma(n, splat(np.float32(-0.693359375), EXP_LANES), x)   # ln2 in two parts, so
    r = fma(n, splat(np.float32(2.12194440e-4), EXP_LANES), r)  # n * ln2 is exact enough
    p = splat(np.float32(1.9875691500e-4), EXP_LANES)
    p = fma(p, r, splat(np.float32(1.3981999507e-3), EXP_LANES))
    p = fma(p, r, splat(np.float32(8.3334519073e-3), EXP_LANES))
    p = fma(p, r, splat(np.float32(4.1665795894e-2), EXP_LANES))
    p = fma(p, r, splat(np.float32(1.6666665459e-1), EXP_LANES))
    p = fma(p, r, splat(np.float32(5.0000001201e-1), EXP_LANES))
    p = fma(p * r, r, r) + np.float32(1.0)
    two_n = bitcast((convert(n, np.int32) + np.int32(127)) << np.int32(23), np.float32)
    return p * two_n


@njit
def _row_of(r, T):
    """The token that the r-th of T rows of work is: 0, T-1, 1, T-2, ... A causal prompt
    row's work grows with its position, so pairing the first rows with the last ones
    gives the equal contiguous chunks a parallel loop hands its threads equal work (in
    order, the last thread's rows cost twice the average)."""
    return r // 2 if r % 2 == 0 else T - 1 - r // 2


# Key positions per tile of the keys cache; a tile is hd rows of TILE float32, one per
# head dim, so a head scores a tile's positions with one vector multiply-add per dim.
TILE = POSITION_TILE
assert TILE % EXP_LANES == 0   # the softmax runs over whole tiles, EXP_LANES at a time
# Tiles scored at once (_score_tiles): independent sums, enough to keep one vector
# multiply-add unit busy; more would not fit AVX2's 16 registers.
TILES_AT_ONCE = 4


@njit
def _score_tiles(qh, keys, first, n_tiles, scale, scores):
    """scores[i * TILE + l] = scale * (qh . the key at row l of tile first + i), for the
    n_tiles tiles from `first` of one head's keys (`keys`: its tiles, flat), and past
    them up to a whole number of TILES_AT_ONCE tiles, the last tile's scores again.
    Each score is the sum over the head's dims in order."""
    hd = qh.shape[0]
    last = first + n_tiles - 1
    for i in range(0, n_tiles, TILES_AT_ONCE):
        at0 = (first + i) * hd * TILE
        at1 = min(first + i + 1, last) * hd * TILE
        at2 = min(first + i + 2, last) * hd * TILE
        at3 = min(first + i + 3, last) * hd * TILE
        a0 = a1 = a2 = a3 = splat(np.float32(0.0), TILE)
        for j in range(hd):
            x, d = splat(qh[j], TILE), j * TILE
            a0 = fma(x, load(keys, at0 + d, TILE), a0)
            a1 = fma(x, load(keys, at1 + d, TILE), a1)
            a2 = fma(x, load(keys, at2 + d, TILE), a2)
            a3 = fma(x, load(keys, at3 + d, TILE), a3)
        store(scores, i * TILE, a0 * scale)
        store(scores, (i + 1) * TILE, a1 * scale)
        store(scores, (i + 2) * TILE, a2 * scale)
        store(scores, (i + 3) * TILE, a3 * scale)


@njit
def _weigh_values(w, V, out, o, inv):
    """out[o + d] = inv * (the sum over positions p, in order, of w[p] * V[p, d]) for
    each of the head's dims d. VALUE_VECTORS vectors of dims at a time, so as many
    independent sums run, over blocks of V_BLOCK positions whose values stay in L1
    while the sums run over the rest of the dims; then one vector, then one dim."""
    n, hd = V.shape
    acc = np.zeros(hd, dtype=np.float32)
    for p0 in range(0, n, V_BLOCK):
        p1 = min(n, p0 + V_BLOCK)
        c = 0
        while c + VALUE_VECTORS * EXP_LANES <= hd:
            c1, c2, c3 = c + EXP_LANES, c + 2 * EXP_LANES, c + 3 * EXP_LANES
            a0, a1 = load(acc, c, EXP_LANES), load(acc, c1, EXP_LANES)
            a2, a3 = load(acc, c2, EXP_LANES), load(acc, c3, EXP_LANES)
            for p in range(p0, p1):
                x, vp = splat(w[p], EXP_LANES), V[p]
                a0 = fma(x, load(vp, c, EXP_LANES), a0)
                a1 = fma(x, load(vp, c1, EXP_LANES), a1)
                a2 = fma(x, load(vp, c2, EXP_LANES), a2)
                a3 = fma(x, load(vp, c3, EXP_LANES), a3)
            store(acc, c, a0)
            store(acc, c1, a1)
            store(acc, c2, a2)
            store(acc, c3, a3)
            c += VALUE_VECTORS * EXP_LANES
        while c + EXP_LANES <= hd:
            a = load(acc, c, EXP_LANES)
            for p in range(p0, p1):
                a = fma(splat(w[p], EXP_LANES), load(V[p], c, EXP_LANES), a)
            store(acc, c, a)
            c += EXP_LANES
        for d in range(c, hd):
            for p in range(p0, p1):
                acc[d] = np.float32(acc[d] + w[p] * V[p, d])
    for d in range(hd):
        out[o + d] = acc[d] * inv


# Each head's scores: _score_tiles; its weighted sum of values: _weigh_values. The
# softmax's exponentials run EXP_LANES at a time (_vexp): one math.exp per score cost
# more than its two dot products. Each head of each token is computed by one thread, the
# same way alone or among others, so results depend neither on the threads nor on the
# batch.
@njit(parallel=True)
def _attend_region(q, k_tiles, v_cache, layer, pos, base, nq, hd, group, q0, kv0, out, pad):
    for th in prange(q.shape[0] * nq):
        _attend_head(q, k_tiles, v_cache, layer, pos, base, nq, hd, group, q0, kv0, out, pad,
                     th)


@njit(nogil=True)
def _attend(team, q, k_tiles, v_cache, layer, pos, base, nq, hd, group, q0, kv0, out, pad):
    """Causal attention of T new tokens against the cache, per local q head: token t, at
    position pos[t] of the sequence whose cache rows start at base[t], attends to rows
    base[t] .. base[t] + pos[t]; writes head h of token t at out[t, pad + h*hd ...].
    k_tiles: the keys in tiles of TILE rows (numatp/model/archs/parts.py's KV_CACHE).
    A parallel region over the T * nq heads, or a team job (team not empty)."""
    if team.size == 0:
        _attend_region(q, k_tiles, v_cache, layer, pos, base, nq, hd, group, q0, kv0, out, pad)
        return
    ctl = bare(team)
    s = ARGS
    ctl[s], ctl[s + 1], ctl[s + 2], ctl[s + 3], ctl[s + 4] = layer, nq, hd, group, q0
    ctl[s + 5], ctl[s + 6] = kv0, pad
    s = put(ctl, put(ctl, put(ctl, s + 7, q), k_tiles), v_cache)
    put(ctl, put(ctl, put(ctl, s, pos), base), out)
    start(ctl, ATTEND, q.shape[0] * nq)
    attend_job(ctl, 0)
    join(ctl)


@njit
def attend_job(ctl, thread):
    """A team thread's share of _attend's heads (numatp/quant/team.py)."""
    s = ARGS
    layer, nq, hd, group, q0 = ctl[s], ctl[s + 1], ctl[s + 2], ctl[s + 3], ctl[s + 4]
    kv0, pad = ctl[s + 5], ctl[s + 6]
    q, s = get2(ctl, s + 7, np.float32)
    k_tiles, s = get5(ctl, s, np.float32)
    v_cache, s = get4(ctl, s, np.float32)
    pos, s = get1(ctl, s, np.int64)
    base, s = get1(ctl, s, np.int64)
    out, s = get2(ctl, s, np.float32)
    rr = runs(ctl)
    while True:
        th = take(rr, thread)
        if th < 0:
            break
        _attend_head(q, k_tiles, v_cache, layer, pos, base, nq, hd, group, q0, kv0, out, pad,
                     th)


@njit
def _attend_head(q, k_tiles, v_cache, layer, pos, base, nq, hd, group, q0, kv0, out, pad, th):
    """Item th of _attend: head th % nq of its (th // nq)-th row of work (_row_of)."""
    T = q.shape[0]
    scale = np.float32(1.0 / math.sqrt(hd))
    t, h = _row_of(th // nq, T), th % nq
    kvh = (q0 + h) // group - kv0
    n = pos[t] + 1
    # the tiles that hold rows base[t] .. base[t] + n - 1, `lead` rows before those
    first, lead = base[t] // TILE, base[t] % TILE
    n_tiles = (lead + n + TILE - 1) // TILE
    V = v_cache[layer, kvh, base[t]:base[t] + n]
    qh = q[t, h * hd:(h + 1) * hd]
    room = (n_tiles + TILES_AT_ONCE - 1) // TILES_AT_ONCE * TILES_AT_ONCE * TILE
    scores = np.empty(room, dtype=np.float32)
    _score_tiles(qh, k_tiles[layer, kvh].reshape(-1), first, n_tiles, scale, scores)
    # the tiles' other rows (another sequence's, or not yet written): -inf, whose
    # e**x (e**-87) adds nothing that a float32 sum of at least e**0 = 1 can hold
    scores = scores[:n_tiles * TILE]
    scores[:lead] = -np.inf
    scores[lead + n:] = -np.inf
    top = load(scores, 0, EXP_LANES)
    for p in range(EXP_LANES, scores.shape[0], EXP_LANES):
        top = vmax(top, load(scores, p, EXP_LANES))
    m = hmax(top)
    totals = splat(np.float32(0.0), EXP_LANES)
    for p in range(0, scores.shape[0], EXP_LANES):
        e = _vexp(load(scores, p, EXP_LANES) - m)
        store(scores, p, e)
        totals = totals + e
    w = scores[lead:lead + n]   # position p's weight: w[p]
    inv = np.float32(1.0) / hsum(totals)
    _weigh_values(w, V, out[t], pad + h * hd, inv)


@njit
def attention(team, kernels, arena, index, dims, eps, rope_cs, kv_cache, layer, e, xb, pos, base,
              s, work, out):
    """Self-attention of my heads for the tokens xb (normed; row t at position pos[t] of
    the sequence whose cache rows start at base[t]): all of them go into the KV cache;
    rows s: (the tokens that go on) get attn_output over my heads' columns, a partial sum
    of the full projection for the reduce, returned as partial_product's parts (in
    out[s:] for one unit). The keys and values are all written before any row attends,
    so a row sees the rows before it of its own sequence in the same call (a prompt
    chunk). e: the layer's first index row; rope_cs: rope_tables' (cos, sin); work: from
    attention_work."""
    q, k, v, att, att_units = work
    k_tiles, v_cache = kv_cache
    hd, nq, nkv = dims[D_HEAD_DIM], dims[D_NQ], dims[D_NKV]
    _qkv(team, kernels, arena, index, e, xb, q, k, v)
    if has(index, e + BQ):
        _add_bias(q, vector(arena, index, e + BQ))
    if has(index, e + BK):
        _add_bias(k, vector(arena, index, e + BK))
    if has(index, e + BV):
        _add_bias(v, vector(arena, index, e + BV))
    if has(index, e + Q_NORM):
        _head_rmsnorm(q, nq, hd, vector(arena, index, e + Q_NORM), eps)
    if has(index, e + K_NORM):
        _head_rmsnorm(k, nkv, hd, vector(arena, index, e + K_NORM), eps)
    rope(q, nq, hd, dims[D_ROPE_DIM], dims[D_ROPE_NEOX], rope_cs, pos)
    rope(k, nkv, hd, dims[D_ROPE_DIM], dims[D_ROPE_NEOX], rope_cs, pos)
    for t in range(xb.shape[0]):
        row = base[t] + pos[t]
        tile, at = row // TILE, row % TILE
        for h in range(nkv):
            for j in range(hd):
                k_tiles[layer, h, tile, j, at] = k[t, h * hd + j]
                v_cache[layer, h, row, j] = v[t, h * hd + j]
    _attend(team, q[s:], k_tiles, v_cache, layer, pos[s:], base[s:], nq, hd, dims[D_GROUP],
            dims[D_Q0], dims[D_KV0], att[s:], index[e + WO, PAD])
    return partial_product(team, kernels, arena, index, e + WO, att[s:], att_units, out[s:])


# ---- the dense FFN ----------------------------------------------------------------------


@njit
def dense_ffn_work(index, dims, T):
    """Buffers of `dense_ffn` for T tokens: gate, up, the GLU's output (zeros where
    ffn_down's padding columns are) and ffn_down's reduce units."""
    ffn = dims[D_FFN]
    return (np.empty((T, ffn), dtype=np.float32), np.empty((T, ffn), dtype=np.float32),
            np.zeros((T, widest(index, dims[D_LAYERS], W_DOWN)), dtype=np.float32),
            unit_buffer(index, W_DOWN, T, dims[D_HIDDEN]))


@njit
def dense_ffn(team, kernels, arena, index, e, xb, s, work, out):
    """SwiGLU over my FFN rows for rows s: of xb: my rows of gate and up, my columns of
    down; returns partial_product's parts (a partial sum for the reduce)."""
    h = ffn_glu(team, kernels, arena, index, e, xb, s, work)
    return partial_product(team, kernels, arena, index, e + W_DOWN, h[s:], work[3], out[s:])


@njit
def ffn_glu(team, kernels, arena, index, e, xb, s, work):
    """The first half of dense_ffn: returns h, whose rows s: are ffn_down's input."""
    gate, up, h, _ = work
    eg, eu, ed = e + W_GATE, e + W_UP, e + W_DOWN
    # h[:, pad:] = silu(gate(X)) * up(X), pad as ffn_down wants its input
    team_glu(team, kernels, index[eg, QTYPE], matrix(arena, index, eg), index[eu, QTYPE],
             matrix(arena, index, eu), index[eg, ROWS], index[eg, COLS], xb[s:], gate[s:],
             up[s:], h[s:], index[ed, PAD])
    return h


# ---- between layers ---------------------------------------------------------------------


@njit
def next_norm(layer, n_layers):
    """The index row of the norm that follows layer `layer`: the next layer's input norm,
    or after the last layer the output norm."""
    if layer < n_layers - 1:
        return (layer + 1) * LAYER_SLOTS + ATTN_NORM
    return n_layers * LAYER_SLOTS + OUTPUT_NORM


# ---- across ranks -----------------------------------------------------------------------


@njit
def reduce(group, parts, out):
    """out = the sum of every rank's partial sums (a block's parts) over the ranks of
    `group`, the all-reduce's (ctl, data, rank, n_ranks), its units added one at a time in
    plan order; one rank adds up its own parts the same way. Returns the all-reduce's
    status (0: done)."""
    ctl, data, rank, n_ranks = group
    return allreduce_parts(ctl, data, rank, n_ranks, parts, out)
