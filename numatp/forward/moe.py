"""The step of Mixture-of-Experts transformers (qwen3moe, qwen2moe, Mixtral): every layer
is the dense family's attention, then a MoE FFN: a router picks each token's experts, the
chosen experts run as SwiGLU FFNs (numatp/quant/experts.py) and their outputs are summed,
weighted by the router's probabilities; qwen2moe adds a shared expert (the dense FFN
block) scaled by its own sigmoid gate.

Every rank holds the whole router and routes the same normed residual, which the reduce
left identical on all ranks, so all ranks choose the same experts without exchanging
anything; each runs its rows of those experts (or, split by whole experts, the chosen
experts it holds) and the reduce sums the partial outputs, as after a dense FFN.
"""
import math

import numpy as np
from numba import njit

from numatp.forward.blocks import (add_rmsnorm, attention, attention_work, ffn_glu, has,
                                   matmul, matrix, next_norm, reduce, rmsnorm, unit_buffer,
                                   unit_product, unit_view, units, vector, whole, widest)
from numatp.forward.layout import (COLS, D_E0, D_E1, D_EXPERT_FFN, D_EXPERT_NORM, D_EXPERTS,
                                   D_EXPERTS_USED, D_FFN, D_HIDDEN, D_LAYERS, QTYPE, ROWS,
                                   UNITS)
from numatp.model.slots import (ATTN_NORM, FFN_NORM, LAYER_SLOTS, OUTPUT, ROUTER,
                                SHARED_GATE, W_DOWN, W_DOWN_EXPS, W_GATE_EXPS, W_UP_EXPS)
from numatp.quant.experts import expert_ffn, scratch_floats


@njit
def route(router_logits, normalise, sel, wt):
    """Each token's experts: the softmax of its router logits, the sel.shape[1] most
    probable (ties to the lower expert number, so every rank and run picks alike), their
    probabilities as weights, rescaled to sum to 1 when `normalise`."""
    T, n = router_logits.shape
    k = sel.shape[1]
    probs = np.empty(n, np.float32)
    taken = np.empty(n, np.bool_)
    for t in range(T):
        top = router_logits[t].max()
        total = np.float32(0.0)
        for e in range(n):
            probs[e] = math.exp(router_logits[t, e] - top)
            total += probs[e]
        taken[:] = False
        chosen = np.float32(0.0)
        for j in range(k):
            best = -1
            for e in range(n):
                if not taken[e] and (best < 0 or probs[e] > probs[best]):
                    best = e
            taken[best] = True
            sel[t, j] = best
            wt[t, j] = probs[best] / total
            chosen += wt[t, j]
        if normalise:
            for j in range(k):
                wt[t, j] /= chosen


@njit
def moe_ffn_work(index, dims, T):
    """Buffers of `moe_ffn` for T tokens: router logits, choices, weights, the local
    number of each expert (-1: held by another rank), the experts' and the shared
    expert's reduce units' partial sums, the shared expert's dense-FFN buffers
    (empty without a shared expert) and expert_ffn's scratch."""
    k = dims[D_EXPERTS_USED]
    local = np.full(dims[D_EXPERTS], -1, np.int64)
    for e in range(dims[D_E0], dims[D_E1]):
        local[e] = e - dims[D_E0]
    hidden = dims[D_HIDDEN]
    n = max(index[W_DOWN_EXPS, UNITS], 1)
    ffn = dims[D_FFN] if has(index, SHARED_GATE) else 0
    # the dense-FFN buffers without room for down's units: moe_ffn keeps the shared
    # expert's units with the experts'
    shared = (np.empty((T, ffn), dtype=np.float32), np.empty((T, ffn), dtype=np.float32),
              np.zeros((T, widest(index, dims[D_LAYERS], W_DOWN)), dtype=np.float32),
              np.empty(0, dtype=np.float32))
    scratch = np.empty(scratch_floats(T, k, dims[D_EXPERT_FFN], hidden, n), np.float32)
    return (np.empty((T, dims[D_EXPERTS]), np.float32), np.empty((T, k), np.int64),
            np.empty((T, k), np.float32), local, unit_buffer(index, W_DOWN_EXPS, T, hidden),
            np.empty(n * T * hidden if ffn else 0, np.float32), shared, scratch)


