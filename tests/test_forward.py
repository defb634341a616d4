"""numatp's jitted forward pass against the independent float64 NumPy reference
(tests/reference.py), on synthetic models of every architecture and several quant types.

Both sides dequantize the same stored blocks and round the inputs of quantized matrix
products to int8 the same way, so the differences are numatp's float32 arithmetic:
float32 dot products over K <= 256 terms with activations of O(1) have a relative error
of ~sqrt(K) * 6e-8 ~ 1e-6 per matmul; through 2 layers of residual stream and the output
head that stays below ~1e-4 of the logits' scale. We allow 1e-3 relative to the largest
logit magnitude: 10x headroom, and still two orders of magnitude below the gap a wrong
rope, mask or head mapping causes (> 0.1).

One more difference is possible: a value within float32 rounding of halfway between two
int8 steps may round up on one side and down on the other; from then on (a key in the
KV cache, say) the two differ by what one rounding step makes. That is part of what
rounding to int8 does at all, so the tests allow, on top, the whole effect of the int8
rounding on these logits: the reference's own difference from its exact (unrounded)
forward. A wrong kernel, scale or block makes errors of the size of the logits.
"""
import numpy as np
import pytest

import numatp  # noqa: F401
import reference
import synth
from numatp.model.config import from_gguf
from numatp.model.gguf_file import GGUFFile
from numatp.parallel.local import LocalModel
from numatp.quant.kernels import KernelSet, dequantize_rows

PROMPT = [5, 77, 300, 12, 9, 401, 33, 250, 7, 64, 18]
REL_TOL = 1e-3


class Runner:
    def __init__(self, path, ctx=64):
        self.g = GGUFFile(path)
        self.cfg = from_gguf(self.g)
        self.model = LocalModel(self.g, self.cfg, ctx)
        self.emb = self.g.tensors["token_embd.weight"]

    def embed(self, ids):
        out = np.empty((len(ids), self.cfg.hidden), np.float32)
        dequantize_rows(KernelSet([self.emb.qtype]), self.emb.qtype, self.emb.data,
                        self.cfg.hidden, np.asarray(ids, np.int64), out)
        return out

    def logits_each(self, ids):
        """Logits after each token, fed one at a time."""
        return np.array([self.model.forward(self.embed([t]), i).copy() for i, t in enumerate(ids)])


def assert_close(ours, ref, exact=None):
    """ours against the int8-rounding reference; `exact`: the reference without the
    rounding, whose difference from `ref` is allowed on top (see the module doc)."""
    scale = np.abs(ref).max()
    err = np.abs(ours - ref).max()
    rounding = 0.0 if exact is None else np.abs(ref - exact).max()
    assert err <= REL_TOL * scale + rounding, (
        f"max error {err:.3g} vs logits scale {scale:.3g} (int8 rounding's effect {rounding:.3g})")


CASES = [(arch, q) for arch in ("llama", "qwen2", "qwen3") for q in ("F32", "F16", "Q8_0", "Q4_0", "Q4_K")]


@pytest.mark.parametrize("arch,qtype", CASES)
def test_decode_matches_reference(tmp_path, arch, qtype):
    hidden, ffn = (256, 512) if qtype == "Q4_K" else (64, 128)
    path = synth.write_model(tmp_path / "m.gguf", arch=arch, qtype=qtype, hidden=hidden, ffn=ffn,
                             n_heads=4, n_kv_heads=2, tied=(arch == "qwen2"), seed=3)
    ref = reference.reference_logits(path, PROMPT)
    exact = reference.reference_logits(path, PROMPT, int8_activations=False)
    ours = Runner(path).logits_each(PROMPT)
    assert_close(ours, ref, exact)
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_prefill_chunks_match_reference(tmp_path, arch):
    """Prompt processing in batches (the batched kernels and in-batch causal mask)."""
    path = synth.write_model(tmp_path / "m.gguf", arch=arch, qtype="Q8_0", seed=4)
    ref = reference.reference_logits(path, PROMPT)
    exact = reference.reference_logits(path, PROMPT, int8_activations=False)
    r = Runner(path)
    for chunk in (4, len(PROMPT)):
        r.model = LocalModel(r.g, r.cfg, 64)
        out = []
        for start in range(0, len(PROMPT), chunk):
            out.append(r.model.forward(r.embed(PROMPT[start:start + chunk]), start).copy())
        ends = [min(s + chunk, len(PROMPT)) - 1 for s in range(0, len(PROMPT), chunk)]
        assert_close(np.array(out), ref[ends], exact[ends])


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_one_token_steps_are_the_prompt_path_bit_for_bit(tmp_path, qtype):
    """A token's step takes other paths than a prompt chunk's (one-token tiles, gate and
    up as two streams with the silu taken by whichever thread finishes a row group's
    second half); they sum every value alike, so the logits after each token, fed one at
    a time, are the chunk's last row's, bit for bit (qwen3: q/k norms; Q4_K: 256-value
    activation groups)."""
    hidden, ffn = (256, 512) if qtype == "Q4_K" else (64, 128)
    path = synth.write_model(tmp_path / "m.gguf", arch="qwen3", qtype=qtype, hidden=hidden,
                             ffn=ffn, n_heads=4, n_kv_heads=2, seed=6)
    r = Runner(path)
    each = r.logits_each(PROMPT)
    for n in (2, 7, len(PROMPT)):
        r.model = LocalModel(r.g, r.cfg, 64)
        chunk = r.model.forward(r.embed(PROMPT[:n]), 0)
        assert np.array_equal(chunk.view(np.uint32), each[n - 1].view(np.uint32)), n


def test_uneven_heads_and_rope_dims(tmp_path):
    """14 query heads over 2 KV heads, head_dim != hidden / heads."""
    path = synth.write_model(tmp_path / "m.gguf", arch="qwen3", qtype="F32", hidden=128, n_heads=14,
                             n_kv_heads=2, head_dim=16, ffn=160, seed=5)
    ref = reference.reference_logits(path, PROMPT[:6])
    assert_close(Runner(path).logits_each(PROMPT[:6]), ref)
