"""The shard plan: which heads, FFN columns and vocabulary rows each of N ranks owns.

Megatron-style, as in gpt-fast's tp.py: Q/K/V and gate/up are split by output rows
(colwise), attn_output and ffn_down by input columns (rowwise, giving partial sums that
an all-reduce adds up), the output head by vocabulary rows. The model code never sees N;
it runs whatever ranges its shard was given.

Reduce units, so that 1, 2 and 4 ranks give bit-identical results. A row-split product
leaves partial sums over slices of its input columns, and float additions in another
order give other bits: one rank summing a whole row is not two ranks summing halves and
adding them. So the plan cuts those inner dimensions (the heads of attn_output, the FFN
columns of ffn_down, each expert's) into REDUCE_UNITS fixed units, the same for every
rank count, and gives each of N ranks (N dividing REDUCE_UNITS) REDUCE_UNITS / N whole
units. Every unit's partial sum is computed alone, from zero, and the partials are added
as one fixed tree, ((u0 + u1) + (u2 + u3)): a rank adds its own units' subtree, the
all-reduce the rest (numatp/shm/allreduce.py sums 4 ranks as (r0 + r1) + (r2 + r3)).

A model takes units when they cut evenly and on quant blocks: its KV heads a multiple of
REDUCE_UNITS (so the units are whole KV groups and balanced for every N) and every unit
boundary on a block of attn_output (FFN splits are on blocks already). Other models, 3
or more than 4 ranks, and whole experts per node (--moe-split experts) keep one unit per
rank: correct, but their round-off depends on the rank count.
"""
from dataclasses import dataclass

from numatp.model.config import ModelConfig

# Linux supports at most 1024 NUMA nodes (NODES_SHIFT 10), so no plan needs more ranks;
# `info --nodes` with a larger count would build a shard list sized by a typo.
MAX_RANKS = 1024


