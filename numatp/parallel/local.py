"""A model run in this process as one shard: the tensor-parallel run with N = 1."""
import numpy as np

from numatp import forward as F
from numatp._env import mark_kernels_cached
from numatp.forward.layout import D_HIDDEN
from numatp.model.declare import cache_shape
from numatp.parallel.shard import build_shard, shard_plan

# A single shard's all-reduce returns at once; these only give it the right types.
NO_AR_CTL, NO_AR_DATA = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float32)


class ShardState:
    """One shard's weights, caches (attention's keys and values) and RoPE tables:
    everything its family's step (numatp.forward.STEPS) needs.

    gpu: None, or the backend ("cupy"; "numpy", the tests' stand-in) that runs every
    layer's attention (numatp/forward/offload.py): then the shard holds no attention
    weights and no KV cache, and if `gpu_owner` it uploads the attention block to the GPU
    (GpuAttention: self.gpu_attention); the other ranks add zero for attention."""

    def __init__(self, gguf, cfg, shard, ctx, alloc=None, gpu=None, gpu_owner=True,
                 max_tokens=1):
        self.weights = build_shard(gguf, cfg, shard, ctx, alloc, attention=gpu is None)
        self.gpu_attention = self._offload = None
        if gpu is None:
            alloc_f32 = (lambda shape: np.zeros(shape, dtype=np.float32)) if alloc is None else \
                (lambda shape: alloc(int(np.prod(shape)) * 4).view(np.float32).reshape(shape))
            self.caches = tuple(alloc_f32(cache_shape(c, cfg, ctx, shard)) for c in cfg.arch.cache)
        else:
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
        self._compiled = False

    def warm_up(self):
        """Compile the step (or load it from Numba's cache) by running it on a zero
        embedding at position 0, without the all-reduce (n_ranks=1: no rank waits on a
        slower one's compile). A prompt overwrites what this leaves in the KV cache."""
        x = np.zeros((1, int(self.weights.dims[D_HIDDEN])), dtype=np.float32)
        self.step(x, 0, np.empty(self.vocab[1] - self.vocab[0], dtype=np.float32))
        if self.gpu_attention is not None:
            # The first call compiles CuPy's kernels and starts cuBLAS (seconds): not a
            # decode token's time.
            self.gpu_attention.decode_seconds, self.gpu_attention.decode_calls = 0.0, 0

    def step(self, x, pos0, logits, ar_ctl=NO_AR_CTL, ar_data=NO_AR_DATA, rank=0, n_ranks=1):
        w = self.weights
        if self._offload is not None:
            status = self._offload(w.kernels, w.arena, w.index, w.dims, self.eps, x, pos0, logits,
                                   (ar_ctl, ar_data, rank, n_ranks))
        else:
            status = self._step(w.kernels, w.arena, w.index, w.dims, self.eps, self.rope_cs,
                                self.caches, x, pos0, logits, (ar_ctl, ar_data, rank, n_ranks))
        if not self._compiled:
            mark_kernels_cached(w.kernels.key)
            self._compiled = True
        return status

    def fill_synthetic_kv(self, n, seed=0):
        """Keys and values of positions 0..n-1 at random: a benchmark's stand-in for a
        long prompt (attention's cost does not depend on the values)."""
        if self.gpu_attention is not None:
            self.gpu_attention.fill_synthetic(n, seed)
            return
        rng = np.random.default_rng(seed)
        for cache in self.caches:
            for layer in range(cache.shape[0]):
                cache[layer, :, :n] = rng.standard_normal(cache[layer, :, :n].shape,
                                                          dtype=np.float32)

    def gpu_report(self, repeats=200) -> dict:
        """What the GPU holds, and the per-layer transfer round trip (pinned buffers)."""
        a = self.gpu_attention
        rt = a.round_trip_seconds(self._offload.xb, self._offload.proj, repeats)
        return {**a.device_bytes(), "round_trip_us": rt * 1e6}


class LocalModel:
    """Runs every step in this process: `forward(embeddings, pos0)` -> logits."""

    n_ranks = 1

    def __init__(self, gguf, cfg, ctx, threads=None, gpu=None, max_tokens=1):
        if threads:
            import numba
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        self.shard = shard_plan(gguf, cfg, 1)[0]
        self.state = ShardState(gguf, cfg, self.shard, ctx, gpu=gpu, max_tokens=max_tokens)
        self.logits = np.empty(cfg.vocab, dtype=np.float32)

    def forward(self, x, pos0):
        """x: (T, hidden) float32 embeddings of tokens at pos0..; returns the logits of
        the last one (a view, overwritten by the next call)."""
        self.state.step(np.ascontiguousarray(x, dtype=np.float32), pos0, self.logits)
        return self.logits

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
        pass
