"""The attention block of every layer on the GPU: Q/K/V/O weights (dequantized to f16),
biases, q/k norms, RoPE, the KV cache (f16) and the attention itself, over an array
module `xp` -- CuPy on a GPU, or numpy as the tests' host stand-in (device.py), which runs
the same code with the same roundings.

Precision: weights, keys, values and the inputs of each product are f16; products
accumulate in f32 (cuBLAS's default compute type for f16 in CuPy; the stand-in multiplies
in f32 and rounds the result to f16 as cuBLAS does) and their results are rounded to f16;
biases, norms, RoPE and the softmax run in f32.

Hidden vectors cross between host and GPU through buffers allocated once: the caller's
pinned host arrays (numatp/forward/offload.py allocates them with `Backend.empty_pinned`)
and device arrays of max_tokens rows made here. Intermediate device arrays come from
CuPy's memory pool, which reuses its blocks: no cudaMalloc per token.

A decoded token (one row) on CuPy takes decode.py's fused kernels, one CUDA graph per
layer, instead of the array expressions below; its roundings are these, but for the
attention probabilities, which it keeps in f32 (decode.py). Prompt chunks, and every call
on the host stand-in, run the array expressions; both write the KV cache in the layout
(layer, KV head, position, head_dim) the kernels read.
"""
import math
import time

import numpy as np

from numatp.gpu.budget import attention_tensors
from numatp.model.slots import BK, BQ, BV, K_NORM, Q_NORM, WK, WO, WQ, WV

F16, F32 = np.float16, np.float32


class HostBackend:
    """numpy in host memory, standing in for a GPU (no speed-up; for the tests)."""

    name = "numpy"
    xp = np

    def empty_pinned(self, shape, dtype):
        return np.empty(shape, dtype)

    def to_device(self, host):
        return np.array(host)

    def upload(self, host, dev):
        dev[...] = host

    def download(self, dev, host):
        host[...] = dev

    def synchronize(self):
        pass

    def matmul16(self, a, b):
        # cuBLAS's f16 GEMM: f16 inputs, f32 accumulation, an f16 result.
        return np.matmul(a.astype(F32), b.astype(F32)).astype(F16)

    def rope(self, h, rope_dim, neox, cos, sin, pos0):
        rope_xp(np, h, rope_dim, neox, cos, sin, pos0)

    def pool_bytes(self):
        return 0


class CupyBackend:
    """CuPy on device 0. RoPE is one fused kernel (as an xp expression it was eight)."""

    name = "cupy"

    def __init__(self):
        import cupy
        import cupyx
        self.xp = cupy
        self._cupyx = cupyx
        # Element i is pair j of head h of token t; a and c are the pair's two dims.
        self._rope = cupy.ElementwiseKernel(
            "raw float32 cos_t, raw float32 sin_t, int32 n_heads, int32 hd, int32 half, "
            "int32 neox, int32 pos0",
            "raw float32 v",
            """
            int j = i % half;
            int th = i / half;             // token * n_heads + head
            int t = th / n_heads;
            long long base = (long long)th * hd;
            int a = neox ? j : 2 * j;
            int c = neox ? j + half : 2 * j + 1;
            float x0 = v[base + a], x1 = v[base + c];
            float cs = cos_t[(long long)(pos0 + t) * half + j];
            float sn = sin_t[(long long)(pos0 + t) * half + j];
            v[base + a] = x0 * cs - x1 * sn;
            v[base + c] = x0 * sn + x1 * cs;
            """, "numatp_rope")

    def empty_pinned(self, shape, dtype):
        return self._cupyx.empty_pinned(shape, dtype)

    def to_device(self, host):
        return self.xp.asarray(host)

    def upload(self, host, dev):
        dev.set(host)

    def download(self, dev, host):
        dev.get(out=host)   # waits for the copy, and so for everything queued before it

    def synchronize(self):
        self.xp.cuda.Device().synchronize()

    def matmul16(self, a, b):
        return self.xp.matmul(a, b)

    def rope(self, h, rope_dim, neox, cos, sin, pos0):
        T, n_heads, hd = h.shape
        half = rope_dim // 2
        self._rope(cos, sin, np.int32(n_heads), np.int32(hd), np.int32(half), np.int32(neox),
                   np.int32(pos0), h, size=T * n_heads * half)

    def pool_bytes(self):
        return int(self.xp.get_default_memory_pool().total_bytes())


def make_backend(name):
    return CupyBackend() if name == "cupy" else HostBackend()


def rope_xp(xp, h, rope_dim, neox, cos, sin, pos0):
    """RoPE of h (T, heads, hd) in place, as numatp/forward/blocks.py's `rope`: pairs
    (i, i + rope_dim/2) with neox, else adjacent pairs (2i, 2i+1)."""
    T = h.shape[0]
    half = rope_dim // 2
    c, s = cos[pos0:pos0 + T, None, :], sin[pos0:pos0 + T, None, :]
    if neox:
        a, b = h[..., :half], h[..., half:rope_dim]
    else:
        a, b = h[..., 0:rope_dim:2], h[..., 1:rope_dim:2]
    a0, b0 = a.copy(), b.copy()
    a[...] = a0 * c - b0 * s
    b[...] = a0 * s + b0 * c


