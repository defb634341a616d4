"""Explicit SIMD vectors for the Numba kernels.

Numba has no vector types, and leaving vectorization to LLVM's SLP pass turned out
fragile for block formats: a small change in a kernel flipped it between packed code and
scalar inserts/gathers at a fraction of the speed. This module adds one Numba type, Vec
(an LLVM vector of N numbers, e.g. <8 x float>), and the handful of operations the
kernels need, each a few lines of target-independent LLVM IR. LLVM lowers them to
AVX2/AVX-512 on x86 and NEON on Arm; the kernels state exactly what runs in parallel.

Operations (all usable only inside @njit code):
  load(arr, i, N)          N consecutive elements arr[i : i+N] (unaligned, no bounds check)
  store(arr, i, v)         arr[i : i+N] = v
  splat(x, N)              N copies of the scalar x
  convert(v, dtype)        element-wise numeric conversion (int widening, int->float, ...)
  half_to_float(v)         IEEE fp16 bits (uint16 lanes) -> float32 lanes
  bf16_to_float(v)         bfloat16 bits (uint16 lanes) -> float32 lanes
  part(v, start, N)        lanes start .. start+N-1;   join(a, b): a's lanes then b's
  lane(v, i)               lane i as a scalar
  interleave(a, b)         a0, b0, a1, b1, ...
  repeat_lanes(v, k)       each lane k times
  lookup16(table, idx)     table[idx] per lane, 16 byte entries (pshufb on x86)
  bitcast(v, dtype)        the same bits as lanes of another type
  load_bytes(a, i, dtype, N), read_bytes(a, i, dtype), read_half(a, i)
                           typed reads at a byte offset of a uint8 array
  round_even, vabs, hmax   rounding, |v|, largest lane
  vmax(a, b)               lane-wise larger of two float vectors (NaN if either is)
  stack_empty(N, dtype)    scratch array on the caller's stack
  prefetch(a, i)           cache hint for a[i]
  dot4(acc, u, s, small)   acc + the sum of each 4 consecutive products of unsigned bytes
                           u with signed bytes s, as int32 lanes (vpdpbusd, see isa.py)
  bcast4(arr, i, N)        the 4 bytes arr[i : i+4] repeated N times (one int32 splat)
  fma(a, b, c)             a * b + c (fused where the target has FMA)
  hsum(v)                  sum of the lanes, in a fixed pairwise order
  +, -, *, &, |, ^, ~, >>, <<  lane-wise (and unary -); a scalar operand is broadcast
"""
from numatp import _env  # noqa: F401  (before numba)

import operator

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.imputils import lower_builtin
from numba.core.typing.templates import AbstractTemplate, infer_global, signature
from numba.extending import intrinsic, models, register_model


class Vec(types.Type):
    """N lanes of one numeric type, held in registers as one LLVM vector value."""

    def __init__(self, dtype, count):
        self.dtype = dtype
        self.count = count
        super().__init__(name=f"Vec({dtype}, {count})")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        lane = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(lane, fe_type.count))


_I32 = ir.IntType(32)

# How far ahead (bytes) the matvec row kernels ask for weights with prefetch(): the
# hardware prefetchers alone left them 10-30% below the read bandwidth on the shared
# development machines, where memory latency under load is high (numatp bench kernels,
# A/B in one process). 2 KiB is 32 cache lines.
PREFETCH_AHEAD = 2048
CACHE_LINE = 64


def _const_int(n):
    return ir.Constant(_I32, n)


def vec_bits(lane_t):
    return {ir.FloatType: 32, ir.DoubleType: 64}[type(lane_t)]


def _literal_int(t):
    if isinstance(t, types.IntegerLiteral):
        return t.literal_value
    return None


def _lane_type(context, dtype):
    return context.get_value_type(dtype)


def _splat(builder, value, count):
    vec_t = ir.VectorType(value.type, count)
    v = builder.insert_element(ir.Constant(vec_t, ir.Undefined), value, _const_int(0))
    return builder.shuffle_vector(v, ir.Constant(vec_t, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, count), [0] * count))


