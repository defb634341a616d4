"""Intel AMX tile instructions for the batched (prompt) kernels.

Xeons since Sapphire Rapids have AMX: eight tile registers of up to 16 rows x 64 bytes
and TDPBSUD, which multiplies a 16 x 64 tile of signed bytes by a 16 x 64 tile of
unsigned bytes (VNNI layout: 4 consecutive elements per int32) into 16 x 16 int32 sums
in one instruction, 16x the work of a 512-bit vpdpbusd. The row groups of the packed
formats are already in that layout (rowgroups.py: vector k holds elements 4k .. 4k+3 of
each of 16 rows), so a unit of a row group is a tile as it is.

The integer sums are the same integers vpdpbusd gives, and the kernels scale them with
the same float operations in the same order, so the AMX and the vector tiles produce the
same bits (tests/test_amx.py): only how fast differs.

Numba's LLVM has no inline-assembly parser, so these are LLVM's AMX intrinsics that name
tile registers by number; the configuration (each register's rows and bytes per row) is
loaded with ldtilecfg from a 64-byte array. Linux hands AMX state to a process only
after it asks (arch_prctl ARCH_REQ_XCOMP_PERM): numatp._env asks at import, and uses
AMX only where that succeeded (see numatp._env.AMX).

  tile_config(cfg)              ldtilecfg from a uint8 array of 64 (tile_shapes makes one)
  tile_release()                tilerelease
  tile_load(reg, arr, i, stride)  tile register `reg` from the C-contiguous arr's flat
                                element i on (rows `stride` bytes apart)
  tile_store(reg, arr, i, stride) the reverse
  tile_zero(reg)
  tile_dot_su(c, a, b)          C += A (signed bytes) . B (unsigned bytes), int32
  tile_dot_ss(c, a, b)          the same with signed bytes in B
Register numbers are literal ints.
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_I8, _I64 = ir.IntType(8), ir.IntType(64)
_PTR = ir.PointerType(_I8)
ROWS = 16        # rows of a tile register (tokens of an A tile, int32 rows of C)
ROW_BYTES = 64   # bytes per tile row


def tile_shapes(shapes):
    """The 64-byte ldtilecfg operand (palette 1) for {register: (rows, bytes per row)}."""
    cfg = np.zeros(64, np.uint8)
    cfg[0] = 1
    for reg, (rows, colsb) in shapes.items():
        cfg[16 + 2 * reg:18 + 2 * reg] = np.frombuffer(np.uint16(colsb).tobytes(), np.uint8)
        cfg[48 + reg] = rows
    return cfg


def _call(builder, name, argtys, args):
    module = builder.module
    fn = module.globals.get(name) or ir.Function(
        module, ir.FunctionType(ir.VoidType(), argtys), name)
    builder.call(fn, args)


def _reg(reg):
    n = getattr(reg, "literal_value", None)
    return n if isinstance(n, int) and 0 <= n < 8 else None


def _address(context, builder, arrty, arr, index):
    """Address of flat element `index` of a C-contiguous array, as an i8*."""
    a = context.make_array(arrty)(context, builder, arr)
    size = context.get_abi_sizeof(context.get_data_type(arrty.dtype))
    base = builder.ptrtoint(a.data, _I64)
    return builder.inttoptr(builder.add(base, builder.mul(index, ir.Constant(_I64, size))),
                            _PTR)


@intrinsic
def tile_config(typingctx, cfg):
    def codegen(context, builder, sig, args):
        a = context.make_array(sig.args[0])(context, builder, args[0])
        _call(builder, "llvm.x86.ldtilecfg", [_PTR], [builder.bitcast(a.data, _PTR)])
        return context.get_dummy_value()
    return types.void(cfg), codegen


@intrinsic
def tile_release(typingctx):
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def tile_zero(typingctx, reg):
    r = _reg(reg)
    if r is None:
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilezero", [_I8], [ir.Constant(_I8, r)])
        return context.get_dummy_value()
    return types.void(reg), codegen


def _tile_move(name):
    def move(typingctx, reg, arr, index, stride):
        r = _reg(reg)
        if r is None or not isinstance(arr, types.Array) or arr.layout != "C":
            return None

        def codegen(context, builder, sig, args):
            at = _address(context, builder, sig.args[1], args[1],
                          context.cast(builder, args[2], sig.args[2], types.int64))
            stride_v = context.cast(builder, args[3], sig.args[3], types.int64)
            _call(builder, name, [_I8, _PTR, _I64], [ir.Constant(_I8, r), at, stride_v])
            return context.get_dummy_value()
        return types.void(reg, arr, index, stride), codegen
    return move


tile_load = intrinsic(_tile_move("llvm.x86.tileloadd64"))
tile_store = intrinsic(_tile_move("llvm.x86.tilestored64"))


def _tile_dot(name):
    def dot(typingctx, c, a, b):
        regs = (_reg(c), _reg(a), _reg(b))
        if None in regs:
            return None

        def codegen(context, builder, sig, args):
            _call(builder, name, [_I8] * 3, [ir.Constant(_I8, r) for r in regs])
            return context.get_dummy_value()
        return types.void(c, a, b), codegen
    return dot


tile_dot_su = intrinsic(_tile_dot("llvm.x86.tdpbsud"))
tile_dot_ss = intrinsic(_tile_dot("llvm.x86.tdpbssd"))