def head_rmsnorm(xp, h, w, eps):
    """qwen3's q/k norm: each head of h (T, heads, hd) in place."""
    ms = (h * h).mean(axis=-1, keepdims=True)
    h *= 1.0 / xp.sqrt(ms + eps)
    h *= w


class _Layer:
    """One layer's attention weights on the device: the products' matrices (f16) with one
    row per output, wqkv (q_dim + 2 kv_dim, hidden) and wo (hidden, q_dim); the biases of
    q, k and v as one vector, and the q/k norm weights (f32), or None."""

    def __init__(self, wqkv, bias, q_norm, k_norm, wo):
        self.wqkv, self.bias, self.q_norm, self.k_norm, self.wo = wqkv, bias, q_norm, k_norm, wo


def file_weights(gguf, cfg):
    """Per layer, (wqkv, bias, q_norm, k_norm, wo) of the file as host float32 arrays
    (_Layer's layout; bias and the norms None where the file has none)."""
    by_layer = [{} for _ in range(cfg.n_layers)]
    for layer, slot, t in attention_tensors(gguf, cfg):
        by_layer[layer][slot] = t
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    for ts in by_layer:
        wqkv = np.concatenate([dequantized(ts[WQ]), dequantized(ts[WK]), dequantized(ts[WV])])
        bias = None
        if any(s in ts for s in (BQ, BK, BV)):
            bias = np.concatenate([dequantized(ts[s]) if s in ts else np.zeros(n, F32)
                                   for s, n in ((BQ, q_dim), (BK, kv_dim), (BV, kv_dim))])
        norm = lambda s: dequantized(ts[s]) if s in ts else None  # noqa: E731
        yield wqkv, bias, norm(Q_NORM), norm(K_NORM), dequantized(ts[WO])


def dequantized(t) -> np.ndarray:
    """A tensor of the file as float32 (rows, cols), or a vector."""
    if len(t.shape) == 1:
        return np.array(t.data.view(np.float32))
    from numatp.quant.kernel_set import KernelSet
    from numatp.quant.kernels import dequantize_rows
    out = np.empty((t.rows, t.cols), dtype=F32)
    dequantize_rows(KernelSet([t.qtype]), t.qtype, t.data, t.cols,
                    np.arange(t.rows, dtype=np.int64), out)
    return out


