"""One engine, one model, one fresh process: the measuring half of compare_llamacpp.py.

    python bench/engines.py {numatp,llamacpp} MODEL.gguf --threads T --spawned-at EPOCH \
        --short 1,2,3 --long 4,5,6,... [--n-gen 64]

prints one JSON object. Both engines get the same token ids (the parent tokenizes once),
greedy decoding that ignores end-of-generation tokens, and the same phases in the same
order:

  1. first token: the short prompt from an empty cache to its first greedy token, timed
     from process start (--spawned-at, the parent's clock just before it started us) and
     from "model loaded"; then a few more tokens, so both engines have run every code
     path once before anything else is timed
  2. decode: the short prompt again, then n_gen single-token steps (greedy); tok/s over
     those steps only
  3. prompt processing: the first 128, then the first 512 ids of --long, each from an
     empty cache, as one request (llama.cpp: one batch, n_batch = 512; numatp splits a
     prompt into chunks internally); tok/s = prompt tokens / time to the prompt's logits

Each side does its own argmax on the logits it returns, so the per-token work outside the
engine is the same small numpy call on both.
"""
import argparse
import json
import time

WARMUP_TOKENS = 4
PP_SIZES = (128, 512)


class NumatpEngine:
    name = "numatp"

    def __init__(self, path, threads, ctx):
        import numatp
        self.llm = numatp.load(path, nodes=1, threads=threads, ctx_size=ctx)

    def prefill(self, ids):
        """Logits after `ids`, from an empty cache (no prompt reuse: the time is all of it)."""
        self.llm.reset()
        return self.llm.logits(ids)

    def step(self, tok, pos):
        return self.llm.model.forward(self.llm.token_embeddings([tok]), pos)

    def close(self):
        self.llm.close()


class LlamaCppEngine:
    name = "llamacpp"

    def __init__(self, path, threads, ctx):
        import llama_cpp
        # flash_attn stays at the binding's default (off), like llama-cpp-python users get.
        self.llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads,
                                   n_ctx=ctx, n_batch=max(PP_SIZES), n_ubatch=max(PP_SIZES),
                                   verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def _logits(self):
        # Since 0.3.x, eval() no longer copies logits into Llama.scores (sampling moved into
        # llama.cpp); read the last token's row straight from the context, without a copy.
        import numpy as np
        ptr = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def prefill(self, ids):
        self.llm.reset()            # the next eval drops the cache from position 0
        self.llm.eval(list(ids))
        return self._logits()

    def step(self, tok, pos):
        assert self.llm.n_tokens == pos
        self.llm.eval([tok])
        return self._logits()

    def close(self):
        self.llm.close()


def measure(engine_cls, path, threads, spawned_at, short, long, n_gen) -> dict:
    import numpy as np
    ctx = max(len(short) + WARMUP_TOKENS + n_gen, max(PP_SIZES)) + 16
    t0 = time.perf_counter()
    eng = engine_cls(path, threads, ctx)
    loaded = time.perf_counter()
    out = {"engine": eng.name, "model": path, "threads": threads, "load_s": loaded - t0}
    try:
        tok = int(np.argmax(eng.prefill(short)))
        first_wall, first = time.time(), time.perf_counter()
        out["ttft_process_s"] = first_wall - spawned_at
        out["ttft_loaded_s"] = first - loaded
        for i in range(WARMUP_TOKENS):
            tok = int(np.argmax(eng.step(tok, len(short) + i)))

        tokens = [int(np.argmax(eng.prefill(short)))]
        t = time.perf_counter()
        for i in range(n_gen):
            tokens.append(int(np.argmax(eng.step(tokens[-1], len(short) + i))))
        out["decode_tps"] = n_gen / (time.perf_counter() - t)
        out["tokens"] = tokens

        for n in PP_SIZES:
            t = time.perf_counter()
            eng.prefill(long[:n])
            out[f"pp{n}_tps"] = n / (time.perf_counter() - t)
    finally:
        eng.close()
    return out


def main():
    ap = argparse.ArgumentParser(description="Measure one engine on one model (see the module doc).")
    ap.add_argument("engine", choices=("numatp", "llamacpp"))
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--spawned-at", type=float, required=True, help="parent's time.time() at spawn")
    ap.add_argument("--short", required=True, help="comma-separated token ids of the short prompt")
    ap.add_argument("--long", required=True, help=f"comma-separated ids, at least {max(PP_SIZES)}")
    ap.add_argument("--n-gen", type=int, default=64)
    args = ap.parse_args()
    ids = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    long = ids(args.long)
    if len(long) < max(PP_SIZES):
        ap.error(f"--long needs at least {max(PP_SIZES)} ids, got {len(long)}")
    cls = NumatpEngine if args.engine == "numatp" else LlamaCppEngine
    print(json.dumps(measure(cls, args.model, args.threads, args.spawned_at, ids(args.short),
                             long, args.n_gen)))


if __name__ == "__main__":
    main()
