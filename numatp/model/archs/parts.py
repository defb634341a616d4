"""Declarations the architectures share: the model-wide tensors, attention with its
optional biases and q/k norms, the dense (SwiGLU) FFN, and the attention KV cache.
An architecture file adds these up, with tensors of its own where it has them."""
from numatp.model.declare import (BY_FFN_COLUMN, BY_FFN_ROW, BY_KV_HEAD, BY_Q_HEAD,
                                  BY_Q_HEAD_COLUMN, BY_VOCAB_ROW, LOAD, ROW, Cache, Split,
                                  Tensor)
from numatp.model.slots import (ATTN_NORM, BK, BQ, BV, FFN_NORM, K_NORM, OUTPUT, OUTPUT_NORM,
                                Q_NORM, W_DOWN, W_GATE, W_UP, WK, WO, WQ, WV)

TOKEN_EMBD = Tensor("token_embd.weight", ("vocab", "hidden"), read=ROW)
# Without its own output head a model reads the embedding in its place (tied embeddings).
OUTPUT_HEAD = Tensor("output.weight", ("vocab", "hidden"), BY_VOCAB_ROW, OUTPUT,
                     optional=True, instead=TOKEN_EMBD.name)
# Llama 3.1's per-frequency RoPE divisors, folded into the RoPE tables at load.
ROPE_FREQS = Tensor("rope_freqs.weight", ("rope_pairs",), read=LOAD, optional=True)
MODEL = (
    TOKEN_EMBD,
    Tensor("output_norm.weight", ("hidden",), slot=OUTPUT_NORM),
    OUTPUT_HEAD,
    ROPE_FREQS,
)

ATTENTION = (
    Tensor("blk.{i}.attn_norm.weight", ("hidden",), slot=ATTN_NORM),
    Tensor("blk.{i}.attn_q.weight", ("q_dim", "hidden"), BY_Q_HEAD, WQ),
    Tensor("blk.{i}.attn_k.weight", ("kv_dim", "hidden"), BY_KV_HEAD, WK),
    Tensor("blk.{i}.attn_v.weight", ("kv_dim", "hidden"), BY_KV_HEAD, WV),
    Tensor("blk.{i}.attn_output.weight", ("hidden", "q_dim"), BY_Q_HEAD_COLUMN, WO),
)
QKV_BIAS = (
    Tensor("blk.{i}.attn_q.bias", ("q_dim",), BY_Q_HEAD, BQ),
    Tensor("blk.{i}.attn_k.bias", ("kv_dim",), BY_KV_HEAD, BK),
    Tensor("blk.{i}.attn_v.bias", ("kv_dim",), BY_KV_HEAD, BV),
)
# RMSNorm of each query and key head before RoPE (one weight vector shared by the heads).
QK_NORM = (
    Tensor("blk.{i}.attn_q_norm.weight", ("head_dim",), slot=Q_NORM),
    Tensor("blk.{i}.attn_k_norm.weight", ("head_dim",), slot=K_NORM),
)

DENSE_FFN = (
    Tensor("blk.{i}.ffn_norm.weight", ("hidden",), slot=FFN_NORM),
    Tensor("blk.{i}.ffn_gate.weight", ("ffn", "hidden"), BY_FFN_ROW, W_GATE),
    Tensor("blk.{i}.ffn_up.weight", ("ffn", "hidden"), BY_FFN_ROW, W_UP),
    Tensor("blk.{i}.ffn_down.weight", ("hidden", "ffn"), BY_FFN_COLUMN, W_DOWN),
)

# Keys and values of every position, per layer and KV head; a rank keeps those of the
# KV heads it holds.
_BY_KV_HEAD_OF_CACHE = Split("kv_heads", axis=1)
KV_CACHE = (
    Cache("keys", ("n_layers", "n_kv_heads", "ctx", "head_dim"), _BY_KV_HEAD_OF_CACHE),
    Cache("values", ("n_layers", "n_kv_heads", "ctx", "head_dim"), _BY_KV_HEAD_OF_CACHE),
)
