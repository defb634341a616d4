"""The model's hyperparameters, read from GGUF metadata and checked against the tensors
its architecture declares (numatp/model/archs/)."""
from dataclasses import dataclass

import numpy as np

from numatp.errors import ModelFileError
from numatp.model.archs import get_arch
from numatp.model.archs.parts import OUTPUT_HEAD, ROPE_FREQS, TOKEN_EMBD
from numatp.model.declare import Arch, check_tensors
from numatp.model.gguf_file import describe


@dataclass
class ModelConfig:
    arch: Arch
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    ctx_train: int
    norm_eps: float
    rope_base: float
    rope_dim: int
    rope_scale: float          # positions are divided by this (linear scaling)
    rope_freq_factors: object  # per-frequency divisors (llama 3.1 rope_freqs.weight) or None
    tied_output: bool
    # Mixture of experts (0 for a dense model): experts per layer, chosen per token, and
    # each expert's FFN length.
    n_experts: int = 0
    n_experts_used: int = 0
    expert_ffn: int = 0

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    # Sizes the architecture declarations name (numatp/model/archs/parts.py).
    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def rope_pairs(self) -> int:
        return self.rope_dim // 2


def _meta(gguf, key, kind, default=None, required=True):
    value = gguf.metadata.get(key, default)
    if value is None:
        if required:
            raise ModelFileError(f"{gguf.path}: missing metadata {key}")
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ModelFileError(f"{gguf.path}: metadata {key} is {describe(value)}, "
                             "not a positive integer")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
            raise ModelFileError(f"{gguf.path}: metadata {key} is {describe(value)}, "
                                 "not a positive number")
        value = float(value)
    return value


def from_gguf(gguf) -> ModelConfig:
    arch_name = gguf.metadata.get("general.architecture")
    if arch_name is None:
        raise ModelFileError(f"{gguf.path}: missing metadata general.architecture")
    if not isinstance(arch_name, str):
        raise ModelFileError(f"{gguf.path}: metadata general.architecture is {describe(arch_name)}, "
                             "not a string")
    p = arch_name + "."
    # MoE files come under their own architecture names (qwen3moe) or under a dense one
    # (Mixtral is "llama"): the expert count says which declaration applies.
    experts = 0
    if p + "expert_count" in gguf.metadata:
        experts = _meta(gguf, p + "expert_count", int)
    try:
        arch = get_arch(arch_name, experts)
    except ModelFileError as e:
        raise ModelFileError(f"{gguf.path}: {e}") from None
    n_layers = _meta(gguf, p + "block_count", int)
    # Each layer has several tensors: a larger count is corrupt, and would have us list
    # the expected tensors of billions of layers.
    if n_layers > len(gguf.tensors):
        raise ModelFileError(f"{gguf.path}: metadata {p}block_count = {n_layers}, but the file "
                             f"has only {len(gguf.tensors)} tensors")
    hidden = _meta(gguf, p + "embedding_length", int)
    n_heads = _meta(gguf, p + "attention.head_count", int)
    n_kv = _meta(gguf, p + "attention.head_count_kv", int, default=n_heads)
    if p + "attention.key_length" not in gguf.metadata and hidden % n_heads:
        raise ModelFileError(f"{gguf.path}: embedding length {hidden} is not a multiple of the "
                             f"head count {n_heads}")
    head_dim = _meta(gguf, p + "attention.key_length", int, default=hidden // n_heads)
    value_dim = _meta(gguf, p + "attention.value_length", int, default=head_dim)
    if value_dim != head_dim:
        raise ModelFileError(f"{gguf.path}: key length {head_dim} != value length {value_dim} is not supported")
    if n_heads % n_kv:
        raise ModelFileError(f"{gguf.path}: {n_heads} heads is not a multiple of {n_kv} KV heads")
    rope_dim = _meta(gguf, p + "rope.dimension_count", int, default=head_dim)
    if rope_dim > head_dim or rope_dim % 2:
        raise ModelFileError(f"{gguf.path}: rope dimension {rope_dim} does not fit head size {head_dim}")
    scaling = gguf.metadata.get(p + "rope.scaling.type", "none")
    if not isinstance(scaling, str):
        raise ModelFileError(f"{gguf.path}: metadata {p}rope.scaling.type is {describe(scaling)}, "
                             "not a string")
    rope_scale = 1.0
    if scaling == "linear":
        rope_scale = _meta(gguf, p + "rope.scaling.factor", float)
    elif scaling != "none":
        raise ModelFileError(f"{gguf.path}: rope scaling {scaling!r} is not supported (supported: none, linear)")

    if TOKEN_EMBD.name not in gguf.tensors:
        raise ModelFileError(f"{gguf.path}: missing tensor {TOKEN_EMBD.name}")
    vocab = gguf.tensors[TOKEN_EMBD.name].shape[0]
    ffn = _meta(gguf, p + arch.ffn_key, int)
    used = expert_ffn = 0
    if arch.experts:
        used = _meta(gguf, p + "expert_used_count", int)
        if used > experts:
            raise ModelFileError(f"{gguf.path}: metadata {p}expert_used_count = {used} is more "
                                 f"than the {experts} experts")
        expert_ffn = _meta(gguf, p + arch.expert_ffn_key, int)
    cfg = ModelConfig(
        arch=arch, n_layers=n_layers, hidden=hidden, n_heads=n_heads, n_kv_heads=n_kv,
        head_dim=head_dim, ffn=ffn, vocab=vocab,
        ctx_train=_meta(gguf, p + "context_length", int, default=4096),
        norm_eps=_meta(gguf, p + "attention.layer_norm_rms_epsilon", float, default=1e-5),
        rope_base=_meta(gguf, p + "rope.freq_base", float, default=10000.0),
        rope_dim=rope_dim, rope_scale=rope_scale, rope_freq_factors=None,
        tied_output=OUTPUT_HEAD.name not in gguf.tensors,
        n_experts=experts, n_experts_used=used, expert_ffn=expert_ffn,
    )
    check_tensors(gguf, cfg)
    if ROPE_FREQS.name in gguf.tensors:
        cfg.rope_freq_factors = gguf.tensors[ROPE_FREQS.name].data.view(np.float32)
    return cfg
