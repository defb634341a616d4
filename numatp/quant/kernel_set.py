"""Which quant types a chain of jitted kernels is compiled for.

A model holds two or three of the fifteen formats numatp reads. Every jitted function
from the transformer step down to the type dispatch takes a KernelSet argument: a value
that carries nothing at run time, whose Numba type names the set. kernels.py generates
the dispatch for exactly those types, so a model compiles, caches and loads only the
kernels it uses. (Dispatching over all fifteen types made the first run of SmolLM2
compile for about a minute, and every later run load all of them from the cache.)

Each distinct set is a separate compilation of the chain, cached like any other.
"""
from numatp import _env  # noqa: F401  (before numba)

from numba import types
from numba.extending import NativeValue, models, register_model, typeof_impl, unbox

from numatp.quant import formats


class KernelSet:
    """An immutable set of GGML quant type codes, e.g. KernelSet([Q4_K, Q6_K])."""

    __slots__ = ("qtypes", "numba_type")

    def __init__(self, qtypes):
        qtypes = tuple(sorted({int(q) for q in qtypes}))
        for q in qtypes:
            if q not in formats.SUPPORTED:
                raise ValueError(f"no kernel for quant type {formats.type_name(q)}")
        object.__setattr__(self, "qtypes", qtypes)
        # Made once: Numba asks for the type at every call from Python (a KernelSet has
        # no fingerprint for its C fast path), and building it there cost a decode step
        # about 25 us when the step had just swept the caches (44 against 19 us on the
        # dev host, a typeof() after a 256 MB sweep).
        object.__setattr__(self, "numba_type", KernelSetType(qtypes))

    def __setattr__(self, name, value):
        raise AttributeError("KernelSet is immutable")

    def __eq__(self, other):
        return isinstance(other, KernelSet) and other.qtypes == self.qtypes

    def __hash__(self):
        return hash(self.qtypes)

    def __repr__(self):
        return f"KernelSet({', '.join(formats.type_name(q) for q in self.qtypes)})"

    @property
    def key(self) -> str:
        """A file-name-safe name of the set, e.g. '2-12'."""
        return "-".join(str(q) for q in self.qtypes)


class KernelSetType(types.Type):
    def __init__(self, qtypes):
        self.qtypes = qtypes
        super().__init__(name=f"KernelSet({','.join(str(q) for q in qtypes)})")


@typeof_impl.register(KernelSet)
def _typeof_kernel_set(val, c):
    return val.numba_type


register_model(KernelSetType)(models.OpaqueModel)


@unbox(KernelSetType)
def _unbox_kernel_set(typ, obj, c):
    # Everything is in the type; the value is a placeholder.
    return NativeValue(c.context.get_constant_null(typ))
