"""Qwen3 (dense): RMSNorm of each q and k head before RoPE; head_dim may differ from
hidden / heads; NEOX RoPE."""
from numatp.model.archs import Arch

ARCH = Arch("qwen3", rope_neox=True, qkv_bias=False, qk_norm=True)
