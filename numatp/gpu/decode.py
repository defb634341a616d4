"""One decoded token's attention block (T == 1, the hot path of --gpu attn) as five CUDA
kernels, captured per layer into one CUDA graph with its two transfers:

    pos, x -> device             copies from pinned host memory
    gemv_f16          qkv = f16(W_qkv . f16(x)) + bias      one warp per row
    norm_rope_store   q/k head norms, RoPE at pos; q scaled into f16, k and v into the cache
    attend_split      flash-decoding: each warp folds a chunk of the n = pos + 1 cached
                      positions of one KV head into a partial softmax (max, sum, sum of V)
    combine_splits    each query head's partials -> its output, rounded to f16
    gemv_f16          o = f16(W_o . f16(att))
    o -> host

Launched one by one from Python these were ~25 CuPy calls of a few microseconds each,
more than a short context's attention costs. The kernels read pos (and so n) from a
device int32, so one graph per layer, captured at the layer's first decode call, serves
every position: its grids are sized for the whole context (`attention_splits`), and the
warps whose chunk starts at or past n leave at once. The graph bakes in every address,
including the caller's pinned host buffers: the layer's first call runs the kernels
directly and then captures, a call with other buffers does so again, and calls with
pageable buffers run the kernels without a graph.

NUMATP_GPU_DECODE selects the path: graph (the default), kernels (the same kernels
launched directly, for comparison) or xp (attention.py's array expressions, as prompt
chunks use).

Rounding. The same as attention.py's array path (its docstring), but for the attention
probabilities, which stay in f32 here (flash-decoding never forms them normalized): one
f16 rounding fewer. f16 values are handled as their bits (unsigned short) with PTX
conversions, so the source needs no CUDA header.
"""
import math
import os

import numpy as np

from numatp.errors import NumatpError

MODES = ("graph", "kernels", "xp")
MAX_GROUP = 16        # query heads per KV head the attention kernel keeps in registers
MAX_HEAD_DIM = 256
GEMV_WARPS = 8        # rows (warps) per block of the products
ATTEND_WARPS = 4      # splits (warps) per block of the attention
THREADS = 128         # threads of norm_rope's and combine's blocks
MAX_WARPS = 2048      # attention warps over all KV heads at full context: ~15 per SM on an H100


def decode_mode(default="graph") -> str:
    mode = os.environ.get("NUMATP_GPU_DECODE", default)
    if mode not in MODES:
        raise NumatpError(f"NUMATP_GPU_DECODE={mode!r} is not one of {', '.join(MODES)}")
    return mode


def supports(head_dim: int, group: int) -> bool:
    """Whether the kernels take this shape (else decode stays on the array path)."""
    return head_dim <= MAX_HEAD_DIM and group <= MAX_GROUP


