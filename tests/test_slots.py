"""Several sequences on one model (LLM(parallel=N).slots, numatp/batching.py): each slot's
logits are bitwise those of the same sequence run alone, whatever the other slots do
meanwhile and however many rows a decode step batches (the kernels sum each row in the
same order whatever the batch)."""
import numpy as np
import pytest

import numatp
import synth
from models import STORIES, moe_model
from numatp.errors import ContextError, UsageError


def random_ids(vocab, n, seed):
    rng = np.random.default_rng(seed)
    return [1] + [int(t) for t in rng.integers(3, vocab, n - 1)]


@pytest.fixture(scope="module")
def q8_model(tmp_path_factory):
    return synth.write_model(tmp_path_factory.mktemp("slots") / "q8.gguf", qtype="Q8_0", seed=3)


def alone(path, nodes, prompt, steps, ctx):
    """The logits of one sequence run by itself on a one-slot model: after its prompt,
    then after each of `steps` fed one at a time. On as many nodes as the model it is
    compared with: the all-reduce adds the nodes' parts in its order."""
    with numatp.load(path, nodes=nodes, ctx_size=ctx) as llm:
        out = [llm.slots.prefill(0, prompt)]
        out += [llm.slots.decode([(0, t)])[0] for t in steps]
        return out


def interleaved(llm, prompts, steps):
    """Prefill and decode the sequences on their slots, interleaved: slot i's prompt goes
    in after slot i-1 has decoded some tokens, and every decode call takes one token of
    each slot that is running and has tokens left. Returns each slot's logits, in order."""
    got = [[] for _ in prompts]
    todo = [list(s) for s in steps]
    running = []
    for slot, prompt in enumerate(prompts):
        got[slot].append(llm.slots.prefill(slot, prompt))
        assert llm.slots.last_processed(slot) == len(prompt)
        running.append(slot)
        for _ in range(2 + slot):
            pairs = [(s, todo[s].pop(0)) for s in running if todo[s]]
            for (s, _), row in zip(pairs, llm.slots.decode(pairs)):
                got[s].append(row)
    while any(todo):
        pairs = [(s, todo[s].pop(0)) for s in running if todo[s]]
        for (s, _), row in zip(pairs, llm.slots.decode(pairs)):
            got[s].append(row)
    return got


def check_slots_match_alone(path, nodes):
    ctx = 96
    with numatp.load(path, nodes=nodes, ctx_size=ctx, parallel=3) as llm:
        vocab = llm.config.vocab
        prompts = [random_ids(vocab, n, seed=n) for n in (5, 40, 17)]
        steps = [random_ids(vocab, n, seed=100 + n)[1:] for n in (12, 9, 15)]
        got = interleaved(llm, prompts, steps)
        for slot in range(3):
            assert llm.slots.tokens(slot) == prompts[slot] + steps[slot]
    for slot in range(3):
        want = alone(path, nodes, prompts[slot], steps[slot], ctx)
        assert len(got[slot]) == len(want)
        for g, w in zip(got[slot], want):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("nodes", [1, 2])
def test_slots_give_each_sequence_its_logits_alone(q8_model, nodes):
    check_slots_match_alone(q8_model, nodes)


@pytest.mark.parametrize("name,nodes", [("qwen2moe-q8_0", 1), ("qwen3moe-q8_0", 2)])
def test_slots_of_a_moe_model(tmp_path, name, nodes):
    """The router, the experts (grouped by expert across the rows of a step) and
    qwen2moe's shared expert: each row still gets its sequence's logits alone."""
    check_slots_match_alone(moe_model(name, tmp_path), nodes)


def test_slots_of_a_float_model():
    check_slots_match_alone(STORIES, 1)


