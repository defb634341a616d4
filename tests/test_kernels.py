"""The matrix kernels against gguf's reference dequantization.

Every type in formats.SUPPORTED: random weights (quantized by gguf where it can, random
block bytes with sane fp16 scales where it cannot), a float64 reference product of the
dequantized matrix, and the kernels' entry points on odd shapes: row counts that do not
fill a row group or divide among threads, several block counts, batches of 1, 2, 5 and
9 tokens (whole tiles and a remainder), and dequantize_rows.
"""
import numatp  # noqa: F401  (sets the Numba environment first)

import gguf
import numba
import numpy as np
import pytest
from gguf import GGMLQuantizationType as GT

from numatp.quant import formats as F
from numatp.quant import packing
from numatp.quant.kernels import KernelSet, R, dequantize_rows, linear, linear_units, prepare

# Types gguf can quantize itself; the others get random block bytes.
GGUF_QUANTIZES = {F.BF16, F.Q4_0, F.Q4_1, F.Q5_0, F.Q5_1, F.Q8_0}
# Byte offsets of the fp16 fields (scales and offsets) in each block of the other types.
HALF_FIELDS = {F.Q2_K: (80, 82), F.Q3_K: (108,), F.Q4_K: (0, 2), F.Q5_K: (0, 2),
               F.Q6_K: (208,), F.IQ4_NL: (0,), F.IQ4_XS: (0,)}
FLOATS = (F.F32, F.F16, F.BF16)
# One compilation for all types; the models' tests run sets of one to three types.
ALL = KernelSet(F.SUPPORTED)


def _cols(qtype, nblk):
    return nblk * F.block_size(qtype) if qtype not in FLOATS else nblk


def make_matrix(qtype, rows, cols, rng):
    """(raw uint8 matrix rows x row_bytes, float64 dequantized reference)."""
    if qtype == F.F32:
        raw = rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint8)
    elif qtype == F.F16:
        raw = rng.standard_normal((rows, cols)).astype(np.float16).view(np.uint8)
    elif qtype in GGUF_QUANTIZES:
        raw = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32),
                                   GT(qtype))
    else:
        nb, bb = cols // F.block_size(qtype), F.block_bytes(qtype)
        blocks = rng.integers(0, 256, (rows, nb, bb), dtype=np.uint8)
        for at in HALF_FIELDS[qtype]:
            scale = rng.uniform(0.005, 0.02, (rows, nb)).astype(np.float16)
            blocks[:, :, at:at + 2] = scale.view(np.uint8).reshape(rows, nb, 2)
        raw = blocks.reshape(rows, nb * bb)
    ref = gguf.quants.dequantize(raw, GT(qtype)).astype(np.float64)
    return np.ascontiguousarray(raw), ref.reshape(rows, cols)


def assert_close(qtype, got, W, X):
    """Kernel output `got` (T, rows) against the float64 product X @ W.T.

    Error bounds per output element:
      - quantized formats round the activations to int8 with one scale per 32 values
        (256 for the super-block formats; max|x| of the group / 127), so each is off by
        at most max|x| / 254, max|x| of the whole row bounding every group's, and the
        sum by at most sum_j |W_ij| * max|x| / 254;
      - float32 accumulation of K terms: at most about K * 2^-24 * sum_j |W_ij * x_j|.
    The test allows twice the sum of both, so a wrong element, block or scale (errors of
    the size of the terms themselves) cannot pass."""
    X = X.astype(np.float64)
    ref = X @ W.T
    K = W.shape[1]
    bound = K * 2.0 ** -24 * (np.abs(X) @ np.abs(W).T)
    if qtype not in FLOATS:
        bound += np.abs(X).max(axis=1, keepdims=True) / 254 * np.abs(W).sum(axis=1)
    err = np.abs(got.astype(np.float64) - ref)
    assert np.all(err <= 2 * bound + 1e-30), (F.type_name(qtype), float((err / bound).max()))


