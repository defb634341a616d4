"""Optional GPU offload (`--gpu attn`, `numatp.LLM(..., gpu="attn")`): each layer's
attention block (Q/K/V/O weights dequantized to f16, biases, q/k norms, RoPE, the KV cache
in f16 and the attention itself) runs on one CUDA GPU through CuPy, while the norms, the
FFN and the experts stay on the NUMA workers.

device.py   find CuPy and the GPU (or the numpy host stand-in the tests use)
budget.py   the bytes --gpu attn places on the GPU, and the check that they fit
attention.py  the attention block on an array module (CuPy, or numpy as a stand-in)
decode.py   a decoded token's attention block as fused CUDA kernels, a CUDA graph per layer
The per-layer loop that alternates GPU attention and CPU FFN is numatp/forward/offload.py.
"""