class GpuAttention:
    """Every layer's attention on the device: call(layer, xb, pos0, s, out).

    weights: instead of the file's, per layer (wqkv, bias, q_norm, k_norm, wo) as _Layer
    holds them, host or device arrays (a benchmark's random layers; gguf is then unused).
    decode: the one-token path, decode.MODES (None: NUMATP_GPU_DECODE, else graph); the
    host stand-in, and shapes the kernels do not take, always use the array path ("xp")."""

    def __init__(self, backend, gguf, cfg, ctx, max_tokens, weights=None, decode=None):
        from numatp.forward.blocks import rope_tables
        from numatp.gpu import decode as fused
        self.b, xp = backend, backend.xp
        self.cfg, self.ctx = cfg, ctx
        self.hd, self.nq, self.nkv, self.group = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.group
        self.eps = F32(cfg.norm_eps)
        self.scale = F32(1.0 / math.sqrt(cfg.head_dim))
        self.rope_dim, self.neox = cfg.rope_dim, bool(cfg.arch.rope_neox)
        cos, sin = rope_tables(ctx, cfg.rope_dim, cfg.rope_base, cfg.rope_scale,
                               cfg.rope_freq_factors)
        self.cos, self.sin = backend.to_device(cos), backend.to_device(sin)
        self.layers = [self._to_device(*w) for w in
                       (file_weights(gguf, cfg) if weights is None else weights)]
        kv_shape = (cfg.n_layers, self.nkv, ctx, self.hd)
        self.k = xp.zeros(kv_shape, dtype=F16)
        self.v = xp.zeros(kv_shape, dtype=F16)
        self._x = xp.empty((max_tokens, cfg.hidden), dtype=F32)
        self._o = xp.empty((max_tokens, cfg.hidden), dtype=F32)
        self.decode_seconds = 0.0    # time in decode calls (one token), and their count
        self.decode_calls = 0
        mode = fused.decode_mode() if decode is None else decode
        if backend.name != "cupy" or not fused.supports(self.hd, self.group):
            mode = "xp"
        self.decode_path = mode
        self._fused = None if mode == "xp" else fused.FusedDecode(self, graphs=mode == "graph")

    def _to_device(self, wqkv, bias, q_norm, k_norm, wo):
        # converted where the array lies: a file's weights cross to the GPU as f16
        up = lambda a, dtype: None if a is None else self.b.to_device(a.astype(dtype, copy=False))  # noqa: E731
        return _Layer(up(wqkv, F16), up(bias, F32), up(q_norm, F32), up(k_norm, F32), up(wo, F16))

    def __call__(self, layer, xb, pos0, s, out):
        """Attention of the tokens xb (T, hidden: host, f32, normed) at positions pos0..:
        all of them go into the KV cache; rows s: get the attention block's output
        (after attn_output) in out[s:] (host, f32)."""
        start = time.perf_counter()
        T = xb.shape[0]
        if T == 1 and self._fused is not None:
            self._fused(layer, xb, out, pos0)   # s == 0
        else:
            self._array_path(layer, xb, pos0, s, out)
        if T == 1:
            self.decode_seconds += time.perf_counter() - start
            self.decode_calls += 1

    def _array_path(self, layer, xb, pos0, s, out):
        xp, b = self.b.xp, self.b
        T = xb.shape[0]
        L = self.layers[layer]
        x = self._x[:T]
        b.upload(xb, x)
        qkv = b.matmul16(x.astype(F16), L.wqkv.T).astype(F32)
        if L.bias is not None:
            qkv += L.bias
        q_dim, kv_dim = self.nq * self.hd, self.nkv * self.hd
        q = xp.ascontiguousarray(qkv[:, :q_dim]).reshape(T, self.nq, self.hd)
        k = xp.ascontiguousarray(qkv[:, q_dim:q_dim + kv_dim]).reshape(T, self.nkv, self.hd)
        v = qkv[:, q_dim + kv_dim:].reshape(T, self.nkv, self.hd)
        if L.q_norm is not None:
            head_rmsnorm(xp, q, L.q_norm, self.eps)
        if L.k_norm is not None:
            head_rmsnorm(xp, k, L.k_norm, self.eps)
        b.rope(q, self.rope_dim, self.neox, self.cos, self.sin, pos0)
        b.rope(k, self.rope_dim, self.neox, self.cos, self.sin, pos0)
        self.k[layer, :, pos0:pos0 + T] = k.transpose(1, 0, 2)
        self.v[layer, :, pos0:pos0 + T] = v.transpose(1, 0, 2)
        att = self._attend(q[s:], layer, pos0 + s)
        o = self._o[:T - s]
        o[...] = b.matmul16(att, L.wo.T)
        b.download(o, out[s:])

    def _attend(self, q, layer, p0):
        """Causal attention of q (R, heads, hd: f32, rotated) at positions p0.. against
        the cache; (R, heads * hd) f16. Query head h reads KV head h // group: the
        group's heads go through one batched product per KV head."""
        xp, b = self.b.xp, self.b
        R, nkv, g, hd = q.shape[0], self.nkv, self.group, self.hd
        n = p0 + R
        qh = (q * self.scale).astype(F16).reshape(R, nkv, g, hd).transpose(1, 0, 2, 3)
        qh = qh.reshape(nkv, R * g, hd)
        scores = b.matmul16(qh, self.k[layer, :, :n].transpose(0, 2, 1)).astype(F32)
        if R > 1:   # row r*g + i is token r, at position p0 + r: it sees keys 0..p0 + r
            last = p0 + xp.arange(R * g) // g
            scores += xp.where(xp.arange(n)[None, :] > last[:, None], F32(-np.inf), F32(0))
        scores -= scores.max(axis=-1, keepdims=True)
        xp.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        o = b.matmul16(scores.astype(F16), self.v[layer, :, :n])       # (nkv, R*g, hd)
        return o.reshape(nkv, R, g, hd).transpose(1, 0, 2, 3).reshape(R, self.nq * hd)

    def fill_synthetic(self, n, seed=0):
        """Keys and values of positions 0..n-1 drawn at random (a benchmark's stand-in for
        a long prompt: attention's cost does not depend on the values)."""
        rng = np.random.default_rng(seed)
        for layer in range(self.cfg.n_layers):
            for cache in (self.k, self.v):
                cache[layer, :, :n] = self.b.to_device(
                    rng.standard_normal((self.nkv, n, self.hd), dtype=F32).astype(F16))
        self.b.synchronize()

    def round_trip_seconds(self, host_in, host_out, repeats=200):
        """Mean time to send one hidden vector to the device and bring one back (pinned
        buffers, synchronised): the transfer part of each layer's round trip."""
        x, o = self._x[:1], self._o[:1]
        self.b.upload(host_in[:1], x)
        self.b.download(o, host_out[:1])
        start = time.perf_counter()
        for _ in range(repeats):
            self.b.upload(host_in[:1], x)
            self.b.download(o, host_out[:1])
        return (time.perf_counter() - start) / repeats

    def device_bytes(self) -> dict:
        """Bytes of the arrays held for the model's lifetime, and of CuPy's pool."""
        weights = sum(int(a.nbytes) for L in self.layers
                      for a in (L.wqkv, L.bias, L.q_norm, L.k_norm, L.wo) if a is not None)
        return {"weight_bytes": weights, "kv_bytes": int(self.k.nbytes + self.v.nbytes),
                "rope_bytes": int(self.cos.nbytes + self.sin.nbytes),
                "io_bytes": int(self._x.nbytes + self._o.nbytes),
                "pool_bytes": self.b.pool_bytes()}
