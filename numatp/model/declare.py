"""How an architecture is declared (numatp/model/archs/), and what follows from it.

An architecture file gives a table of Tensor declarations: each tensor's GGUF name
("{i}" standing for the layer number), its row-major shape in terms of the model's
configuration, how it is split across the tensor-parallel ranks, and the slot where the
step reads it (numatp/model/slots.py). Everything else numatp needs to know about the
tensors is derived from that table, here and in numatp/parallel/shard.py:

  - the checks at load: every tensor present, shaped as the metadata implies, of a type
    numatp can run (check_tensors);
  - each rank's piece of each tensor (shard.plan_pieces, through `extent`);
  - the quant types the step is compiled for (matrix_types);
  - the bytes of weights a generated token reads (bytes_per_token);
  - the caches the step keeps from one call to the next (cache_shape, cache_nbytes).

Nothing here imports Numba: the CLI's `info` and the worker (before it sets Numba's
thread count) read declarations too.
"""
import math
from dataclasses import dataclass

from numatp.errors import ModelFileError
from numatp.quant import formats


@dataclass(frozen=True)
class Split:
    """Each rank holds the slice of axis `axis` (0: rows, or a vector's elements; 1: input
    columns) that its share of `part` covers. `part` is a range of the shard plan, a field
    of numatp.parallel.plan.Shard: "q_heads", "kv_heads", "ffn" or "vocab"; one unit of it
    spans (axis length / the part's total) elements, e.g. head_dim rows of attn_q per
    query head. A split of input columns gives each rank a partial sum of the product,
    which the step all-reduces; the cut keeps whole quant blocks, padding the input
    where it falls inside one (numatp/parallel/shard.py)."""
    part: str
    axis: int = 0


# The parts of the shard plan, each with the config field that holds its total.
PART_TOTALS = {"q_heads": "n_heads", "kv_heads": "n_kv_heads", "ffn": "ffn", "vocab": "vocab",
               "expert_ffn": "expert_ffn", "experts": "n_experts"}

REPLICATED = None                            # every rank holds all of it
BY_Q_HEAD = Split("q_heads")
BY_KV_HEAD = Split("kv_heads")
BY_Q_HEAD_COLUMN = Split("q_heads", axis=1)
BY_FFN_ROW = Split("ffn")
BY_FFN_COLUMN = Split("ffn", axis=1)
BY_VOCAB_ROW = Split("vocab")
# Stacked experts (experts, rows, cols): every expert's FFN rows (gate, up) or columns
# (down) split like a dense FFN's. A stacked tensor is also cut on its first axis to the
# experts the shard holds (the plan's "experts" range: all of them unless the plan gives
# whole experts to each node, --moe-split experts).
BY_EXPERT_FFN_ROW = Split("expert_ffn", axis=1)
BY_EXPERT_FFN_COLUMN = Split("expert_ffn", axis=2)

# Who reads a tensor, and how often.
STEP = "step"   # the step, every token, from each rank's shard
ROW = "row"     # the embedding lookup: one row per token, from the file (not in the shards)
LOAD = "load"   # the loader, once (not in the shards)


@dataclass(frozen=True)
class Tensor:
    name: str                   # GGUF name; "{i}" is the layer number
    shape: tuple                # row-major (out, in), as names of ModelConfig fields
    split: Split | None = REPLICATED
    slot: int | None = None     # where the step finds it (read=STEP only)
    read: str = STEP
    optional: bool = False
    instead: str | None = None  # when absent: the tensor the step reads in its place

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.name


@dataclass(frozen=True)
class Cache:
    """Float32 state a step keeps from one call to the next (attention's keys, its
    values); shape as names of ModelConfig fields, "ctx" (the context length), and
    "ctx_tiles" and "tile": the context as ceil(ctx / POSITION_TILE) tiles of
    POSITION_TILE positions."""
    name: str
    shape: tuple
    split: Split | None = REPLICATED


@dataclass(frozen=True)
class Arch:
    name: str
    family: str           # the step that runs it (numatp.forward.STEPS)
    tensors: tuple        # of Tensor
    cache: tuple          # of Cache
    rope_neox: bool       # rotate (i, i + d/2) pairs; False: adjacent (2i, 2i+1) pairs
    # Mixture-of-Experts architectures: a file of this architecture has experts (a
    # llama-architecture file with expert_count is Mixtral); the metadata keys (after
    # "<arch>.") of the dense or shared FFN length and of each expert's FFN length; and
    # whether the chosen experts' router probabilities are rescaled to sum to 1.
    experts: bool = False
    ffn_key: str = "feed_forward_length"
    expert_ffn_key: str | None = None
    expert_weights_norm: bool = False


