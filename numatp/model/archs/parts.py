"""Declarations the architectures share: the model-wide tensors, attention with its
optional biases and q/k norms, the dense (SwiGLU) FFN, and the attention KV cache.
An architecture file adds these up, with tensors of its own where it has them."""
from numatp.model.declare import (BY_EXPERT_FFN_COLUMN, BY_EXPERT_FFN_ROW, BY_FFN_COLUMN,
                                  BY_FFN_ROW, BY_KV_HEAD, BY_Q_HEAD, BY_Q_HEAD_COLUMN,
                                  BY_VOCAB_ROW, LOAD, REPLICATED, ROW, Cache, Split, Tensor)
from numatp.model.slots import (ATTN_NORM, BK, BQ, BV, FFN_NORM, K_NORM, OUTPUT, OUTPUT_NORM,
                                Q_NORM, ROUTER, SHARED_GATE, W_DOWN, W_DOWN_EXPS, W_GATE,
                                W_GATE_EXPS, W_UP, W_UP_EXPS, WK, WO, WQ, WV)

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

# Mixture of experts: the router (F32, replicated: every rank routes identical inputs
# alike, so no rank needs another's choice) and the stacked experts.
MOE_FFN = (
    Tensor("blk.{i}.ffn_norm.weight", ("hidden",), slot=FFN_NORM),
    Tensor("blk.{i}.ffn_gate_inp.weight", ("n_experts", "hidden"), REPLICATED, ROUTER),
    Tensor("blk.{i}.ffn_gate_exps.weight", ("n_experts", "expert_ffn", "hidden"),
           BY_EXPERT_FFN_ROW, W_GATE_EXPS),
    Tensor("blk.{i}.ffn_up_exps.weight", ("n_experts", "expert_ffn", "hidden"),
           BY_EXPERT_FFN_ROW, W_UP_EXPS),
    Tensor("blk.{i}.ffn_down_exps.weight", ("n_experts", "hidden", "expert_ffn"),
           BY_EXPERT_FFN_COLUMN, W_DOWN_EXPS),
)
# An expert every token goes through, split like a dense FFN ("ffn" is its length),
# its output scaled by sigmoid(x . ffn_gate_inp_shexp).
SHARED_EXPERT = (
    Tensor("blk.{i}.ffn_gate_inp_shexp.weight", ("hidden",), slot=SHARED_GATE),
    Tensor("blk.{i}.ffn_gate_shexp.weight", ("ffn", "hidden"), BY_FFN_ROW, W_GATE),
    Tensor("blk.{i}.ffn_up_shexp.weight", ("ffn", "hidden"), BY_FFN_ROW, W_UP),
    Tensor("blk.{i}.ffn_down_shexp.weight", ("hidden", "ffn"), BY_FFN_COLUMN, W_DOWN),
)

# Keys and values of every position, per layer and KV head; a rank keeps those of the
# KV heads it holds. Keys are kept in tiles of positions, each head dim a row of the tile,
# so that attention scores a tile's positions with one vector product per dim.
_BY_KV_HEAD_OF_CACHE = Split("kv_heads", axis=1)
KV_CACHE = (
    Cache("keys", ("n_layers", "n_kv_heads", "ctx_tiles", "head_dim", "tile"),
          _BY_KV_HEAD_OF_CACHE),
    Cache("values", ("n_layers", "n_kv_heads", "ctx", "head_dim"), _BY_KV_HEAD_OF_CACHE),
)
