"""Llama 2/3, Mistral, TinyLlama, SmolLM. llama.cpp's converter permutes the Q/K rows of
these checkpoints so that RoPE rotates adjacent pairs."""
from numatp.model.archs.parts import ATTENTION, DENSE_FFN, KV_CACHE, MODEL
from numatp.model.declare import Arch

ARCH = Arch("llama", family="dense", tensors=MODEL + ATTENTION + DENSE_FFN, cache=KV_CACHE,
            rope_neox=False)
