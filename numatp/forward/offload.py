"""The step with attention on the GPU (`--gpu attn`): the same layers as the dense and
MoE steps, but as a loop in Python, one iteration per layer, because each layer crosses
to the GPU and back:

    rank 0 (owns the GPU)                        ranks 1.. (no attention weights, no KV)
    xb -> GPU: q/k/v, rope, KV, attention, o -> proj     proj = 0
    ------------- reduce(proj): the attention block's output on every rank ------------
    x += proj; xb = ffn_norm(x); my FFN rows (or experts) -> proj
    ------------- reduce(proj), as in the CPU steps ------------------------------------
    x += proj; xb = the next layer's attn_norm(x)

The all-reduce is the CPU steps' own: the ranks without the GPU add zero for attention,
so its sum is the GPU's output, exactly. The GPU belongs to rank 0 because a rank runs the
layers and takes part in every reduce; the coordinator does neither.

Everything on the CPU side is the families' own code (blocks.py, and the rest of a layer
after attention as dense.py and moe.py define it), called through the jitted entries
below (one call per layer for the FFN half, so the per-layer Python work is a few calls). Only these entries are cache=True (see forward/__init__.py).
"""
import numpy as np
from numba import njit

from numatp.forward import dense, moe
from numatp.forward.blocks import dense_ffn_work, matmul, rmsnorm, vector, whole
from numatp.forward.layout import D_HIDDEN, D_LAYERS
from numatp.forward.moe import moe_ffn_work
from numatp.model.slots import ATTN_NORM, LAYER_SLOTS, OUTPUT
from numatp.quant.team import no_team


@njit(cache=True, nogil=True)
def _begin_dense(arena, index, dims, eps, x, xb):
    """The first layer's input norm; the FFN's buffers for x's tokens."""
    rmsnorm(x, vector(arena, index, ATTN_NORM), eps, xb)
    return dense_ffn_work(index, dims, x.shape[0])


@njit(cache=True, nogil=True)
def _begin_moe(arena, index, dims, eps, x, xb):
    rmsnorm(x, vector(arena, index, ATTN_NORM), eps, xb)
    return moe_ffn_work(index, dims, x.shape[0])


# Cached entries (this module's Python loop calls them), each running its family's rest of
# a layer: only entry points are cache=True (numatp/forward/__init__.py says why).
@njit(cache=True, nogil=True)
def _after_attention_dense(kernels, arena, index, dims, eps, x, xb, proj, layer, s, work,
                           group):
    # the GPU's attention output is one part: the whole projection on rank 0, zeros on
    # the others
    return dense.after_attention(kernels, arena, index, dims, eps, x, xb, proj,
                                 whole(proj[s:]), layer, s, work, group, no_team())


@njit(cache=True, nogil=True)
def _after_attention_moe(kernels, arena, index, dims, eps, x, xb, proj, layer, s, work, group):
    return moe.after_attention(kernels, arena, index, dims, eps, x, xb, proj, whole(proj[s:]),
                               layer, s, work, group, no_team())


@njit(cache=True, nogil=True)
def _head(kernels, arena, index, dims, xb, logits):
    """My vocabulary rows of the last token's logits."""
    matmul(no_team(), kernels, arena, index, dims[D_LAYERS] * LAYER_SLOTS + OUTPUT, xb,
           logits.reshape(1, logits.shape[0]))


_FAMILY = {"dense": (_begin_dense, _after_attention_dense),
           "moe": (_begin_moe, _after_attention_moe)}


class OffloadStep:
    """A step, called as the CPU steps are (numatp/forward/__init__.py) but without the
    kv_cache (the GPU holds it) and with the GPU's attention: `attention` is a
    numatp.gpu.attention.GpuAttention on the rank that owns the GPU, None on the others.
    xb and proj, the vectors that cross to the GPU and back, are pinned host buffers of
    max_tokens rows, allocated once."""

    def __init__(self, family, dims, attention, max_tokens, empty_pinned=None):
        self._begin, self._after = _FAMILY[family]
        self.attention = attention
        hidden = int(dims[D_HIDDEN])
        empty = empty_pinned or (lambda shape, dtype: np.empty(shape, dtype))
        self.xb = empty((max_tokens, hidden), np.float32)
        self.proj = empty((max_tokens, hidden), np.float32)
        self.n_layers = int(dims[D_LAYERS])

    def __call__(self, kernels, arena, index, dims, eps, x, pos0, logits, group):
        T = x.shape[0]
        xb, proj = self.xb[:T], self.proj[:T]
        work = self._begin(arena, index, dims, eps, x, xb)
        L = self.n_layers
        for layer in range(L):
            # As in the CPU steps, the last layer carries on with the last token only.
            s = T - 1 if layer == L - 1 else 0
            if self.attention is not None:
                self.attention(layer, xb, pos0, s, proj)
            else:
                proj[s:] = 0
            status = self._after(kernels, arena, index, dims, eps, x, xb, proj, layer, s, work,
                                 group)
            if status != 0:
                return status
        _head(kernels, arena, index, dims, xb[T - 1:T], logits)
        return 0
