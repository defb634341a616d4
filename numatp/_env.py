"""Numba settings that must be in place before numba is first imported.

The SLP vectorizer is what turns the per-lane block loops of the quantized kernels into
SIMD code (measured: 2-5 GB/s without it, ~30 GB/s with it). Numba's cache key ignores
this setting, so it is forced to one value rather than left to the environment.
The omp threading layer costs ~1 us per parallel region; workqueue ~80 us.

Numba's on-disk cache checks only the source file of the cached function itself, so the
cached transformer step would keep a stale copy of a kernel from another file after an
upgrade. The cache therefore lives in a directory named after a fingerprint of every
source file of the package.
"""
import hashlib
import os
from pathlib import Path

os.environ["NUMBA_SLP_VECTORIZE"] = "1"
os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")


def _source_fingerprint() -> str:
    h = hashlib.sha1()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("NUMATP_CACHE") or Path.home() / ".cache" / "numatp")


if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = str(cache_root() / "numba" / _source_fingerprint())


def _compiled_marker(key: str) -> Path:
    return Path(os.environ["NUMBA_CACHE_DIR"]) / "compiled" / key


def kernels_cached(key: str) -> bool:
    """Whether the transformer step for kernel set `key` (KernelSet.key) has run with this
    source state and Numba cache, i.e. whether starting such a model loads compiled
    kernels rather than compiling them."""
    return _compiled_marker(key).exists()


def mark_kernels_cached(key: str) -> None:
    """Note that the step for kernel set `key` has been compiled into the cache."""
    marker = _compiled_marker(key)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass  # a read-only cache only costs the first-run notice its accuracy