def _cast(builder, value, src, dst, context):
    """LLVM conversion of a scalar or vector value between Numba number types."""
    dst_lane = _lane_type(context, dst)
    if isinstance(value.type, ir.VectorType):
        dst_t = ir.VectorType(dst_lane, value.type.count)
    else:
        dst_t = dst_lane
    if src == dst:
        return value
    if isinstance(src, types.Integer) and isinstance(dst, types.Integer):
        if dst.bitwidth > src.bitwidth:
            return builder.sext(value, dst_t) if src.signed else builder.zext(value, dst_t)
        if dst.bitwidth < src.bitwidth:
            return builder.trunc(value, dst_t)
        return value
    if isinstance(src, types.Integer) and isinstance(dst, types.Float):
        return builder.sitofp(value, dst_t) if src.signed else builder.uitofp(value, dst_t)
    if isinstance(src, types.Float) and isinstance(dst, types.Integer):
        return builder.fptosi(value, dst_t) if dst.signed else builder.fptoui(value, dst_t)
    if isinstance(src, types.Float) and isinstance(dst, types.Float):
        if dst.bitwidth > src.bitwidth:
            return builder.fpext(value, dst_t)
        return builder.fptrunc(value, dst_t)
    raise TypeError(f"cannot convert {src} to {dst}")


def _data_pointer(context, builder, arrty, arr, index, lane_t):
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.gep(ary.data, [index])


@intrinsic
def load(typingctx, arr, index, count):
    n = _literal_int(count)
    if not (isinstance(arr, types.Array) and isinstance(index, types.Integer) and n):
        return None
    vt = Vec(arr.dtype, n)

    def codegen(context, builder, sig, args):
        arr_v, idx_v, _ = args
        lane_t = _lane_type(context, arr.dtype)
        ptr = _data_pointer(context, builder, arr, arr_v, idx_v, lane_t)
        vptr = builder.bitcast(ptr, ir.PointerType(ir.VectorType(lane_t, n)))
        return builder.load(vptr, align=1)

    return vt(arr, index, count), codegen


@intrinsic
def load_bytes(typingctx, arr, byte_index, dtype, count):
    """N elements of `dtype` read from a byte array at byte_index (unaligned)."""
    n = _literal_int(count)
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and n
            and isinstance(dtype, types.NumberClass)):
        return None
    lane = dtype.instance_type

    def codegen(context, builder, sig, args):
        arr_v, idx_v, _, _ = args
        ptr = _data_pointer(context, builder, arr, arr_v, idx_v, None)
        vt = ir.VectorType(_lane_type(context, lane), n)
        return builder.load(builder.bitcast(ptr, ir.PointerType(vt)), align=1)

    return Vec(lane, n)(arr, byte_index, dtype, count), codegen


@intrinsic
def read_bytes(typingctx, arr, byte_index, dtype):
    """One `dtype` scalar read from a byte array at byte_index (unaligned, unchecked)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint8
            and isinstance(dtype, types.NumberClass)):
        return None
    lane = dtype.instance_type

    def codegen(context, builder, sig, args):
        arr_v, idx_v, _ = args
        ptr = _data_pointer(context, builder, arr, arr_v, idx_v, None)
        lt = _lane_type(context, lane)
        return builder.load(builder.bitcast(ptr, ir.PointerType(lt)), align=1)

    return lane(arr, byte_index, dtype), codegen


@intrinsic
def read_half(typingctx, arr, byte_index):
    """The IEEE fp16 number at byte_index of a byte array, as float32.

    The 2-byte load is marked atomic (unordered: a plain mov on x86) so that LLVM keeps it
    a scalar load into a general register. Otherwise it folds the load into a vector-lane
    insert (vpinsrw), which merges into whatever register it picks, often an accumulator,
    and chains every block's scale conversion to the previous block's result."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint8):
        return None

    def codegen(context, builder, sig, args):
        arr_v, idx_v = args
        ptr = _data_pointer(context, builder, arr, arr_v, idx_v, None)
        i16 = ir.IntType(16)
        bits = builder.load_atomic(builder.bitcast(ptr, ir.PointerType(i16)), "unordered", 2)
        vec = builder.insert_element(ir.Constant(ir.VectorType(i16, 8), None), bits,
                                     _const_int(0))
        halves = builder.bitcast(vec, ir.VectorType(ir.HalfType(), 8))
        floats = builder.fpext(halves, ir.VectorType(ir.FloatType(), 8))
        return builder.extract_element(floats, _const_int(0))

    return types.float32(arr, byte_index), codegen


