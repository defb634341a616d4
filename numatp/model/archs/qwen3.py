"""Qwen3 (dense): RMSNorm of each q and k head before RoPE; head_dim may differ from
hidden / heads; NEOX RoPE."""
from numatp.model.archs.parts import ATTENTION, DENSE_FFN, KV_CACHE, MODEL, QK_NORM
from numatp.model.declare import Arch

ARCH = Arch("qwen3", family="dense", tensors=MODEL + ATTENTION + QK_NORM + DENSE_FFN,
            cache=KV_CACHE, rope_neox=True)
