"""A model run in this process as one shard: the tensor-parallel run with N = 1."""
import numpy as np

from numatp import forward as F
from numatp._env import mark_kernels_cached
from numatp.forward.layout import D_HIDDEN
from numatp.model.declare import cache_shape
from numatp.parallel.protocol import chunk_rows
from numatp.parallel.shard import build_shard, shard_plan
from numatp.quant.team import NO_TEAM

# A single shard's all-reduce returns at once; these only give it the right types.
NO_AR_CTL, NO_AR_DATA = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float32)


class ShardState:
    """One shard's weights, caches (attention's keys and values) and RoPE tables:
    everything its family's step (numatp.forward.STEPS) needs. The caches hold n_slots
    regions of ctx positions, one per sequence, one after another.

    gpu: None, or the backend ("cupy"; "numpy", the tests' stand-in) that runs every
    layer's attention (numatp/forward/offload.py): then the shard holds no attention
    weights and no KV cache, and if `gpu_owner` it uploads the attention block to the GPU
    (GpuAttention: self.gpu_attention); the other ranks add zero for attention. The GPU
    keeps one sequence's keys and values: n_slots is 1 there."""

    def __init__(self, gguf, cfg, shard, ctx, alloc=None, n_slots=1, gpu=None, gpu_owner=True,
                 max_tokens=1):
        self.weights = build_shard(gguf, cfg, shard, ctx, alloc, attention=gpu is None)
        self._cfg, self._shard = cfg, shard
        self.gpu_attention = self._offload = None
        if gpu is None:
            alloc_f32 = (lambda shape: np.zeros(shape, dtype=np.float32)) if alloc is None else \
                (lambda shape: alloc(int(np.prod(shape)) * 4).view(np.float32).reshape(shape))
            self.caches = tuple(alloc_f32(cache_shape(c, cfg, ctx * n_slots, shard))
                                for c in cfg.arch.cache)
        else:
            if n_slots != 1:
                raise ValueError("the GPU's attention keeps one sequence: n_slots must be 1")
            from numatp.forward.offload import OffloadStep
            from numatp.gpu.attention import GpuAttention, make_backend
            self.caches = ()
            backend = make_backend(gpu) if gpu_owner else None
            if backend is not None:
                self.gpu_attention = GpuAttention(backend, gguf, cfg, ctx, max_tokens)
            self._offload = OffloadStep(cfg.arch.family, self.weights.dims, self.gpu_attention,
                                        max_tokens, backend.empty_pinned if backend else None)
        self._step = F.STEPS[cfg.arch.family]
        self.rope_cs = F.rope_tables(ctx, cfg.rope_dim, cfg.rope_base, cfg.rope_scale,
                                     cfg.rope_freq_factors)
        self.eps = np.float32(cfg.norm_eps)
        self.hidden = cfg.hidden
        self.vocab = shard.vocab
        self.n_vocab = cfg.vocab
        self._compiled = False
        # one-token steps of the dense family run their products and attention on a
        # thread team (numatp/forward/team.py), made at the first such step
        self._team = None
        self._team_ok = gpu is None and cfg.arch.family == "dense" and F.team.ENABLED

    def warm_up(self):
        """Compile the step (or load it from Numba's cache) by running it on a zero
        embedding at position 0 of slot 0, without the all-reduce (n_ranks=1: no rank
        waits on a slower one's compile). A prompt overwrites what this leaves in the KV
        cache."""
        x = np.zeros((1, int(self.weights.dims[D_HIDDEN])), dtype=np.float32)
        zero = np.zeros(1, dtype=np.int64)
        self.step(x, zero, zero, np.empty((1, self.vocab[1] - self.vocab[0]), dtype=np.float32))
        if self.gpu_attention is not None:
            # The first call compiles CuPy's kernels and starts cuBLAS (seconds): not a
            # decode token's time.
            self.gpu_attention.decode_seconds, self.gpu_attention.decode_calls = 0.0, 0

    def step(self, x, pos, base, logits, ar_ctl=NO_AR_CTL, ar_data=NO_AR_DATA, rank=0,
             n_ranks=1):
        """The family's step (see numatp/forward/__init__.py); every array C-contiguous,
        pos and base int64, logits (k, my vocabulary rows) float32."""
        w = self.weights
        if self._offload is not None:
            # One sequence (slot 0), its rows at consecutive positions: a prompt chunk or
            # one decoded token, whose logits are the last row's.
            status = self._offload(w.kernels, w.arena, w.index, w.dims, self.eps, x, pos[0],
                                   logits[0], (ar_ctl, ar_data, rank, n_ranks))
        elif x.shape[0] == 1 and self._use_team():
            with self._team.session() as team:
                status = self._step(w.kernels, w.arena, w.index, w.dims, self.eps, self.rope_cs,
                                    self.caches, x, pos, base, logits,
                                    (ar_ctl, ar_data, rank, n_ranks), team)
        else:
            if self._team is not None:
                self._team.park()
            status = self._step(w.kernels, w.arena, w.index, w.dims, self.eps, self.rope_cs,
                                self.caches, x, pos, base, logits,
                                (ar_ctl, ar_data, rank, n_ranks), NO_TEAM)
        if not self._compiled:
            mark_kernels_cached(w.kernels.key)
            self._compiled = True
        return status

    def _use_team(self):
        if self._team is None and self._team_ok:
            import numba
            n = numba.get_num_threads()
            self._team_ok = n > 1
            if self._team_ok:
                self._team = F.team.Team(self.weights.kernels, n)
        return self._team is not None

    def close(self):
        """Stop the thread team, if one was started."""
        if self._team is not None:
            self._team.close()
            self._team = None
        self._team_ok = False

    def fill_synthetic_kv(self, n, seed=0):
        """Keys and values of positions 0..n-1 at random: a benchmark's stand-in for a
        long prompt (attention's cost does not depend on the values)."""
        if self.gpu_attention is not None:
            self.gpu_attention.fill_synthetic(n, seed)
            return
        rng = np.random.default_rng(seed)
        for decl, cache in zip(self._cfg.arch.cache, self.caches):
            # positions 0..n-1 are the part of the cache that a context of n would have
            part = tuple(slice(0, k) for k in cache_shape(decl, self._cfg, n, self._shard))
            for layer in range(cache.shape[0]):
                cache[layer][part[1:]] = rng.standard_normal(cache[layer][part[1:]].shape,
                                                             dtype=np.float32)

    def gpu_report(self, repeats=200) -> dict:
        """What the GPU holds, the per-layer transfer round trip (pinned buffers), and the
        one-token path (numatp/gpu/decode.py's MODES)."""
        a = self.gpu_attention
        rt = a.round_trip_seconds(self._offload.xb, self._offload.proj, repeats)
        return {**a.device_bytes(), "round_trip_us": rt * 1e6, "decode_path": a.decode_path}


class LocalModel:
    """Runs every step in this process: `run(x, pos, base, n_logits)` -> logits, and
    `forward(x, pos0, slot)` for a chunk of one sequence."""

    n_ranks = 1

    def __init__(self, gguf, cfg, ctx, threads=None, n_slots=1, gpu=None, max_tokens=1):
        if threads:
            import numba
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self.ctx = ctx
        self.shard = shard_plan(gguf, cfg, 1)[0]
        self.state = ShardState(gguf, cfg, self.shard, ctx, n_slots=n_slots, gpu=gpu,
                                max_tokens=max_tokens)
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

    def fill_synthetic_kv(self, n, seed=0):
        self.state.fill_synthetic_kv(n, seed)

    def gpu_report(self) -> dict | None:
        """The GPU's bytes and round trips (None without --gpu): after warm_up."""
        a = self.state.gpu_attention
        if a is None:
            return None
        report = self.state.gpu_report()
        if a.decode_calls:
            report["decode_attention_us"] = 1e6 * a.decode_seconds / a.decode_calls
        return report

    def close(self):
        self.state.close()
