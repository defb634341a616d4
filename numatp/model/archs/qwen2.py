"""Qwen2 / Qwen2.5: biases on the Q, K and V projections; NEOX RoPE."""
from numatp.model.archs import Arch

ARCH = Arch("qwen2", rope_neox=True, qkv_bias=True, qk_norm=False)
