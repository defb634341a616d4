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
    committed as (62 MB raw, 13.5 MB packed) into a directory that lives
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
