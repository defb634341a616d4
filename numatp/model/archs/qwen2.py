"""Qwen2 / Qwen2.5: biases on the Q, K and V projections; NEOX RoPE."""
from numatp.model.archs.parts import ATTENTION, DENSE_FFN, KV_CACHE, MODEL, QKV_BIAS
from numatp.model.declare import Arch

ARCH = Arch("qwen2", family="dense", tensors=MODEL + ATTENTION + QKV_BIAS + DENSE_FFN,
            cache=KV_CACHE, rope_neox=True)
