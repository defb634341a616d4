"""Cut one shard's tensors out of the mmapped GGUF into a single arena (one allocation,
one index), the layout numatp.forward's steps read. Which rows or columns of each tensor
a shard holds, and at which index row (slot) it goes, is the architecture's declaration
(numatp/model/declare.py) applied to the shard plan.

Row shards (Q/K/V, gate/up, output head) are contiguous byte ranges of the file. Column
shards (attn_output, ffn_down) keep whole quant blocks: the blocks that cover my columns,
copied row by row. When my first column is not on a block boundary (a head boundary
inside a 256-element block), the input vector is padded: `pad` zeros before my columns
and zeros after; a neighbour holding the same block contributes the other columns.

Stacked experts (experts, rows, cols) are cut the same way inside each expert, and to
the experts the shard holds; each expert's piece is stored as expert_ffn reads it
(numatp/quant/experts.py), one after another.

Matrices are stored as the kernels read them (kernels.prepare: quantized ones in row
groups); vectors (norms, biases) as they are in the file.

A tensor is copied a few MB at a time, and the file pages each chunk read are dropped
from the resident set (GGUFFile.release_view) before the next: a whole tensor's pages
(an output head or a layer's stacked experts: hundreds of MB) would otherwise be
resident next to the arena until the tensor is done, and set the load's peak.
"""
from dataclasses import dataclass

import numpy as np

from numatp.forward import layout
from numatp.model.config import ModelConfig
from numatp.model.declare import (BY_EXPERT_FFN_COLUMN, BY_FFN_COLUMN, BY_Q_HEAD_COLUMN,
                                  PART_TOTALS, STEP, extent, matrix_types, present)
from numatp.model.slots import LAYER_SLOTS, MODEL_SLOTS, entry
from numatp.parallel.plan import IDENTICAL_RANKS, Shard, cuts, identical_counts, make_plan
from numatp.quant import formats
from numatp.quant.experts import experts_nbytes, prepare_experts
from numatp.quant.kernel_set import KernelSet
from numatp.quant.kernels import R, prepare, prepared_nbytes

ALIGN = 64  # every tensor starts on a cache line
assert len(cuts(IDENTICAL_RANKS)) - 1 <= layout.MAX_UNITS
# File bytes copied between two releases of their pages: small next to a model's arena,
# large enough that the per-chunk calls (a madvise, a prepare) cost nothing.
CHUNK_BYTES = 16 << 20


@dataclass
class ShardWeights:
    arena: np.ndarray     # uint8, all of this shard's weights
    index: np.ndarray     # int64 (n_entries, layout.INDEX_COLS)
    dims: np.ndarray      # int64 (layout.N_DIMS,)
    kernels: KernelSet    # the quant types of the matrices: what the step compiles for


