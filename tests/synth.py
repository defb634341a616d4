"""Tiny synthetic GGUF models for the tests, laid out the way llama.cpp's converters write
them (same metadata keys, tensor names, row-major (out, in) matrices, F32 norms and
biases).

Weights are random with a scale that keeps activations O(1) through every layer:
each matrix is normal / sqrt(fan_in) (so a unit-RMS input gives unit-RMS outputs),
norm weights are 1 + small noise. Attention scores and logits then have a standard
deviation around 1: softmaxes are neither flat nor saturated, and greedy tokens are
decided by real margins rather than ties.

Every matrix, token_embd included, is stored in `qtype`. gguf.quants quantizes the
legacy types; the K-quants (Q4_K, Q5_K, Q6_K) are packed here by a plain min/max
quantizer so the stored weights still approximate the random ones (random block bytes
would give biased, non-zero-mean weights). The packing follows ggml's block layouts and
is checked against gguf.quants.dequantize in tests/test_reference.py.

Mixture-of-Experts models (qwen3moe, qwen2moe, and llama with experts as Mixtral is
written) replace each block's FFN by a router (ffn_gate_inp, kept F32 as llama.cpp's
quantizer keeps it) and stacked experts ffn_{gate,up,down}_exps of shape (experts, rows,
cols); qwen2moe adds a shared expert ffn_*_shexp gated by ffn_gate_inp_shexp.

A small but valid tokenizer goes into the metadata so the model loads end to end: a
byte-level BPE ("gpt2") or a SentencePiece-style vocabulary ("llama"), both trained on
the short built-in text below.
"""
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

ARCHS = ("llama", "qwen2", "qwen3")
MOE_ARCHS = ("qwen3moe", "qwen2moe", "llama")   # llama with experts: Mixtral's layout
QTYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
TOKENIZERS = ("gpt2", "llama")

# Matrix roles of one block, and the role names `tensor_types` may override.
BLOCK_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
EXPERT_MATRICES = ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps",
                   "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp")
ROLES = ("token_embd", "output") + BLOCK_MATRICES + EXPERT_MATRICES

# llama.cpp's LLAMA_FTYPE values, written as general.file_type like its quantizer does.
_FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
              "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "BF16": 32}

_TEXT = """\
Once upon a time there was a small robot who lived in a quiet town by the sea. Every
morning the robot walked to the harbor to watch the boats go out, and every evening it
walked back home to count the stars. The people in the town liked the robot, because it
always helped them carry their heavy bags and fixed the broken clocks in the old tower.
One day a storm came over the water. The wind was loud and the rain was cold, and the
little boats were still far from the shore. The robot climbed the tower and turned on the
great lamp, so the sailors could see the way home. When the sun came up, all of the boats
were safe. The children ran to the harbor, laughing and singing, and they gave the robot a
bright red scarf. It was the best day of its life. Numbers like 1, 2, 3 and 42 are here too!
"""