def attention_splits(ctx: int, n_kv: int) -> int:
    """Warps (splits of the positions) per KV head: about one per 128 positions of the
    context, at most MAX_WARPS over all KV heads, a whole number of blocks."""
    blocks = math.ceil(ctx / (ATTEND_WARPS * 128))
    return ATTEND_WARPS * max(1, min(blocks, MAX_WARPS // (ATTEND_WARPS * n_kv)))


def workspace_bytes(cfg, ctx: int) -> int:
    """The device buffers FusedDecode allocates for a model (numatp/gpu/budget.py counts
    them): qkv (f32), the rotated q (f16), the heads' output (f32), the splits' partials
    (max, sum and HD sums, f32), a zero vector, and pos."""
    rows = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
    parts = cfg.n_kv_heads * attention_splits(ctx, cfg.n_kv_heads) * cfg.group
    q_dim = cfg.n_heads * cfg.head_dim
    return 4 * rows + 2 * q_dim + 4 * q_dim + 4 * parts * (cfg.head_dim + 2) \
        + 4 * max(rows, cfg.hidden) + 4


def lane_layout(head_dim: int, group: int):
    """(VEC, BATCH): f16 values per load of a head's row (the widest that still gives
    every lane of a warp a load, 1 for odd sizes), and positions per batch of a warp: as
    many keys and values in flight as the registers allow beside the group's queries and
    accumulators (2 * group * per_lane floats; past 64, 8 positions spilled with 16 heads
    of 128)."""
    vec = 1
    for v in (8, 4, 2):
        if head_dim % v == 0 and head_dim // v >= 32:
            vec = v
            break
    per_lane = math.ceil(head_dim / vec / 32) * vec
    return vec, (8 if group * per_lane <= 32 else 4)


SOURCE = r"""
// Compile-time shape (-D): HD head size, G query heads per KV head, SPLITS warps per KV
// head, VEC f16 values per load of a head row, BATCH positions per step of a warp,
// GEMV_WARPS, ATTEND_WARPS, THREADS as in decode.py.

typedef unsigned short f16;          // the bits of an IEEE half

#define NEG_INF (-__int_as_float(0x7f800000))
#define NV (HD / VEC)                 // loads per head row
#define LANE_LOADS ((NV + 31) / 32)   // loads per lane per head row
#define PER_LANE (LANE_LOADS * VEC)   // values of a head row each lane holds
#define MIN_CHUNK (2 * BATCH)         // fewest positions a warp takes

__device__ __forceinline__ float f16_to_f32(f16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ f16 f32_to_f16(float f) {
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float round_f16(float f) { return f16_to_f32(f32_to_f16(f)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum (or max) over the block; every thread gets the same value. `partial` holds one
// float per warp; the first barrier lets a previous call's readers finish with it.
__device__ float block_sum(float v, float* partial) {
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) total += partial[w];
    return total;
}

__device__ float block_max(float v, float* partial) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    float m = NEG_INF;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) m = fmaxf(m, partial[w]);
    return m;
}

template <int N> struct Bits;               // N f16 values loaded as one word
template <> struct Bits<1> { typedef unsigned short T; };
template <> struct Bits<2> { typedef unsigned int T; };
template <> struct Bits<4> { typedef uint2 T; };
template <> struct Bits<8> { typedef uint4 T; };

template <int N>
__device__ __forceinline__ void unpack(const typename Bits<N>::T& bits, float* out) {
    const f16* h = reinterpret_cast<const f16*>(&bits);
#pragma unroll
    for (int e = 0; e < N; e++) out[e] = f16_to_f32(h[e]);
}

// ---- the products -----------------------------------------------------------------
// y[r] = f16(sum_k f16(x[k]) W[r][k]) + bias[r]: the f16 GEMM's roundings (inputs and
// result in f16, f32 accumulation), then the bias in f32 (zeros where there is none).
// One warp per row r of W (rows x cols, row-major); 16-byte loads when rows allow.
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
gemv_f16(const f16* __restrict__ W, const float* __restrict__ x,
         const float* __restrict__ bias, float* __restrict__ y, int rows, int cols)
{
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;                // a whole warp: the shuffles see all lanes
    const f16* w = W + (long long)row * cols;
    const int n8 = (cols % 8 == 0) ? cols / 8 : 0;
    float acc = 0.f;
#pragma unroll 4
    for (int i = lane; i < n8; i += 32) {
        const uint4 wb = __ldg(reinterpret_cast<const uint4*>(w) + i);
        const float4 xa = __ldg(reinterpret_cast<const float4*>(x) + 2 * i);
        const float4 xb = __ldg(reinterpret_cast<const float4*>(x) + 2 * i + 1);
        float wf[8];
        unpack<8>(wb, wf);
        acc += wf[0] * round_f16(xa.x) + wf[1] * round_f16(xa.y)
             + wf[2] * round_f16(xa.z) + wf[3] * round_f16(xa.w)
             + wf[4] * round_f16(xb.x) + wf[5] * round_f16(xb.y)
             + wf[6] * round_f16(xb.z) + wf[7] * round_f16(xb.w);
    }
    for (int k = n8 * 8 + lane; k < cols; k += 32)
        acc += f16_to_f32(w[k]) * round_f16(x[k]);
    acc = warp_sum(acc);
    if (lane == 0) y[row] = round_f16(acc) + bias[row];
}

// ---- q/k norms, RoPE, the KV cache ------------------------------------------------
// One block per head of qkv: query heads 0..n_q-1, then the KV heads' keys, then their
// values, as the fused projection's rows. A query head: rms norm (where q_norm is given),
// RoPE at pos, scaled by q_scale and rounded to f16 into q_out. A key head: the same
// with k_norm, unscaled, into the key cache at pos; a value head into the value cache.
// The caches are one layer's (n_kv, ctx, HD).
extern "C" __global__ void __launch_bounds__(THREADS)
norm_rope_store(const float* __restrict__ qkv, const int* __restrict__ pos_p,
                const float* __restrict__ q_norm, const float* __restrict__ k_norm,
                int has_q_norm, int has_k_norm, float eps,
                const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                int rope_pairs, int neox, float q_scale, int n_q, int n_kv, int ctx,
                f16* __restrict__ q_out, f16* __restrict__ k_cache, f16* __restrict__ v_cache)
{
    __shared__ float head[HD];
    __shared__ float partial[THREADS / 32];
    const int h = blockIdx.x;
    const int pos = *pos_p;
    const float* src = qkv + (long long)h * HD;
    if (h >= n_q + n_kv) {
        f16* dst = v_cache + ((long long)(h - n_q - n_kv) * ctx + pos) * HD;
        for (int d = threadIdx.x; d < HD; d += blockDim.x) dst[d] = f32_to_f16(src[d]);
        return;
    }
    const bool is_q = h < n_q;
    float squares = 0.f;
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        const float v = src[d];
        head[d] = v;
        squares += v * v;
    }
    const float* norm = is_q ? (has_q_norm ? q_norm : nullptr) : (has_k_norm ? k_norm : nullptr);
    if (norm != nullptr) {                  // the same for the whole block
        const float inv = 1.0f / sqrtf(block_sum(squares, partial) / HD + eps);
        for (int d = threadIdx.x; d < HD; d += blockDim.x) head[d] = head[d] * inv * norm[d];
    }
    __syncthreads();
    const float scale = is_q ? q_scale : 1.0f;
    f16* dst = is_q ? q_out + (long long)h * HD
                    : k_cache + ((long long)(h - n_q) * ctx + pos) * HD;
    const float* cs = cos_t + (long long)pos * rope_pairs;
    const float* sn = sin_t + (long long)pos * rope_pairs;
    for (int j = threadIdx.x; j < rope_pairs; j += blockDim.x) {
        const int a = neox ? j : 2 * j;
        const int c = neox ? j + rope_pairs : 2 * j + 1;
        const float x0 = head[a], x1 = head[c];
        dst[a] = f32_to_f16((x0 * cs[j] - x1 * sn[j]) * scale);
        dst[c] = f32_to_f16((x0 * sn[j] + x1 * cs[j]) * scale);
    }
    for (int d = 2 * rope_pairs + threadIdx.x; d < HD; d += blockDim.x)
        dst[d] = f32_to_f16(head[d] * scale);
}

// ---- attention ----------------------------------------------------------------------
// The n = pos + 1 positions are cut into chunks of split_chunk(n) positions (whole
// batches, at least MIN_CHUNK), one per warp: chunk u of KV head kvh is warp u of the
// SPLITS warps of blockIdx.y = kvh. Warps whose chunk starts at or past n do nothing;
// combine reads the first ceil(n / chunk).
__device__ __forceinline__ int split_chunk(int n) {
    int c = (n + SPLITS - 1) / SPLITS;
    c = (c + BATCH - 1) / BATCH * BATCH;
    return c > MIN_CHUNK ? c : MIN_CHUNK;
}

typedef Bits<VEC>::T Row;   // one load of a head row

// A warp's partial softmax over its chunk, for the G query heads of its KV head: max m
// of the scores, l = sum exp(s - m), acc = sum exp(s - m) v. Scores are rounded to f16
// (the f16 GEMM's result); the rest stays f32. Lane `lane` holds the row values of loads
// lane, lane + 32, ... (VEC values each).
// Partials: row ((kvh * SPLITS + u) * G + g) of part_m, part_l (one float) and part_acc
// (HD floats).
extern "C" __global__ void __launch_bounds__(ATTEND_WARPS * 32)
attend_split(const f16* __restrict__ q, const f16* __restrict__ k_cache,
             const f16* __restrict__ v_cache, const int* __restrict__ pos_p, int ctx,
             float* __restrict__ part_m, float* __restrict__ part_l,
             float* __restrict__ part_acc)
{
    const int kvh = blockIdx.y;
    const int lane = threadIdx.x & 31;
    const int u = blockIdx.x * ATTEND_WARPS + (threadIdx.x >> 5);
    const int n = *pos_p + 1;
    const int chunk = split_chunk(n);
    const int start = u * chunk;
    if (start >= n) return;                 // a whole warp
    const int end = min(start + chunk, n);

    float qf[G][PER_LANE], acc[G][PER_LANE], m[G], l[G];
#pragma unroll
    for (int g = 0; g < G; g++) {
        const f16* qh = q + (long long)(kvh * G + g) * HD;
#pragma unroll
        for (int i = 0; i < LANE_LOADS; i++) {
            const int j = lane + 32 * i;
            const Row bits = j < NV ? *reinterpret_cast<const Row*>(qh + j * VEC) : Row();
            unpack<VEC>(bits, &qf[g][i * VEC]);
        }
#pragma unroll
        for (int e = 0; e < PER_LANE; e++) acc[g][e] = 0.f;
        m[g] = NEG_INF;
        l[g] = 0.f;
    }
    const f16* keys = k_cache + (long long)kvh * ctx * HD;
    const f16* values = v_cache + (long long)kvh * ctx * HD;

    for (int t0 = start; t0 < end; t0 += BATCH) {
        // every load of the batch first, so that they are in flight together
        Row kb[BATCH][LANE_LOADS], vb[BATCH][LANE_LOADS];
#pragma unroll
        for (int b = 0; b < BATCH; b++) {
#pragma unroll
            for (int i = 0; i < LANE_LOADS; i++) {
                const int j = lane + 32 * i;
                const bool ok = t0 + b < end && j < NV;
                const long long at = (long long)(t0 + b) * HD + j * VEC;
                kb[b][i] = ok ? *reinterpret_cast<const Row*>(keys + at) : Row();
                vb[b][i] = ok ? *reinterpret_cast<const Row*>(values + at) : Row();
            }
        }
        float s[BATCH][G];
#pragma unroll
        for (int b = 0; b < BATCH; b++) {
            float kf[PER_LANE];
#pragma unroll
            for (int i = 0; i < LANE_LOADS; i++) unpack<VEC>(kb[b][i], &kf[i * VEC]);
#pragma unroll
            for (int g = 0; g < G; g++) {
                float dot = 0.f;
#pragma unroll
                for (int e = 0; e < PER_LANE; e++) dot += qf[g][e] * kf[e];
                dot = warp_sum(dot);
                s[b][g] = t0 + b < end ? round_f16(dot) : NEG_INF;
            }
        }
        float p[BATCH][G];
#pragma unroll
        for (int g = 0; g < G; g++) {
            float top = m[g];
#pragma unroll
            for (int b = 0; b < BATCH; b++) top = fmaxf(top, s[b][g]);
            const float rescale = expf(m[g] - top);   // 0 on the first batch: m = -inf
            l[g] *= rescale;
#pragma unroll
            for (int e = 0; e < PER_LANE; e++) acc[g][e] *= rescale;
#pragma unroll
            for (int b = 0; b < BATCH; b++) {
                p[b][g] = expf(s[b][g] - top);        // 0 past the chunk's end
                l[g] += p[b][g];
            }
            m[g] = top;
        }
#pragma unroll
        for (int b = 0; b < BATCH; b++) {
            float vf[PER_LANE];
#pragma unroll
            for (int i = 0; i < LANE_LOADS; i++) unpack<VEC>(vb[b][i], &vf[i * VEC]);
#pragma unroll
            for (int g = 0; g < G; g++)
#pragma unroll
                for (int e = 0; e < PER_LANE; e++) acc[g][e] += p[b][g] * vf[e];
        }
    }

#pragma unroll
    for (int g = 0; g < G; g++) {
        const long long row = ((long long)kvh * SPLITS + u) * G + g;
        if (lane == 0) {
            part_m[row] = m[g];
            part_l[row] = l[g];
        }
#pragma unroll
        for (int i = 0; i < LANE_LOADS; i++) {
            const int j = lane + 32 * i;
            if (j < NV) {
#pragma unroll
                for (int e = 0; e < VEC; e++) part_acc[row * HD + j * VEC + e] = acc[g][i * VEC + e];
            }
        }
    }
}

// Block (qh, y): dims y*32 .. y*32+31 of query head qh's output (KV head qh / G), from
// the partials of the warps that had positions, rounded to f16 (the f16 GEMM's result)
// and stored as f32. The block's warps take every warps-th split each (loads in flight
// over the splits; one thread per dim over all of them was latency-bound at 32k).
extern "C" __global__ void __launch_bounds__(THREADS)
combine_splits(const float* __restrict__ part_m, const float* __restrict__ part_l,
               const float* __restrict__ part_acc, const int* __restrict__ pos_p,
               float* __restrict__ out)
{
    __shared__ float weight[SPLITS];
    __shared__ float partial[THREADS / 32];
    __shared__ float sums[THREADS / 32][32];
    const int qh = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int d = blockIdx.y * 32 + lane;
    const int n = *pos_p + 1;
    const int chunk = split_chunk(n);
    const int active = (n + chunk - 1) / chunk;
    const long long first = (long long)(qh / G) * SPLITS * G + qh % G;   // split u: first + u G
    float top = NEG_INF;
    for (int u = threadIdx.x; u < active; u += blockDim.x)
        top = fmaxf(top, part_m[first + (long long)u * G]);
    top = block_max(top, partial);
    float total = 0.f;
    for (int u = threadIdx.x; u < active; u += blockDim.x) {
        const long long row = first + (long long)u * G;
        const float w = expf(part_m[row] - top);
        weight[u] = w;
        total += w * part_l[row];
    }
    total = block_sum(total, partial);      // its barriers also publish weight[]
    float o = 0.f;
    if (d < HD) {
#pragma unroll 8
        for (int u = warp; u < active; u += warps)
            o += weight[u] * part_acc[(first + (long long)u * G) * HD + d];
    }
    sums[warp][lane] = o;
    __syncthreads();
    if (warp == 0 && d < HD) {
        for (int w = 1; w < warps; w++) o += sums[w][lane];
        out[(long long)qh * HD + d] = round_f16(o / total);
    }
}
"""


def compile_options(head_dim: int, group: int, splits: int) -> tuple:
    vec, batch = lane_layout(head_dim, group)
    defines = {"HD": head_dim, "G": group, "SPLITS": splits, "VEC": vec, "BATCH": batch,
               "GEMV_WARPS": GEMV_WARPS, "ATTEND_WARPS": ATTEND_WARPS, "THREADS": THREADS}
    return ("-std=c++17",) + tuple(f"-D{k}={v}" for k, v in defines.items())


class FusedDecode:
    """The decode path of one GpuAttention (attention.py) on CuPy: call(layer, x_host,
    out_host, pos) with x_host and out_host (1, hidden) f32 host arrays."""

    def __init__(self, attn, graphs: bool):
        import cupy
        import cupyx
        self._rt = cupy.cuda.runtime
        self.a = attn
        self.graphs = graphs
        self.splits = attention_splits(attn.ctx, attn.nkv)
        module = cupy.RawModule(code=SOURCE, options=compile_options(attn.hd, attn.group,
                                                                     self.splits))
        self._gemv = module.get_function("gemv_f16")
        self._norm_rope = module.get_function("norm_rope_store")
        self._attend = module.get_function("attend_split")
        self._combine = module.get_function("combine_splits")
        hd, nq, nkv, g = attn.hd, attn.nq, attn.nkv, attn.group
        hidden = attn.cfg.hidden
        self._rows = (nq + 2 * nkv) * hd
        self._qkv = cupy.empty(self._rows, dtype=np.float32)
        self._q = cupy.empty(nq * hd, dtype=np.float16)
        self._att = cupy.empty(nq * hd, dtype=np.float32)
        parts = nkv * self.splits * g
        self._part_m = cupy.empty(parts, dtype=np.float32)
        self._part_l = cupy.empty(parts, dtype=np.float32)
        self._part_acc = cupy.empty(parts * hd, dtype=np.float32)
        # a zero bias for products without one, and the norm weights' stand-in where a
        # layer has none (the kernel is told not to read it)
        self._zeros = cupy.zeros(max(self._rows, hidden), dtype=np.float32)
        self._pos_host = cupyx.empty_pinned((1,), np.int32)
        self._pos = cupy.zeros(1, dtype=np.int32)
        self._stream = cupy.cuda.Stream(non_blocking=True)
        # layer -> ((x_host, out_host addresses), its Graph, or None for pageable buffers)
        self._graphs = {}

    def __call__(self, layer, x_host, out_host, pos):
        if not 0 <= pos < self.a.ctx:    # the kernels would write past the cache
            raise ValueError(f"position {pos} is outside the context of {self.a.ctx}")
        self._pos_host[0] = pos
        key = (x_host.ctypes.data, out_host.ctypes.data)
        held = self._graphs.get(layer)
        if held is not None and held[0] == key and held[1] is not None:
            held[1].launch(self._stream)
        else:
            with self._stream:
                self._enqueue(layer, x_host, out_host)
            if self.graphs and (held is None or held[0] != key):
                # Captured after the kernels ran once: CUDA loads a module's kernels at
                # their first launch, which is not to happen inside a capture.
                self._stream.synchronize()
                graph = None
                if _pinned(self._rt, x_host) and _pinned(self._rt, out_host):
                    graph = self._capture(layer, x_host, out_host)
                self._graphs[layer] = (key, graph)
        self._stream.synchronize()

    def _capture(self, layer, x_host, out_host):
        s = self._stream
        with s:
            s.begin_capture()
            try:
                self._enqueue(layer, x_host, out_host)
            finally:
                graph = s.end_capture()
        return graph

    def _enqueue(self, layer, x_host, out_host):
        """The layer's work on self._stream (the current stream: RawKernel launches there)."""
        a, rt, s = self.a, self._rt, self._stream.ptr
        i32, f32 = np.int32, np.float32
        L = a.layers[layer]
        hidden, hd, nq, nkv = a.cfg.hidden, a.hd, a.nq, a.nkv
        x, o = a._x[0], a._o[0]
        rt.memcpyAsync(self._pos.data.ptr, self._pos_host.ctypes.data, 4,
                       rt.memcpyHostToDevice, s)
        rt.memcpyAsync(x.data.ptr, x_host.ctypes.data, hidden * 4, rt.memcpyHostToDevice, s)
        self._gemv((_blocks(self._rows, GEMV_WARPS),), (GEMV_WARPS * 32,),
                   (L.wqkv, x, self._zeros if L.bias is None else L.bias, self._qkv,
                    i32(self._rows), i32(hidden)))
        self._norm_rope((nq + 2 * nkv,), (THREADS,),
                        (self._qkv, self._pos,
                         self._zeros if L.q_norm is None else L.q_norm,
                         self._zeros if L.k_norm is None else L.k_norm,
                         i32(L.q_norm is not None), i32(L.k_norm is not None), f32(a.eps),
                         a.cos, a.sin, i32(a.rope_dim // 2), i32(a.neox), f32(a.scale),
                         i32(nq), i32(nkv), i32(a.ctx), self._q, a.k[layer], a.v[layer]))
        self._attend((self.splits // ATTEND_WARPS, nkv), (ATTEND_WARPS * 32,),
                     (self._q, a.k[layer], a.v[layer], self._pos, i32(a.ctx),
                      self._part_m, self._part_l, self._part_acc))
        self._combine((nq, _blocks(hd, 32)), (THREADS,),
                      (self._part_m, self._part_l, self._part_acc, self._pos, self._att))
        self._gemv((_blocks(hidden, GEMV_WARPS),), (GEMV_WARPS * 32,),
                   (L.wo, self._att, self._zeros, o, i32(hidden), i32(nq * hd)))
        rt.memcpyAsync(out_host.ctypes.data, o.data.ptr, hidden * 4, rt.memcpyDeviceToHost, s)


def _blocks(n, per_block):
    return (n + per_block - 1) // per_block


def _pinned(rt, host) -> bool:
    """Whether a host array lies in page-locked memory (a graph's copies need it)."""
    attrs = rt.pointerGetAttributes(host.ctypes.data)
    return attrs.type == rt.memoryTypeHost