TYPES = [pytest.param(q, id=F.type_name(q)) for q in F.SUPPORTED]


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("rows,nblk", [(1, 1), (7, 3), (2 * R + 3, 2)])
def test_matvec(qtype, rows, nblk, rng):
    cols = _cols(qtype, nblk) if qtype not in FLOATS else 8 * nblk + 5
    raw, W = make_matrix(qtype, rows, cols, rng)
    X = rng.standard_normal((1, cols)).astype(np.float32)
    Y = np.full((1, rows), np.nan, np.float32)
    linear(ALL, qtype, prepare(qtype, raw), rows, cols, X, Y)
    assert_close(qtype, Y, W, X)


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("T", [2, 5, 9, 37])
def test_batched(qtype, T, rng):
    rows = R + 7
    cols = _cols(qtype, 3) if qtype not in FLOATS else 29
    raw, W = make_matrix(qtype, rows, cols, rng)
    X = rng.standard_normal((T, cols)).astype(np.float32)
    Y = np.full((T, rows), np.nan, np.float32)
    linear(ALL, qtype, prepare(qtype, raw), rows, cols, X, Y)
    assert_close(qtype, Y, W, X)


@pytest.mark.parametrize("qtype", [pytest.param(q, id=F.type_name(q)) for q in packing.PACKED])
@pytest.mark.parametrize("group", [8, 16])
def test_packing_round_trip(qtype, group, rng):
    """Packing only moves bytes: unpacking gives the GGUF rows back, and a partial last
    group is padded with zero rows."""
    rows, nblk = group + 3, 2
    raw = rng.integers(0, 256, (rows, nblk * F.block_bytes(qtype)), dtype=np.uint8)
    packed = packing.pack(qtype, raw, group)
    assert packed.size == packing.packed_nbytes(qtype, rows, _cols(qtype, nblk), group)
    assert np.array_equal(packing.unpack(qtype, packed, rows, _cols(qtype, nblk), group), raw)
    padded = packing.unpack(qtype, packed, 2 * group, _cols(qtype, nblk), group)
    assert not padded[rows:].any()


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_rows(qtype, rng):
    rows = 6
    cols = _cols(qtype, 2) if qtype not in FLOATS else 21
    raw, W = make_matrix(qtype, rows, cols, rng)
    ids = np.array([5, 0, 3, 3], np.int64)
    out = np.full((ids.size, cols), np.nan, np.float32)
    dequantize_rows(ALL, qtype, raw.reshape(-1), cols, ids, out)
    # The reference rounds d*q + m in float32 like the kernels; a fused multiply-add may
    # round once instead of twice: allow one float32 rounding of the largest value.
    tol = np.abs(W).max() * 2.0 ** -23
    np.testing.assert_allclose(out, W[ids], rtol=0, atol=tol)


@pytest.mark.parametrize("qtype", [F.Q4_K, F.Q8_0, F.F16])
def test_thread_count_does_not_change_results(qtype, rng):
    rows, cols = 37, _cols(qtype, 2) if qtype not in FLOATS else 64
    raw, _ = make_matrix(qtype, rows, cols, rng)
    X = rng.standard_normal((6, cols)).astype(np.float32)
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            y1 = np.zeros((1, rows), np.float32)
            y3 = np.zeros((6, rows), np.float32)
            linear(ALL, qtype, prepare(qtype, raw), rows, cols, X[:1], y1)
            linear(ALL, qtype, prepare(qtype, raw), rows, cols, X, y3)
            results.append((y1, y3))
    finally:
        numba.set_num_threads(previous)
    for y1, y3 in results[1:]:
        assert np.array_equal(y1, results[0][0])
        assert np.array_equal(y3, results[0][1])


