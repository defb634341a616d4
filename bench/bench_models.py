"""The models of the llama.cpp comparison, made or fetched once into $NUMATP_CACHE/bench.

  synth-f32, synth-f16, synth-q8_0, synth-q4_0   a synthetic ~1.1B llama (hidden 2048,
                     16 layers, 32/8 heads, FFN 8192, vocab 32000) with random weights,
                     written here; every matrix in the one type (llama.cpp's "pure" files)
  synth-q4_k_m       the F16 file through llama.cpp's own quantizer, so its per-tensor
                     type mix is the one llama.cpp users get (needs llama-cpp-python)
  synth-moe-f16, synth-moe-q4_k_m   a synthetic qwen3moe with Qwen3-30B-A3B's layer shape
                     (hidden 2048, 32/4 heads of 128, 128 experts of FFN 768, 8 used, vocab
                     151936) and 12 of its 48 layers: 16.2 GB as F16, 5.0 GB as Q4_K_M. The
                     F16 master is written here; on a machine with llama.cpp's own
                     `llama-quantize` but not llama-cpp-python, quantize it with that.
  smollm2            SmolLM2-135M-Instruct Q4_1, numatp's registry
  qwen               Qwen2.5-Coder-0.5B-Instruct Q4_K_M, numatp's registry (491 MB)

Random weights make the timings honest: a step costs the same whatever the weights are.
The metadata and tokenizer come from tests/synth.py so the files look like the test models;
the weights are streamed one tensor at a time (tests/synth.write_model keeps the whole
model in float32, 4.4 GB at this size), and every file of one pass gets the same random
weights, so the F16 master and its quantized siblings agree up to rounding.

`--small` selects a small shape of each (4 layers of hidden 512; for the MoE, 2 layers of
16 experts), for trial runs.
"""
import sys
from pathlib import Path

import numpy as np

import numatp  # noqa: F401  (sets the Numba environment first, see the preamble)
from numatp.errors import NumatpError
from numatp.registry import cache_dir, pull

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import synth  # noqa: E402  (tests/synth.py: metadata, tokenizer, tensor encoding)

import gguf  # noqa: E402

# (full, small) shapes by family; the names of the files they make start with the label
SHAPES = {
    "llama": (("1.1b", dict(arch="llama", hidden=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                            ffn=8192, vocab=32000)),
              ("small", dict(arch="llama", hidden=512, n_layers=4, n_heads=8, n_kv_heads=2,
                             ffn=2048, vocab=32000))),
    "moe": (("moe", dict(arch="qwen3moe", hidden=2048, n_layers=12, n_heads=32, n_kv_heads=4,
                         head_dim=128, ffn=6144, vocab=151936, n_experts=128,
                         n_experts_used=8, expert_ffn=768, norm_eps=1e-6, rope_base=1e6)),
            ("moe-small", dict(arch="qwen3moe", hidden=512, n_layers=2, n_heads=8,
                               n_kv_heads=4, head_dim=64, ffn=1536, vocab=32000,
                               n_experts=16, n_experts_used=4, expert_ffn=256,
                               norm_eps=1e-6, rope_base=1e6))),
}
CTX = 2048

# name: (family, type written here)
SYNTH_TYPES = {"synth-f32": ("llama", "F32"), "synth-f16": ("llama", "F16"),
               "synth-q8_0": ("llama", "Q8_0"), "synth-q4_0": ("llama", "Q4_0"),
               "synth-moe-f16": ("moe", "F16")}
# name: family, quantized from that family's F16 master by llama.cpp
SYNTH_Q4_K_M = {"synth-q4_k_m": "llama", "synth-moe-q4_k_m": "moe"}
REGISTRY = {"smollm2": "smollm2-135m", "qwen": "qwen2.5-coder-0.5b"}
NAMES = tuple(SYNTH_TYPES) + tuple(SYNTH_Q4_K_M) + tuple(REGISTRY)
LLAMA_FTYPE_MOSTLY_Q4_K_M = 15   # llama.h's enum llama_ftype

