"""Checks of the test-side model factory (synth.py) and the float64 reference forward
(reference.py) that numatp's forward is measured against."""

import gguf
import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

import reference
import synth

from models import MOE_MODELS, STORIES

# Relative RMS error allowed for a round trip through each type, on Gaussian data. A
# b-bit uniform quantizer over a block's range (about +-2.2 sigma for blocks of 32) has
# RMS error near step/sqrt(12); the bounds are about 1.5x what that gives (and what was
# measured: Q4_0 0.087, Q4_1/Q4_K 0.081, Q5_0 0.044, Q5_1/Q5_K 0.038, Q6_K 0.019, Q8_0
# 0.0054, BF16 0.0016, F16 0.0002). A wrong bit layout scrambles values and gives ~1.4.
TOLERANCE = {"F32": 0.0, "F16": 1e-3, "BF16": 4e-3, "Q8_0": 0.01, "Q6_K": 0.03,
             "Q5_0": 0.065, "Q5_1": 0.06, "Q5_K": 0.06, "Q4_0": 0.13, "Q4_1": 0.12, "Q4_K": 0.12}
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")


def rel_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


def decode_raw(data, raw_dtype, qtype):
    return dequantize(data, raw_dtype if raw_dtype is not None else gguf.GGMLQuantizationType[qtype])


def shape_for(qtype):
    """Model dims that are whole blocks of the type (K-quants need 256 columns)."""
    return dict(hidden=256, ffn=512) if qtype in K_QUANTS else dict(hidden=64, ffn=128)


@pytest.mark.parametrize("qtype", synth.QTYPES)
def test_encoding_round_trips_within_the_types_error(qtype):
    x = (np.random.default_rng(7).standard_normal((6, 512)) / np.sqrt(512)).astype(np.float32)
    data, raw_dtype = synth.encode_tensor(x, qtype)
    y = decode_raw(data, raw_dtype, qtype).reshape(x.shape)
    assert rel_rms(y, x) <= TOLERANCE[qtype]


@pytest.mark.parametrize("qtype", synth.QTYPES)
def test_written_model_reads_back(tmp_path, qtype):
    path = synth.write_model(tmp_path / "m.gguf", qtype=qtype, **shape_for(qtype))
    spec = synth.ModelSpec(qtype=qtype, **shape_for(qtype))
    intended = synth.intended_weights(spec)
    reader = GGUFReader(str(path))
    assert {t.name for t in reader.tensors} == set(intended)
    for t in reader.tensors:
        want = intended[t.name]
        stored = qtype if synth.role_of(t.name) else "F32"   # norms and biases stay F32
        assert t.tensor_type.name == stored, t.name
        got = dequantize(t.data, t.tensor_type).reshape(want.shape)
        assert rel_rms(got, want) <= TOLERANCE[stored], t.name

    # numatp's own reader sees the same tensors with the same shapes.
    from numatp.model.gguf_file import GGUFFile
    f = GGUFFile(path)
    assert {n: ti.shape for n, ti in f.tensors.items()} == {n: w.shape for n, w in intended.items()}
    f.close()


@pytest.mark.parametrize("name", ["qwen2moe-q8_0", "mixtral-q4_k_m"])
def test_written_moe_model_reads_back(tmp_path, name):
    """Experts are stacked (experts, rows, cols) tensors in the types asked for; routers
    stay F32, as llama.cpp's quantizer leaves them."""
    kwargs = MOE_MODELS[name]
    path = synth.write_model(tmp_path / "m.gguf", **kwargs)
    spec = synth.ModelSpec(**{k: v for k, v in kwargs.items() if k != "tensor_types"},
                           tensor_types=tuple(sorted(kwargs.get("tensor_types", {}).items())))
    intended = synth.intended_weights(spec)
    reader = GGUFReader(str(path))
    assert {t.name for t in reader.tensors} == set(intended)
    for t in reader.tensors:
        want = intended[t.name]
        role = synth.role_of(t.name)
        stored = spec.type_of(role) if role else "F32"
        assert t.tensor_type.name == stored, t.name
        got = dequantize(t.data, t.tensor_type).reshape(want.shape)
        assert rel_rms(got, want) <= TOLERANCE[stored], t.name
    assert intended["blk.0.ffn_down_exps.weight"].shape == (8, spec.hidden, spec.eff)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
    arch = spec.arch
    assert meta[f"{arch}.expert_count"] == 8 and meta[f"{arch}.expert_used_count"] == 2


