"""A one-token block's products and the work between them in one parallel region.

A decode step's blocks are a product, some work on its output, and a product of that:
gate and up, their silu, down; Q/K/V, attention, attn_output. As separate parallel
regions each costs a start and an end, 7-9 us at 16 threads on a 16-core Xeon against
1.4-2.5 us for threads waiting on each other inside one region: some 1 ms of the 7.3 ms
a 1.1B Q4_0 token took there. Here one region runs the block. Its threads take the row
groups of the first products (schedule.py); the work between is done by whichever thread
finishes what it needs; the second product's input is quantized group by group as its
values arrive (Filling); then each thread waits until all of that input is there and
takes the second product's row groups.

The waits cannot deadlock, even where the threading layer runs fewer threads than the
loop's length: a thread waits only once every item before the wait has been taken, and
a taken item is finished without waiting.

Row groups are computed by kernels.py's code and activation groups quantized as
quantize_row would, so the results are those of the separate regions, bit for bit.

    h_acts, fill = filling(kernels, down_type, H, pad, n_cols, span)   # before the region
    for t in prange(...):
        ... item i writes H[0, c0:c1] ...; filled(H, h_acts, fill, c0, c1)
        wait_filled(fill)
        ... group_units(kernels, down_type, w, cols, units, h_acts, P, Yu, g, rows) ...
"""
from numatp import _env  # noqa: F401  (before numba)

import numpy as np
from numba import njit, prange

from numatp.quant.activations import GROUP, empty_activations, quantize_vector
from numatp.quant.kernels import (_FLOAT, BLOCK_ELEMS, R, _check, _group_rows, _group_units,
                                  _quantize_tiles, _silu, act_group, glu, linear_units)
from numatp.quant.schedule import fetch_add, split, split_among, take, threads, wait_until


@njit
def packed(kernels, qtype):
    """Whether matrices of qtype go through row groups and int8 activations (not a float
    format); ValueError if the kernel set has no kernel for qtype."""
    return _check(kernels, np.int64(qtype)) != _FLOAT


@njit
def same_input(kernels, qa, qb):
    """Whether matrices of qa and qb read one quantized form of an input."""
    return packed(kernels, qa) and _check(kernels, np.int64(qa)) == _check(kernels, np.int64(qb))


@njit
def quantized_input(kernels, qtype, X):
    """X as the products with matrices of qtype read it: (acts, P) (kernels.py)."""
    return _quantize_tiles(X, act_group(_check(kernels, np.int64(qtype))))


@njit
def row_groups(rows):
    """How many row groups a matrix of `rows` rows has: a product's items."""
    return (rows + R - 1) // R


