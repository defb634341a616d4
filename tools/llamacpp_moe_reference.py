"""Write llama.cpp's logits and greedy tokens on the synthetic MoE test models.

    python3 tools/llamacpp_moe_reference.py [OUT.npz]     (default tests/data/llamacpp_moe.npz)

Needs llama-cpp-python (see tools/llamacpp_reference.py for how to build it). Each model
of tests/models.py's MOE_MODELS is written by tests/synth.py, evaluated by llama.cpp on a
fixed prompt, and continued greedily. Kept per model: the file's sha256 (the tests check
that they write the same file), the prompt ids, llama.cpp's logits after every prompt
token, its greedy continuation, and the gap between its two best logits at each greedy
step (near ties, where either engine may pick the other token).
"""
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tools"))

# ids of the synthetic vocabulary
PROMPT = [5, 77, 300, 12, 9, 100, 44, 201, 17, 3, 250, 8, 61, 140, 399, 26, 7, 330, 92, 18]
CONTINUE = 32


def main(out=REPO / "tests" / "data" / "llamacpp_moe.npz"):
    import llama_cpp
    from llama_cpp import Llama

    from llamacpp_reference import greedy
    from models import MOE_MODELS, moe_model

    data = {"llama_cpp_python": np.array(llama_cpp.__version__), "prompt": np.array(PROMPT)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in MOE_MODELS:
            path = moe_model(name, tmp)
            llm = Llama(model_path=str(path), n_ctx=128, logits_all=True, n_threads=2,
                        verbose=False)
            llm.eval(PROMPT)
            logits = np.array(llm.scores[:len(PROMPT)], dtype=np.float32)
            tokens, gaps = greedy(llm, logits[-1], CONTINUE)
            data[f"{name}/sha256"] = np.array(hashlib.sha256(path.read_bytes()).hexdigest())
            data[f"{name}/logits"] = logits
            data[f"{name}/greedy"] = np.array(tokens, np.int64)
            data[f"{name}/gaps"] = np.array(gaps, np.float32)
            print(f"{name}: {path.stat().st_size / 1e6:.2f} MB, greedy {tokens}, "
                  f"smallest top-2 gap {min(gaps):.3f}")
            del llm
    np.savez_compressed(out, **data)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