def test_unsupported_type_raises():
    with pytest.raises(ValueError, match="no kernel for quant type TQ1_0"):
        KernelSet([F.Q8_0, int(GT.TQ1_0)])
    w = np.zeros(64, np.uint8)
    with pytest.raises(ValueError):
        dequantize_rows(ALL, int(GT.TQ1_0), w, 256, np.zeros(1, np.int64),
                        np.zeros((1, 256), np.float32))


def test_type_outside_the_kernel_set_raises(rng):
    raw, _ = make_matrix(F.Q4_0, 3, 32, rng)
    X, Y = np.ones((1, 32), np.float32), np.zeros((1, 3), np.float32)
    with pytest.raises(ValueError, match="in the kernel set"):
        linear(KernelSet([F.Q8_0]), F.Q4_0, prepare(F.Q4_0, raw), 3, 32, X, Y)


@numba.njit(cache=True)
def _jitted_caller(kernels, qtype, w, rows, cols, X, Y):
    # Constant arguments, as a transformer step would pass them.
    linear(kernels, qtype, w, rows, cols, X[:1], Y[:1])
    linear(kernels, qtype, w, rows, cols, X, Y)


def test_callable_from_jitted_code(rng):
    qtype, rows, nblk = F.Q4_K, 3, 1
    cols = nblk * F.block_size(qtype)
    raw, W = make_matrix(qtype, rows, cols, rng)
    X = rng.standard_normal((2, cols)).astype(np.float32)
    Y = np.zeros((2, rows), np.float32)
    _jitted_caller(KernelSet([qtype]), qtype, prepare(qtype, raw), rows, cols, X, Y)
    assert_close(qtype, Y, W, X)


def test_zero_and_tiny_activation_groups(rng):
    """A group of zeros, or of values so small that int8 scaling would overflow, is
    taken as zero rather than producing inf/NaN."""
    qtype, rows = F.Q8_0, 4
    cols = 3 * F.block_size(qtype)
    raw, W = make_matrix(qtype, rows, cols, rng)
    X = rng.standard_normal((1, cols)).astype(np.float32)
    X[0, :32] = 0.0
    X[0, 32:64] = 1e-38
    Y = np.full((1, rows), np.nan, np.float32)
    linear(ALL, qtype, prepare(qtype, raw), rows, cols, X, Y)
    assert np.all(np.isfinite(Y))
    assert_close(qtype, Y, W, X)


@pytest.mark.parametrize("T", [1, 5, 13, 37])
@pytest.mark.parametrize("qtype", [pytest.param(q, id=F.type_name(q)) for q in packing.PACKED])
def test_units_are_the_products_of_their_columns_alone(qtype, T):
    """linear_units' unit u, bit for bit, is linear() over the columns of its blocks
    alone: the one pass over a row group's blocks that serves every unit restarts each
    unit's sums from zero (T covers a one-token tile, half tiles, full tiles and, with
    AMX, a 16-token group; one unit is empty, as when a cut falls inside a block)."""
    rng = np.random.default_rng(qtype * 100 + T)
    nblk, be = 7, F.block_size(qtype)
    rows, cols = R + 3, nblk * be
    cuts = np.array([0, 2, 2, 3, 7], np.int64)
    raw, _ = make_matrix(qtype, rows, cols, rng)
    X = rng.standard_normal((T, cols)).astype(np.float32)
    Yu = np.full((len(cuts) - 1, T, rows), np.nan, np.float32)
    linear_units(ALL, qtype, prepare(qtype, raw), rows, cols, cuts, X, Yu)
    bb = F.block_bytes(qtype)
    for u, (b0, b1) in enumerate(zip(cuts[:-1], cuts[1:])):
        want = np.zeros((T, rows), np.float32)
        if b1 > b0:
            part = np.ascontiguousarray(raw[:, b0 * bb:b1 * bb])
            linear(ALL, qtype, prepare(qtype, part), rows, (b1 - b0) * be,
                   np.ascontiguousarray(X[:, b0 * be:b1 * be]), want)
        assert np.array_equal(Yu[u].view(np.uint32), want.view(np.uint32)), f"unit {u}"
