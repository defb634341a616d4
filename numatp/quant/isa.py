"""Which x86 instruction sets the kernels are compiled for.

Numba compiles for the CPU it runs on unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES name
another target (the NUMA test VM's portable cache does). Both the code generators of
simd.py and the weight packing (whose row-group size must match the vector width the
kernels use) ask here, so they always agree with the code that actually runs.

The integer dot product of int8 activations with unsigned weight bytes has four forms:
  vnni512   AVX512-VNNI vpdpbusd on 512-bit vectors (Xeon since Cascade Lake, Zen 4+)
  avxvnni   vpdpbusd on 256-bit vectors (AVX-VNNI, or AVX512-VNNI with AVX512VL)
  avx512bw  vpmaddubsw + vpmaddwd on 512-bit vectors (Skylake-SP)
  avx2      vpmaddubsw + vpmaddwd on 256-bit vectors (Haswell .. Zen 3)
and plain LLVM IR elsewhere ("generic"), which is correct everywhere and slow.
"""
from numatp import _env  # noqa: F401  (before numba)

import functools


@functools.lru_cache(maxsize=None)
def target_features() -> frozenset:
    """The CPU features Numba's code generator targets, e.g. {'avx2', 'avx512vnni'}."""
    from numba.core.registry import cpu_target
    codegen = cpu_target.target_context.codegen()
    return features_of(codegen)


def features_of(codegen) -> frozenset:
    text = getattr(codegen, "_tm_features", "") or ""
    return frozenset(f[1:] for f in text.split(",") if f.startswith("+"))


def dot_isa(features) -> str:
    """The form of the int8 dot product for a feature set (see the module docstring)."""
    if "avx512vnni" in features and "avx512bw" in features:
        return "vnni512"
    if "avxvnni" in features or ("avx512vnni" in features and "avx512vl" in features):
        return "avxvnni"
    if "avx512bw" in features:
        return "avx512bw"
    if "avx2" in features:
        return "avx2"
    return "generic"


def group_rows(features=None) -> int:
    """Rows per packed row group: one int32 lane per row in a vector register, 16 with
    512-bit registers, else 8 (with 16, the AVX2 kernels would run out of registers)."""
    features = target_features() if features is None else features
    return 16 if dot_isa(features) in ("vnni512", "avx512bw") else 8