class _Piece:
    """A tensor slice waiting to be copied: rows, columns as whole blocks."""

    def __init__(self, t, r0, r1, c0=0, c1=None, matrix=False):
        self.t = t
        bs = formats.block_size(t.qtype)
        c1 = t.cols if c1 is None else c1
        self.r0, self.r1 = r0, r1
        self.b0, self.b1 = c0 // bs, -(-c1 // bs)          # blocks covering [c0, c1)
        self.pad = c0 - self.b0 * bs
        self.cols = (self.b1 - self.b0) * bs
        self.row_bytes = formats.row_bytes(t.qtype, t.cols)
        self.matrix = matrix
        # the reduce units' first blocks, and the end (plan.py: one unit unless set)
        self.units = (0, self.b1 - self.b0)
        if matrix:
            self.nbytes = prepared_nbytes(t.qtype, r1 - r0, self.cols)
        else:
            self.nbytes = (r1 - r0) * formats.row_bytes(t.qtype, self.cols)

    def source(self):
        """The file bytes of my rows (all their columns)."""
        return self.t.data[self.r0 * self.row_bytes:self.r1 * self.row_bytes]

    def copy_to(self, dst, release=None):
        """Write my rows to dst (nbytes long), CHUNK_BYTES of the file at a time, calling
        release(view) on each chunk's file rows once they are copied. A chunk is whole row
        groups, so each lands where prepare() of the whole would put it."""
        bb = formats.block_bytes(self.t.qtype)
        rows = self.source().reshape(self.r1 - self.r0, self.row_bytes)
        out_row = formats.row_bytes(self.t.qtype, self.cols)
        step = max(1, CHUNK_BYTES // (R * self.row_bytes)) * R
        for a in range(0, rows.shape[0], step):
            src = rows[a:a + step]
            m = src[:, self.b0 * bb:self.b1 * bb]
            if self.matrix:
                n = prepared_nbytes(self.t.qtype, m.shape[0], self.cols)
                prepare(self.t.qtype, m, out=dst[a * out_row:a * out_row + n])
            else:
                dst[a * out_row:(a + m.shape[0]) * out_row].reshape(m.shape)[:] = m
            if release is not None:
                release(src)


class _ExpertsPiece(_Piece):
    """The experts [e0, e1) of a stacked tensor, each cut as _Piece cuts a matrix."""

    def __init__(self, t, e0, e1, r0, r1, c0=0, c1=None):
        self.e0, self.e1 = e0, e1
        self.per_expert = t.shape[1]
        super().__init__(t, r0, r1, c0, c1, matrix=True)
        self.nbytes = experts_nbytes(t.qtype, e1 - e0, r1 - r0, self.cols)

    def source(self):
        per = self.per_expert * self.row_bytes
        return self.t.data[self.e0 * per:self.e1 * per]

    def copy_to(self, dst, release=None):
        """As _Piece.copy_to, a chunk being whole experts."""
        bb = formats.block_bytes(self.t.qtype)
        raw = self.source().reshape(self.e1 - self.e0, self.per_expert, self.row_bytes)
        each = experts_nbytes(self.t.qtype, 1, self.r1 - self.r0, self.cols)
        step = max(1, CHUNK_BYTES // (self.per_expert * self.row_bytes))
        for a in range(0, raw.shape[0], step):
            src = raw[a:a + step]
            prepare_experts(self.t.qtype, src[:, self.r0:self.r1, self.b0 * bb:self.b1 * bb],
                            out=dst[a * each:(a + src.shape[0]) * each])
            if release is not None:
                release(src)


def _unit(gguf, cfg: ModelConfig, split) -> int:
    """The largest block size among the tensors whose input columns `split` cuts."""
    return max((formats.block_size(t.qtype) for decl, _, t in present(gguf, cfg)
                if decl.split == split), default=1)


def ffn_unit(gguf, cfg: ModelConfig) -> int:
    """FFN split granularity: the largest block size among the tensors whose input
    columns the FFN split cuts (ffn_down), so that no quant block straddles two ranks."""
    return _unit(gguf, cfg, BY_FFN_COLUMN)


def shard_plan(gguf, cfg: ModelConfig, n: int, moe_split: str = "rows") -> list:
    """The shard plan of this model over n ranks, split points on whole quant blocks."""
    return make_plan(cfg, n, ffn_unit(gguf, cfg), _unit(gguf, cfg, BY_EXPERT_FFN_COLUMN),
                     moe_split, _unit(gguf, cfg, BY_Q_HEAD_COLUMN))


def shard_identical_counts(gguf, cfg: ModelConfig) -> tuple:
    """The node counts that give this model bit-identical results (plan.identical_counts):
    (1, 2, 3, 4) unless attn_output's blocks straddle some of their head cuts."""
    return identical_counts(cfg, _unit(gguf, cfg, BY_Q_HEAD_COLUMN))


def _cut(decl, t, cfg: ModelConfig, shard: Shard) -> _Piece:
    """This shard's piece of tensor t, as its declaration splits it; a piece of input
    columns knows where its reduce units start, in blocks."""
    piece = _cut_piece(decl, t, cfg, shard)
    split = decl.split
    if shard.n_units > 1 and piece.matrix and split and split.axis == len(decl.shape) - 1:
        length = t.shape[split.axis]
        per = length // getattr(cfg, PART_TOTALS[split.part])
        lo = extent(split, length, cfg, shard)[0]
        bs = formats.block_size(t.qtype)
        bounds = [u * per - lo for u in shard.unit_bounds(split.part)]
        if any(b % bs for b in bounds):
            raise ValueError(f"reduce units of {t.name} are not on its blocks")  # plan.py
        piece.units = tuple(b // bs for b in bounds)
    return piece


def _cut_piece(decl, t, cfg: ModelConfig, shard: Shard) -> _Piece:
    if len(decl.shape) == 3:
        e0, e1 = shard.experts
        lo, hi = extent(decl.split, t.shape[decl.split.axis], cfg, shard)
        if decl.split.axis == 1:
            return _ExpertsPiece(t, e0, e1, lo, hi)
        return _ExpertsPiece(t, e0, e1, 0, t.shape[1], lo, hi)
    matrix = len(decl.shape) == 2
    if decl.split is None:
        return _Piece(t, 0, t.rows, matrix=matrix)
    lo, hi = extent(decl.split, t.shape[decl.split.axis], cfg, shard)
    if not matrix:   # a vector is one row: slice its columns
        return _Piece(t, 0, 1, lo, hi)
    if decl.split.axis == 0:
        return _Piece(t, lo, hi, matrix=True)
    return _Piece(t, 0, t.rows, lo, hi, matrix=True)


def plan_pieces(gguf, cfg: ModelConfig, shard: Shard, attention=True) -> dict:
    """{index entry: _Piece} for every tensor of this shard; without the attention block's
    tensors (`attention` False) when the GPU runs it (numatp/gpu/budget.py names them)."""
    from numatp.gpu.budget import ATTENTION_SLOTS
    return {entry(cfg.n_layers, layer, decl.slot): _cut(decl, t, cfg, shard)
            for decl, layer, t in present(gguf, cfg) if decl.read == STEP
            and (attention or layer is None or decl.slot not in ATTENTION_SLOTS)}


def shard_dims(cfg: ModelConfig, shard: Shard, ctx: int) -> np.ndarray:
    """The dims vector of a shard (numatp/forward/layout.py)."""
    L = layout
    d = np.zeros(L.N_DIMS, dtype=np.int64)
    (h0, h1), (k0, k1) = shard.q_heads, shard.kv_heads
    d[L.D_LAYERS], d[L.D_HIDDEN], d[L.D_HEAD_DIM] = cfg.n_layers, cfg.hidden, cfg.head_dim
    d[L.D_NQ], d[L.D_NKV], d[L.D_Q0], d[L.D_KV0] = h1 - h0, k1 - k0, h0, k0
    d[L.D_GROUP] = cfg.group
    d[L.D_FFN] = shard.ffn[1] - shard.ffn[0]
    d[L.D_VOCAB] = shard.vocab[1] - shard.vocab[0]
    d[L.D_ROPE_DIM], d[L.D_ROPE_NEOX] = cfg.rope_dim, cfg.arch.rope_neox
    d[L.D_CTX] = ctx
    d[L.D_EXPERTS], d[L.D_EXPERTS_USED] = cfg.n_experts, cfg.n_experts_used
    d[L.D_E0], d[L.D_E1] = shard.experts
    d[L.D_EXPERT_FFN] = shard.expert_ffn[1] - shard.expert_ffn[0]
    d[L.D_EXPERT_NORM] = cfg.arch.expert_weights_norm
    return d


def build_shard(gguf, cfg: ModelConfig, shard: Shard, ctx: int, alloc=None,
                attention=True) -> ShardWeights:
    """Copy this shard's tensors into one arena. `alloc(nbytes)` returns the uint8 arena
    (node-local memory in a worker); pages are first touched by the copy. attention:
    False leaves out the attention block's tensors (the GPU holds them)."""
    pieces = plan_pieces(gguf, cfg, shard, attention)
    n_entries = cfg.n_layers * LAYER_SLOTS + MODEL_SLOTS
    index = np.full((n_entries, layout.INDEX_COLS), -1, dtype=np.int64)
    offset = 0
    for e, p in pieces.items():
        index[e, :layout.UNITS] = (offset, p.t.qtype, p.r1 - p.r0, p.cols, p.nbytes, p.pad)
        index[e, layout.UNITS] = len(p.units) - 1
        index[e, layout.UNIT0:layout.UNIT0 + len(p.units)] = p.units
        offset += -(-p.nbytes // ALIGN) * ALIGN
    arena = (alloc or (lambda n: np.empty(n, dtype=np.uint8)))(max(offset, ALIGN))
    for e, p in pieces.items():
        p.copy_to(arena[index[e, layout.OFFSET]:index[e, layout.OFFSET] + p.nbytes],
                  gguf.release_view)
    return ShardWeights(arena, index, shard_dims(cfg, shard, ctx), kernel_set(pieces))


def kernel_set(pieces: dict) -> KernelSet:
    """The quant types of the matrices among a shard's pieces."""
    return KernelSet(p.t.qtype for p in pieces.values() if p.matrix)


def model_kernel_set(gguf, cfg: ModelConfig) -> KernelSet:
    """The kernel set every shard of the model compiles for (all hold the same tensors)."""
    return KernelSet(matrix_types(gguf, cfg))


def shard_bytes(gguf, cfg: ModelConfig, shard: Shard) -> int:
    """Weight bytes a shard holds (what `numatp info --nodes N` reports)."""
    return sum(p.nbytes for p in plan_pieces(gguf, cfg, shard).values())
