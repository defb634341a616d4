"""Tensor parallelism: N worker processes give the same greedy tokens as one shard, and
logits within float32 round-off of the single-shard logits (on synthetic models; a real
model's outliers amplify the round-off: see test_smollm2_tp_agrees_with_one_node).

Why round-off and not bit equality: the synthetic model's cuts for 3 and 4 ranks straddle
attn_output's Q4_K blocks, so those counts get no reduce units (numatp/parallel/plan.py;
tests/test_reduce_units.py has bit equality where they do, and the real models below
have it), so with N ranks attn_output and ffn_down are summed as N partial sums (each
over a rank's columns) and then added, instead of one running sum: the float32
additions happen in another order. Reordering a K-term float32 sum changes it
by at most ~K * 6e-8 * sum|terms|; for these models (K <= 512, activations O(1)) that is
< 1e-5 per matmul, growing through the layers and the output head to ~1e-5 of the logits'
scale. We allow 1e-4 of the largest logit magnitude. Virtual nodes share this machine's 2
CPUs (3 and 4 workers oversubscribe them, which is slow but must stay correct).

The int8 rounding of the activations (numatp/quant/activations.py) is the same with any
split where each rounding group lies within one rank: groups of 32 for the 32-element
block formats, and a rank's columns start at a head boundary, a multiple of 32 when the
head size is. The super-block formats round per 256 (one scale per super-block, as
llama.cpp's Q8_K), so where ranks share a Q4_K block of attn_output (3 and 4 ranks
here) each rounds its own columns of it, with the largest of those alone for scale, and
the logits move by up to what int8 rounding moves them at all: the uneven test allows,
on top of round-off, twice the int8 rounding's effect on this model's logits (the
reference forward with and without it, tests/reference.py), one for each side.
(Measured: 3 and 4 ranks 0.061 from one shard, with a rounding effect of 0.050; their
logits are 0.047 from the unrounded reference's, one shard's 0.050.)
"""
import numpy as np
import pytest

import numatp
import reference
import synth
from models import STORIES, smollm2

PROMPT_IDS = [7, 100, 42, 250, 3, 19, 77, 401, 5]


@pytest.fixture(scope="module")
def uneven_model(tmp_path_factory):
    # 16 heads of 32 over 4 KV heads; attn_output is Q4_K, 512 columns in super-blocks of
    # 256: over 3 ranks (8, 4 and 4 heads) ranks 1 and 2 share the second super-block,
    # over 4 ranks every block is shared (the padded column shard). ffn of 160 = 5 Q8_0
    # blocks splits 2/2/1 over 3 ranks and leaves a rank of 4 with one block.
    return synth.write_model(tmp_path_factory.mktemp("tp") / "uneven.gguf", arch="qwen2",
                             qtype="Q8_0", hidden=256, n_heads=16, n_kv_heads=4, head_dim=32,
                             ffn=160, n_layers=2, vocab=517, seed=11,
                             tensor_types={"attn_output": "Q4_K"})


def logits_and_greedy(path, nodes, ids, n_gen=8):
    with numatp.load(path, nodes=nodes, ctx_size=64) as llm:
        logits = llm.logits(ids)
        from numatp.sampling import SamplingParams
        tokens = list(llm.generate_ids(ids, n_gen, SamplingParams(temperature=0), stop_at_eog=False))
    return logits, tokens


@pytest.mark.parametrize("nodes", [2, 3, 4])
def test_uneven_split_matches_one_shard(uneven_model, nodes):
    ref_logits, ref_tokens = logits_and_greedy(uneven_model, 1, PROMPT_IDS)
    logits, tokens = logits_and_greedy(uneven_model, nodes, PROMPT_IDS)
    scale = np.abs(ref_logits).max()
    # the int8 rounding's effect on the last position's logits (see the module doc)
    rounding = np.abs(reference.reference_logits(uneven_model, PROMPT_IDS)[-1]
                      - reference.reference_logits(uneven_model, PROMPT_IDS,
                                                   int8_activations=False)[-1]).max()
    assert np.abs(logits - ref_logits).max() <= 1e-4 * scale + 2 * rounding, (nodes, rounding)
    assert tokens == ref_tokens


def greedy_text(path, nodes, prompt, n):
    with numatp.load(path, nodes=nodes) as llm:
        return "".join(llm.generate(prompt, max_tokens=n, temperature=0))


@pytest.mark.parametrize("nodes", [2, 3, 4])
def test_stories_tp_greedy_matches(nodes):
    one = greedy_text(STORIES, 1, "Once upon a time", 30)
    assert one.startswith(", there was a little girl named Lily")
    assert greedy_text(STORIES, nodes, "Once upon a time", 30) == one


# A real model: SmolLM2-135M (Q8_0, 9 heads over 3 KV heads of 64) has reduce units for
# 1-4 nodes, cut between query heads, so N nodes must give one node's logits bit for bit,
# at every step of a greedy continuation. (Before the units, its logits differed by up to
# 0.9: a real model's activation outliers turn the round-off of another summation order
# into whole int8 steps.)
@pytest.mark.slow
@pytest.mark.parametrize("nodes", [2, 3, 4])
def test_smollm2_tp_matches_one_node_bit_for_bit(nodes):
    from numatp.model.config import from_gguf
    from numatp.model.gguf_file import GGUFFile
    from numatp.parallel.shard import shard_identical_counts
    from numatp.sampling import SamplingParams
    path = smollm2()
    g = GGUFFile(path)
    assert nodes in shard_identical_counts(g, from_gguf(g))
    g.close()
    with numatp.load(path, nodes=1) as llm:
        ids = llm.prompt_ids("The capital of France is")
        one = list(llm.generate_ids(ids, 12, SamplingParams(temperature=0), stop_at_eog=False))
        alone = [np.array(llm.logits(ids + one[:i])) for i in range(len(one))]
    with numatp.load(path, nodes=nodes) as llm:
        split = [np.array(llm.logits(ids + one[:i])) for i in range(len(one))]
        assert list(llm.generate_ids(ids, 12, SamplingParams(temperature=0),
                                     stop_at_eog=False)) == one
    for i, (a, b) in enumerate(zip(alone, split)):
        assert np.array_equal(a, b), f"step {i}: max difference {np.abs(a - b).max()}"


def test_copying_a_shard_releases_the_file_pages_but_not_their_bytes():
    """build_shard drops each source tensor's pages from the process after copying it
    (peak memory: the file must not stay resident beside its copy); the file still reads
    the same afterwards, from the page cache."""
    from numatp.model.config import from_gguf
    from numatp.model.gguf_file import GGUFFile
    from numatp.parallel.shard import build_shard, shard_plan
    g = GGUFFile(STORIES)
    before = {name: t.data.copy() for name, t in g.tensors.items()}
    cfg = from_gguf(g)
    for shard in shard_plan(g, cfg, 2):
        build_shard(g, cfg, shard, ctx=16)
    for name, t in g.tensors.items():
        assert np.array_equal(t.data, before[name]), name
