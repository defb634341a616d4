"""One LLM used from several threads, or by two generations at once: its one KV cache
must never be shared by two computations in flight (that gave wrong text and no error).
Calls from threads take turns and each gets what it would get alone; a second generation
started in a thread whose first is still open is refused with NumatpError.

And a model loaded in a thread that then exits (a ThreadPoolExecutor's) keeps its
workers: they live as long as the process that started them, not the thread.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import numatp
from models import STORIES
from numatp.errors import NumatpError

PROMPTS = ["Once upon a time", "The little dog", "Lily and Ben went", "One day a big"]
N_THREADS = 4
TOKENS = 24
JOIN_S = 300  # a deadline for the threads, not a timing: a hang fails instead of hanging


def _alone(llm):
    """Each prompt's text and logits, computed one at a time."""
    texts = ["".join(llm.generate(p, max_tokens=TOKENS, temperature=0.8, seed=i))
             for i, p in enumerate(PROMPTS)]
    logits = [llm.logits(llm.tokenize(p)) for p in PROMPTS]
    return texts, logits


def _together(llm):
    """The same calls from N_THREADS threads at once, generations and logits mixed."""
    start = threading.Barrier(N_THREADS)

    def job(i):
        start.wait(JOIN_S)
        text = "".join(llm.generate(PROMPTS[i], max_tokens=TOKENS, temperature=0.8, seed=i))
        return text, llm.logits(llm.tokenize(PROMPTS[i]))

    with ThreadPoolExecutor(N_THREADS) as pool:
        futures = [pool.submit(job, i) for i in range(N_THREADS)]
        results = [f.result(JOIN_S) for f in futures]
    return [r[0] for r in results], [r[1] for r in results]


@pytest.mark.parametrize("nodes", [1, 2])
def test_threads_sharing_one_llm_get_their_own_results(nodes):
    with numatp.load(STORIES, nodes=nodes, ctx_size=128) as llm:
        texts, logits = _alone(llm)
        assert len(set(texts)) == len(PROMPTS)  # different prompts: a mix-up would show
        for _ in range(2):
            got_texts, got_logits = _together(llm)
            assert got_texts == texts
            for got, want in zip(got_logits, logits):
                np.testing.assert_array_equal(got, want)


def test_a_second_open_generation_in_one_thread_is_refused():
    with numatp.load(STORIES, nodes=1, ctx_size=128) as llm:
        want = "".join(llm.generate(PROMPTS[0], max_tokens=TOKENS, temperature=0))
        first = llm.generate(PROMPTS[0], max_tokens=TOKENS, temperature=0)
        second = llm.generate(PROMPTS[1], max_tokens=TOKENS, temperature=0)
        pieces = [next(first)]
        with pytest.raises(NumatpError, match="busy with a generation of this thread"):
            next(second)
        with pytest.raises(NumatpError, match="busy with a generation of this thread"):
            llm.logits(llm.tokenize(PROMPTS[1]))
        pieces += list(first)  # the first goes on undisturbed
        assert "".join(pieces) == want
        # Once it is finished (or closed), the model is free again.
        third = llm.generate(PROMPTS[0], max_tokens=TOKENS, temperature=0)
        next(third)
        third.close()
        assert "".join(llm.generate(PROMPTS[0], max_tokens=TOKENS, temperature=0)) == want


def test_a_generation_moved_to_another_thread_is_waited_for():
    """A generation driven by a thread pool, a token per task, runs in the pool's
    threads: a call from the thread that started it then waits for it to finish (it is
    not this thread's to finish) instead of being refused."""
    with numatp.load(STORIES, nodes=1, ctx_size=128) as llm:
        want = "".join(llm.generate(PROMPTS[0], max_tokens=TOKENS, temperature=0))
        want_logits = llm.logits(llm.tokenize(PROMPTS[1]))
        gen = llm.generate(PROMPTS[0], max_tokens=TOKENS, temperature=0)
        pieces = [next(gen)]
        with ThreadPoolExecutor(1) as pool:
            pieces.append(pool.submit(next, gen).result(JOIN_S))
            rest = pool.submit(list, gen)
            np.testing.assert_array_equal(llm.logits(llm.tokenize(PROMPTS[1])), want_logits)
            pieces += rest.result(JOIN_S)
        assert "".join(pieces) == want


def test_model_loaded_in_a_thread_that_exits_keeps_its_workers():
    def load():
        llm = numatp.load(STORIES, nodes=2, ctx_size=128)
        return llm, llm.logits(llm.tokenize(PROMPTS[0]))

    with ThreadPoolExecutor(1) as pool:
        llm, want = pool.submit(load).result(JOIN_S)
    # The pool's thread has exited: the workers it started must still be there.
    try:
        np.testing.assert_array_equal(llm.logits(llm.tokenize(PROMPTS[0])), want)
    finally:
        llm.close()
