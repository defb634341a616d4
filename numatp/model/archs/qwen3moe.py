"""Qwen3 MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention, and experts in place
of the dense FFN; the chosen experts' weights rescaled to sum to 1."""
from numatp.model.archs.parts import ATTENTION, KV_CACHE, MODEL, MOE_FFN, QK_NORM
from numatp.model.declare import Arch

ARCH = Arch("qwen3moe", family="moe", tensors=MODEL + ATTENTION + QK_NORM + MOE_FFN,
            cache=KV_CACHE, rope_neox=True, experts=True,
            expert_ffn_key="expert_feed_forward_length", expert_weights_norm=True)