EOT = "<|endoftext|>"


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a synthetic model; checks that the shape can be written as asked."""
    arch: str = "llama"
    qtype: str = "Q8_0"
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn: int = 128
    vocab: int = 512
    tied: bool = False
    ctx: int = 256
    seed: int = 0
    rope_base: float = 10000.0
    head_dim: int | None = None
    norm_eps: float = 1e-5
    tokenizer: str = "gpt2"
    tensor_types: tuple = ()   # ((role, qtype), ...) overriding qtype for some roles
    n_experts: int = 0         # > 0: a Mixture-of-Experts model
    n_experts_used: int = 0
    expert_ffn: int = 0        # each expert's FFN length (0: ffn)
    shared_ffn: int = 0        # qwen2moe's shared expert's FFN length

    def __post_init__(self):
        archs = MOE_ARCHS if self.n_experts else ARCHS
        if self.arch not in archs:
            raise ValueError(f"arch {self.arch!r} is not one of {archs}"
                             + (" (with experts)" if self.n_experts else ""))
        if self.n_experts and not 0 < self.n_experts_used <= self.n_experts:
            raise ValueError(f"n_experts_used={self.n_experts_used} must be 1..{self.n_experts}")
        if self.n_experts and self.arch == "llama" and self.expert_ffn not in (0, self.ffn):
            raise ValueError("llama's experts are ffn long (feed_forward_length): leave expert_ffn 0")
        if (self.arch == "qwen2moe") != (self.shared_ffn > 0):
            raise ValueError("shared_ffn (a shared expert) is qwen2moe's, and qwen2moe needs it")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer {self.tokenizer!r} is not one of {TOKENIZERS}")
        for role, qt in ((None, self.qtype),) + tuple(self.tensor_types):
            if qt not in QTYPES:
                raise ValueError(f"qtype {qt!r} is not one of {QTYPES}")
            if role is not None and role not in ROLES:
                raise ValueError(f"tensor_types role {role!r} is not one of {ROLES}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim is None and self.hidden % self.n_heads:
            raise ValueError(f"hidden={self.hidden} is not a multiple of n_heads={self.n_heads}; "
                             "pass head_dim for uneven head counts")
        if self.hd % 2:
            raise ValueError(f"head_dim={self.hd} must be even for RoPE")
        minimum = 257 if self.tokenizer == "gpt2" else 260
        if self.vocab < minimum:
            raise ValueError(f"vocab={self.vocab} is too small for the {self.tokenizer} tokenizer "
                             f"(at least {minimum}: the 256 byte tokens plus specials)")
        for name, cols, qt in self._matrices_cols():
            block = gguf.GGML_QUANT_SIZES[T[qt]][0]
            if cols % block:
                raise ValueError(f"{name} has {cols} columns, not a multiple of the {qt} block "
                                 f"size {block}; choose hidden, n_heads*head_dim and ffn accordingly")

    @property
    def hd(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden // self.n_heads

    @property
    def writes_head_dim(self) -> bool:
        # llama.cpp's converter writes key_length/value_length whenever the HF config has
        # head_dim, which every Qwen3 config does.
        return self.head_dim is not None or self.arch in ("qwen3", "qwen3moe")

    @property
    def eff(self) -> int:
        """An expert's FFN length."""
        return self.expert_ffn or self.ffn

    def block_matrices(self):
        """The matrix roles of one block, with their column counts."""
        q_width = self.n_heads * self.hd
        yield from (("attn_q", self.hidden), ("attn_k", self.hidden), ("attn_v", self.hidden),
                    ("attn_output", q_width))
        if not self.n_experts:
            yield from (("ffn_gate", self.hidden), ("ffn_up", self.hidden),
                        ("ffn_down", self.ffn))
            return
        yield from (("ffn_gate_exps", self.hidden), ("ffn_up_exps", self.hidden),
                    ("ffn_down_exps", self.eff))
        if self.shared_ffn:
            yield from (("ffn_gate_shexp", self.hidden), ("ffn_up_shexp", self.hidden),
                        ("ffn_down_shexp", self.shared_ffn))

    def type_of(self, role: str) -> str:
        return dict(self.tensor_types).get(role, self.qtype)

    def _matrices_cols(self):
        yield "token_embd.weight", self.hidden, self.type_of("token_embd")
        if not self.tied:
            yield "output.weight", self.hidden, self.type_of("output")
        for role, cols in self.block_matrices():
            yield f"blk.N.{role}.weight", cols, self.type_of(role)


def intended_weights(spec: ModelSpec) -> dict:
    """The float32 weights write_model stores (before quantization), by tensor name."""
    rng = np.random.default_rng(spec.seed)
    hd, q_width, kv_width = spec.hd, spec.n_heads * spec.hd, spec.n_kv_heads * spec.hd

    def matrix(rows, cols, experts=None):
        shape = (rows, cols) if experts is None else (experts, rows, cols)
        return (rng.standard_normal(shape) / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"token_embd.weight": matrix(spec.vocab, spec.hidden)}
    for i in range(spec.n_layers):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm(spec.hidden)
        w[p + "attn_q.weight"] = matrix(q_width, spec.hidden)
        w[p + "attn_k.weight"] = matrix(kv_width, spec.hidden)
        w[p + "attn_v.weight"] = matrix(kv_width, spec.hidden)
        if spec.arch in ("qwen2", "qwen2moe"):
            for t, n in (("q", q_width), ("k", kv_width), ("v", kv_width)):
                w[p + f"attn_{t}.bias"] = (0.2 * rng.standard_normal(n)).astype(np.float32)
        if spec.arch in ("qwen3", "qwen3moe"):
            w[p + "attn_q_norm.weight"] = norm(hd)
            w[p + "attn_k_norm.weight"] = norm(hd)
        w[p + "attn_output.weight"] = matrix(spec.hidden, q_width)
        w[p + "ffn_norm.weight"] = norm(spec.hidden)
        if spec.n_experts:
            _add_experts(w, p, spec, matrix)
        else:
            w[p + "ffn_gate.weight"] = matrix(spec.ffn, spec.hidden)
            w[p + "ffn_up.weight"] = matrix(spec.ffn, spec.hidden)
            w[p + "ffn_down.weight"] = matrix(spec.hidden, spec.ffn)
    w["output_norm.weight"] = norm(spec.hidden)
    if not spec.tied:
        w["output.weight"] = matrix(spec.vocab, spec.hidden)
    return w


