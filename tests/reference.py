"""An independent float64 NumPy forward pass for llama, qwen2 and qwen3 GGUF models, and
their Mixture-of-Experts kin qwen3moe, qwen2moe and llama with experts (Mixtral): the
yardstick numatp's forward is checked against.

Written plainly from llama.cpp's conventions and nothing of numatp's model code: the file
is read with gguf.GGUFReader and every tensor dequantized with gguf.quants.dequantize,
then widened to float64.

Like llama.cpp and numatp, a matrix product with quantized weights first rounds its input
to int8 with the scale max|x| / 127 of each 32 values, or of each 256 for the
super-block formats (Q2_K .. Q6_K, IQ4_XS: llama.cpp's Q8_K) (`int8_activations=True`,
the default). The only differences from numatp should then be numatp's float32 arithmetic,
and where a value lies within float32 rounding of halfway between two int8 steps, the
step it rounds to. `int8_activations=False` gives the exact product, to measure what the
rounding itself costs.

Conventions (as llama.cpp computes them):
- RMSNorm: x / sqrt(mean(x^2) + eps) * w.
- RoPE over the first n_rot dims of each head (n_rot = rope.dimension_count, default the
  head size), angle = pos * freq_scale * base^(-2i/n_rot) / freq_factor[i]. llama uses the
  "normal" mode, rotating adjacent pairs (2i, 2i+1) (llama.cpp's converter permutes the
  Q/K rows of HF checkpoints to suit); qwen2/qwen3 use NEOX mode, pairs (i, i + n_rot/2).
- qwen2: Q/K/V biases. qwen3: RMSNorm of each query and key head (attn_q_norm,
  attn_k_norm, length head_dim) after the projection and before RoPE.
- Grouped-query attention: query head h reads KV head h // (n_heads / n_kv_heads); scores
  scaled by 1/sqrt(head_dim); causal softmax.
- SwiGLU FFN: down(silu(gate(x)) * up(x)).
- Mixture of experts (a block with ffn_gate_inp): the router's logits x . r_e (F32
  weights), softmax over all experts, the expert_used_count most probable chosen; their
  probabilities are the mixing weights, renormalised to sum 1 (qwen3moe, Mixtral) or not
  (qwen2moe). Each expert is a SwiGLU FFN, the e-th slice of ffn_{gate,up,down}_exps.
  qwen2moe adds a shared expert (ffn_*_shexp) scaled by sigmoid(x . ffn_gate_inp_shexp).
- Output head = token_embd when output.weight
  is absent (tied embeddings).
"""
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

ARCHS = ("llama", "qwen2", "qwen3", "qwen3moe", "qwen2moe")
NEOX_ARCHS = ("qwen2", "qwen3", "qwen3moe", "qwen2moe")
UNNORMALISED_ROUTING = ("qwen2moe",)   # its top-k weights are the softmax's own
FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
_TINY = 1e-30   # a group whose largest |x| is below this counts as zero (as numatp's)


SUPER_BLOCK_TYPES = (GGMLQuantizationType.Q2_K, GGMLQuantizationType.Q3_K,
                     GGMLQuantizationType.Q4_K, GGMLQuantizationType.Q5_K,
                     GGMLQuantizationType.Q6_K, GGMLQuantizationType.IQ4_XS)


def int8_rounded(x, group=32):
    """x (..., n), n a multiple of group: each group as d * round(x / d), d = max|x| / 127."""
    g = x.reshape(*x.shape[:-1], -1, group)
    top = np.abs(g).max(axis=-1, keepdims=True)
    d = np.where(top > _TINY, top / 127.0, 0.0)
    q = np.round(g / np.where(d > 0, d, 1.0))
    return (q * d).reshape(x.shape)


