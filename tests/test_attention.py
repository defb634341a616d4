"""The attention kernel (numatp/forward/blocks.py's _attend) against a float64 NumPy
reference, and its vectorized exponential against exp: every row computed alike, alone
or among others, so a prompt run in chunks, reused or decoded token by token gives the
same bits; and its heads as jobs of a thread team (numatp/forward/team.py) give the
parallel region's bits."""
import time

import numpy as np
import pytest
from numba import njit

from numatp.forward.blocks import EXP_LANES, TILE, _attend, _vexp
from numatp.forward.team import Team
from numatp.quant import formats as F
from numatp.quant.kernel_set import KernelSet
from numatp.quant.simd import load, store
from numatp.quant.team import NO_TEAM

EPS32 = float(np.finfo(np.float32).eps)


@njit
def _vexp_all(x, y):
    for i in range(0, x.shape[0], EXP_LANES):
        store(y, i, _vexp(load(x, i, EXP_LANES)))


def test_vexp_is_within_two_ulps_of_exp():
    """Cephes' expf polynomial after an exact-enough range reduction: about 1 ulp (1.02
    measured over this grid); 2 ulps leaves room for a target without fused
    multiply-adds. Below -87, where e**x is not a normal float32, it gives e**-87."""
    x = -np.linspace(0, 87, EXP_LANES * 100_000, dtype=np.float32)
    y = np.empty_like(x)
    _vexp_all(x, y)
    ref = np.exp(x.astype(np.float64))
    ulps = np.abs(y - ref) / np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 2.0, (ulps.max(), x[ulps.argmax()])
    edge = np.float32([-np.inf, -1e30, -88.0, np.nan] * 4)
    out = np.empty_like(edge)
    _vexp_all(edge, out)
    finite = ~np.isnan(edge)
    assert np.all((out[finite] > 0) & (out[finite] < 2e-38)) and np.isnan(out[~finite]).all()


def _tiles(kc):
    """Keys (layers, heads, rows, hd) in the cache's tiles (layers, heads, rows / TILE
    rounded up, hd, TILE); the last tile's rows past the keys are NaN, which no row may
    read."""
    L, H, n, hd = kc.shape
    padded = np.full((L, H, -(-n // TILE) * TILE, hd), np.nan, np.float32)
    padded[:, :, :n] = kc
    return np.ascontiguousarray(
        padded.reshape(L, H, -1, TILE, hd).transpose(0, 1, 2, 4, 3))


def _reference(q, kc, vc, layer, pos, base, nq, hd, group, q0, kv0):
    out = np.zeros((q.shape[0], nq * hd))
    for t in range(q.shape[0]):
        for h in range(nq):
            g = (q0 + h) // group - kv0
            K = kc[layer, g, base[t]:base[t] + pos[t] + 1].astype(np.float64)
            V = vc[layer, g, base[t]:base[t] + pos[t] + 1].astype(np.float64)
            s = K @ q[t, h * hd:(h + 1) * hd].astype(np.float64) / np.sqrt(hd)
            w = np.exp(s - s.max())
            out[t, h * hd:(h + 1) * hd] = (w / w.sum()) @ V
    return out


@pytest.fixture(scope="module")
def team():
    # 3 threads on this machine's 2 CPUs: uneven shares, threads taking over others' runs
    t = Team(KernelSet([F.F32]), 3)
    yield t
    t.close()


@pytest.mark.parametrize("hd", [64, 24])   # whole vectors of dims, and the scalar rest
def test_attend_matches_float64_and_each_row_alone(hd, team):
    rng = np.random.default_rng(hd)
    nq, nkv, group, ctx, layers = 4, 2, 2, 300, 2
    kc = rng.standard_normal((layers, nkv, 2 * ctx, hd)).astype(np.float32)
    vc = rng.standard_normal((layers, nkv, 2 * ctx, hd)).astype(np.float32)
    # a prompt chunk of sequence 0 at positions 200..219, and decode rows of sequence 1,
    # whose rows start inside a tile (300 = 18 * 16 + 12) and end in the last one
    pos = np.concatenate([np.arange(200, 220), [0, 5, 299]]).astype(np.int64)
    base = np.concatenate([np.zeros(20), np.full(3, ctx)]).astype(np.int64)
    q = rng.standard_normal((pos.size, nq * hd)).astype(np.float32)
    pad = 8
    out = np.zeros((pos.size, pad + nq * hd), np.float32)
    _attend(NO_TEAM, q, _tiles(kc), vc, 1, pos, base, nq, hd, group, 0, 0, out, pad)
    want = _reference(q, kc, vc, 1, pos, base, nq, hd, group, 0, 0)
    # float32 error bound of one output: the score q.k/sqrt(hd) is summed over hd terms
    # (error <= hd * eps * |q| |k| / sqrt(hd), moving each weight by that relatively),
    # the weights' sum and the weighted sum of V over n terms (<= n * eps * max |V|),
    # and the exponential (2 ulps, test above)
    n = pos + 1
    qk = (np.linalg.norm(q.reshape(pos.size, nq, hd), axis=2).max(axis=1)
          * np.linalg.norm(kc, axis=3).max() / np.sqrt(hd))
    bound = (hd * qk + 2 * n + 4) * EPS32 * np.abs(vc).max()
    err = np.abs(out[:, pad:] - want).max(axis=1)
    assert np.all(err <= bound), (err, bound)
    assert not out[:, :pad].any()
    # every row alone gives its bits in the batch, in a region and on the team (not
    # mixed in one session: the product parks the team before it runs regions)
    for t in range(pos.size):
        one = np.zeros((1, pad + nq * hd), np.float32)
        _attend(NO_TEAM, q[t:t + 1], _tiles(kc), vc, 1, pos[t:t + 1], base[t:t + 1], nq, hd,
                group, 0, 0, one, pad)
        assert np.array_equal(one[0], out[t]), t
    # The team's threads asleep (parked, as after a prompt), so that the session wakes
    # them: a woken thread needs the GIL for a moment, which _attend (nogil) lets go.
    team.park()
    time.sleep(0.05)
    with team.session() as ctl:
        on_team = np.zeros_like(out)
        _attend(ctl, q, _tiles(kc), vc, 1, pos, base, nq, hd, group, 0, 0, on_team, pad)
        assert np.array_equal(on_team, out)
        for t in range(pos.size):
            one = np.zeros((1, pad + nq * hd), np.float32)
            _attend(ctl, q[t:t + 1], _tiles(kc), vc, 1, pos[t:t + 1], base[t:t + 1], nq, hd,
                    group, 0, 0, one, pad)
            assert np.array_equal(one[0], out[t]), t