def _add_experts(w, p, spec, matrix):
    """A MoE block's FFN: the router's rows are unit-scale like any matrix, so that its
    logits spread over about one unit."""
    n, hidden = spec.n_experts, spec.hidden
    w[p + "ffn_gate_inp.weight"] = matrix(n, hidden)
    w[p + "ffn_gate_exps.weight"] = matrix(spec.eff, hidden, experts=n)
    w[p + "ffn_up_exps.weight"] = matrix(spec.eff, hidden, experts=n)
    w[p + "ffn_down_exps.weight"] = matrix(hidden, spec.eff, experts=n)
    if spec.shared_ffn:
        w[p + "ffn_gate_inp_shexp.weight"] = matrix(1, hidden)[0]
        w[p + "ffn_gate_shexp.weight"] = matrix(spec.shared_ffn, hidden)
        w[p + "ffn_up_shexp.weight"] = matrix(spec.shared_ffn, hidden)
        w[p + "ffn_down_shexp.weight"] = matrix(hidden, spec.shared_ffn)


def role_of(name: str) -> str | None:
    """The matrix role of a tensor name ("blk.3.ffn_down.weight" -> "ffn_down"), None for
    norms, biases and routers (always F32)."""
    if not name.endswith(".weight") or "norm" in name or "ffn_gate_inp" in name:
        return None
    return name.split(".")[-2]


def write_model(path, arch="llama", qtype="Q8_0", hidden=64, n_layers=2, n_heads=4, n_kv_heads=2,
                ffn=128, vocab=512, tied=False, ctx=256, seed=0, rope_base=10000.0, head_dim=None,
                norm_eps=1e-5, tokenizer="gpt2", tensor_types=None, chat_template=None,
                split_tensors=0, n_experts=0, n_experts_used=0, expert_ffn=0,
                shared_ffn=0) -> Path:
    """Write a synthetic model to `path` and return it as a Path.

    tensor_types: optional {role: qtype} overriding qtype per matrix role, role in ROLES
    ("token_embd", "output", "attn_q", ..., "ffn_down"), to build mixed files such as
    Q4_K_M-like ones. chat_template: written as tokenizer.chat_template when given.
    n_experts > 0 makes a Mixture-of-Experts model of arch qwen3moe, qwen2moe or llama
    (Mixtral's layout): n_experts_used chosen per token, each expert's FFN expert_ffn long
    (0: ffn), and qwen2moe's shared expert shared_ffn long.
    split_tensors: if > 0, write llama.cpp's split format with at most that many tensors
    per file (gguf's own split writer: PATHSTEM-00001-of-0000N.gguf, ...) and return the
    first split's path.
    Raises ValueError for shapes that cannot be written as asked.
    """
    spec = ModelSpec(arch, qtype, hidden, n_layers, n_heads, n_kv_heads, ffn, vocab, tied, ctx,
                     seed, rope_base, head_dim, norm_eps, tokenizer,
                     tuple(sorted((tensor_types or {}).items())), n_experts, n_experts_used,
                     expert_ffn, shared_ffn)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), spec.arch, split_max_tensors=split_tensors)
    _write_hparams(writer, spec)
    _write_tokenizer(writer, spec)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for name, value in intended_weights(spec).items():
        role = role_of(name)
        data, raw_dtype = encode_tensor(value, spec.type_of(role) if role else "F32")
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return writer.format_shard_names(path)[0]


def _write_hparams(w: gguf.GGUFWriter, spec: ModelSpec):
    w.add_name(f"synthetic-{spec.arch}-{spec.qtype}")
    w.add_file_type(_FILE_TYPE[spec.qtype])
    if spec.qtype not in ("F32", "F16", "BF16"):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_block_count(spec.n_layers)
    w.add_context_length(spec.ctx)
    w.add_embedding_length(spec.hidden)
    w.add_feed_forward_length(spec.ffn)
    w.add_head_count(spec.n_heads)
    w.add_head_count_kv(spec.n_kv_heads)
    w.add_layer_norm_rms_eps(spec.norm_eps)
    w.add_rope_freq_base(spec.rope_base)
    if spec.writes_head_dim:
        w.add_key_length(spec.hd)
        w.add_value_length(spec.hd)
    if spec.arch == "llama":
        w.add_rope_dimension_count(spec.hd)
    if spec.n_experts:
        w.add_expert_count(spec.n_experts)
        w.add_expert_used_count(spec.n_experts_used)
        if spec.arch != "llama":   # Mixtral's experts are feed_forward_length long
            w.add_expert_feed_forward_length(spec.eff)
        if spec.shared_ffn:
            w.add_expert_shared_feed_forward_length(spec.shared_ffn)