def dims(shape, cfg, **extra) -> tuple:
    """A declared shape in numbers: each name a ModelConfig field or a keyword."""
    return tuple(extra[n] if n in extra else getattr(cfg, n) for n in shape)


def extent(split: Split, length: int, cfg, shard) -> tuple:
    """[lo, hi) of an axis of `length` elements that `shard` holds under `split`."""
    per_unit = length // getattr(cfg, PART_TOTALS[split.part])
    u0, u1 = getattr(shard, split.part)
    return u0 * per_unit, u1 * per_unit


def declared(cfg):
    """(declaration, GGUF name) of every tensor, model-wide ones first, then layer by
    layer."""
    once = [t for t in cfg.arch.tensors if not t.per_layer]
    layer = [t for t in cfg.arch.tensors if t.per_layer]
    for t in once:
        yield t, None, t.name
    for i in range(cfg.n_layers):
        for t in layer:
            yield t, i, t.name.format(i=i)


def present(gguf, cfg):
    """(declaration, layer or None, TensorInfo) of every tensor the model uses: absent
    optional ones left out, or replaced by the tensor read in their place."""
    for decl, layer, name in declared(cfg):
        info = gguf.tensors.get(name)
        if info is None and decl.instead is not None:
            info = gguf.tensors[decl.instead]
        if info is not None:
            yield decl, layer, info


def check_tensors(gguf, cfg):
    """Every tensor present, with the shape the metadata implies and a type we can run."""
    for decl, _, name in declared(cfg):
        t = gguf.tensors.get(name)
        if t is None:
            if decl.optional:
                continue
            raise ModelFileError(f"{gguf.path}: missing tensor {name}")
        shape = dims(decl.shape, cfg)
        if t.shape != shape:
            raise ModelFileError(f"{gguf.path}: tensor {name} has shape {t.shape}, the metadata "
                                 f"implies {shape}")
        vector = len(shape) == 1
        if len(shape) == 3 and t.qtype in (formats.F32, formats.F16, formats.BF16):
            raise ModelFileError(f"{gguf.path}: tensor {name} is {formats.type_name(t.qtype)}; "
                                 "numatp runs quantized experts only (e.g. Q8_0, Q4_K)")
        if vector and t.qtype != formats.F32:
            raise ModelFileError(f"{gguf.path}: tensor {name} is {formats.type_name(t.qtype)}; "
                                 "norm weights, biases and other vectors must be F32")
        if not vector and t.qtype not in formats.SUPPORTED:
            raise ModelFileError(f"{gguf.path}: tensor {name} has quant type "
                                 f"{formats.type_name(t.qtype)}, which numatp cannot run "
                                 f"(supported: {formats.supported_names()})")


def matrix_types(gguf, cfg) -> set:
    """The quant types of the matrices the step multiplies with: its kernel set."""
    return {t.qtype for decl, _, t in present(gguf, cfg)
            if decl.read == STEP and len(decl.shape) == 2}


def bytes_per_token(gguf, cfg) -> int:
    """Bytes of weights one decode step reads: every tensor of the step once (of stacked
    experts, only the n_experts_used a token is routed to), and one row of each
    looked-up tensor that the step does not read whole anyway (a tied embedding is the
    output head too)."""
    whole = {t.name: t for decl, _, t in present(gguf, cfg) if decl.read == STEP}
    rows = {t.name: t for decl, _, t in present(gguf, cfg) if decl.read == ROW}
    return (sum(t.nbytes * cfg.n_experts_used // cfg.n_experts if len(t.shape) == 3
                else t.nbytes for t in whole.values())
            + sum(t.nbytes // t.rows for name, t in rows.items() if name not in whole))


# Positions per tile of a cache declared in tiles (attention's keys: one vector of 16
# float32 per head dim, see numatp/forward/blocks.py's _attend).
POSITION_TILE = 16


def cache_shape(cache: Cache, cfg, ctx: int, shard=None) -> tuple:
    """The shape of a cache for a context of `ctx` tokens: the whole model's, or the
    part that `shard` holds."""
    shape = list(dims(cache.shape, cfg, ctx=ctx, ctx_tiles=-(-ctx // POSITION_TILE),
                      tile=POSITION_TILE))
    if shard is not None and cache.split is not None:
        lo, hi = extent(cache.split, shape[cache.split.axis], cfg, shard)
        shape[cache.split.axis] = hi - lo
    return tuple(shape)


def cache_nbytes(cfg, ctx: int, shard=None) -> int:
    """Bytes of all of the step's caches (float32): the whole model's, or a shard's."""
    return sum(4 * math.prod(cache_shape(c, cfg, ctx, shard)) for c in cfg.arch.cache)
