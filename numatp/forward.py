"""One transformer step over one shard: my query/KV heads, my FFN rows, my vocabulary
rows. The same code runs a single-process model (one shard holding everything) and every
rank of a tensor-parallel group; it does not know how many ranks there are, only that the
partial sums after attn_output and ffn_down go through the all-reduce, which returns at
once for a single shard.

The whole step, all layers, is one jitted call: the per-token Python work is O(1).

Weights of a shard live in one uint8 arena; `index[entry]` says where each tensor is:
entry = layer * LAYER_SLOTS + slot for per-layer tensors, n_layers * LAYER_SLOTS + slot
for the others (numatp/model/slots.py).
"""
import math

import numpy as np
from numba import njit, prange

from numatp import _env  # noqa: F401
from numatp.model.slots import (ATTN_NORM, BK, BQ, BV, FFN_NORM, K_NORM, LAYER_SLOTS, OUTPUT,
                                OUTPUT_NORM, Q_NORM, W_DOWN, W_GATE, W_UP, WK, WO, WQ, WV)
from numatp.shm.allreduce import allreduce
from numatp.quant.kernels import glu, linear, linear3

# Columns of the index.
OFFSET, QTYPE, ROWS, COLS, NBYTES, PAD = range(6)
INDEX_COLS = 6

# Fields of the int64 `dims` vector of a shard.
(D_LAYERS, D_HIDDEN, D_HEAD_DIM, D_NQ, D_NKV, D_Q0, D_KV0, D_GROUP, D_FFN, D_VOCAB,
 D_ROPE_DIM, D_ROPE_NEOX, D_QKV_BIAS, D_QK_NORM, D_CTX, D_ATT_COLS, D_FFN_COLS) = range(17)
N_DIMS = 17


@njit
def _vector(arena, index, e):
    off = index[e, OFFSET]
    return arena[off:off + index[e, NBYTES]].view(np.float32)


@njit
def _matrix(arena, index, e):
    off = index[e, OFFSET]
    return arena[off:off + index[e, NBYTES]]


@njit
def _linear(kernels, arena, index, e, X, Y):
    linear(kernels, index[e, QTYPE], _matrix(arena, index, e), index[e, ROWS], index[e, COLS],
           X, Y)


@njit
def _qkv(kernels, arena, index, e, X, q, k, v):
    """The layer's Q, K and V projections of X, in one parallel region."""
    eq, ek, ev = e + WQ, e + WK, e + WV
    linear3(kernels, index[eq, QTYPE], _matrix(arena, index, eq), index[eq, ROWS],
            index[ek, QTYPE], _matrix(arena, index, ek), index[ek, ROWS],
            index[ev, QTYPE], _matrix(arena, index, ev), index[ev, ROWS], index[eq, COLS],
            X, q, k, v)


@njit
def _gate_up(kernels, arena, index, e, X, gate, up, hbuf):
    """hbuf[:, pad:] = silu(gate(X)) * up(X), pad as ffn_down wants its input."""
    eg, eu = e + W_GATE, e + W_UP
    glu(kernels, index[eg, QTYPE], _matrix(arena, index, eg), index[eu, QTYPE],
        _matrix(arena, index, eu), index[eg, ROWS], index[eg, COLS], X, gate, up, hbuf,
        index[e + W_DOWN, PAD])


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
def _rmsnorm(x, w, eps, out):
    """Each row of x; tokens in parallel when there are several (one is too little work
    for a parallel region)."""
    if x.shape[0] > 1:
        _rmsnorm_tokens(x, w, eps, out)
    else:
        _rmsnorm_row(x[0], w, eps, out[0])


@njit(parallel=True)
def _add_rmsnorm_tokens(x, d, w, eps, out):
    for t in prange(x.shape[0]):
        x[t] += d[t]
        _rmsnorm_row(x[t], w, eps, out[t])


