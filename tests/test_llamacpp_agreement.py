"""numatp against llama.cpp on a real model (SmolLM2-135M-Instruct, Q4_1 and Q8_0 weights):
the logits after a prompt, and llama.cpp's greedy continuation step by step.

The llama.cpp side is kept in tests/data/llamacpp_smollm2.npz (tools/llamacpp_reference.py
wrote it with llama-cpp-python 0.3.36), so the test needs nothing of llama.cpp. Both
engines round the activations of quantized matrix products to int8 per 32 values (its
Q8_0/Q8_1); they differ in the order of float additions, in llama.cpp's fp16 KV cache
and in its attention arithmetic.

- KL(llama.cpp || numatp) of the next-token distributions after each prompt must stay
  within 0.01 (measured 2026-11-28: 0.0030 plain, 0.0073 chat). The chat case is close
  to the bound and moves with arithmetic that is equally valid: summing attention's
  weighted V in another order (commit 9145a72, since reverted) measured 0.0045 plain,
  0.0106 chat, likely because every layer rounds its activations to int8 again and a
  value that moves by an ulp can round to the next integer. Rounding the KV cache to
  fp16 as llama.cpp stores it measured 0.0038 plain, 0.0048 chat: most of the chat gap
  is that cache.
- Teacher-forced greedy: after the prompt and llama.cpp's first i greedy tokens, numatp's
  top token must be llama.cpp's token i, except at near ties: steps where llama.cpp's two
  best logits are less than MARGIN apart. MARGIN is what separates the engines' logits:
  after these prompts their top-20 logits differ by up to 0.5 (measured, after removing
  the mean), so a gap below that may order the two tokens either way.
"""
import numpy as np
import pytest

import numatp
from models import DATA, smollm2

REFERENCE = DATA / "llamacpp_smollm2.npz"
MAX_KL = 0.01
MARGIN = 0.5


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def kl(p_logits, q_logits):
    lp, lq = _log_softmax(p_logits), _log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum())


@pytest.fixture(scope="module")
def reference():
    return np.load(REFERENCE)


@pytest.fixture(scope="module")
def llm():
    with numatp.load(smollm2(), nodes=1) as model:
        yield model


@pytest.mark.slow
@pytest.mark.parametrize("case", ["plain", "chat"])
def test_next_token_distribution_matches_llamacpp(reference, llm, case):
    ids = [int(i) for i in reference[f"{case}_ids"]]
    ours = llm.logits(ids)
    theirs = reference[f"{case}_logits"]
    assert kl(theirs, ours) <= MAX_KL
    assert int(np.argmax(ours)) == int(np.argmax(theirs))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["plain", "chat"])
def test_teacher_forced_greedy_matches_llamacpp(reference, llm, case):
    ids = [int(i) for i in reference[f"{case}_ids"]]
    tokens = [int(t) for t in reference[f"{case}_greedy"]]
    gaps = reference[f"{case}_gaps"]
    checked = 0
    for i, (want, gap) in enumerate(zip(tokens, gaps)):
        if gap < MARGIN:
            continue
        got = int(np.argmax(llm.logits(ids + tokens[:i])))
        assert got == want, f"step {i}: numatp {got}, llama.cpp {want} (gap {gap:.3f})"
        checked += 1
    assert checked >= len(tokens) // 2   # the margin must not excuse most of the steps