class ReferenceModel:
    """A GGUF model held as float64 arrays; `logits(ids)` runs the whole causal forward."""

    def __init__(self, path, int8_activations=True):
        self.path = Path(path)
        self.int8_activations = int8_activations
        reader = GGUFReader(str(self.path))
        fields = reader.fields

        def meta(key, default=None):
            field = fields.get(key)
            return default if field is None else field.contents()

        self.arch = meta("general.architecture")
        if self.arch not in ARCHS:
            raise ValueError(f"{self.path}: reference forward supports {ARCHS}, not {self.arch!r}")
        a = self.arch
        self.n_layers = meta(f"{a}.block_count")
        self.hidden = meta(f"{a}.embedding_length")
        self.n_heads = meta(f"{a}.attention.head_count")
        self.n_kv_heads = meta(f"{a}.attention.head_count_kv", self.n_heads)
        self.head_dim = meta(f"{a}.attention.key_length", self.hidden // self.n_heads)
        self.v_head_dim = meta(f"{a}.attention.value_length", self.head_dim)
        self.eps = meta(f"{a}.attention.layer_norm_rms_epsilon")
        self.rope_base = meta(f"{a}.rope.freq_base", 10000.0)
        self.n_rot = meta(f"{a}.rope.dimension_count", self.head_dim)
        scaling = meta(f"{a}.rope.scaling.type", "none")
        factor = meta(f"{a}.rope.scaling.factor", 1.0)
        if scaling not in ("none", "linear") and factor != 1.0:
            raise ValueError(f"{self.path}: reference forward does not do {scaling} rope scaling")
        self.freq_scale = 1.0 / factor if scaling == "linear" and factor else 1.0
        self.neox = self.arch in NEOX_ARCHS
        self.n_experts_used = meta(f"{a}.expert_used_count", 0)
        self.renormalise = self.arch not in UNNORMALISED_ROUTING

        self.w, self.types = {}, {}
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape))   # GGUF lists dims innermost first
            values = dequantize(t.data, t.tensor_type).reshape(shape)
            self.w[t.name] = values.astype(np.float64)
            self.types[t.name] = t.tensor_type
        self.output = "output.weight" if "output.weight" in self.w else "token_embd.weight"
        self.vocab = self.w[self.output].shape[0]

    # --- pieces -----------------------------------------------------------------------------

    def rms_norm(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def rope(self, x, positions):
        """Rotate x of shape (tokens, heads, head_dim) by each token's position."""
        half = self.n_rot // 2
        inv_freq = self.rope_base ** (-2.0 * np.arange(half) / self.n_rot)
        if "rope_freqs.weight" in self.w:               # llama 3.x per-frequency factors
            inv_freq = inv_freq / self.w["rope_freqs.weight"][:half]
        angle = (np.asarray(positions, np.float64) * self.freq_scale)[:, None] * inv_freq[None, :]
        cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
        out = x.copy()
        if self.neox:
            a, b = x[..., :half], x[..., half:self.n_rot]
            out[..., :half] = a * cos - b * sin
            out[..., half:self.n_rot] = a * sin + b * cos
        else:
            a, b = x[..., 0:self.n_rot:2], x[..., 1:self.n_rot:2]
            out[..., 0:self.n_rot:2] = a * cos - b * sin
            out[..., 1:self.n_rot:2] = a * sin + b * cos
        return out

    def matmul(self, x, weight, expert=None):
        """x @ W.T (W the expert-th slice of a stacked tensor when expert is given), with x
        rounded to int8 first for quantized W (see the module doc)."""
        if self.int8_activations and self.types[weight] not in FLOAT_TYPES:
            x = int8_rounded(x, 256 if self.types[weight] in SUPER_BLOCK_TYPES else 32)
        w = self.w[weight] if expert is None else self.w[weight][expert]
        return x @ w.T

    def linear(self, x, name):
        y = self.matmul(x, name + ".weight")
        bias = self.w.get(name + ".bias")
        return y if bias is None else y + bias

    def attention(self, x, layer, positions):
        p = f"blk.{layer}."
        n = len(x)
        q = self.linear(x, p + "attn_q").reshape(n, self.n_heads, self.head_dim)
        k = self.linear(x, p + "attn_k").reshape(n, self.n_kv_heads, self.head_dim)
        v = self.linear(x, p + "attn_v").reshape(n, self.n_kv_heads, self.v_head_dim)
        if p + "attn_q_norm.weight" in self.w:
            q = self.rms_norm(q, self.w[p + "attn_q_norm.weight"])
            k = self.rms_norm(k, self.w[p + "attn_k_norm.weight"])
        q, k = self.rope(q, positions), self.rope(k, positions)
        group = self.n_heads // self.n_kv_heads
        future = np.triu(np.ones((n, n), dtype=bool), k=1)
        out = np.empty((n, self.n_heads, self.v_head_dim))
        for h in range(self.n_heads):
            kv = h // group
            scores = q[:, h] @ k[:, kv].T / np.sqrt(self.head_dim)
            scores[future] = -np.inf
            scores -= scores.max(axis=1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=1, keepdims=True)
            out[:, h] = probs @ v[:, kv]
        return self.linear(out.reshape(n, -1), p + "attn_output")

    def ffn(self, x, layer):
        p = f"blk.{layer}."
        if p + "ffn_gate_inp.weight" in self.w:
            return self.moe(x, p)
        gate = self.linear(x, p + "ffn_gate")
        up = self.linear(x, p + "ffn_up")
        return self.linear(gate / (1.0 + np.exp(-gate)) * up, p + "ffn_down")

    def swiglu(self, x, gate, up, down, expert=None):
        g = self.matmul(x, gate, expert)
        return self.matmul(g / (1.0 + np.exp(-g)) * self.matmul(x, up, expert), down, expert)

    def moe(self, x, p):
        probs = self.matmul(x, p + "ffn_gate_inp.weight")
        ranked = np.sort(probs, axis=1)
        k = self.n_experts_used
        self.router_margin = np.minimum(self.router_margin, ranked[:, -k] - ranked[:, -k - 1])
        probs = np.exp(probs - probs.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        out = np.zeros_like(x)
        for t in range(len(x)):
            chosen = np.argsort(-probs[t], kind="stable")[:self.n_experts_used]
            weights = probs[t, chosen]
            if self.renormalise:
                weights = weights / weights.sum()
            for e, weight in zip(chosen, weights):
                out[t] += weight * self.swiglu(x[t:t + 1], p + "ffn_gate_exps.weight",
                                               p + "ffn_up_exps.weight",
                                               p + "ffn_down_exps.weight", e)[0]
        if p + "ffn_gate_inp_shexp.weight" in self.w:
            gate = x @ self.w[p + "ffn_gate_inp_shexp.weight"]
            shared = self.swiglu(x, p + "ffn_gate_shexp.weight", p + "ffn_up_shexp.weight",
                                 p + "ffn_down_shexp.weight")
            out += shared / (1.0 + np.exp(-gate))[:, None]
        return out

    # --- the model --------------------------------------------------------------------------

    def logits(self, token_ids) -> np.ndarray:
        """Logits after every token, float64 of shape (len(token_ids), vocab); token i sits
        at position i."""
        ids = np.asarray(token_ids, dtype=np.int64)
        positions = np.arange(len(ids))
        # For MoE models: each token's smallest gap, over the layers, between the router
        # logits of the last expert chosen and the first one left out. Where it is small,
        # another engine's rounding may choose the other expert.
        self.router_margin = np.full(len(ids), np.inf)
        x = self.w["token_embd.weight"][ids]
        for layer in range(self.n_layers):
            p = f"blk.{layer}."
            x = x + self.attention(self.rms_norm(x, self.w[p + "attn_norm.weight"]), layer, positions)
            x = x + self.ffn(self.rms_norm(x, self.w[p + "ffn_norm.weight"]), layer)
        return self.matmul(self.rms_norm(x, self.w["output_norm.weight"]), self.output)

    def greedy(self, prompt_ids, n_tokens) -> list:
        """The next n_tokens by argmax, recomputing the whole sequence each step."""
        ids = list(prompt_ids)
        for _ in range(n_tokens):
            ids.append(int(np.argmax(self.logits(ids)[-1])))
        return ids[len(prompt_ids):]


def reference_logits(path, token_ids, int8_activations=True) -> np.ndarray:
    """Float64 logits (len(token_ids), vocab) of the GGUF model at `path`."""
    return ReferenceModel(path, int8_activations).logits(token_ids)