@njit
def _add_rmsnorm(x, d, w, eps, out):
    """x += d (the residual), then out = rmsnorm(x), in one pass."""
    if x.shape[0] > 1:
        _add_rmsnorm_tokens(x, d, w, eps, out)
    else:
        x[0] += d[0]
        _rmsnorm_row(x[0], w, eps, out[0])


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
def _rope_tokens(v, n_heads, hd, rope_dim, neox, cos, sin, pos0):
    for t in prange(v.shape[0]):
        _rope_token(v, t, n_heads, hd, rope_dim, neox, cos, sin, pos0 + t)


@njit
def _rope(v, n_heads, hd, rope_dim, neox, cos, sin, pos0):
    """Rotate the first rope_dim dims of each head. neox: pairs (i, i + rope_dim/2);
    otherwise adjacent pairs (2i, 2i+1), which is what llama-architecture GGUFs expect."""
    if v.shape[0] > 1:
        _rope_tokens(v, n_heads, hd, rope_dim, neox, cos, sin, pos0)
    else:
        _rope_token(v, 0, n_heads, hd, rope_dim, neox, cos, sin, pos0)


# reassoc lets LLVM vectorize the q.k dot products (a float sum in a fixed order cannot
# be); each head is still summed by one thread, so results do not depend on the threads.
# The loops run over 1-D rows (K[p], V[p], a local accumulator) rather than indexing the
# 4-D caches element by element: LLVM then vectorizes both the dot products and the
# weighted sum of V, which made a 64-token chunk at position 448 of a 32-head model
# 4x faster (50 -> 13 ms per layer on 2 threads).
@njit(parallel=True, fastmath={"reassoc", "contract"})
def _attention(q, k_cache, v_cache, layer, pos0, nq, hd, group, q0, kv0, out, pad):
    """Causal attention of T new tokens (at pos0..) against the cache, per local q head;
    writes head h of token t at out[t, pad + h*hd ...]."""
    T = q.shape[0]
    scale = np.float32(1.0 / math.sqrt(hd))
    for th in prange(T * nq):
        t, h = th // nq, th % nq
        kvh = (q0 + h) // group - kv0
        n = pos0 + t + 1
        K = k_cache[layer, kvh]
        V = v_cache[layer, kvh]
        qh = q[t, h * hd:(h + 1) * hd]
        scores = np.empty(n, dtype=np.float32)
        m = np.float32(-np.inf)
        for p in range(n):
            kp = K[p]
            s = np.float32(0.0)
            for j in range(hd):
                s += qh[j] * kp[j]
            s *= scale
            scores[p] = s
            m = max(m, s)
        total = np.float32(0.0)
        for p in range(n):
            e = np.float32(math.exp(scores[p] - m))
            scores[p] = e
            total += e
        inv = np.float32(1.0) / total
        acc = np.zeros(hd, dtype=np.float32)
        for p in range(n):
            w = scores[p] * inv
            vp = V[p]
            for j in range(hd):
                acc[j] += w * vp[j]
        o = pad + h * hd
        for j in range(hd):
            out[t, o + j] = acc[j]


@njit
def _add_bias(v, b):
    for t in range(v.shape[0]):
        for j in range(v.shape[1]):
            v[t, j] += b[j]


