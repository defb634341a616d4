"""Supported architectures. Each module describes how one family differs from the common
transformer step: which optional tensors it has and which RoPE layout its GGUF uses."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str
    rope_neox: bool       # rotate (i, i + d/2) pairs; False: adjacent (2i, 2i+1) pairs
    qkv_bias: bool        # attn_{q,k,v}.bias tensors
    qk_norm: bool         # per-head RMSNorm of q and k before RoPE


def get_arch(name: str) -> Arch:
    from numatp.model.archs import llama, qwen2, qwen3
    archs = {a.name: a for a in (llama.ARCH, qwen2.ARCH, qwen3.ARCH)}
    if name not in archs:
        from numatp.errors import ModelFileError
        raise ModelFileError(f"unsupported architecture {name!r} (supported: {', '.join(sorted(archs))})")
    return archs[name]


SUPPORTED = ("llama", "qwen2", "qwen3")