@intrinsic
def stack_empty(typingctx, count, dtype):
    """A small uninitialized 1-D array on the calling function's stack (no allocation
    call). It must not outlive that function: use it as per-call scratch only."""
    n = _literal_int(count)
    if not (n and isinstance(dtype, types.NumberClass)):
        return None
    arrty = types.Array(dtype.instance_type, 1, "C")

    def codegen(context, builder, sig, args):
        from numba.np.arrayobj import populate_array
        lane_t = _lane_type(context, dtype.instance_type)
        data = cgutils.alloca_once(builder, lane_t, size=n)
        ary = context.make_array(arrty)(context, builder)
        itemsize = context.get_abi_sizeof(lane_t)
        intp = context.get_value_type(types.intp)
        populate_array(ary, data=data, shape=[ir.Constant(intp, n)],
                       strides=[ir.Constant(intp, itemsize)],
                       itemsize=ir.Constant(intp, itemsize), meminfo=None)
        return ary._getvalue()

    return arrty(count, dtype), codegen


@intrinsic
def splat_half(typingctx, arr, byte_index, count):
    """N lanes of the IEEE fp16 number at byte_index of a byte array, as float32.

    Broadcasting the 2-byte load to all lanes before converting (vpbroadcastw, then
    vcvtph2ps on x86) writes whole registers. Converting one lane and broadcasting the
    float made LLVM insert the 16 bits into whatever register was at hand (vpinsrw),
    which chained each block's scale to unrelated, often loop-carried, values."""
    n = _literal_int(count)
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and n):
        return None

    def codegen(context, builder, sig, args):
        arr_v, idx_v, _ = args
        ptr = _data_pointer(context, builder, arr, arr_v, idx_v, None)
        i16 = ir.IntType(16)
        bits = builder.load(builder.bitcast(ptr, ir.PointerType(i16)), align=1)
        vec = _splat(builder, bits, n)
        halves = builder.bitcast(vec, ir.VectorType(ir.HalfType(), n))
        return builder.fpext(halves, ir.VectorType(ir.FloatType(), n))

    return Vec(types.float32, n)(arr, byte_index, count), codegen


