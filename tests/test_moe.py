"""Mixture-of-Experts models through numatp (qwen3moe, qwen2moe, Mixtral-style llama):
against the NumPy reference (tests/reference.py), against llama.cpp's logits kept in
tests/data/llamacpp_moe.npz, over 1-4 workers, and end to end through `numatp generate`.

Against the reference the tolerance is test_forward's (assert_close: 1e-3 of the logits'
scale plus the whole effect of int8 rounding), on tokens whose router is settled: where the
router's last chosen and first left-out expert are closer than ROUTER_MARGIN, a float32
rounding, or an int8 step that rounds the other way, may pick the other expert and change
that token's output by order 1 (the reference's router_margin flags them). Measured: the
settled tokens' logits agree to about 5e-7 in decode; a prompt chunk's differ up to 0.03
where one int8 rounding in attention flips (the chunked products sum in another order).
"""
import subprocess
import sys

import numpy as np
import pytest

import numatp
import reference
import synth
from models import MOE_MODELS, moe_model
from numatp.sampling import SamplingParams
from test_forward import assert_close
from test_moe_reference import LOGIT_MARGIN, MAX_KL, ROUTER_MARGIN, kl, llamacpp, written  # noqa: F401

PROMPT = [5, 77, 300, 12, 9, 401, 33, 250, 7, 64, 18]


def decode_logits(path, ids, **load):
    """Logits after each token, fed one at a time."""
    with numatp.load(path, nodes=1, ctx_size=64, **load) as llm:
        return np.array([llm.model.forward(llm.token_embeddings([t]), i).copy() for i, t in enumerate(ids)])


@pytest.mark.parametrize("name", MOE_MODELS)
def test_decode_matches_reference(tmp_path, name):
    path = moe_model(name, tmp_path)
    model = reference.ReferenceModel(path)
    ref = model.logits(PROMPT)
    settled = model.router_margin >= ROUTER_MARGIN
    exact = reference.reference_logits(path, PROMPT, int8_activations=False)
    ours = decode_logits(path, PROMPT)
    assert settled.sum() >= len(PROMPT) // 3
    assert_close(ours[settled], ref[settled], exact[settled])


@pytest.mark.parametrize("name", ["qwen3moe-q8_0", "qwen2moe-q8_0", "mixtral-q8_0"])
def test_prompt_chunks_match_reference(tmp_path, name):
    """A chunk's tokens go through each expert together (the grouped products)."""
    path = moe_model(name, tmp_path)
    model = reference.ReferenceModel(path)
    ref = model.logits(PROMPT)
    exact = reference.reference_logits(path, PROMPT, int8_activations=False)
    with numatp.load(path, nodes=1, ctx_size=64) as llm:
        for end in range(1, len(PROMPT) + 1):
            if model.router_margin[:end].min() >= ROUTER_MARGIN:
                assert_close(llm.logits(PROMPT[:end]), ref[end - 1], exact[end - 1])


@pytest.mark.parametrize("name", MOE_MODELS)
def test_matches_llamacpp(tmp_path, llamacpp, name):
    """As tests/test_moe_reference.py checks the reference: KL <= MAX_KL after every
    settled prompt token, teacher-forced greedy tokens equal beyond the margins."""
    path = written(name, tmp_path, llamacpp)
    prompt = [int(i) for i in llamacpp["prompt"]]
    greedy = [int(t) for t in llamacpp[f"{name}/greedy"]]
    gaps = llamacpp[f"{name}/gaps"]
    model = reference.ReferenceModel(path)
    model.logits(prompt + greedy[:-1])
    settled = model.router_margin >= ROUTER_MARGIN
    ours = decode_logits(path, prompt + greedy[:-1])
    divergence = kl(llamacpp[f"{name}/logits"], ours[:len(prompt)])
    assert divergence[settled[:len(prompt)]].max() <= MAX_KL
    checked = 0
    for i, (want, gap) in enumerate(zip(greedy, gaps)):
        at = len(prompt) - 1 + i
        if gap >= LOGIT_MARGIN and settled[at]:
            assert int(np.argmax(ours[at])) == want, f"step {i} (gap {gap:.3f})"
            checked += 1
    assert checked >= len(greedy) // 5


@pytest.fixture(scope="module")
def tp_models(tmp_path_factory):
    """Experts 128 rows long (4 Q8_0 blocks), so that 2-4 ranks each hold rows of every
    expert; qwen2moe's shared expert likewise. Heads of 32, so that each rank's columns of
    attn_output are whole int8 rounding groups (see tests/test_tp.py)."""
    d = tmp_path_factory.mktemp("moe_tp")
    small = dict(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, n_experts=8,
                 n_experts_used=2, qtype="Q8_0", seed=7)
    return {
        "qwen3moe": synth.write_model(d / "qwen3moe.gguf", arch="qwen3moe", ffn=64,
                                      expert_ffn=128, **small),
        "qwen2moe": synth.write_model(d / "qwen2moe.gguf", arch="qwen2moe", ffn=64,
                                      expert_ffn=128, shared_ffn=128, **small),
        "mixtral": synth.write_model(d / "mixtral.gguf", arch="llama", ffn=128, **small),
    }


def logits_and_greedy(path, nodes, moe_split="rows"):
    with numatp.load(path, nodes=nodes, ctx_size=64, moe_split=moe_split) as llm:
        logits = llm.logits(PROMPT)
        tokens = list(llm.generate_ids(PROMPT, 8, SamplingParams(temperature=0),
                                       stop_at_eog=False))
    return logits, tokens


# As tests/test_tp.py: each rank's partial sums are added in another order than one
# shard's running sum, so logits agree to float32 round-off (1e-4 of their scale) and the
# greedy tokens are equal. Every rank routes the same reduced inputs, so all pick the
# same experts.
@pytest.mark.parametrize("nodes,moe_split", [(2, "rows"), (3, "rows"), (4, "rows"),
                                             (2, "experts"), (3, "experts")])
@pytest.mark.parametrize("arch", ["qwen3moe", "qwen2moe", "mixtral"])
def test_workers_match_one_shard(tp_models, arch, nodes, moe_split):
    ref_logits, ref_tokens = logits_and_greedy(tp_models[arch], 1)
    logits, tokens = logits_and_greedy(tp_models[arch], nodes, moe_split)
    assert np.abs(logits - ref_logits).max() <= 1e-4 * np.abs(ref_logits).max()
    assert tokens == ref_tokens


def test_generate_runs_a_moe_file(tp_models):
    """`numatp generate` end to end, on one node and on two with each split."""
    outs = []
    for nodes, split in (("1", "rows"), ("2", "rows"), ("2", "experts")):
        r = subprocess.run([sys.executable, "-m", "numatp", "generate", "hello", "-m",
                            str(tp_models["qwen3moe"]), "-n", "6", "--temp", "0", "--ignore-eos",
                            "--nodes", nodes, "--moe-split", split],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    assert outs[0] and outs[0] == outs[1] == outs[2]


def test_an_unknown_moe_split_is_one_line(tp_models):
    r = subprocess.run([sys.executable, "-m", "numatp", "generate", "hello", "-m",
                        str(tp_models["mixtral"]), "--moe-split", "layers"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "numatp: error: invalid MoE split 'layers' (one of: rows, experts)"]
