"""Atomic operations on int64 array elements, for jitted code that synchronizes processes
through shared memory.

Why intrinsics: in a jitted spin loop such as `while flag[0] < n: pass` LLVM may load
flag[0] once and spin forever on a register, and it may move ordinary stores past the
store that publishes them. The LLVM atomic instructions emitted here forbid both. On x86
an acquire load and a release store compile to plain `mov`s (the hardware is
total-store-order); what they buy is that the compiler keeps them in place.

  load_acquire(a, i) -> int64     later loads/stores are not moved before it
  store_release(a, i, v)          earlier loads/stores are not moved after it
  fetch_add(a, i, v) -> int64     sequentially consistent read-modify-write, returns
                                  the old value
  fence()                         sequentially consistent fence (mfence on x86): orders a
                                  store before a later load, which acquire/release don't
  cpu_relax()                     the spin-loop hint (x86 `pause`): saves power and lets
                                  the sibling hyperthread run

`a` is a C-contiguous int64 array (any number of dimensions is not supported: 1-D only)
and `i` an element index. No bounds check: callers index fixed header slots.
"""
import platform

from numatp import _env  # noqa: F401
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I64 = ir.IntType(64)
_MACHINE = platform.machine().lower()


def _is_int64_vector(arr):
    return isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64


def _element_pointer(context, builder, sig, args):
    aryty = sig.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    idx = context.cast(builder, args[1], sig.args[1], types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx])


@intrinsic
def load_acquire(typingctx, arr, idx):
    if not (_is_int64_vector(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig, args)
        return builder.load_atomic(ptr, "acquire", 8, typ=_I64)

    return types.int64(arr, idx), codegen


@intrinsic
def store_release(typingctx, arr, idx, value):
    if not (_is_int64_vector(arr) and isinstance(idx, types.Integer)
            and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig, args)
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(val, ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(arr, idx, value), codegen


@intrinsic
def fetch_add(typingctx, arr, idx, value):
    if not (_is_int64_vector(arr) and isinstance(idx, types.Integer)
            and isinstance(value, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig, args)
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")

    return types.int64(arr, idx, value), codegen


@intrinsic
def fence(typingctx):
    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def cpu_relax(typingctx):
    # An LLVM target intrinsic rather than inline asm: Numba's JIT has no asm parser
    # initialized, and inline asm aborts the process there.
    def codegen(context, builder, sig, args):
        if _MACHINE in ("x86_64", "amd64", "i686", "i386"):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        elif _MACHINE in ("aarch64", "arm64"):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(32)]),
                "llvm.aarch64.hint")
            builder.call(fn, [ir.Constant(ir.IntType(32), 1)])  # 1 = YIELD
        # elsewhere: no hint; the atomic load alone keeps the loop correct
        return context.get_dummy_value()

    return types.void(), codegen