@pytest.mark.parametrize("model", ["q8", "f32"])
def test_wide_decode_steps_match_single_decodes(q8_model, model):
    """14 rows per decode step: the quantized kernels run them through an 8-token tile,
    a 4-token tile and two one-token tiles, the float kernels 4 at a time with the last
    lanes repeated; each row is still bitwise its sequence's single decode."""
    path = q8_model if model == "q8" else STORIES
    n, ctx = 14, 32
    with numatp.load(path, nodes=1, ctx_size=ctx, parallel=n) as llm:
        vocab = llm.config.vocab
        prompts = [random_ids(vocab, 3 + s, seed=s) for s in range(n)]
        steps = [random_ids(vocab, 4, seed=50 + s)[1:] for s in range(n)]
        got = [[llm.slots.prefill(s, prompts[s])] for s in range(n)]
        for i in range(3):
            for s, row in enumerate(llm.slots.decode([(s, steps[s][i]) for s in range(n)])):
                got[s].append(row)
    for s in range(n):
        for g, w in zip(got[s], alone(path, 1, prompts[s], steps[s], ctx)):
            np.testing.assert_array_equal(g, w)


def test_a_slot_reuses_its_own_prefix(q8_model):
    with numatp.load(q8_model, nodes=1, ctx_size=64, parallel=2) as llm, \
            numatp.load(q8_model, nodes=1, ctx_size=64) as ref:
        a = random_ids(llm.config.vocab, 20, seed=1)
        b = random_ids(llm.config.vocab, 30, seed=2)
        llm.slots.prefill(0, a)
        llm.slots.prefill(1, b)
        more = a + [7, 8, 9]
        got = llm.slots.prefill(0, more)
        assert llm.slots.last_processed(0) == 3
        ref.reset()
        np.testing.assert_array_equal(got, ref.logits(more))
        # The other slot's sequence is untouched and reused in turn.
        got = llm.slots.prefill(1, b[:25])
        assert llm.slots.last_processed(1) == 2
        ref.reset()
        np.testing.assert_array_equal(got, ref.logits(b[:25]))
        llm.slots.clear(1)
        assert llm.slots.tokens(1) == []
        llm.slots.prefill(1, b[:25])
        assert llm.slots.last_processed(1) == 25


def test_slot_zero_is_the_single_sequence_api(q8_model):
    with numatp.load(q8_model, nodes=1, ctx_size=64, parallel=2) as llm:
        a = random_ids(llm.config.vocab, 20, seed=1)
        llm.logits(a)
        assert llm.slots.tokens(0) == a
        llm.slots.prefill(0, a + [5])
        assert llm.slots.last_processed(0) == 2
        llm.logits(a + [5, 6])
        assert llm.stats.n_prompt_cached == 20


def test_bad_slot_calls_raise_clear_errors(q8_model):
    with numatp.load(q8_model, nodes=1, ctx_size=16, parallel=2) as llm:
        with pytest.raises(UsageError, match="slot 2 out of range"):
            llm.slots.prefill(2, [1, 2])
        with pytest.raises(UsageError, match="twice"):
            llm.slots.decode([(0, 1), (0, 2)])
        with pytest.raises(UsageError, match="out of range"):
            llm.slots.decode([(1, llm.config.vocab)])
        with pytest.raises(UsageError, match="at least one"):
            llm.slots.decode([])
        with pytest.raises(ContextError):
            llm.slots.prefill(0, list(range(1, 18)))
        llm.slots.prefill(0, list(range(1, 17)))
        with pytest.raises(ContextError, match="slot 0 is full"):
            llm.slots.decode([(1, 3), (0, 3)])
        # Nothing ran: slot 1 is still empty.
        assert llm.slots.tokens(1) == []
    with pytest.raises(UsageError, match="parallel"):
        numatp.load(q8_model, nodes=1, parallel=0)


def test_the_kv_check_counts_every_slot(q8_model):
    import psutil
    from numatp.model.config import from_gguf
    from numatp.model.declare import cache_nbytes
    from numatp.model.gguf_file import GGUFFile
    g = GGUFFile(str(q8_model))
    one = cache_nbytes(from_gguf(g), 1 << 16)
    g.close()
    n = psutil.virtual_memory().total // one + 1
    with pytest.raises(numatp.NumatpError, match=f"{n} sequence slots of 65536 tokens"):
        numatp.load(q8_model, nodes=1, ctx_size=1 << 16, parallel=n)
