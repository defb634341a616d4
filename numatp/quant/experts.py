"""A Mixture-of-Experts FFN's expert products, in two parallel regions per layer.

Each token t goes to k experts sel[t, j] with weights wt[t, j]; expert e is a SwiGLU FFN
(gate and up: n_ff x cols, down: rows x n_ff). The (token, expert) pairs are grouped by
expert, so each chosen expert's weights stream through the cores once for all the tokens
that chose it (a prompt chunk's tokens go through them as a matrix product), and one
parallel region covers every chosen expert's row groups: the gate/up half in one, the
down half in the other. A token's output is the weighted sum of its experts' outputs,
summed in the order of its choices, so the result does not depend on the thread count.

Weights are stacked: an expert's packed gate (up, down) matrix is expert_bytes long and
expert e's starts at local[e] * expert_bytes. local[e] < 0: the expert is not held here
(another node holds it); its share of the output is left to that node.

Tensor parallelism splits each expert like a dense FFN: a node holds n_ff / nodes rows of
every gate and up and the matching columns of every down, and the nodes' outputs sum.
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit, prange

from numatp.quant import formats
from numatp.quant.activations import empty_activations, quantize_row
from numatp.quant.kernels import (BLOCK_BYTES, BLOCK_ELEMS, R, _check, _FLOAT, _group_rows,
                                  _group_units, _quantize, _silu, act_group, prepare,
                                  prepared_nbytes, rows_in_parallel)
from numatp.quant.schedule import split, take, threads


def prepare_experts(qtype, raw, out=None):
    """Stacked GGUF-layout experts, uint8 (experts, rows, row_bytes), as expert_ffn reads
    them: each expert prepared on its own (its last row group padded), one after another,
    in `out` (experts_nbytes long) if given."""
    experts, rows, row_bytes = raw.shape
    cols = row_bytes // formats.block_bytes(qtype) * formats.block_size(qtype)
    each = prepared_nbytes(qtype, rows, cols)
    if out is None:
        out = np.empty(experts * each, np.uint8)
    for e in range(experts):
        prepare(qtype, raw[e], out[e * each:(e + 1) * each])
    return out


def experts_nbytes(qtype, experts, rows, cols):
    """Bytes of prepare_experts' result."""
    return experts * prepared_nbytes(qtype, rows, cols)


@njit
def route_by_expert(sel, local):
    """The (token, choice) pairs grouped by expert, for the experts held here: order[p] is
    pair p's flat index t * k + j, and the pairs of the a-th expert held here that any
    token chose are order[start[a]:start[a + 1]], expert[a] being its local index."""
    T, k = sel.shape
    n_experts = local.shape[0]
    count = np.zeros(n_experts, np.int64)
    for t in range(T):
        for j in range(k):
            if local[sel[t, j]] >= 0:
                count[sel[t, j]] += 1
    active = 0
    for e in range(n_experts):
        if count[e]:
            active += 1
    expert = np.empty(active, np.int64)
    start = np.zeros(active + 1, np.int64)
    slot = np.full(n_experts, -1, np.int64)
    a = 0
    for e in range(n_experts):
        if count[e]:
            expert[a], slot[e] = local[e], a
            start[a + 1] = start[a] + count[e]
            a += 1
    order = np.empty(start[active], np.int64)
    fill = start[:active].copy()
    for t in range(T):
        for j in range(k):
            a = slot[sel[t, j]]
            if a >= 0:
                order[fill[a]] = t * k + j
                fill[a] += 1
    return order, start, expert


@njit
def _rows(acts, s, e):
    a0, a1, a2, a3, a4, a5 = acts
    return a0[s:e], a1[s:e], a2[s:e], a3[s:e], a4[s:e], a5[s:e]