INSTALL_LLAMACPP = ('CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python  '
                    '(builds llama.cpp from source: about 12 minutes on 2 cores)')


def bench_dir() -> Path:
    return cache_dir() / "bench"


def _shape(family: str, small: bool):
    return SHAPES[family][1 if small else 0]


def synth_path(qtype: str, small: bool = False, family: str = "llama") -> Path:
    return bench_dir() / f"synth-{_shape(family, small)[0]}-{qtype}.gguf"


def model_path(name: str, small: bool = False, threads: int = 2, say=print) -> Path:
    """The GGUF file of a benchmark model, making or downloading it first if needed."""
    if name in REGISTRY:
        return pull(REGISTRY[name])
    if name in SYNTH_TYPES:
        family, qtype = SYNTH_TYPES[name]
        path = synth_path(qtype, small, family)
        if not path.exists():
            write_synthetic([qtype], small, say, family=family)
        return path
    if name in SYNTH_Q4_K_M:
        family = SYNTH_Q4_K_M[name]
        path = synth_path("Q4_K_M", small, family)
        if not path.exists():
            master = model_path("synth-f16" if family == "llama" else f"synth-{family}-f16",
                                small, threads, say)
            quantize_q4_k_m(master, path, threads, say)
        return path
    raise NumatpError(f"unknown benchmark model {name!r} (known: {', '.join(NAMES)})")


def ensure_synthetic(names, small: bool = False, say=print):
    """Write the missing synthetic files among `names` in one pass over the weights (random
    generation is the slow part; a Q4_K_M request needs the F16 master)."""
    for family in SHAPES:
        wanted = {q for n, (f, q) in SYNTH_TYPES.items() if n in names and f == family}
        if any(n in names and f == family and not synth_path("Q4_K_M", small, f).exists()
               for n, f in SYNTH_Q4_K_M.items()):
            wanted.add("F16")
        missing = sorted(q for q in wanted if not synth_path(q, small, family).exists())
        if missing:
            write_synthetic(missing, small, say, family=family)


# --- writing ------------------------------------------------------------------------------

def _tensors(spec: "synth.ModelSpec"):
    """(name, shape, is_matrix) in the order llama.cpp's converter writes them."""
    hd = spec.hd
    q, kv = spec.n_heads * hd, spec.n_kv_heads * hd
    yield "token_embd.weight", (spec.vocab, spec.hidden), True
    for i in range(spec.n_layers):
        p = f"blk.{i}."
        yield p + "attn_norm.weight", (spec.hidden,), False
        yield p + "attn_q.weight", (q, spec.hidden), True
        yield p + "attn_k.weight", (kv, spec.hidden), True
        yield p + "attn_v.weight", (kv, spec.hidden), True
        if spec.arch == "qwen3moe":
            yield p + "attn_q_norm.weight", (hd,), False
            yield p + "attn_k_norm.weight", (hd,), False
        yield p + "attn_output.weight", (spec.hidden, q), True
        yield p + "ffn_norm.weight", (spec.hidden,), False
        if spec.n_experts:
            # the router stays F32, as llama.cpp's converter writes it and its quantizer
            # leaves it (is_matrix False: written as float32 in every file)
            yield p + "ffn_gate_inp.weight", (spec.n_experts, spec.hidden), False
            yield p + "ffn_gate_exps.weight", (spec.n_experts, spec.eff, spec.hidden), True
            yield p + "ffn_up_exps.weight", (spec.n_experts, spec.eff, spec.hidden), True
            yield p + "ffn_down_exps.weight", (spec.n_experts, spec.hidden, spec.eff), True
            continue
        yield p + "ffn_gate.weight", (spec.ffn, spec.hidden), True
        yield p + "ffn_up.weight", (spec.ffn, spec.hidden), True
        yield p + "ffn_down.weight", (spec.hidden, spec.ffn), True
    yield "output_norm.weight", (spec.hidden,), False
    yield "output.weight", (spec.vocab, spec.hidden), True