@njit
def moe_ffn(team, kernels, arena, index, dims, e, xb, s, work, out):
    """The MoE FFN of rows s: of xb, this rank's partial sum for the reduce, returned as
    partial_product's parts (in out[s:] for one unit).
    Each reduce unit (numatp/parallel/plan.py) gets its experts' weighted outputs and its
    part of the shared expert's before the units are added up, so that a unit's partial
    sum is the same whichever rank holds it."""
    router_logits, sel, wt, local, routed_buf, shared_buf, shared_work, scratch = work
    X = xb[s:]
    T, hidden = X.shape[0], out.shape[1]
    matmul(team, kernels, arena, index, e + ROUTER, X, router_logits[s:])
    route(router_logits[s:], dims[D_EXPERT_NORM] != 0, sel[s:], wt[s:])
    eg, eu, ed = e + W_GATE_EXPS, e + W_UP_EXPS, e + W_DOWN_EXPS
    n = index[ed, UNITS]
    # one unit is the partial sum itself: written in place
    routed = whole(out[s:]) if n == 1 else unit_view(routed_buf, n, T, hidden)
    if dims[D_EXPERT_FFN] > 0 and dims[D_E1] > dims[D_E0]:
        expert_ffn(kernels, index[eg, QTYPE], matrix(arena, index, eg), index[eu, QTYPE],
                   matrix(arena, index, eu), index[ed, QTYPE], matrix(arena, index, ed),
                   index[eg, ROWS], index[eg, COLS], index[ed, ROWS], units(index, ed), local,
                   X, sel[s:], wt[s:], routed, scratch)
    else:
        routed[:] = 0
    if has(index, e + SHARED_GATE) and dims[D_FFN] > 0:
        # the plan cuts the shared expert's columns into as many units as the experts'
        h = ffn_glu(team, kernels, arena, index, e, xb, s, shared_work)
        shared = unit_view(shared_buf, n, T, hidden)
        unit_product(team, kernels, arena, index, e + W_DOWN, h[s:], shared)
        g = vector(arena, index, e + SHARED_GATE)
        for t in range(T):
            dot = 0.0
            for j in range(g.shape[0]):
                dot += np.float64(X[t, j]) * g[j]
            scale = np.float32(1.0 / (1.0 + math.exp(-dot)))
            for u in range(n):
                for j in range(hidden):
                    routed[u, t, j] += scale * shared[u, t, j]
    return routed


@njit
def after_attention(kernels, arena, index, dims, eps, x, xb, proj, parts, layer, s, work,
                    group, team):
    """As the dense step's (numatp/forward/dense.py), with the MoE FFN."""
    e = layer * LAYER_SLOTS
    status = reduce(group, parts, proj[s:])
    if status != 0:
        return status
    add_rmsnorm(x[s:], proj[s:], vector(arena, index, e + FFN_NORM), eps, xb[s:])
    parts = moe_ffn(team, kernels, arena, index, dims, e, xb, s, work, proj)
    status = reduce(group, parts, proj[s:])
    if status != 0:
        return status
    add_rmsnorm(x[s:], proj[s:], vector(arena, index, next_norm(layer, dims[D_LAYERS])), eps,
                xb[s:])
    return 0


# nogil: as the dense step's (numatp/forward/dense.py).
@njit(cache=True, nogil=True)
def step(kernels, arena, index, dims, eps, rope_cs, kv_cache, x, pos, base, logits, group,
         team):
    """As the dense step (numatp/forward/dense.py), with a MoE FFN in every layer."""
    T, hidden = x.shape
    n_out = logits.shape[0]   # the last n_out rows get logits
    L = dims[D_LAYERS]
    xb = np.empty((T, hidden), dtype=np.float32)
    proj = np.empty((T, hidden), dtype=np.float32)
    att_work = attention_work(index, dims, T)
    ffn_work = moe_ffn_work(index, dims, T)
    rmsnorm(x, vector(arena, index, ATTN_NORM), eps, xb)
    for layer in range(L):
        e = layer * LAYER_SLOTS
        s = T - n_out if layer == L - 1 else 0
        parts = attention(team, kernels, arena, index, dims, eps, rope_cs, kv_cache, layer, e,
                          xb, pos, base, s, att_work, proj)
        status = after_attention(kernels, arena, index, dims, eps, x, xb, proj, parts, layer,
                                 s, ffn_work, group, team)
        if status != 0:
            return status
    matmul(team, kernels, arena, index, L * LAYER_SLOTS + OUTPUT, xb[T - n_out:], logits)
    return 0
