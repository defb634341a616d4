"""End to end, as a user runs it: `numatp generate` on real models, and the Python API."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import numatp
from models import DATA, STORIES, smollm2

STORY = ", there was a little girl named Lily. She loved to play outside in the park"


def run_cli(*args, stdin=None, env=None):
    env = dict(os.environ) if env is None else env
    return subprocess.run([sys.executable, "-m", "numatp", *args], capture_output=True, text=True,
                          input=stdin, env=env, timeout=600)


def test_stories_greedy_cli():
    r = run_cli("generate", "Once upon a time", "-m", str(STORIES), "-n", "30", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(STORY)
    assert "decode" in r.stderr and "tok/s" in r.stderr


def test_stories_json_contract():
    r = run_cli("generate", "Once upon a time", "-m", str(STORIES), "-n", "16", "--temp", "0", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("text", "tokens", "prompt_tokens", "n_prompt", "n_gen", "prompt_tps", "decode_tps", "nodes"):
        assert key in out
    assert out["prompt_tokens"] == [1, 403, 407, 261, 378]  # BOS first
    assert out["n_gen"] == len(out["tokens"]) == 16
    assert STORY.startswith(out["text"])


def test_stop_strings_cli():
    r = run_cli("generate", "Once upon a time", "-m", str(STORIES), "-n", "30", "--temp", "0",
                "--stop", "nowhere", "--stop", "Lily", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] == ", there was a little girl named " and out["stop_reason"] == "stop"
    # llama.cpp's spelling; " gi" begins in one token ("▁g") and ends in the next ("ir").
    r = run_cli("generate", "Once upon a time", "-m", str(STORIES), "-n", "30", "--temp", "0",
                "-r", " gi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ", there was a little\n"


def test_prompt_from_stdin_and_file(tmp_path):
    r = run_cli("generate", "-m", str(STORIES), "-n", "6", "--temp", "0", stdin="Once upon a time")
    assert r.returncode == 0 and r.stdout.startswith(", there was")
    f = tmp_path / "p.txt"
    f.write_text("Once upon a time")
    r = run_cli("generate", "-f", str(f), "-m", str(STORIES), "-n", "6", "--temp", "0")
    assert r.returncode == 0 and r.stdout.startswith(", there was")


def test_api_streaming_seed_and_logits():
    with numatp.load(STORIES) as llm:
        text = "".join(llm.generate("Once upon a time", max_tokens=30, temperature=0))
        assert text.startswith(STORY)
        a = "".join(llm.generate("Once upon a time", max_tokens=20, temperature=0.9, seed=7))
        b = "".join(llm.generate("Once upon a time", max_tokens=20, temperature=0.9, seed=7))
        assert a == b
        ids = llm.tokenize("Once upon a time")
        assert ids == [1, 403, 407, 261, 378]
        assert llm.detokenize(ids[1:]) == "Once upon a time"
        logits = llm.logits(ids)
        assert logits.shape == (512,) and logits.dtype.name == "float32"
        assert llm.detokenize([int(logits.argmax())]) == ","


def test_warm_up_leaves_no_trace():
    """warm_up() runs a step on a placeholder token at position 0; a prompt afterwards
    must give exactly the logits it gives without one."""
    ids = [1, 403, 407, 261, 378]
    with numatp.load(STORIES) as cold:
        expected = cold.logits(ids)
    with numatp.load(STORIES) as llm:
        llm.warm_up()
        assert np.array_equal(llm.logits(ids), expected)
        assert np.array_equal(llm.logits(ids[:2]), llm.logits(ids[:2]))


@pytest.mark.slow
def test_smollm2_paris():
    r = run_cli("generate", "The capital of France is", "-m", str(smollm2()), "-n", "16", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" Paris"), r.stdout


@pytest.mark.slow
def test_smollm2_chat_prompt_is_llamacpps():
    """--chat renders the model's template into the token ids llama.cpp was given for the
    same question (tests/data/llamacpp_smollm2.npz), and generates from them. (What it
    generates, SmolLM2-135M's greedy reply, is not "Paris" in llama.cpp either; the
    replies are compared in test_llamacpp_agreement.py.)"""
    reference = np.load(DATA / "llamacpp_smollm2.npz")
    r = run_cli("generate", "What is the capital of France?", "-m", str(smollm2()), "-n", "24",
                "--temp", "0", "--chat", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt_tokens"] == reference["chat_ids"].tolist()
    assert out["n_gen"] == 24


def test_kernels_cached_is_per_kernel_set(tmp_path, monkeypatch):
    """What decides whether generate announces a first-run compile: a model whose quant
    types (its kernel set) have run a step with this numatp version's cache."""
    from numatp._env import kernels_cached, mark_kernels_cached
    from numatp.quant.kernel_set import KernelSet
    from numatp.quant.formats import Q4_K, Q6_K, Q8_0
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    mixed, other = KernelSet([Q6_K, Q4_K]), KernelSet([Q8_0])
    assert not kernels_cached(mixed.key)
    mark_kernels_cached(mixed.key)
    assert kernels_cached(KernelSet([Q4_K, Q6_K, Q4_K]).key)
    assert not kernels_cached(other.key)


def test_first_run_of_a_kernel_set_is_announced(tmp_path):
    """A fresh cache: generate says it compiles, names the types, and a second run
    does not say it again."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    first = run_cli("generate", "-m", str(STORIES), "-p", "Once", "-n", "1", "--temp", "0",
                    env=env)
    assert first.returncode == 0, first.stderr
    assert "first run of this numatp version on F32 weights: compiling" in first.stderr
    second = run_cli("generate", "-m", str(STORIES), "-p", "Once", "-n", "1", "--temp", "0",
                     env=env)
    assert second.returncode == 0, second.stderr
    assert "compiling" not in second.stderr


def test_the_suite_runs_with_compiled_kernels():
    # Every generate run of this suite after the first finds the step in the cache.
    from numatp._env import kernels_cached
    from numatp.parallel.shard import model_kernel_set
    with numatp.load(STORIES, nodes=1) as llm:
        llm.logits([1])
        key = model_kernel_set(llm.gguf, llm.config).key
    r = run_cli("generate", "-m", str(STORIES), "-p", "Once", "-n", "2", "--temp", "0")
    assert r.returncode == 0
    assert kernels_cached(key)
    assert "compiling" not in r.stderr
