"""The shard plan: which heads, FFN columns and vocabulary rows each of N ranks owns.

Megatron-style, as in gpt-fast's tp.py: Q/K/V and gate/up are split by output rows
(colwise), attn_output and ffn_down by input columns (rowwise, giving partial sums that
an all-reduce adds up), the output head by vocabulary rows. The model code never sees N;
it runs whatever ranges its shard was given.

Reduce units, so that 1, 2, 3 and 4 ranks give bit-identical results. A row-split
product leaves partial sums over slices of its input columns, and float additions in
another order give other bits: one rank summing a whole row is not two ranks summing
halves and adding them. So the plan cuts those inner dimensions (the heads of
attn_output, the FFN columns of ffn_down, each expert's) at the same fractions whatever
the rank count: every i/N for N in IDENTICAL_RANKS (0, 1/4, 1/3, 1/2, 2/3, 3/4, 1: six
units). N ranks hold the units between r/N and (r + 1)/N each, every unit's partial sum
is computed alone, from zero, and all of them are added one at a time in unit order,
((u0 + u1) + u2) + ..., by the all-reduce (numatp/shm/allreduce.py: each rank publishes
its units' partials, and one rank alone folds its own the same way).

Where a cut cannot land on a quant block of attn_output (a 256-element block holding
parts of two units' heads), the fractions it needs are left out, and with them the rank
counts that need them (identical_counts); a rank count not among the identical ones, more
than 4 ranks, and whole experts per node (--moe-split experts) keep one unit per rank:
correct, but their round-off depends on the rank count. Models with fewer than 4 KV
heads split query heads for every count (replicating the KV heads a cut shares), so that
all counts cut the same head space.
"""
from dataclasses import dataclass, replace
from fractions import Fraction

from numatp.model.config import ModelConfig

# Linux supports at most 1024 NUMA nodes (NODES_SHIFT 10), so no plan needs more ranks;
# `info --nodes` with a larger count would build a shard list sized by a typo.
MAX_RANKS = 1024


def split_even(n_units: int, n: int) -> list:
    """Near-equal contiguous ranges [(start, end), ...] of n_units over n parts: part r
    from position(r / n) to position((r + 1) / n), so that every rank count cuts at the
    same places for the same fractions (the reduce units)."""
    return [(position(Fraction(r, n), n_units), position(Fraction(r + 1, n), n_units))
            for r in range(n)]


def position(f: Fraction, n_units: int) -> int:
    """Where fraction f of n_units falls: f * n_units rounded half up."""
    return (2 * f.numerator * n_units + f.denominator) // (2 * f.denominator)


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


# The rank counts whose results are bit-identical (where the model's blocks allow it:
# identical_counts), and their cuts: every i/N of them.
IDENTICAL_RANKS = (1, 2, 3, 4)
# Counts tried in turn when a model's attn_output blocks do not allow all of them.
_FALLBACK_COUNTS = (IDENTICAL_RANKS, (1, 2, 4), (1, 2, 3), (1, 2), (1, 3), (1,))
# The parts a row-split product's inner dimension is cut by (the units' parts).
UNIT_PARTS = ("q_heads", "ffn", "expert_ffn")


def cuts(counts) -> list:
    """The fractions the reduce units of these rank counts run between, in order."""
    return sorted({Fraction(i, n) for n in counts for i in range(n + 1)})


def heads_by_kv(cfg: ModelConfig, n: int) -> bool:
    """Whether n ranks split whole KV-head groups (else query heads, replicating the KV
    heads a cut shares). Fewer KV heads than the largest identical count: query heads for
    every count, so that all of them cut the same heads."""
    return cfg.n_kv_heads >= max(n, IDENTICAL_RANKS[-1])


def _bound(cfg: ModelConfig, part: str, f: Fraction, ffn_unit: int, expert_unit: int) -> int:
    """Where fraction f of `part` falls, for the counts in IDENTICAL_RANKS: a query head,
    an FFN column, a column of each expert."""
    if part == "q_heads":
        if heads_by_kv(cfg, 1):
            return position(f, cfg.n_kv_heads) * cfg.group
        return position(f, cfg.n_heads)
    if part == "ffn":
        return position(f, cfg.ffn // ffn_unit) * ffn_unit
    return position(f, cfg.expert_ffn // expert_unit) * expert_unit


def identical_counts(cfg: ModelConfig, head_unit: int = 1) -> tuple:
    """The rank counts among IDENTICAL_RANKS that give this model the same bits: those
    whose head cuts land on blocks of attn_output (head_unit: its block size); FFN cuts
    are on blocks already."""
    for counts in _FALLBACK_COUNTS:
        if all(_bound(cfg, "q_heads", f, 1, 1) * cfg.head_dim % head_unit == 0
               for f in cuts(counts)):
            return counts
    return (1,)


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
    counts = identical_counts(cfg, head_unit)
    if n not in counts or len(counts) == 1 or (n > 1 and moe_split != "rows"):
        return plan
    fs = cuts(counts)
    return [_with_units(cfg, s, [f for f in fs if Fraction(r, n) <= f <= Fraction(r + 1, n)],
                        ffn_unit, expert_unit) for r, s in enumerate(plan)]


def _with_units(cfg: ModelConfig, shard: Shard, fs: list, ffn_unit: int,
                expert_unit: int) -> Shard:
    """`shard` with the boundaries of its units, the cuts fs (its first to its last)."""
    if len(fs) < 3:
        return shard
    bounds = tuple((part, tuple(_bound(cfg, part, f, ffn_unit, expert_unit) for f in fs))
                   for part in UNIT_PARTS)
    for part, b in bounds:   # the cuts are the rank's own range's
        assert (b[0], b[-1]) == getattr(shard, part), (part, b, shard)
    return replace(shard, units=bounds)


def _ranges(cfg: ModelConfig, n: int, ffn_unit: int, expert_unit: int, moe_split: str) -> list:
    """Shards for n ranks, each one unit: near-equal ranges of every part."""
    g = cfg.group
    if heads_by_kv(cfg, n):
        # Whole KV-head groups per rank: GQA stays local, nothing replicated.
        kv = split_even(cfg.n_kv_heads, n)
        heads = [((k0 * g, k1 * g), (k0, k1)) for k0, k1 in kv]
    else:
        # Fewer KV heads than ranks (or than the identical counts, heads_by_kv): split
        # query heads; each rank holds (replicates) the KV heads its query heads read.
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