# --- tensor encoding ---------------------------------------------------------------------

def encode_tensor(x: np.ndarray, qtype: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor: float arrays for F32/F16, block bytes
    of shape (rows, bytes per row) with raw_dtype for everything else."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if qtype == "F32":
        return x, None
    if qtype == "F16":
        return x.astype(np.float16), None
    qt = T[qtype]
    if qtype in _K_PACKERS:
        bs, bb = gguf.GGML_QUANT_SIZES[qt]
        blocks = _K_PACKERS[qtype](x.reshape(-1, bs))
        return blocks.reshape(*x.shape[:-1], x.shape[-1] // bs * bb), qt
    return gguf.quants.quantize(x, qt), qt


def _f16(values):
    """Scales as stored (fp16) and as the decoder will see them (float32)."""
    h = np.asarray(values, dtype=np.float32).astype(np.float16)
    return h, h.astype(np.float32)


def _safe_div(a, b):
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, np.float32), where=b != 0)


def _affine_k(blocks, levels):
    """Shared part of Q4_K/Q5_K: 8 sub-blocks of 32, each x ~ d*sc*q - dmin*m with 6-bit
    sc and m and q in 0..levels. Returns d16, dmin16, sc, m, q."""
    sub = blocks.reshape(len(blocks), 8, 32)
    lo = np.minimum(sub.min(axis=2), 0.0)          # the offset dmin*m must be >= 0
    hi = sub.max(axis=2)
    scale, offset = (hi - lo) / levels, -lo
    d16, d = _f16(scale.max(axis=1) / 63)
    dmin16, dmin = _f16(offset.max(axis=1) / 63)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(_safe_div(offset, dmin[:, None])), 0, 63).astype(np.uint8)
    step = d[:, None] * sc
    q = _safe_div(sub + (dmin[:, None] * m)[:, :, None], step[:, :, None])
    q = np.clip(np.rint(q), 0, levels).astype(np.uint8)
    return d16, dmin16, sc, m, q.reshape(len(blocks), 256)


def _pack_k_scales(sc, m):
    """ggml's 12-byte packing of eight 6-bit scales and eight 6-bit mins: bytes 0-3 and
    4-7 hold scales/mins 0-3 in their low 6 bits and the top 2 bits of scales/mins 4-7;
    bytes 8-11 hold the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble)."""
    out = np.empty((len(sc), 12), np.uint8)
    out[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = m[:, 0:4] | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 15) | ((m[:, 4:8] & 15) << 4)
    return out


def _nibbles(q):
    """Low 4 bits of 256 values per block into 128 bytes: each 64-value chunk j gives 32
    bytes, value j*64+l in the low nibble and j*64+32+l in the high nibble of byte l."""
    q = (q & 15).reshape(len(q), 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(len(q), 128)


def _pack_q4_k(blocks):
    d16, dmin16, sc, m, q = _affine_k(blocks, 15)
    return np.concatenate([d16.view(np.uint8).reshape(-1, 2), dmin16.view(np.uint8).reshape(-1, 2),
                           _pack_k_scales(sc, m), _nibbles(q)], axis=1)


def _pack_q5_k(blocks):
    d16, dmin16, sc, m, q = _affine_k(blocks, 31)
    # The fifth bit of value s*32+l is bit s of qh byte l.
    high = ((q >> 4) & 1).reshape(len(q), 8, 32)
    qh = (high << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1).astype(np.uint8)
    return np.concatenate([d16.view(np.uint8).reshape(-1, 2), dmin16.view(np.uint8).reshape(-1, 2),
                           _pack_k_scales(sc, m), qh, _nibbles(q)], axis=1)


def _pack_q6_k(blocks):
    # 16 sub-blocks of 16, x ~ d * sc * (q - 32) with int8 sc and q in 0..63.
    n = len(blocks)
    sub = blocks.reshape(n, 16, 16)
    scale = np.abs(sub).max(axis=2) / 31
    d16, d = _f16(scale.max(axis=1) / 127)
    sc = np.clip(np.rint(_safe_div(scale, d[:, None])), -128, 127).astype(np.int8)
    step = (d[:, None] * sc)[:, :, None]
    q = (np.clip(np.rint(_safe_div(sub, step)), -32, 31) + 32).astype(np.uint8).reshape(n, 256)
    # Low nibbles: half h (128 values) fills 64 bytes; value h*128+k*64+b goes to nibble k
    # of byte h*64+b. High 2 bits: value h*128+k*32+l goes to bits 2k..2k+1 of byte h*32+l.
    lo = (q & 15).reshape(n, 2, 2, 64)
    ql = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(n, 128)
    hi = (q >> 4).reshape(n, 2, 4, 32)
    qh = (hi << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]).sum(axis=2)
    return np.concatenate([ql, qh.astype(np.uint8).reshape(n, 64), sc.view(np.uint8),
                           d16.view(np.uint8).reshape(-1, 2)], axis=1)