@njit
def _gather(acts, order, k):
    """The activation rows of the tokens of each pair, in pair order."""
    out = empty_activations(order.shape[0], acts[0].shape[1],
                            acts[0].shape[1] // acts[1].shape[1])
    for p in range(order.shape[0]):
        t = order[p] // k
        out[0][p] = acts[0][t]
        out[1][p] = acts[1][t]
        out[2][p] = acts[2][t]
        out[3][p] = acts[3][t]
        out[4][p] = acts[4][t]
        out[5][p] = acts[5][t]
    return out


@njit(parallel=True, boundscheck=False)
def _experts_glu(kernels, qg, wg, qu, wu, n_ff, cols, acts_g, acts_u, start, expert, G, U, H):
    groups = (n_ff + R - 1) // R
    none = np.empty(0, np.int8)   # no AMX panel: experts' token runs use the vector tiles
    items = expert.shape[0] * groups
    runs = split(items)
    for thread in prange(threads(runs)):
        while True:
            i = take(runs, thread)
            if i < 0:
                break
            a, g = i // groups, i % groups
            s, e = start[a], start[a + 1]
            _group_rows(kernels, qg, _expert(wg, qg, n_ff, cols, expert[a]),
                        cols // BLOCK_ELEMS[qg], _rows(acts_g, s, e), none, G[s:e], g, n_ff)
            _group_rows(kernels, qu, _expert(wu, qu, n_ff, cols, expert[a]),
                        cols // BLOCK_ELEMS[qu], _rows(acts_u, s, e), none, U[s:e], g, n_ff)
            for p in range(s, e):
                for r in range(g * R, min(n_ff, (g + 1) * R)):
                    H[p, r] = _silu(G[p, r]) * U[p, r]


@njit(parallel=True, boundscheck=False)
def _experts_down(kernels, qd, wd, rows, n_ff, units, acts, start, expert, D):
    groups = (rows + R - 1) // R
    none = np.empty(0, np.int8)   # no AMX panel: experts' token runs use the vector tiles
    items = expert.shape[0] * groups
    runs = split(items)
    for thread in prange(threads(runs)):
        while True:
            i = take(runs, thread)
            if i < 0:
                break
            a, g = i // groups, i % groups
            s, e = start[a], start[a + 1]
            _group_units(kernels, qd, _expert(wd, qd, rows, n_ff, expert[a]),
                         n_ff // BLOCK_ELEMS[qd], units, _rows(acts, s, e), none, D, g, rows, s)


@njit
def _weigh_token(D, where, wt, t, Yu):
    """Yu[u, t] = sum over j of wt[t, j] * D[u, pair of (t, j)], in the order of t's choices
    (pairs of experts not held here count as zero)."""
    k = wt.shape[1]
    for u in range(Yu.shape[0]):
        y = Yu[u, t]
        y[:] = 0
        for j in range(k):
            p = where[t * k + j]
            if p >= 0:
                w = np.float32(wt[t, j])
                d = D[u, p]
                for r in range(y.shape[0]):
                    y[r] += w * d[r]


@njit(parallel=True)
def _weigh_tokens(D, where, wt, Yu):
    for t in prange(Yu.shape[1]):
        _weigh_token(D, where, wt, t, Yu)


@njit(parallel=True, boundscheck=False)
def _quantize_pairs(H, acts):
    for p in prange(H.shape[0]):
        quantize_row(H, acts, p)


@njit
def scratch_floats(T, k, n_ff, rows, n_units):
    """Floats of expert_ffn's scratch for T tokens choosing k experts each."""
    return T * k * (3 * n_ff + n_units * rows)


@njit
def expert_ffn(kernels, qg, wg, qu, wu, qd, wd, n_ff, cols, rows, units, local, X, sel, wt,
               Yu, scratch):
    """Yu[u, t] = sum over j of wt[t, j] * down_e,u(silu(gate_e(X[t])) * up_e(X[t])),
    e = sel[t, j], over the experts held here (local[e] >= 0), down_e,u being reduce unit
    u of down_e's columns (units: their first blocks and the end; numatp/parallel/plan.py):
    each unit's weighted sum is the same on any rank that holds it. Yu (n_units, T, rows)
    is overwritten. scratch: float32, scratch_floats() long at least; the caller keeps it
    from call to call, since a prompt chunk's (50 MB for 128 tokens of Qwen3-30B-A3B's
    experts in 6 units) would otherwise be mapped and faulted in again in every layer.
    Quantized expert types only; n_ff and cols whole blocks of their types."""
    qg, qu, qd = np.int64(qg), np.int64(qu), np.int64(qd)
    n_ff, cols, rows = np.int64(n_ff), np.int64(cols), np.int64(rows)
    fg, fu, fd = _check(kernels, qg), _check(kernels, qu), _check(kernels, qd)
    if fg == _FLOAT or fu == _FLOAT or fd == _FLOAT:
        raise ValueError("expert_ffn takes quantized experts only")
    T, k = sel.shape
    order, start, expert = route_by_expert(sel, local)
    pairs = order.shape[0]
    acts_g = _gather(_quantize(X, act_group(fg)), order, k)
    acts_u = acts_g if fu == fg else _gather(_quantize(X, act_group(fu)), order, k)
    n_units = units.shape[0] - 1
    if scratch.shape[0] < scratch_floats(pairs, 1, n_ff, rows, n_units):
        raise ValueError("expert_ffn's scratch is too small")
    G = scratch[:pairs * n_ff].reshape((pairs, n_ff))
    U = scratch[pairs * n_ff:2 * pairs * n_ff].reshape((pairs, n_ff))
    H = scratch[2 * pairs * n_ff:3 * pairs * n_ff].reshape((pairs, n_ff))
    D = scratch[3 * pairs * n_ff:(3 * n_ff + n_units * rows) * pairs].reshape(
        (n_units, pairs, rows))
    _experts_glu(kernels, qg, wg, qu, wu, n_ff, cols, acts_g, acts_u, start, expert, G, U, H)
    hacts = empty_activations(pairs, n_ff, act_group(fd))
    _quantize_pairs(H, hacts)
    _experts_down(kernels, qd, wd, rows, n_ff, units, hacts, start, expert, D)
    where = np.full(T * k, -1, np.int64)
    for p in range(pairs):
        where[order[p]] = p
    if rows_in_parallel(T, rows * Yu.shape[0] * k):
        _weigh_tokens(D, where, wt, Yu)
    else:
        for t in range(T):
            _weigh_token(D, where, wt, t, Yu)


@njit
def _expert(w, qtype, rows, cols, e):
    """Expert e's matrix in a stack of packed rows x cols matrices."""
    size = _expert_bytes(qtype, rows, cols)
    return w[e * size:(e + 1) * size]


@njit
def _expert_bytes(qtype, rows, cols):
    """prepared_nbytes for a packed format, in jitted code: R-row groups of whole blocks."""
    return (rows + R - 1) // R * R * (cols // BLOCK_ELEMS[qtype]) * BLOCK_BYTES[qtype]