@njit
def group_product(kernels, qtype, w, cols, acts, P, Y, g, rows):
    """Row group g of Y = X @ W.T (kernels.linear's), X as quantized_input gives it."""
    _group_rows(kernels, qtype, w, cols // BLOCK_ELEMS[qtype], acts, P, Y, g, rows)


@njit
def group_units(kernels, qtype, w, cols, units, acts, P, Yu, g, rows):
    """Row group g of kernels.linear_units' partial sums Yu."""
    nblk = cols // BLOCK_ELEMS[qtype]
    if units.shape[0] == 2:   # one unit: linear_units calls linear
        _group_rows(kernels, qtype, w, nblk, acts, P, Yu[0], g, rows)
    else:
        _group_units(kernels, qtype, w, nblk, units, acts, P, Yu, g, rows, 0)


# -- an input quantized as its values arrive ----------------------------------------------


@njit
def filling(kernels, qtype, H, pad, n_cols, span):
    """The quantized form of H's one row, for matrices of qtype, to be filled by a
    parallel region whose item i writes H[0, pad + i * span ...] (span columns, up to
    pad + n_cols; the rest of the row stays as it is: padding). Returns (acts, fill):
    the activations (the acts of quantized_input; no AMX panel for one token), and
    (need, parts, ready): how many items each activation group waits for and how many it
    has, and how many groups are quantized. Groups of padding alone are quantized here."""
    group = act_group(_check(kernels, np.int64(qtype)))
    acts = empty_activations(1, H.shape[1], group)
    need = np.zeros(H.shape[1] // group, np.int64)
    for i in range((n_cols + span - 1) // span):
        first, end = pad + i * span, pad + min(n_cols, (i + 1) * span)
        need[first // group:(end - 1) // group + 1] += 1
    ready = np.zeros(1, np.int64)
    for a in range(need.shape[0]):
        if need[a] == 0:
            _quantize_group(H, acts, a, group)
            ready[0] += 1
    return acts, (need, np.zeros(need.shape[0], np.int64), ready)


@njit
def filled(H, acts, fill, first, end):
    """An item has written H[0, first:end]: quantize the activation groups it completes
    into acts. Ordered: the thread that completes a group sees what the others wrote
    into it."""
    need, parts, ready = fill
    group = H.shape[1] // need.shape[0]
    for a in range(first // group, (end - 1) // group + 1):
        if fetch_add(parts, a) == need[a] - 1:
            _quantize_group(H, acts, a, group)
            fetch_add(ready, 0)


@njit
def wait_filled(fill):
    """Wait until all of the input is quantized."""
    wait_until(fill[2], 0, fill[0].shape[0])


@njit(boundscheck=False)
def _quantize_group(H, acts, a, group):
    """Activation group a (of `group` values) of H's one row into acts, as quantize_row
    quantizes it with the rest of the row."""
    XQ, XD, XS32, XS16, XI32, XI16 = acts
    c0, c1 = a * group, (a + 1) * group
    p0, p1 = c0 // GROUP, c1 // GROUP
    quantize_vector(H[0, c0:c1], XQ[0, c0:c1], XD[0, a:a + 1], XS32[0, p0:p1],
                    XS16[0, 2 * p0:2 * p1], XI32[0, p0:p1], XI16[0, 2 * p0:2 * p1])


# -- a SwiGLU FFN --------------------------------------------------------------------------


@njit
def glu_down(kernels, qg, wg, qu, wu, rows, cols, qd, wd, drows, dcols, units, X, G, U, H, pad,
             Yu):
    """A SwiGLU FFN: kernels.glu(kernels, qg, wg, qu, wu, rows, cols, X, G, U, H, pad),
    then kernels.linear_units(kernels, qd, wd, drows, dcols, units, H, Yu) (down, by its
    reduce units). One token's, with gate and up of one input form and down quantized,
    in one parallel region."""
    if X.shape[0] > 1 or not same_input(kernels, qg, qu) or not packed(kernels, qd):
        glu(kernels, qg, wg, qu, wu, rows, cols, X, G, U, H, pad)
        linear_units(kernels, qd, wd, drows, dcols, units, H, Yu)
        return
    acts, P = quantized_input(kernels, qg, X)
    h_acts, fill = filling(kernels, qd, H, np.int64(pad), np.int64(rows), R)
    _ffn_token(kernels, np.int64(qg), wg, np.int64(qu), wu, np.int64(rows), np.int64(cols),
               acts, P, G, U, H, np.int64(pad), h_acts, fill, np.int64(qd), wd,
               np.int64(drows), np.int64(dcols), units, Yu)


@njit(parallel=True, boundscheck=False)
def _ffn_token(kernels, qg, wg, qu, wu, rows, cols, acts, P, G, U, H, pad, h_acts, fill, qd, wd,
               drows, dcols, units, Yu):
    """Gate's and up's row groups as kernels._packed_glu_streams takes them; the thread
    that finishes the second of a row group's two halves writes its silu into H; then
    down's row groups."""
    groups = row_groups(rows)
    halves_done = np.zeros(groups, np.int64)
    runs = split(2 * groups)
    down_runs = split_among(row_groups(drows), threads(runs))
    for thread in prange(threads(runs)):
        while True:
            i = take(runs, thread)
            if i < 0:
                break
            if i < groups:
                q, w, Y, g = qg, wg, G, i
            else:
                q, w, Y, g = qu, wu, U, i - groups
            group_product(kernels, q, w, cols, acts, P, Y, g, rows)
            if fetch_add(halves_done, g) == 1:
                first, end = g * R, min(rows, (g + 1) * R)
                for r in range(first, end):
                    H[0, pad + r] = _silu(G[0, r]) * U[0, r]
                filled(H, h_acts, fill, pad + first, pad + end)
        wait_filled(fill)
        while True:
            g = take(down_runs, thread)
            if g < 0:
                break
            group_units(kernels, qd, wd, dcols, units, h_acts, P, Yu, g, drows)