@intrinsic
def prefetch(typingctx, arr, index):
    """Hint that arr[index] will be read soon; never faults, even past the end."""
    if not (isinstance(arr, types.Array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        arr_v, idx_v = args
        ptr = _data_pointer(context, builder, arr, arr_v, idx_v, None)
        i8p = ir.PointerType(ir.IntType(8))
        fnty = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # a read, to be kept in all cache levels, of data
        builder.call(fn, [builder.bitcast(ptr, i8p), _const_int(0), _const_int(3),
                          _const_int(1)])
        return context.get_dummy_value()

    return types.none(arr, index), codegen


@intrinsic
def store(typingctx, arr, index, vec):
    if not (isinstance(arr, types.Array) and isinstance(vec, Vec) and vec.dtype == arr.dtype):
        return None

    def codegen(context, builder, sig, args):
        arr_v, idx_v, vec_v = args
        lane_t = _lane_type(context, arr.dtype)
        ptr = _data_pointer(context, builder, arr, arr_v, idx_v, lane_t)
        vptr = builder.bitcast(ptr, ir.PointerType(vec_v.type))
        builder.store(vec_v, vptr, align=1)
        return context.get_dummy_value()

    return types.none(arr, index, vec), codegen


@intrinsic
def splat(typingctx, x, count):
    n = _literal_int(count)
    if not (isinstance(x, types.Number) and n):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, args[0], n)

    return Vec(x, n)(x, count), codegen


@intrinsic
def zeros4(typingctx, count):
    """Four float32 vectors of `count` (a literal) zero lanes: the independent
    accumulators the row kernels start from."""
    n = _literal_int(count)
    if not n:
        return None
    tup = types.UniTuple(Vec(types.float32, n), 4)

    def codegen(context, builder, sig, args):
        z = _splat(builder, ir.Constant(ir.FloatType(), 0.0), n)
        return context.make_tuple(builder, tup, [z, z, z, z])

    return tup(count), codegen


@intrinsic
def convert(typingctx, vec, dtype):
    if not (isinstance(vec, Vec) and isinstance(dtype, (types.NumberClass, types.DType))):
        return None
    dst = dtype.dtype if isinstance(dtype, types.DType) else dtype.instance_type

    def codegen(context, builder, sig, args):
        return _cast(builder, args[0], vec.dtype, dst, context)

    return Vec(dst, vec.count)(vec, dtype), codegen


@intrinsic
def half_to_float(typingctx, vec):
    if not (isinstance(vec, Vec) and vec.dtype in (types.uint16, types.int16)):
        return None
    n = vec.count

    def codegen(context, builder, sig, args):
        halves = builder.bitcast(args[0], ir.VectorType(ir.HalfType(), n))
        return builder.fpext(halves, ir.VectorType(ir.FloatType(), n))

    return Vec(types.float32, n)(vec), codegen


@intrinsic
def bf16_to_float(typingctx, vec):
    if not (isinstance(vec, Vec) and vec.dtype in (types.uint16, types.int16)):
        return None
    n = vec.count

    def codegen(context, builder, sig, args):
        wide = builder.zext(args[0], ir.VectorType(_I32, n))
        wide = builder.shl(wide, ir.Constant(ir.VectorType(_I32, n), [16] * n))
        return builder.bitcast(wide, ir.VectorType(ir.FloatType(), n))

    return Vec(types.float32, n)(vec), codegen


@intrinsic
def part(typingctx, vec, start, count):
    s, n = _literal_int(start), _literal_int(count)
    if not (isinstance(vec, Vec) and s is not None and n and s + n <= vec.count):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        mask = ir.Constant(ir.VectorType(_I32, n), list(range(s, s + n)))
        return builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), mask)

    return Vec(vec.dtype, n)(vec, start, count), codegen


@intrinsic
def lane(typingctx, vec, index):
    """Lane `index` of vec as a scalar (the index may be a run-time value)."""
    if not (isinstance(vec, Vec) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], args[1])

    return vec.dtype(vec, index), codegen


@intrinsic
def join(typingctx, a, b):
    if not (isinstance(a, Vec) and a == b):
        return None
    n = a.count

    def codegen(context, builder, sig, args):
        mask = ir.Constant(ir.VectorType(_I32, 2 * n), list(range(2 * n)))
        return builder.shuffle_vector(args[0], args[1], mask)

    return Vec(a.dtype, 2 * n)(a, b), codegen


@intrinsic
def fma(typingctx, a, b, c):
    if not (isinstance(a, Vec) and a == b == c and isinstance(a.dtype, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        return _float_intrinsic_call(builder, "fmuladd", args)

    return a(a, b, c), codegen


@intrinsic
def interleave(typingctx, a, b):
    """(a0, b0, a1, b1, ...)."""
    if not (isinstance(a, Vec) and a == b):
        return None
    n = a.count
    order = [k for i in range(n) for k in (i, n + i)]

    def codegen(context, builder, sig, args):
        mask = ir.Constant(ir.VectorType(_I32, 2 * n), order)
        return builder.shuffle_vector(args[0], args[1], mask)

    return Vec(a.dtype, 2 * n)(a, b), codegen


@intrinsic
def repeat_lanes(typingctx, vec, times):
    """Each lane repeated `times` times: (v0, v0, .., v1, v1, ..)."""
    k = _literal_int(times)
    if not (isinstance(vec, Vec) and k):
        return None
    n = vec.count
    order = [i for i in range(n) for _ in range(k)]

    def codegen(context, builder, sig, args):
        v = args[0]
        mask = ir.Constant(ir.VectorType(_I32, n * k), order)
        return builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), mask)

    return Vec(vec.dtype, n * k)(vec, times), codegen