_K_PACKERS = {"Q4_K": _pack_q4_k, "Q5_K": _pack_q5_k, "Q6_K": _pack_q6_k}


# --- tokenizers ---------------------------------------------------------------------------

def byte_symbols() -> list:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the others are
    shifted to code points from 256 up, so every byte is a visible character."""
    keep = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _train_bpe(words: Counter, alphabet: set, n_merges: int) -> list:
    """Greedy BPE over words (tuples of symbols, with counts): repeatedly merge the most
    frequent adjacent pair (ties broken by the pair itself, so training is deterministic).
    Symbols outside `alphabet` never merge. Returns the merges in order."""
    words = {tuple(w): c for w, c in words.items()}
    vocab = set(alphabet)
    merges = []
    while len(merges) < n_merges:
        pairs = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                if a in vocab and b in vocab:
                    pairs[a, b] += c
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append((a, b))
        vocab.add(a + b)
        new_words = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    # The text runs out of pairs before a large vocabulary is full: pad with merges of
    # existing tokens and letters, which are valid merges that simply never fire.
    # A vocabulary larger than the tokens times the letters (Qwen's 151936) takes more
    # passes, each over the tokens the last one made.
    letters = [s for s in sorted(alphabet) if s.isalpha()]
    while len(merges) < n_merges:
        before = len(merges)
        for a in sorted(vocab, key=lambda s: (len(s), s)):
            for b in letters:
                if len(merges) >= n_merges:
                    return merges
                if a + b not in vocab:
                    merges.append((a, b))
                    vocab.add(a + b)
        if len(merges) == before:
            raise ValueError(f"cannot build {n_merges} merges for this vocabulary size")
    return merges


def gpt2_vocab(vocab: int):
    """(tokens, token_types, merges) of a byte-level BPE vocabulary of `vocab` tokens: the
    256 byte symbols, merges learnt from the built-in text, then <|endoftext|> last."""
    sym = byte_symbols()
    words = Counter()
    for piece in re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+", _TEXT):
        words[tuple(sym[b] for b in piece.encode("utf-8"))] += 1
    merges = _train_bpe(words, set(sym), vocab - 257)
    tokens = sym + [a + b for a, b in merges] + [EOT]
    types = [gguf.TokenType.NORMAL] * (vocab - 1) + [gguf.TokenType.CONTROL]
    return tokens, types, [f"{a} {b}" for a, b in merges]


def spm_vocab(vocab: int):
    """(tokens, scores, token_types) in SentencePiece style: <unk>, <s>, </s>, the 256
    <0xXX> byte fallbacks, merged pieces (score = -merge rank, so earlier merges win),
    then the single characters with the lowest scores."""
    text = "▁" + _TEXT.replace("\n", " ").replace(" ", "▁")
    chars = [c for c, _ in Counter(text).most_common()]
    room = vocab - 259
    chars = sorted(chars[:max(1, min(len(chars), room // 3))])
    words = Counter(tuple(w) for w in re.findall(r"▁[^▁]*", text))
    merges = _train_bpe(words, set(chars), room - len(chars))
    pieces = [a + b for a, b in merges]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces + chars
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] \
        + [-float(len(pieces) + i) for i in range(len(chars))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] \
        + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (len(pieces) + len(chars))
    return tokens, scores, types


def _write_tokenizer(w: gguf.GGUFWriter, spec: ModelSpec):
    if spec.tokenizer == "gpt2":
        tokens, types, merges = gpt2_vocab(spec.vocab)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(len(tokens) - 1)
        w.add_eos_token_id(len(tokens) - 1)
        w.add_add_bos_token(False)
    else:
        tokens, scores, types = spm_vocab(spec.vocab)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
    assert len(tokens) == spec.vocab
