"""A model run in this process as one shard: the tensor-parallel run with N = 1."""
import numpy as np

from numatp import forward as F
from numatp._env import mark_kernels_cached
from numatp.forward.layout import D_HIDDEN
from numatp.model.declare import cache_shape
from numatp.parallel.protocol import chunk_rows
from numatp.parallel.shard import build_shard, shard_plan

# A single shard's all-reduce returns at once; these only give it the right types.
NO_AR_CTL, NO_AR_DATA = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float32)


class ShardState:
    """One shard's weights, caches (attention's keys and values) and RoPE tables:
    everything its family's step (numatp.forward.STEPS) needs. The caches hold n_slots
    regions of ctx positions, one per sequence, one after another."""

    def __init__(self, gguf, cfg, shard, ctx, alloc=None, n_slots=1):
        self.weights = build_shard(gguf, cfg, shard, ctx, alloc)
        alloc_f32 = (lambda shape: np.zeros(shape, dtype=np.float32)) if alloc is None else \
            (lambda shape: alloc(int(np.prod(shape)) * 4).view(np.float32).reshape(shape))
        self.caches = tuple(alloc_f32(cache_shape(c, cfg, ctx * n_slots, shard))
                            for c in cfg.arch.cache)
        self._step = F.STEPS[cfg.arch.family]
        self.rope_cs = F.rope_tables(ctx, cfg.rope_dim, cfg.rope_base, cfg.rope_scale,
                                     cfg.rope_freq_factors)
        self.eps = np.float32(cfg.norm_eps)
        self.hidden = cfg.hidden
        self.vocab = shard.vocab
        self.n_vocab = cfg.vocab
        self._compiled = False

    def warm_up(self):
        """Compile the step (or load it from Numba's cache) by running it on a zero
        embedding at position 0 of slot 0, without the all-reduce (n_ranks=1: no rank
        waits on a slower one's compile). A prompt overwrites what this leaves in the KV
        cache."""
        x = np.zeros((1, int(self.weights.dims[D_HIDDEN])), dtype=np.float32)
        zero = np.zeros(1, dtype=np.int64)
        self.step(x, zero, zero, np.empty((1, self.vocab[1] - self.vocab[0]), dtype=np.float32))

    def step(self, x, pos, base, logits, ar_ctl=NO_AR_CTL, ar_data=NO_AR_DATA, rank=0,
             n_ranks=1):
        """The family's step (see numatp/forward/__init__.py); every array C-contiguous,
        pos and base int64, logits (k, my vocabulary rows) float32."""
        w = self.weights
        status = self._step(w.kernels, w.arena, w.index, w.dims, self.eps, self.rope_cs,
                            self.caches, x, pos, base, logits, (ar_ctl, ar_data, rank, n_ranks))
        if not self._compiled:
            mark_kernels_cached(w.kernels.key)
            self._compiled = True
        return status


class LocalModel:
    """Runs every step in this process: `run(x, pos, base, n_logits)` -> logits, and
    `forward(x, pos0, slot)` for a chunk of one sequence."""

    n_ranks = 1

    def __init__(self, gguf, cfg, ctx, threads=None, n_slots=1):
        if threads:
            import numba
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self.ctx = ctx
        self.shard = shard_plan(gguf, cfg, 1)[0]
        self.state = ShardState(gguf, cfg, self.shard, ctx, n_slots=n_slots)
        self.logits = np.empty((max(n_slots, 1), cfg.vocab), dtype=np.float32)

    def run(self, x, pos, base, n_logits):
        """x: (T, hidden) float32 embeddings, row t at position pos[t] of the sequence
        whose cache region starts at row base[t]; returns the logits (n_logits, vocab) of
        the last n_logits rows (a view, overwritten by the next call). n_logits is at most
        the number of slots."""
        self.state.step(np.ascontiguousarray(x, dtype=np.float32),
                        np.ascontiguousarray(pos, dtype=np.int64),
                        np.ascontiguousarray(base, dtype=np.int64), self.logits[:n_logits])
        return self.logits[:n_logits]

    def forward(self, x, pos0, slot=0):
        """x: (T, hidden) float32 embeddings of tokens at pos0.. of sequence slot `slot`;
        returns the logits of the last one (a view, overwritten by the next call)."""
        return self.run(x, *chunk_rows(pos0, x.shape[0], slot, self.ctx), 1)[0]

    def warm_up(self):
        self.state.warm_up()

    def close(self):
        pass