@intrinsic
def lookup16(typingctx, table, index):
    """table[index[i]] for each lane: 16 int8 or uint8 entries, uint8 indices 0..15.

    x86 has this as one instruction (pshufb, within each 16-byte part, so the table is
    repeated in every part); elsewhere it falls back to one extract/insert per lane."""
    if not (isinstance(table, Vec) and table.count == 16
            and table.dtype in (types.int8, types.uint8)
            and isinstance(index, Vec) and index.dtype == types.uint8
            and index.count in (16, 32, 64)):
        return None
    n = index.count

    def codegen(context, builder, sig, args):
        tab, idx = args
        i8 = ir.IntType(8)
        features = getattr(context.codegen(), "_tm_features", "").split(",")
        need, name = {16: ("+ssse3", "llvm.x86.ssse3.pshuf.b.128"),
                      32: ("+avx2", "llvm.x86.avx2.pshuf.b"),
                      64: ("+avx512bw", "llvm.x86.avx512.pshuf.b.512")}[n]
        if need in features:
            vt = ir.VectorType(i8, n)
            if n > 16:
                tab = builder.shuffle_vector(tab, tab,
                                             ir.Constant(ir.VectorType(_I32, n),
                                                         list(range(16)) * (n // 16)))
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt]),
                                                name)
            return builder.call(fn, [tab, idx])
        if n == 64 and "+avx2" in features:   # two 256-bit lookups
            halves = [lookup16_ir(builder, context, tab, h) for h in _pieces(builder, idx, 32)]
            return _concat(builder, halves)
        out = ir.Constant(ir.VectorType(i8, n), None)
        for i in range(n):
            lane = builder.extract_element(idx, _const_int(i))
            out = builder.insert_element(out, builder.extract_element(tab, lane), _const_int(i))
        return out

    return Vec(table.dtype, n)(table, index), codegen


def lookup16_ir(builder, context, tab, idx):
    """32 lanes of lookup16 with vpshufb (AVX2)."""
    vt = ir.VectorType(ir.IntType(8), 32)
    tab = builder.shuffle_vector(tab, tab, ir.Constant(ir.VectorType(_I32, 32), list(range(16)) * 2))
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt]),
                                        "llvm.x86.avx2.pshuf.b")
    return builder.call(fn, [tab, idx])


@intrinsic
def bitcast(typingctx, vec, dtype):
    """The same bits seen as lanes of another number type (lane count scales)."""
    if not (isinstance(vec, Vec) and isinstance(dtype, types.NumberClass)):
        return None
    dst = dtype.instance_type
    total = vec.count * vec.dtype.bitwidth
    if total % dst.bitwidth:
        return None
    n = total // dst.bitwidth

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.VectorType(_lane_type(context, dst), n))

    return Vec(dst, n)(vec, dtype), codegen


@intrinsic
def round_even(typingctx, vec):
    """Lane-wise round to nearest, ties to even."""
    if not (isinstance(vec, Vec) and isinstance(vec.dtype, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        return _float_intrinsic_call(builder, "roundeven", args)

    return vec(vec), codegen


def _float_intrinsic_call(builder, name, args):
    vt = args[0].type
    full = f"llvm.{name}.v{vt.count}f{vec_bits(vt.element)}"
    fnty = ir.FunctionType(vt, [vt] * len(args))
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, full), args)


@intrinsic
def vabs(typingctx, vec):
    """Lane-wise absolute value of float lanes."""
    if not (isinstance(vec, Vec) and isinstance(vec.dtype, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        return _float_intrinsic_call(builder, "fabs", args)

    return vec(vec), codegen


@intrinsic
def vmax(typingctx, a, b):
    """Lane-wise larger of two float vectors; NaN where either lane is NaN."""
    if not (isinstance(a, Vec) and isinstance(a.dtype, types.Float) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return _float_intrinsic_call(builder, "maximum", args)

    return a(a, b), codegen


@intrinsic
def hmax(typingctx, vec):
    """Largest lane of float lanes; NaN if any lane is NaN."""
    if not (isinstance(vec, Vec) and isinstance(vec.dtype, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        n = vec.count
        while n > 1:
            n //= 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
            hi = builder.shuffle_vector(
                v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n))))
            v = _float_intrinsic_call(builder, "maximum", [lo, hi])
        return builder.extract_element(v, _const_int(0))

    return vec.dtype(vec), codegen


@intrinsic
def hsum(typingctx, vec):
    if not isinstance(vec, Vec):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        n = vec.count
        is_float = isinstance(vec.dtype, types.Float)
        while n > 1:  # fold the upper half onto the lower half: a fixed order
            n //= 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
            hi = builder.shuffle_vector(
                v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n))))
            v = builder.fadd(lo, hi) if is_float else builder.add(lo, hi)
        return builder.extract_element(v, _const_int(0))

    return vec.dtype(vec), codegen


