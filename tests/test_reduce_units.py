"""1, 2, 3 and 4 ranks give bit-identical logits (numatp/parallel/plan.py: reduce units).

Every row-split product (attn_output, ffn_down, each expert's down, a shared expert's
down) is computed as six fixed units' partial sums (cut at every i/N for N = 1 to 4)
added one at a time in unit order, whatever the rank count: one rank adds all six, N
ranks publish the units of their ranges and the all-reduce adds them in the same order.
Everything else is either the same computation on every rank (norms, the router) or a
row's whole dot product on the rank that holds the row, so no tolerance is needed: the
logits are compared for equality, in the prompt path (a 9-token and a 12-token prompt:
full, half and one-token tiles) and in decode steps.

The models' cuts land on attn_output's blocks, which the plan requires; one has 2 KV
heads (query heads are cut, the KV heads a cut shares are replicated).
tests/test_tp.py covers a model whose cuts do not (its round-off then depends on the
rank count).
"""
import subprocess
import sys

import numpy as np
import pytest

import numatp
import synth
from numatp.model.config import from_gguf
from numatp.model.gguf_file import GGUFFile
from numatp.parallel.shard import shard_plan
from numatp.sampling import SamplingParams

PROMPT = [5, 17, 42, 99, 3, 250, 7, 11, 13]
LONGER = PROMPT + [60, 61, 62]

# Q4_K_M-like: attn_output in units of 4 heads x 64 = 256 columns, one Q4_K block.
KQUANT = dict(qtype="Q4_K", hidden=256, n_heads=16, n_kv_heads=4, head_dim=64,
              tensor_types={"attn_v": "Q6_K", "ffn_down": "Q6_K", "ffn_down_exps": "Q6_K"})
SMALL = dict(qtype="Q8_0", hidden=128, n_heads=8, n_kv_heads=4, head_dim=32)
MOE = dict(n_experts=8, n_experts_used=3)
MODELS = {
    "llama-q8_0": dict(SMALL, arch="llama", ffn=192),
    "llama-f16": dict(SMALL, arch="llama", ffn=192, qtype="F16"),
    "qwen2-q4_k_m": dict(KQUANT, arch="qwen2", ffn=1024),
    "qwen3-q8_0": dict(SMALL, arch="qwen3", ffn=256),
    "qwen2-2kv-q8_0": dict(SMALL, arch="qwen2", ffn=192, n_kv_heads=2),
    # 2 expert blocks over 6 units: four units of every expert are empty
    "qwen3moe-q4_k_m": dict(KQUANT, arch="qwen3moe", ffn=256, expert_ffn=512, **MOE),
    "qwen2moe-q8_0": dict(SMALL, arch="qwen2moe", ffn=128, expert_ffn=96, shared_ffn=160,
                          **MOE),
    "mixtral-q8_0": dict(SMALL, arch="llama", ffn=128, **MOE),
}


def run(path, nodes):
    """Prompt logits of a 12-token prompt, then of a 9-token one and of the three decode
    steps (one token each) that follow it greedily."""
    with numatp.load(path, nodes=nodes, ctx_size=64) as llm:
        out = [llm.logits(LONGER)]
        llm.reset()
        _, steps = llm.generation(PROMPT, 4, SamplingParams(temperature=0), stop_at_eog=False)
        out += [np.array(logits) for _, logits in steps]
    assert len(out) == 5
    return out


@pytest.mark.parametrize("name", MODELS)
def test_one_to_four_ranks_are_bit_identical(tmp_path, name):
    path = synth.write_model(tmp_path / f"{name}.gguf", n_layers=2, vocab=300, seed=5,
                             **MODELS[name])
    g = GGUFFile(path)
    cfg = from_gguf(g)
    # the plan gives the ranks the units of their ranges: the test is not vacuous
    for n, units in ((1, [6]), (2, [3, 3]), (3, [2, 2, 2]), (4, [1, 2, 2, 1])):
        assert [s.n_units for s in shard_plan(g, cfg, n)] == units
    g.close()
    assert "the same logits on 1, 2, 3 and 4 nodes" in subprocess.run(
        [sys.executable, "-m", "numatp", "info", str(path), "--nodes", "2"],
        capture_output=True, text=True, check=True).stdout
    one = run(path, 1)
    for n in (2, 3, 4):
        for a, b in zip(one, run(path, n)):
            assert np.array_equal(a, b), f"{n} ranks: max difference {np.abs(a - b).max()}"
