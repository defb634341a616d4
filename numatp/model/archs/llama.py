"""Llama 2/3, Mistral, TinyLlama, SmolLM. llama.cpp's converter permutes the Q/K rows of
these checkpoints so that RoPE rotates adjacent pairs."""
from numatp.model.archs import Arch

ARCH = Arch("llama", rope_neox=False, qkv_bias=False, qk_norm=False)