# -- lane-wise operators ------------------------------------------------------------------

# Operators are registered as typing templates plus lowerings rather than @overload: an
# overload compiles a small Python function for every operand-type combination, which
# added minutes to the compile time of the kernels.

def _binary_operator(op, float_op, int_op, uint_op=None):
    """Lane-wise `op` on Vec operands; a scalar operand is broadcast to all lanes."""

    def lane_op(vec):
        if isinstance(vec.dtype, types.Float):
            return float_op
        if uint_op is not None and not vec.dtype.signed:
            return uint_op
        return int_op

    @infer_global(op)
    class _Typing(AbstractTemplate):
        def generic(self, args, kws):
            if len(args) != 2 or kws:
                return None
            a, b = args
            vec = a if isinstance(a, Vec) else b
            if not isinstance(vec, Vec) or lane_op(vec) is None:
                return None
            if all(t == vec or isinstance(t, types.Number) for t in args):
                return signature(vec, a, b)
            return None

    def lower(context, builder, sig, args):
        vec = sig.return_type
        vals = []
        for t, v in zip(sig.args, args):
            if not isinstance(t, Vec):
                v = _splat(builder, _cast(builder, v, t, vec.dtype, context), vec.count)
            vals.append(v)
        return getattr(builder, lane_op(vec))(*vals)

    for operands in ((Vec, Vec), (Vec, types.Number), (types.Number, Vec)):
        lower_builtin(op, *operands)(lower)


for _op, _names in ((operator.add, ("fadd", "add")), (operator.sub, ("fsub", "sub")),
                    (operator.mul, ("fmul", "mul")), (operator.and_, (None, "and_")),
                    (operator.or_, (None, "or_")), (operator.xor, (None, "xor")),
                    (operator.rshift, (None, "ashr", "lshr")),
                    (operator.lshift, (None, "shl"))):
    _binary_operator(_op, *_names)


@infer_global(operator.neg)
class _NegTyping(AbstractTemplate):
    def generic(self, args, kws):
        if len(args) == 1 and isinstance(args[0], Vec):
            return signature(args[0], args[0])
        return None


@lower_builtin(operator.neg, Vec)
def _neg_lower(context, builder, sig, args):
    if isinstance(sig.args[0].dtype, types.Float):
        return builder.fneg(args[0])
    return builder.neg(args[0])


@infer_global(operator.invert)
class _InvertTyping(AbstractTemplate):
    def generic(self, args, kws):
        if len(args) == 1 and isinstance(args[0], Vec) and isinstance(args[0].dtype,
                                                                      types.Integer):
            return signature(args[0], args[0])
        return None


@lower_builtin(operator.invert, Vec)
def _invert_lower(context, builder, sig, args):
    return builder.not_(args[0])


# -- int8 dot products ------------------------------------------------------------------------

def _pieces(builder, v, size):
    """v cut into consecutive vectors of `size` lanes."""
    n = v.type.count
    return [builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                                   ir.Constant(ir.VectorType(_I32, size),
                                               list(range(i, i + size))))
            for i in range(0, n, size)]


def _concat(builder, parts):
    """The inverse of _pieces."""
    while len(parts) > 1:
        pairs = []
        for a, b in zip(parts[0::2], parts[1::2]):
            m = a.type.count
            pairs.append(builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 2 * m),
                                                                  list(range(2 * m)))))
        parts = pairs
    return parts[0]


def _call(builder, name, ret, args):
    fnty = ir.FunctionType(ret, [a.type for a in args])
    return builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), args)


def _dot4_vnni(builder, acc, u, s, lanes):
    i32 = ir.VectorType(_I32, lanes)
    name = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256"}[lanes]
    return _call(builder, name, i32, [acc, builder.bitcast(u, i32), builder.bitcast(s, i32)])


