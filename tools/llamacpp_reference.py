"""Write llama.cpp's logits and greedy tokens for the real-model accuracy tests.

    python3 tools/llamacpp_reference.py [OUT.npz]     (default tests/data/llamacpp_smollm2.npz)

Needs llama-cpp-python (`pip install llama-cpp-python`, built from source: see
bench/README.md); the tests read the file this writes and need nothing of llama.cpp.
For each case the prompt goes in as numatp's token ids, so both engines see the same
tokens; kept are llama.cpp's logits after the prompt's last token, its greedy
continuation, and the gap between the top two logits at each greedy step (a near tie,
where either engine may pick the other token, has a small gap).

Build llama.cpp without AMX on machines whose kernel does not hand AMX state to it
(CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON ..."): its AMX kernels otherwise die of
SIGILL. The computation is the same CPU arithmetic either way.
"""
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

CASES = {  # name: (prompt, chat, tokens to continue)
    "plain": ("The capital of France is", False, 16),
    "chat": ("What is the capital of France?", True, 24),
}


def greedy(llm, logits, n):
    """llama.cpp's next n greedy tokens after the logits of what it has evaluated, and the
    gap between its two best logits at each step."""
    tokens, gaps = [], []
    for _ in range(n):
        top2 = np.sort(logits)[-2:]
        tokens.append(int(np.argmax(logits)))
        gaps.append(float(top2[1] - top2[0]))
        llm.eval([tokens[-1]])
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    return tokens, gaps


def main(out=REPO / "tests" / "data" / "llamacpp_smollm2.npz"):
    import llama_cpp
    from llama_cpp import Llama

    import numatp
    from models import smollm2

    path = smollm2()
    tok = numatp.load_tokenizer(path)
    llm = Llama(model_path=str(path), n_ctx=512, logits_all=True, n_threads=2, verbose=False)
    data = {"llama_cpp_python": np.array(llama_cpp.__version__)}
    for name, (prompt, chat, n) in CASES.items():
        if chat:
            from numatp.chat import chat_prompt
            prompt = chat_prompt(tok, prompt)
        ids = tok.encode(prompt, add_special=True)
        llm.reset()
        llm.eval(ids)
        first = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
        tokens, gaps = greedy(llm, first, n)
        data[f"{name}_ids"] = np.array(ids, np.int64)
        data[f"{name}_logits"] = first
        data[f"{name}_greedy"] = np.array(tokens, np.int64)
        data[f"{name}_gaps"] = np.array(gaps, np.float32)
        print(f"{name}: {len(ids)} prompt tokens -> {tok.decode(tokens)!r}, "
              f"smallest top-2 gap {min(gaps):.3f}")
    np.savez_compressed(out, **data)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
