"""Mixtral: a llama-architecture file with expert_count. Llama's attention (adjacent-pair
RoPE), experts feed_forward_length long in place of the dense FFN, the chosen experts'
weights rescaled to sum to 1."""
from numatp.model.archs.parts import ATTENTION, KV_CACHE, MODEL, MOE_FFN
from numatp.model.declare import Arch

ARCH = Arch("llama", family="moe", tensors=MODEL + ATTENTION + MOE_FFN, cache=KV_CACHE,
            rope_neox=False, experts=True, expert_ffn_key="feed_forward_length",
            expert_weights_norm=True)