def test_metadata_follows_llama_cpp_layout(tmp_path):
    llama = GGUFReader(str(synth.write_model(tmp_path / "l.gguf", hidden=128, n_heads=14,
                                             n_kv_heads=2, head_dim=16, ffn=160)))
    meta = {k: f.contents() for k, f in llama.fields.items() if not k.startswith("tokenizer.")}
    assert meta["general.architecture"] == "llama"
    assert meta["llama.embedding_length"] == 128
    assert meta["llama.feed_forward_length"] == 160
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (14, 2)
    assert meta["llama.attention.key_length"] == meta["llama.rope.dimension_count"] == 16
    assert meta["llama.block_count"] == 2 and meta["llama.context_length"] == 256
    names = {t.name: tuple(reversed(t.shape.tolist())) for t in llama.tensors}
    assert names["blk.0.attn_q.weight"] == (224, 128)
    assert names["blk.0.attn_output.weight"] == (128, 224)
    assert names["blk.1.attn_k.weight"] == (32, 128)

    qwen2 = {t.name for t in GGUFReader(str(synth.write_model(tmp_path / "q2.gguf", arch="qwen2", tied=True))).tensors}
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.1.attn_v.bias"} <= qwen2
    assert "output.weight" not in qwen2

    q3 = GGUFReader(str(synth.write_model(tmp_path / "q3.gguf", arch="qwen3", head_dim=32)))
    assert q3.fields["qwen3.attention.key_length"].contents() == 32
    assert "qwen3.rope.dimension_count" not in q3.fields
    norms = {t.name: t.shape.tolist() for t in q3.tensors if "q_norm" in t.name or "k_norm" in t.name}
    assert norms == {f"blk.{i}.attn_{x}_norm.weight": [32] for i in range(2) for x in "qk"}


def test_shapes_that_cannot_be_written_raise(tmp_path):
    with pytest.raises(ValueError, match="block size"):
        synth.write_model(tmp_path / "m.gguf", qtype="Q4_K", hidden=256, ffn=384)
    with pytest.raises(ValueError, match="head_dim"):
        synth.write_model(tmp_path / "m.gguf", hidden=128, n_heads=14)
    with pytest.raises(ValueError, match="n_kv_heads"):
        synth.write_model(tmp_path / "m.gguf", n_heads=4, n_kv_heads=3)


def test_mixed_types(tmp_path):
    path = synth.write_model(tmp_path / "m.gguf", qtype="Q4_K", hidden=256, ffn=512,
                             tensor_types={"ffn_down": "Q6_K", "token_embd": "Q8_0"})
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}
    assert types["blk.1.ffn_down.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q8_0"
    assert types["blk.1.ffn_up.weight"] == "Q4_K"


def test_gpt2_vocab_is_a_working_byte_level_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tokens, types, merges = synth.gpt2_vocab(600)
    assert len(tokens) == len(set(tokens)) == len(types) == 600
    assert tokens[-1] == synth.EOT and types[-1] == gguf.TokenType.CONTROL
    vocab = {t: i for i, t in enumerate(tokens)}
    for m in merges:
        a, b = m.split(" ")
        assert a in vocab and b in vocab and a + b in vocab
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = "Once upon a time the robot walked home. Größe 42!"
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")) * 0.6   # the merges do fire


def test_spm_vocab_layout():
    tokens, scores, types = synth.spm_vocab(512)
    assert len(tokens) == len(set(tokens)) == len(scores) == len(types) == 512
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3] == "<0x00>" and tokens[258] == "<0xFF>"
    assert all(t == gguf.TokenType.BYTE for t in types[3:259])
    assert "▁the" in tokens and "▁" in tokens


@pytest.mark.parametrize("arch", synth.ARCHS)
def test_reference_is_causal_and_well_scaled(tmp_path, arch):
    path = synth.write_model(tmp_path / "m.gguf", arch=arch, head_dim=32 if arch == "qwen3" else None)
    model = reference.ReferenceModel(path)
    ids = [5, 77, 300, 12, 9, 100]
    full = model.logits(ids)
    assert full.shape == (6, 512) and full.dtype == np.float64
    # Causal: a token's logits do not depend on the tokens after it (float64, same ops).
    np.testing.assert_allclose(model.logits(ids[:3]), full[:3], rtol=1e-12, atol=1e-12)
    # The factory's scaling keeps logits O(1): neither flat nor saturated.
    assert 0.3 < full.std() < 3.0


@pytest.mark.parametrize("neox", [False, True])
def test_rope_depends_only_on_relative_position(tmp_path, neox):
    model = reference.ReferenceModel(synth.write_model(tmp_path / "m.gguf", qtype="F32"))
    model.neox = neox
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 1, 1, model.head_dim))

    def score(m, n):
        return float(np.sum(model.rope(q, [m]) * model.rope(k, [n])))
    assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-9)
    assert score(0, 0) == pytest.approx(float(np.sum(q * k)), rel=1e-12)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)


def test_reference_continues_stories260k_like_llama_cpp():
    # The real check of the rope convention and the layer order: llama.cpp's greedy output.
    reader = GGUFReader(str(STORIES))
    pieces = reader.fields["tokenizer.ggml.tokens"].contents()
    prompt = [1] + [pieces.index(p) for p in ("▁Once", "▁upon", "▁a", "▁time")]
    assert prompt == [1, 403, 407, 261, 378]
    out = reference.ReferenceModel(STORIES).greedy(prompt, 28)
    text = "".join(pieces[i] for i in out).replace("▁", " ")
    assert text.startswith(", there was a little girl named Lily. She loved to play outside in the park")
