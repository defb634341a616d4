"""AMX tiles (numatp/quant/amx.py) give the vector tiles' bits: for every packed format,
a run of tokens through amx_span equals the same tokens through the vector tiles, bit
for bit, so prompt processing does not depend on whether the CPU has AMX. Runs where
the kernels use AMX (a Xeon since Sapphire Rapids whose kernel grants the tile state);
elsewhere there is nothing to compare."""
import numatp  # noqa: F401  (sets the Numba environment first)

import numpy as np
import pytest
from numba import njit

from numatp.quant import formats as F
from numatp.quant import kernels as K
from numatp.quant import packing
from test_kernels import make_matrix

pytestmark = pytest.mark.skipif(not K.AMX_TOKENS, reason="the kernels do not use AMX here")
ALL = K.KernelSet(tuple(packing.PACKED))


@njit
def _both(kernels, qtype, w, nblk, acts, P, Y_amx, Y_vec, rows):
    n = P.size // acts[0].shape[1]
    T = acts[0].shape[0]
    for g in range((rows + K.R - 1) // K.R):
        go = g * nblk * K.R * K.BLOCK_BYTES[qtype]
        nvalid = min(K.R, rows - g * K.R)
        K._amx_span(kernels, qtype, w, go, nblk, 0, acts, P, n, Y_amx, g * K.R, nvalid)
        for t0 in range(0, n, K.TOKENS):
            K._tiles(kernels, qtype, w, go, nblk, 0, acts, t0, T, Y_vec, g * K.R, nvalid)


@pytest.mark.parametrize("qtype", [pytest.param(q, id=F.type_name(q)) for q in packing.PACKED])
def test_amx_gives_the_vector_tiles_bits(qtype):
    rng = np.random.default_rng(qtype)
    # a partial row group, blocks in odd number (the unpaired last block), 3 groups of
    # 16 tokens (the unpaired last group) and 5 more that the panel leaves out
    rows, nblk, T = K.R + 5, 3 if F.block_size(qtype) == 32 else 2, 3 * K.AMX_TOKENS + 5
    cols = nblk * F.block_size(qtype)
    raw, _ = make_matrix(qtype, rows, cols, rng)
    X = rng.standard_normal((T, cols)).astype(np.float32)
    X[7, :32] = 0   # an all-zero group of activations
    acts, P = K._quantize_tiles(X, K.act_group(K.FAMILY[qtype]))
    n = 3 * K.AMX_TOKENS
    assert P.size == n * cols
    Y_amx = np.full((T, rows), np.nan, np.float32)
    Y_vec = np.full((T, rows), np.nan, np.float32)
    _both(ALL, qtype, K.prepare(qtype, raw), nblk, acts, P, Y_amx, Y_vec, rows)
    assert np.array_equal(Y_amx[:n].view(np.uint32), Y_vec[:n].view(np.uint32))
    assert np.isnan(Y_amx[n:]).all()   # the tokens past the panel are left to the vector tiles
