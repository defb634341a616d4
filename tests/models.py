"""Where the tests find models: the small files committed under tests/data, and the
registry's cache for the real models it downloads."""
import lzma
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
STORIES = DATA / "stories260K.gguf"
VOCABS = DATA / "vocab"

_unpacked = None   # the TemporaryDirectory is removed when the test process exits


@lru_cache(maxsize=None)
def vocab_gguf(name: str) -> Path:
    """llama.cpp's vocabulary-only ggml-vocab-<name>.gguf, unpacked from the .xz it is
    committed as (36 MB raw, 7.9 MB packed) into a directory that lives
    as long as the test process."""
    global _unpacked
    if _unpacked is None:
        _unpacked = tempfile.TemporaryDirectory(prefix="numatp-test-vocab-")
    out = Path(_unpacked.name) / f"ggml-vocab-{name}.gguf"
    with lzma.open(VOCABS / f"{out.name}.xz") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def vocab_conformance(name: str) -> tuple[Path, Path]:
    """llama.cpp's test-tokenizer-0 files for that vocabulary: inputs (.inp), ids (.out)."""
    base = VOCABS / f"ggml-vocab-{name}.gguf"
    return Path(f"{base}.inp"), Path(f"{base}.out")


def smollm2() -> Path:
    """SmolLM2-135M-Instruct, fetched once into the cache by numatp's own registry."""
    from numatp.registry import pull
    return pull("smollm2-135m", quiet=True)


# Synthetic Mixture-of-Experts models (tests/synth.py), one per architecture and a
# K-quant mix (Q4_K with Q6_K expert downs and attn_v, as llama.cpp's Q4_K_M chooses).
# llama.cpp's logits on them are kept in data/llamacpp_moe.npz with each file's sha256:
# tools/llamacpp_moe_reference.py wrote both from these same definitions.
_MOE_SMALL = dict(hidden=64, n_layers=2, n_heads=4, n_kv_heads=2, n_experts=8,
                  n_experts_used=2, ffn=64)
_MOE_KQUANT = dict(hidden=256, n_layers=2, n_heads=4, n_kv_heads=2, n_experts=8,
                   n_experts_used=2, ffn=256, qtype="Q4_K",
                   tensor_types={"ffn_down_exps": "Q6_K", "attn_v": "Q6_K", "output": "Q6_K"})
MOE_MODELS = {
    "qwen3moe-q8_0": dict(_MOE_SMALL, arch="qwen3moe", qtype="Q8_0", expert_ffn=32, head_dim=32),
    "qwen2moe-q8_0": dict(_MOE_SMALL, arch="qwen2moe", qtype="Q8_0", expert_ffn=32,
                          shared_ffn=96),
    "mixtral-q8_0": dict(_MOE_SMALL, arch="llama", qtype="Q8_0"),
    "qwen3moe-q4_k_m": dict(_MOE_KQUANT, arch="qwen3moe", head_dim=64),
    "qwen2moe-q4_k_m": dict(_MOE_KQUANT, arch="qwen2moe", shared_ffn=512),
    "mixtral-q4_k_m": dict(_MOE_KQUANT, arch="llama"),
}


def moe_model(name: str, directory) -> Path:
    """The synthetic MoE model `name` written into `directory`."""
    import synth
    return synth.write_model(Path(directory) / f"{name}.gguf", **MOE_MODELS[name])
