"""Numba settings that must be in place before numba is first imported.

The SLP vectorizer is what turns the per-lane block loops of the quantized kernels into
SIMD code (FACTS.md: 2-5 GB/s without it, ~30 GB/s with it). Numba's cache key ignores
this setting, so it is forced to one value rather than left to the environment.
The omp threading layer costs ~1 us per parallel region; workqueue ~80 us.
"""
import os

os.environ["NUMBA_SLP_VECTORIZE"] = "1"
os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
