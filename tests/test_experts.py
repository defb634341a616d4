"""The MoE expert kernels (numatp/quant/experts.py) against NumPy: stacked quantized
experts, tokens routed to k of them with weights, for one token (decode) and a chunk of
tokens (prompt), with every expert held here and with half of them (the others on
another node).

The NumPy side dequantizes the weights with gguf and rounds the kernel's two inputs to
int8 as the kernels do (reference.int8_rounded: per 32 values, per 256 for the
super-block formats): X before gate/up, and the SwiGLU output before down. What remains
is float32 arithmetic against float64, and a SwiGLU value within float32 rounding of
halfway between two int8 steps that the kernel rounds the other way: one step of
d = max|h| / 127 on one input of down, which moves an output by |W_down[r, c]| * d, a
few thousandths of the output's scale here. TOLERANCE, relative to the output's scale,
allows that (measured: at most 4e-7, no such flip in these cases); a wrong expert,
weight or row would be off by order 1.
"""
import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

import synth
from reference import SUPER_BLOCK_TYPES, int8_rounded
from numatp.quant import formats as F
from numatp.quant.experts import expert_ffn, prepare_experts, route_by_expert, scratch_floats
from numatp.parallel.plan import split_even
from numatp.shm.allreduce import fold_parts
from numatp.quant.kernels import KernelSet

TOLERANCE = 5e-3

CASES = {  # name: gate, up and down types, experts, expert FFN, hidden, tokens, chosen
    "q8_0-decode": ("Q8_0", "Q8_0", "Q8_0", 8, 96, 64, 1, 2),
    "q4_k-q6_k-prompt": ("Q4_K", "Q4_K", "Q6_K", 6, 256, 256, 11, 3),
    "q8_0-q4_0-prompt-16-experts": ("Q8_0", "Q8_0", "Q4_0", 16, 64, 128, 19, 4),
    # gate and up of other sizes and activation forms (a super-block and a 32-element type)
    "q4_k-q8_0-q5_k-prompt": ("Q4_K", "Q8_0", "Q5_K", 4, 256, 256, 7, 2),
}


def stacked(rng, qtype, experts, rows, cols):
    x = (rng.standard_normal((experts, rows, cols)) / np.sqrt(cols)).astype(np.float32)
    data = np.stack([synth.encode_tensor(x[e], qtype)[0] for e in range(experts)])
    values = dequantize(data, gguf.GGMLQuantizationType[qtype]).reshape(x.shape)
    return data, values.astype(np.float64)


def group(qtype):
    """Values per activation scale for weights of type qtype (a GGML type name)."""
    return 256 if gguf.GGMLQuantizationType[qtype] in SUPER_BLOCK_TYPES else 32


def numpy_experts(Wg, Wu, Wd, X, sel, wt, held, qg, qu, qd):
    Y = np.zeros((len(X), Wd.shape[1]))
    xg = int8_rounded(X.astype(np.float64), group(qg))
    xu = int8_rounded(X.astype(np.float64), group(qu))
    for t in range(len(X)):
        for e, w in zip(sel[t], wt[t]):
            if e in held:
                g, u = Wg[e] @ xg[t], Wu[e] @ xu[t]
                Y[t] += w * (Wd[e] @ int8_rounded(g / (1 + np.exp(-g)) * u, group(qd)))
    return Y


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("held", ["all", "even"])
@pytest.mark.parametrize("n_units", [1, 4])
def test_expert_ffn_matches_numpy(case, held, n_units):
    """The weighted expert outputs, as one reduce unit or four (numatp/parallel/plan.py:
    each unit's partial over its columns of down, added up as the all-reduce would)."""
    qg, qu, qd, E, n_ff, hidden, T, k = CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    G, Wg = stacked(rng, qg, E, n_ff, hidden)
    U, Wu = stacked(rng, qu, E, n_ff, hidden)
    D, Wd = stacked(rng, qd, E, hidden, n_ff)
    X = rng.standard_normal((T, hidden)).astype(np.float32)
    sel = np.stack([rng.choice(E, k, replace=False) for _ in range(T)]).astype(np.int64)
    wt = rng.random((T, k)).astype(np.float32)
    mine = [e for e in range(E) if held == "all" or e % 2 == 0]
    local = np.full(E, -1, np.int64)
    local[mine] = np.arange(len(mine))
    q_g, q_u, q_d = F.parse_type(qg), F.parse_type(qu), F.parse_type(qd)
    blocks = n_ff // F.block_size(q_d)
    units = np.array([a for a, _ in split_even(blocks, n_units)] + [blocks], np.int64)
    Yu = np.full((n_units, T, hidden), np.nan, np.float32)
    expert_ffn(KernelSet([q_g, q_u, q_d]), q_g, prepare_experts(q_g, G[mine]), q_u,
               prepare_experts(q_u, U[mine]), q_d, prepare_experts(q_d, D[mine]), n_ff,
               hidden, hidden, units, local, X, sel, wt, Yu,
               np.empty(scratch_floats(T, k, n_ff, hidden, n_units), np.float32))
    Y = np.zeros((T, hidden), np.float32)
    fold_parts(Yu, Y)
    want = numpy_experts(Wg, Wu, Wd, X, sel, wt, set(mine), qg, qu, qd)
    assert np.abs(Y - want).max() <= TOLERANCE * np.abs(want).max()


def test_pairs_are_grouped_by_expert():
    sel = np.array([[3, 0], [0, 2], [3, 1]])
    local = np.array([0, -1, 1, 2])          # expert 1 is held elsewhere
    order, start, expert = route_by_expert(sel, local)
    assert list(expert) == [0, 1, 2]         # local indices of experts 0, 2, 3
    groups = [sorted(order[start[a]:start[a + 1]]) for a in range(len(expert))]
    assert groups == [[1, 2], [3], [0, 4]]   # flat t * k + j of the pairs of each
