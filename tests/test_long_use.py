"""Long and repeated use of one loaded engine, run as two worker processes (where a
position past the KV cache would write outside a worker's memory, and where shared
memory and per-step state live):
- generation up to the context limit stops there with stop reason "context";
- 100 generate calls leave the coordinator's Python heap, the workers' memory, open
  file descriptors and /dev/shm segments where they were.
"""
import gc
import os
import tracemalloc

import psutil
import pytest

import numatp
from models import STORIES
from numatp.errors import NumatpError
from numatp.shm.segment import leftover_segments
from numatp.sampling import SamplingParams

CTX = 24
GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def llm():
    with numatp.load(STORIES, nodes=2, ctx_size=CTX) as engine:
        yield engine


def test_generation_stops_when_the_context_is_full(llm):
    ids = llm.prompt_ids("Once upon a time")
    # Greedy stories260K does not end its story within 2048 tokens, so only the
    # context stops it: the prompt fills positions 0..4, each generated token but the
    # last is fed back at the next position, up to CTX - 1.
    tokens = list(llm.generate_ids(ids, None, GREEDY))
    assert llm.stats.stop_reason == "context"
    assert len(ids) + len(tokens) == CTX + 1
    # A run to the limit corrupted nothing: the same run gives the same tokens.
    assert list(llm.generate_ids(ids, None, GREEDY)) == tokens
    # A prompt that fills the context exactly still gives its one next token.
    full = (ids + tokens)[:CTX]
    assert list(llm.generate_ids(full, None, GREEDY)) == [tokens[CTX - len(ids)]]
    assert llm.stats.stop_reason == "context"
    with pytest.raises(NumatpError, match=f"does not fit the context of {CTX} tokens"):
        llm.logits(ids + tokens)


def _snapshot(llm):
    gc.collect()
    workers = [psutil.Process(r["pid"]) for r in llm.model.reports]
    me = psutil.Process()
    return {
        "heap": tracemalloc.get_traced_memory()[0],
        "objects": len(gc.get_objects()),
        "worker_rss": [w.memory_info().rss for w in workers],
        "fds": [p.num_fds() for p in [me] + workers],
        "segments": leftover_segments(os.getpid()),
    }


def test_100_generate_calls_stay_flat(llm):
    def call(i):
        text = "".join(llm.generate("Once upon a time", max_tokens=4, temperature=0.8, seed=i))
        assert text

    tracemalloc.start()
    try:
        for i in range(10):  # first calls settle caches, allocator pools, the sampler
            call(i)
        before = _snapshot(llm)
        for i in range(100):
            call(i)
        after = _snapshot(llm)
    finally:
        tracemalloc.stop()
    assert after["segments"] == before["segments"]
    assert after["fds"] == before["fds"]
    # Measured over 100 calls after the warm-up: +1 object, +2..12 KB of heap (numpy's
    # and ctypes' internal caches filling), worker RSS +0. Anything kept per call (its
    # stats, a token list: several objects each) would add hundreds of objects; a
    # logits copy per call 200 KB of heap.
    assert after["objects"] - before["objects"] < 50, (before, after)
    assert after["heap"] - before["heap"] < 64 << 10, (before, after)
    # A worker allocates nothing per step that outlives it; 1 MiB is room for the
    # allocator returning or taking a few pages.
    for b, a in zip(before["worker_rss"], after["worker_rss"]):
        assert a - b < 1 << 20, (before, after)
