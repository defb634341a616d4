"""The shard plan: which heads, FFN columns and vocabulary rows each of N ranks owns.

Megatron-style, as in gpt-fast's tp.py: Q/K/V and gate/up are split by output rows
(colwise), attn_output and ffn_down by input columns (rowwise, giving partial sums that
an all-reduce adds up), the output head by vocabulary rows. The model code never sees N;
it runs whatever ranges its shard was given.
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

    def describe(self) -> str:
        text = (f"rank {self.rank}: q heads {self.q_heads[0]}-{self.q_heads[1] - 1}, "
                f"kv heads {self.kv_heads[0]}-{self.kv_heads[1] - 1}, "
                f"ffn {self.ffn[0]}:{self.ffn[1]}, vocab {self.vocab[0]}:{self.vocab[1]}")
        if self.experts[1] > self.experts[0]:
            text += (f", experts {self.experts[0]}-{self.experts[1] - 1} "
                     f"rows {self.expert_ffn[0]}:{self.expert_ffn[1]}")
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


def make_plan(cfg: ModelConfig, n: int, ffn_unit: int = 1, expert_unit: int = 1,
              moe_split: str = "rows") -> list:
    """Shards for n ranks. ffn_unit, expert_unit: split points of the FFN and of each
    expert's FFN land on multiples of them (the block size of ffn_down, ffn_down_exps)
    so that no quant block straddles two ranks. moe_split: one of MOE_SPLITS."""
    if n < 1:
        raise ValueError("need at least one rank")
    if moe_split not in MOE_SPLITS:
        raise ValueError(f"unknown MoE split {moe_split!r} (one of {', '.join(MOE_SPLITS)})")
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
