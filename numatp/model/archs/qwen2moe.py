"""Qwen2 MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's attention with Q/K/V biases; experts
whose weights are the router's own probabilities (not rescaled), beside a shared expert
every token goes through, gated by sigmoid(x . ffn_gate_inp_shexp)."""
from numatp.model.archs.parts import (ATTENTION, KV_CACHE, MODEL, MOE_FFN, QKV_BIAS,
                                      SHARED_EXPERT)
from numatp.model.declare import Arch

ARCH = Arch("qwen2moe", family="moe",
            tensors=MODEL + ATTENTION + QKV_BIAS + MOE_FFN + SHARED_EXPERT, cache=KV_CACHE,
            rope_neox=True, experts=True, ffn_key="expert_shared_feed_forward_length",
            expert_ffn_key="expert_feed_forward_length")