def _values(index: int, shape, is_matrix: bool, seed: int) -> np.ndarray:
    # Same scales as tests/synth.py: N(0, 1/fan_in) matrices keep activations O(1) through
    # the layers; norm weights near 1. One generator per tensor, so each file's tensor
    # `index` holds the same numbers whichever files are written together.
    rng = np.random.default_rng([seed, index])
    if is_matrix:
        x = rng.standard_normal(shape, dtype=np.float32)
        x *= np.float32(1 / np.sqrt(shape[-1]))
        return x
    if len(shape) == 2:   # a router: N(0, 1/fan_in) as well
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(1 / np.sqrt(shape[1]))
    return (1 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)


def _stored_shape(shape, qtype):
    """(shape as written, dtype as written, raw_dtype) of a matrix stored as qtype."""
    if qtype in ("F32", "F16"):
        return shape, np.dtype(np.float32 if qtype == "F32" else np.float16), None
    block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    return (*shape[:-1], shape[-1] // block * nbytes), np.dtype(np.uint8), gguf.GGMLQuantizationType[qtype]


def write_synthetic(qtypes, small: bool = False, say=print, seed: int = 0, family: str = "llama"):
    """Write the synthetic model once per qtype, streaming tensor by tensor."""
    label, shape = _shape(family, small)
    specs = {q: synth.ModelSpec(qtype=q, ctx=CTX, seed=seed, **shape) for q in qtypes}
    first = next(iter(specs.values()))
    tensors = list(_tensors(first))
    bench_dir().mkdir(parents=True, exist_ok=True)
    say(f"writing synthetic {first.arch} ({label}) as {', '.join(qtypes)} "
        f"into {bench_dir()} (once; a few minutes at full size)")
    writers, partial = {}, {}
    for q, spec in specs.items():
        partial[q] = synth_path(q, small, family).with_suffix(".partial")
        w = writers[q] = gguf.GGUFWriter(str(partial[q]), spec.arch)
        synth._write_hparams(w, spec)
        synth._write_tokenizer(w, spec)
        for name, tshape, is_matrix in tensors:
            stored, dtype, raw = _stored_shape(tshape, q) if is_matrix else (tshape, np.dtype(np.float32), None)
            w.add_tensor_info(name, stored, dtype, int(np.prod(stored)) * dtype.itemsize, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
    try:
        for i, (name, tshape, is_matrix) in enumerate(tensors):
            x = _values(i, tshape, is_matrix, seed)
            for q, w in writers.items():
                w.write_tensor_data(synth.encode_tensor(x, q)[0] if is_matrix else x)
        for q, w in writers.items():
            w.close()
            partial[q].rename(synth_path(q, small, family))
    finally:
        for q, w in writers.items():
            w.close()
            partial[q].unlink(missing_ok=True)


def llama_cpp_or_none():
    try:
        import llama_cpp
        return llama_cpp
    except ImportError:
        return None


def quantize_q4_k_m(src: Path, dst: Path, threads: int, say=print):
    """llama.cpp's Q4_K_M mix of `src`, by llama.cpp's own quantizer."""
    llama_cpp = llama_cpp_or_none()
    if llama_cpp is None:
        raise NumatpError(f"synth-q4_k_m needs llama.cpp's quantizer; install it with {INSTALL_LLAMACPP}")
    import ctypes
    say(f"quantizing {src.name} to Q4_K_M with llama.cpp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = threads
    partial = dst.with_suffix(".partial")
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
        if rc != 0:
            raise NumatpError(f"llama_model_quantize failed on {src} (return code {rc})")
        partial.rename(dst)
    finally:
        partial.unlink(missing_ok=True)


def main():
    import argparse
    ap = argparse.ArgumentParser(description="Make or fetch the comparison's models; print their paths.")
    ap.add_argument("names", nargs="*", default=["synth-q8_0", "synth-q4_0", "synth-q4_k_m", "smollm2"],
                    help=f"any of: {', '.join(NAMES)}")
    ap.add_argument("--small", action="store_true", help="the small trial shape of the synthetic model")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:
        ensure_synthetic(args.names, args.small)
        for name in args.names:
            print(name, model_path(name, args.small, args.threads))
    except NumatpError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
