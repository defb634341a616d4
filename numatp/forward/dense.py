"""The step of dense transformers (llama, qwen2, qwen3): every layer is attention, then
one SwiGLU FFN, each followed by the reduce of its partial sums and the residual."""
import numpy as np
from numba import njit

from numatp.forward.blocks import (add_rmsnorm, attention, attention_work, dense_ffn,
                                   dense_ffn_work, matmul, next_norm, reduce, rmsnorm, vector)
from numatp.forward.layout import D_LAYERS
from numatp.model.slots import ATTN_NORM, FFN_NORM, LAYER_SLOTS, OUTPUT


@njit
def after_attention(kernels, arena, index, dims, eps, x, xb, proj, parts, layer, s, work,
                    group, team):
    """The rest of a layer once `parts` hold this rank's share of its attention block's
    output (rows s:): reduce into proj[s:], residual and FFN norm, my FFN rows, reduce,
    residual and the next norm into xb[s:]. Returns 0, or the reduce's non-zero status.
    (The GPU's step, numatp/forward/offload.py, runs it after attention on the GPU.)"""
    e = layer * LAYER_SLOTS
    status = reduce(group, parts, proj[s:])
    if status != 0:
        return status
    add_rmsnorm(x[s:], proj[s:], vector(arena, index, e + FFN_NORM), eps, xb[s:])
    parts = dense_ffn(team, kernels, arena, index, e, xb, s, work, proj)
    status = reduce(group, parts, proj[s:])
    if status != 0:
        return status
    add_rmsnorm(x[s:], proj[s:], vector(arena, index, next_norm(layer, dims[D_LAYERS])), eps,
                xb[s:])
    return 0


# nogil: a worker's lifeline thread (parallel/worker.py) must be able to run, and end the
# process, while a step waits in the all-reduce on a peer that died with the coordinator.
@njit(cache=True, nogil=True)
def step(kernels, arena, index, dims, eps, rope_cs, kv_cache, x, pos, base, logits, group,
         team):
    """Run tokens x (T, hidden: their embeddings), row t at position pos[t] of the
    sequence whose cache rows start at base[t], through all layers, updating the KV cache
    (x is overwritten: the residual stream); write this shard's slice of the logits of
    the last logits.shape[0] rows into `logits`. Returns 0, or the reduce's non-zero
    status. The arguments: see numatp/forward/__init__.py."""
    T, hidden = x.shape
    n_out = logits.shape[0]   # the last n_out rows get logits
    L = dims[D_LAYERS]
    xb = np.empty((T, hidden), dtype=np.float32)     # the normed residual: a block's input
    proj = np.empty((T, hidden), dtype=np.float32)   # a block's output, to be reduced
    att_work = attention_work(index, dims, T)
    ffn_work = dense_ffn_work(index, dims, T)
    rmsnorm(x, vector(arena, index, ATTN_NORM), eps, xb)
    for layer in range(L):
        e = layer * LAYER_SLOTS
        # The last layer's keys and values go into the cache for every token, but only the
        # rows that get logits go on: nothing reads the others' outputs (a prompt chunk's
        # logits are its last token's; a batched decode wants every row's), so from its
        # attention on the layer runs for rows s: alone.
        s = T - n_out if layer == L - 1 else 0
        parts = attention(team, kernels, arena, index, dims, eps, rope_cs, kv_cache, layer, e,
                          xb, pos, base, s, att_work, proj)
        status = after_attention(kernels, arena, index, dims, eps, x, xb, proj, parts, layer,
                                 s, ffn_work, group, team)
        if status != 0:
            return status
    # Output head: my vocabulary rows, for the rows that get logits.
    matmul(team, kernels, arena, index, L * LAYER_SLOTS + OUTPUT, xb[T - n_out:], logits)
    return 0