# nogil: a worker's lifeline thread (parallel/worker.py) must be able to run, and end the
# process, while a step waits in the all-reduce on a peer that died with the coordinator.
@njit(cache=True, nogil=True)
def step(kernels, arena, index, dims, eps, rope_cos, rope_sin, k_cache, v_cache, x, pos0,
         logits, ar_ctl, ar_data, rank, n_ranks):
    """Run tokens x (T, hidden: their embeddings) at positions pos0..pos0+T-1 through all
    layers, updating the KV cache (x is overwritten: the residual stream); write this
    shard's slice of the logits of the last token into `logits`. Returns 0, or the all-reduce's non-zero status.
    `kernels` is the KernelSet of the shard's matrix types (the matrices' types)."""
    T, hidden = x.shape
    L, hd, nq, nkv = dims[D_LAYERS], dims[D_HEAD_DIM], dims[D_NQ], dims[D_NKV]
    ffn = dims[D_FFN]
    xb = np.empty((T, hidden), dtype=np.float32)
    q = np.empty((T, nq * hd), dtype=np.float32)
    k = np.empty((T, nkv * hd), dtype=np.float32)
    v = np.empty((T, nkv * hd), dtype=np.float32)
    att = np.zeros((T, dims[D_ATT_COLS]), dtype=np.float32)
    proj = np.empty((T, hidden), dtype=np.float32)
    gate = np.empty((T, ffn), dtype=np.float32)
    up = np.empty((T, ffn), dtype=np.float32)
    hbuf = np.zeros((T, dims[D_FFN_COLS]), dtype=np.float32)
    _rmsnorm(x, _vector(arena, index, ATTN_NORM), eps, xb)
    for layer in range(L):
        e = layer * LAYER_SLOTS
        # The last layer's keys and values go into the cache for every token, but only the
        # last token goes on: nothing reads the others' outputs (a prompt's logits are the
        # last token's), so from its attention on the layer runs for rows s: alone.
        s = T - 1 if layer == L - 1 else 0
        # Attention: my heads.
        _qkv(kernels, arena, index, e, xb, q, k, v)
        if dims[D_QKV_BIAS]:
            _add_bias(q, _vector(arena, index, e + BQ))
            _add_bias(k, _vector(arena, index, e + BK))
            _add_bias(v, _vector(arena, index, e + BV))
        if dims[D_QK_NORM]:
            _head_rmsnorm(q, nq, hd, _vector(arena, index, e + Q_NORM), eps)
            _head_rmsnorm(k, nkv, hd, _vector(arena, index, e + K_NORM), eps)
        _rope(q, nq, hd, dims[D_ROPE_DIM], dims[D_ROPE_NEOX], rope_cos, rope_sin, pos0)
        _rope(k, nkv, hd, dims[D_ROPE_DIM], dims[D_ROPE_NEOX], rope_cos, rope_sin, pos0)
        for t in range(T):
            for h in range(nkv):
                for j in range(hd):
                    k_cache[layer, h, pos0 + t, j] = k[t, h * hd + j]
                    v_cache[layer, h, pos0 + t, j] = v[t, h * hd + j]
        _attention(q[s:], k_cache, v_cache, layer, pos0 + s, nq, hd, dims[D_GROUP],
                   dims[D_Q0], dims[D_KV0], att[s:], index[e + WO, PAD])
        # attn_output over my heads' columns: a partial sum of the full projection.
        _linear(kernels, arena, index, e + WO, att[s:], proj[s:])
        status = allreduce(ar_ctl, ar_data, rank, n_ranks, proj[s:].reshape(-1))
        if status != 0:
            return status
        _add_rmsnorm(x[s:], proj[s:], _vector(arena, index, e + FFN_NORM), eps, xb[s:])
        # FFN: my rows of gate/up, my columns of down.
        _gate_up(kernels, arena, index, e, xb[s:], gate[s:], up[s:], hbuf[s:])
        _linear(kernels, arena, index, e + W_DOWN, hbuf[s:], proj[s:])
        status = allreduce(ar_ctl, ar_data, rank, n_ranks, proj[s:].reshape(-1))
        if status != 0:
            return status
        # the residual, then the next layer's input norm (after the last: the output norm)
        norm = e + LAYER_SLOTS + ATTN_NORM if layer < L - 1 else L * LAYER_SLOTS + OUTPUT_NORM
        _add_rmsnorm(x[s:], proj[s:], _vector(arena, index, norm), eps, xb[s:])
    # Output head: my vocabulary rows, last token only.
    _linear(kernels, arena, index, L * LAYER_SLOTS + OUTPUT, xb[T - 1:T],
            logits.reshape(1, logits.shape[0]))
    return 0


def rope_tables(ctx: int, rope_dim: int, base: float, scale: float, freq_factors=None):
    """cos/sin of pos * base^(-2i/rope_dim) (/ factor_i), computed in float64."""
    i = np.arange(rope_dim // 2, dtype=np.float64)
    inv_freq = base ** (-2.0 * i / rope_dim)
    if freq_factors is not None:
        inv_freq = inv_freq / np.asarray(freq_factors, dtype=np.float64)
    angles = np.outer(np.arange(ctx, dtype=np.float64) / scale, inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