def split_even(n_units: int, n: int) -> list:
    """Near-equal contiguous ranges [(start, end), ...] of n_units over n parts; the first
    n_units % n parts get one more."""
    base, extra = divmod(n_units, n)
    ranges, start = [], 0
    for i in range(n):
        end = start + base + (1 if i < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


@dataclass(frozen=True)
class Shard:
    rank: int
    n_ranks: int
    q_heads: tuple      # [h0, h1) query heads
    kv_heads: tuple     # [k0, k1) KV heads those query heads read (replicated if shared)
    ffn: tuple          # [f0, f1) rows of gate/up = input columns of down
    vocab: tuple        # [v0, v1) rows of the output head
    # Mixture of experts: [x0, x1) rows of every expert's gate/up (columns of its down),
    # of the experts [e0, e1).
    expert_ffn: tuple = (0, 0)
    experts: tuple = (0, 0)
    # Reduce units (see the top of this file): the boundaries of this rank's units in
    # each part a row-split product's inner dimension is cut by, e.g. ffn (0, 2816, 5632)
    # for two units of 2816 FFN columns. Empty: one unit, the rank's whole range.
    units: tuple = ()

    def unit_bounds(self, part: str) -> tuple:
        """The boundaries of my units within my range of `part` (q_heads, ffn,
        expert_ffn): n_units + 1 values from my range's start to its end."""
        for name, bounds in self.units:
            if name == part:
                return bounds
        return getattr(self, part)

    @property
    def n_units(self) -> int:
        return len(self.units[0][1]) - 1 if self.units else 1

    def describe(self) -> str:
        text = (f"rank {self.rank}: q heads {self.q_heads[0]}-{self.q_heads[1] - 1}, "
                f"kv heads {self.kv_heads[0]}-{self.kv_heads[1] - 1}, "
                f"ffn {self.ffn[0]}:{self.ffn[1]}, vocab {self.vocab[0]}:{self.vocab[1]}")
        if self.experts[1] > self.experts[0]:
            text += (f", experts {self.experts[0]}-{self.experts[1] - 1} "
                     f"rows {self.expert_ffn[0]}:{self.expert_ffn[1]}")
        if self.n_units > 1:
            text += f", {self.n_units} reduce units"
        return text


# How a MoE model's experts are placed: "rows" gives every node a slice of every expert
# (a dense FFN's split inside each), so each node reads its share of whichever experts
# are chosen; "experts" gives each node whole experts.
MOE_SPLITS = ("rows", "experts")


def check_moe_split(split: str):
    """A user's --moe-split / moe_split=: UsageError unless it is one of MOE_SPLITS."""
    if split not in MOE_SPLITS:
        from numatp.errors import UsageError
        raise UsageError(f"invalid MoE split {split!r} (one of: {', '.join(MOE_SPLITS)})")


# Units of the fixed reduce decomposition; rank counts that divide it are bit-identical.
# (numatp/forward/layout.py's MAX_UNITS: not imported, because importing numatp.forward
# loads Numba, and a spawned worker unpickles its Shard before it sets Numba's threads.)
REDUCE_UNITS = 4
# The parts a row-split product's inner dimension is cut by (the units' parts).
UNIT_PARTS = ("q_heads", "ffn", "expert_ffn")


def make_plan(cfg: ModelConfig, n: int, ffn_unit: int = 1, expert_unit: int = 1,
              moe_split: str = "rows", head_unit: int = 1) -> list:
    """Shards for n ranks. ffn_unit, expert_unit: split points of the FFN and of each
    expert's FFN land on multiples of them (the block size of ffn_down, ffn_down_exps)
    so that no quant block straddles two ranks. moe_split: one of MOE_SPLITS.
    head_unit: the block size of attn_output, which reduce units must not cut (see the
    top of this file)."""
    if n < 1:
        raise ValueError("need at least one rank")
    if moe_split not in MOE_SPLITS:
        raise ValueError(f"unknown MoE split {moe_split!r} (one of {', '.join(MOE_SPLITS)})")
    plan = _ranges(cfg, n, ffn_unit, expert_unit, moe_split)
    if REDUCE_UNITS % n or (n > 1 and moe_split != "rows"):
        return plan
    units = _ranges(cfg, REDUCE_UNITS, ffn_unit, expert_unit, "rows")
    if cfg.n_kv_heads % REDUCE_UNITS or any(
            u.q_heads[0] * cfg.head_dim % head_unit for u in units):
        return plan
    per = REDUCE_UNITS // n
    return [_merge(plan[r], units[r * per:(r + 1) * per]) for r in range(n)]


def _merge(shard: Shard, units: list) -> Shard:
    """`shard` holding the consecutive `units`: their heads, FFN columns and expert rows,
    with the units' boundaries."""
    first, last = units[0], units[-1]
    span = lambda part: (getattr(first, part)[0], getattr(last, part)[1])  # noqa: E731
    bounds = tuple((part, tuple(getattr(u, part)[0] for u in units) + (span(part)[1],))
                   for part in UNIT_PARTS)
    return Shard(shard.rank, shard.n_ranks, span("q_heads"), span("kv_heads"), span("ffn"),
                 shard.vocab, span("expert_ffn"), shard.experts,
                 bounds if len(units) > 1 else ())


def _ranges(cfg: ModelConfig, n: int, ffn_unit: int, expert_unit: int, moe_split: str) -> list:
    """Shards for n ranks, each one unit: near-equal ranges of every part."""
    g = cfg.group
    if cfg.n_kv_heads >= n:
        # Whole KV-head groups per rank: GQA stays local, nothing replicated.
        kv = split_even(cfg.n_kv_heads, n)
        heads = [((k0 * g, k1 * g), (k0, k1)) for k0, k1 in kv]
    else:
        # Fewer KV heads than ranks: split query heads; each rank holds (replicates) the
        # KV heads its query heads read.
        heads = []
        for h0, h1 in split_even(cfg.n_heads, n):
            k0, k1 = (h0 // g, (h1 - 1) // g + 1) if h1 > h0 else (0, 0)
            heads.append(((h0, h1), (k0, k1)))
    if cfg.ffn % ffn_unit:
        raise ValueError(f"ffn {cfg.ffn} is not a multiple of the split unit {ffn_unit}")
    ffn = [(a * ffn_unit, b * ffn_unit) for a, b in split_even(cfg.ffn // ffn_unit, n)]
    vocab = split_even(cfg.vocab, n)
    if cfg.expert_ffn % expert_unit:
        raise ValueError(f"expert ffn {cfg.expert_ffn} is not a multiple of the split unit "
                         f"{expert_unit}")
    if moe_split == "experts":
        experts = split_even(cfg.n_experts, n)
        expert_ffn = [(0, cfg.expert_ffn)] * n
    else:
        experts = [(0, cfg.n_experts)] * n
        expert_ffn = [(a * expert_unit, b * expert_unit)
                      for a, b in split_even(cfg.expert_ffn // expert_unit, n)]
    return [Shard(r, n, heads[r][0], heads[r][1], ffn[r], vocab[r], expert_ffn[r], experts[r])
            for r in range(n)]
