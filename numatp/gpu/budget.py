"""What `--gpu attn` places on the GPU, in bytes, and the check that it fits -- all from
the file's header, before anything is loaded. No CuPy, no Numba: `numatp info` uses it.

    attention weights  attn_q/k/v/output of every layer, dequantized to f16 (2 bytes a
                       weight whatever the file's quant type), and their biases and q/k
                       norm weights in f32
    KV cache           keys and values of every layer, KV head and position, f16
    RoPE tables        cos and sin of every position, f32
    workspace          what attention allocates for the largest chunk (`chunk` tokens
                       against the whole context): f16 scores, f32 scores, the f16
                       probabilities (8 bytes a score), the f32 causal mask of one
                       head group, and the chunk's projections; the fused decode
                       kernels' buffers (decode.py); plus MARGIN for cuBLAS's
                       workspace and CuPy's pool rounding
"""
from dataclasses import asdict, dataclass

from numatp.gpu.decode import workspace_bytes as decode_workspace_bytes
from numatp.model.declare import present
from numatp.model.slots import BK, BQ, BV, K_NORM, Q_NORM, WK, WO, WQ, WV

ATTENTION_SLOTS = frozenset({WQ, WK, WV, BQ, BK, BV, Q_NORM, K_NORM, WO})
MARGIN = 64 << 20


@dataclass(frozen=True)
class GpuBudget:
    ctx: int
    chunk: int
    weight_bytes: int
    kv_bytes: int
    rope_bytes: int
    workspace_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.rope_bytes + self.workspace_bytes

    def describe(self) -> str:
        mb = lambda b: f"{b / 1e6:,.1f} MB"  # noqa: E731
        return (f"{mb(self.weight_bytes)} attention weights (f16) + {mb(self.kv_bytes)} KV cache "
                f"(f16, {self.ctx} tokens) + {mb(self.rope_bytes + self.workspace_bytes)} RoPE "
                f"tables and workspace ({self.chunk}-token chunks) = {mb(self.total_bytes)}")

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}


def attention_tensors(gguf, cfg):
    """(layer, slot, TensorInfo) of every tensor the GPU holds."""
    for decl, layer, t in present(gguf, cfg):
        if decl.slot in ATTENTION_SLOTS and layer is not None:
            yield layer, decl.slot, t


def gpu_budget(gguf, cfg, ctx: int, chunk: int) -> GpuBudget:
    weights = sum(t.rows * t.cols * 2 if len(t.shape) == 2 else t.cols * 4
                  for _, _, t in attention_tensors(gguf, cfg))
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * ctx * cfg.head_dim * 2
    rope = 2 * ctx * (cfg.rope_dim // 2) * 4
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    workspace = (cfg.n_heads * chunk * ctx * 8 + cfg.group * chunk * ctx * 4
                 + 16 * chunk * (q_dim + 2 * kv_dim + cfg.hidden)
                 + decode_workspace_bytes(cfg, ctx) + MARGIN)
    return GpuBudget(ctx, chunk, weights, kv, rope, workspace)


def check_fits(budget: GpuBudget, info) -> None:
    """Refuse, in one line, a model whose attention and KV cache do not fit the GPU."""
    from numatp.gpu.device import GpuUnavailable
    if budget.total_bytes > info.free_bytes:
        raise GpuUnavailable(
            f"--gpu attn: the attention block does not fit {info.name}: it needs "
            f"{budget.total_bytes / 2**30:.2f} GiB ({budget.describe()}) and the GPU has "
            f"{info.free_bytes / 2**30:.2f} GiB free (lower -c/--ctx-size)")