def _dot4_maddubs(builder, acc, u, s, lanes, small):
    """pmaddubsw adds two u8*s8 products into an int16 with saturation: exact while each
    pair stays within +-32767, which holds for u < 128 (|s| <= 127). Larger u are split
    into their low 7 bits and their top bit (0 or 128), each exact."""
    i8, i16 = ir.IntType(8), ir.IntType(16)
    if lanes == 16:
        names = ("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512")
    else:
        names = ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd")
    pair_t = ir.VectorType(i16, 2 * lanes)
    ones = ir.Constant(pair_t, [1] * (2 * lanes))
    parts = [u] if small else [
        builder.and_(u, ir.Constant(u.type, [0x7F] * (4 * lanes))),
        builder.and_(u, ir.Constant(u.type, [0x80] * (4 * lanes)))]
    for part_u in parts:
        pairs = _call(builder, names[0], pair_t, [part_u, s])
        acc = builder.add(acc, _call(builder, names[1], ir.VectorType(_I32, lanes),
                                     [pairs, ones]))
    del i8
    return acc


def _dot4_generic(builder, acc, u, s):
    n = acc.type.count
    wide = ir.VectorType(_I32, 4 * n)
    prod = builder.mul(builder.zext(u, wide), builder.sext(s, wide))
    for k in range(4):
        acc = builder.add(acc, builder.shuffle_vector(
            prod, ir.Constant(wide, ir.Undefined),
            ir.Constant(ir.VectorType(_I32, n), list(range(k, 4 * n, 4)))))
    return acc


@intrinsic
def dot4(typingctx, acc, u, s, small):
    """acc[i] + sum(u[4i + k] * s[4i + k] for k < 4): int32 lanes acc, unsigned bytes u,
    signed bytes s with |s| <= 127. `small` (a literal bool) promises u < 128, which the
    pmaddubsw forms need to be exact in one step (isa.py lists the forms)."""
    flag = getattr(small, "literal_value", None)
    if not (isinstance(acc, Vec) and acc.dtype == types.int32 and isinstance(u, Vec)
            and u.dtype == types.uint8 and isinstance(s, Vec) and s.dtype == types.int8
            and u.count == s.count == 4 * acc.count and isinstance(flag, bool)):
        return None

    def codegen(context, builder, sig, args):
        from numatp.quant.isa import dot_isa, features_of
        acc_v, u_v, s_v = args[0], args[1], args[2]
        isa = dot_isa(features_of(context.codegen()))
        width = {"vnni512": 16, "avx512bw": 16, "avxvnni": 8, "avx2": 8}.get(isa)
        if width is None or acc.count % min(width, acc.count) or acc.count < 8:
            return _dot4_generic(builder, acc_v, u_v, s_v)
        if acc.count < width:   # 8 lanes on a 512-bit target: its 256-bit form
            width = acc.count
            isa = {"vnni512": "avxvnni", "avx512bw": "avx2"}.get(isa, isa)
        out = []
        for a, x, y in zip(_pieces(builder, acc_v, width), _pieces(builder, u_v, 4 * width),
                           _pieces(builder, s_v, 4 * width)):
            if isa in ("vnni512", "avxvnni"):
                out.append(_dot4_vnni(builder, a, x, y, width))
            else:
                out.append(_dot4_maddubs(builder, a, x, y, width, flag))
        return _concat(builder, out)

    return acc(acc, u, s, small), codegen


@intrinsic
def bcast4(typingctx, arr, index, count):
    """The 4 bytes at arr[index] (an int8 array) repeated `count` times, as int8 lanes:
    one int32 broadcast, which x86 folds into the dot product's memory operand."""
    n = _literal_int(count)
    if not (isinstance(arr, types.Array) and arr.dtype == types.int8
            and isinstance(index, types.Integer) and n):
        return None

    def codegen(context, builder, sig, args):
        ptr = _data_pointer(context, builder, arr, args[0], args[1], None)
        word = builder.load(builder.bitcast(ptr, ir.PointerType(_I32)), align=1)
        return builder.bitcast(_splat(builder, word, n), ir.VectorType(ir.IntType(8), 4 * n))

    return Vec(types.int8, 4 * n)(arr, index, count), codegen
