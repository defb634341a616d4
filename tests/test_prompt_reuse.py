"""Prompt reuse: a model keeps the keys and values of its last sequence, and a prompt that
shares a prefix with it is processed from where they differ. The promise (see LLM): the
logits are bitwise those of processing the prompt from scratch, reused generated tokens
(each run alone, through the one-token kernels) included, quantized or not."""
import numpy as np
import pytest

import numatp
import synth
from models import STORIES
from numatp.api import PREFILL_CHUNK, _chunks
from numatp.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0)


def random_ids(llm, n, seed):
    rng = np.random.default_rng(seed)
    return [1] + [int(t) for t in rng.integers(3, llm.config.vocab, n - 1)]


@pytest.fixture(scope="module")
def fresh():
    """A second model whose every call starts from position 0: the reference."""
    with numatp.load(STORIES, nodes=1, ctx_size=512) as llm:
        yield llm


def from_scratch(llm, ids):
    llm.reset()
    logits = llm.logits(ids)
    assert llm.stats.n_prompt_cached == 0
    return logits


@pytest.mark.parametrize("nodes", [1, 2])
def test_reused_prompt_prefixes_give_the_logits_of_a_fresh_model(nodes):
    """Prefixes that end inside and across 128-token chunks, a prompt that leaves the
    cached sequence halfway, and one that is all in the cache: each processes only what
    the cache lacks (at least 2 tokens) and gives the fresh model's logits, bitwise. The
    reference runs on as many nodes (the all-reduce adds the nodes' parts in its order)."""
    with numatp.load(STORIES, nodes=nodes, ctx_size=512) as llm, \
            numatp.load(STORIES, nodes=nodes, ctx_size=512) as fresh:
        a = random_ids(llm, 150, seed=1)
        b = a + random_ids(llm, 160, seed=2)[1:]
        c = a[:70] + random_ids(llm, 100, seed=3)[1:]
        cases = [(a, 0), (b, len(a)), (c, 70), (c[:40], 38), (b[:2], 0), (b[:1], 0)]
        for ids, cached in cases:
            got = llm.logits(ids)
            assert (llm.stats.n_prompt_cached, llm.stats.n_prompt_processed) == \
                (cached, len(ids) - cached)
            np.testing.assert_array_equal(got, from_scratch(fresh, ids))


def test_generation_reuses_the_prompt_and_its_reply(tmp_path):
    """A generation leaves its prompt and every generated token but the last (which was
    never run) in the cache: the next prompt continuing the text processes only the new
    part. Quantized weights: bitwise the logits of a fresh model."""
    path = synth.write_model(tmp_path / "q8.gguf", qtype="Q8_0", seed=11)
    with numatp.load(path, nodes=1) as llm, numatp.load(path, nodes=1) as ref:
        prompt = random_ids(llm, 20, seed=4)
        reply = list(llm.generate_ids(prompt, 12, GREEDY, stop_at_eog=False))
        assert llm.stats.n_prompt_cached == 0 and len(reply) == 12
        follow = prompt + reply + random_ids(llm, 9, seed=5)[1:]
        got = llm.logits(follow)
        assert llm.stats.n_prompt_cached == len(prompt) + len(reply) - 1
        np.testing.assert_array_equal(got, from_scratch(ref, follow))
        # The same generation again gives the same tokens, from a cache it mostly reuses.
        assert list(llm.generate_ids(prompt, 12, GREEDY, stop_at_eog=False)) == reply
        assert llm.stats.n_prompt_cached == len(prompt) - 2


def test_reused_generated_tokens_of_a_float_model_give_the_logits_of_a_fresh_model(fresh):
    """The one-token float kernels sum each row in the batched kernels' order: bitwise."""
    with numatp.load(STORIES, nodes=1, ctx_size=512) as llm:
        prompt = llm.tokenize("Once upon a time")
        reply = list(llm.generate_ids(prompt, 20, GREEDY))
        follow = prompt + reply + llm.tokenize(" The end.", add_special=False)
        got = llm.logits(follow)
        assert llm.stats.n_prompt_cached == len(prompt) + len(reply) - 1
        want = from_scratch(fresh, follow)
        np.testing.assert_array_equal(got, want)


def test_chunks_never_leave_a_lone_token():
    for start, end in [(0, 1), (0, 2), (0, 128), (0, 129), (0, 130), (5, 262), (3, 400)]:
        spans = list(_chunks(start, end))
        assert spans[0][0] == start and spans[-1][1] == end
        assert all(a == b for (_, a), (b, _) in zip(spans, spans[1:]))
        sizes = [b - a for a, b in spans]
        assert max(sizes) <= PREFILL_CHUNK
        assert end - start == 1 or min(sizes) >= 2


def test_a_failed_step_is_not_reused(fresh, monkeypatch):
    """A step that raised may have written part of its positions: the next prompt runs
    them again."""
    with numatp.load(STORIES, nodes=1, ctx_size=512) as llm:
        ids = random_ids(llm, 300, seed=6)
        forward = llm.model.forward

        def second_chunk_fails(x, pos0, *slot):
            if pos0 > 0:
                forward(x, pos0, *slot)
                raise RuntimeError("failed after writing")
            return forward(x, pos0, *slot)

        monkeypatch.setattr(llm.model, "forward", second_chunk_fails)
        with pytest.raises(RuntimeError):
            llm.logits(ids)
        monkeypatch.undo()
        got = llm.logits(ids)
        assert llm.stats.n_prompt_cached == PREFILL_CHUNK
        np.testing.assert_array_equal(got, from_scratch(fresh, ids))


def test_warm_up_and_reset_forget_the_cache(fresh):
    with numatp.load(STORIES, nodes=1, ctx_size=512) as llm:
        ids = random_ids(llm, 20, seed=7)
        llm.logits(ids)
        llm.warm_up()           # runs a step at position 0
        np.testing.assert_array_equal(llm.logits(ids), from_scratch(fresh, ids))
        assert llm.stats.n_prompt_cached == 0
        llm.logits(ids)
        assert llm.stats.n_prompt_cached == len(ids) - 2
        llm.reset()
        llm.logits(ids)
        assert llm.stats.n_prompt_cached == 0


def test_prompt_benchmarks_process_the_whole_prompt():
    from numatp.bench.decode import Test, measure
    with numatp.load(STORIES, nodes=1, ctx_size=512) as llm:
        measure(llm, Test("pp", 64), repeats=2)
        assert llm.stats.n_prompt_processed == 64

