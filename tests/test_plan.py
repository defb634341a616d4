"""The shard plan: every head, FFN row and vocabulary row is owned exactly once; KV heads
follow their query heads; FFN cuts land on block boundaries; uneven splits work."""
import itertools

import pytest

from numatp.model.archs import get_arch
from numatp.model.config import ModelConfig
from numatp.parallel.plan import identical_counts, make_plan, split_even


def cfg(n_heads, n_kv, ffn, vocab=1000, head_dim=64):
    return ModelConfig(arch=get_arch("qwen2"), n_layers=2, hidden=n_heads * head_dim,
                       n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim, ffn=ffn, vocab=vocab,
                       ctx_train=128, norm_eps=1e-6, rope_base=1e4, rope_dim=head_dim,
                       rope_scale=1.0, rope_freq_factors=None, tied_output=True)


def test_split_even_covers_and_balances():
    for units, n in itertools.product(range(0, 40), range(1, 9)):
        r = split_even(units, n)
        assert r[0][0] == 0 and r[-1][1] == units
        assert all(a[1] == b[0] for a, b in zip(r, r[1:]))
        sizes = [e - s for s, e in r]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n_heads,n_kv,ffn,unit,n", [
    (14, 2, 4864, 256, 3), (14, 2, 4864, 256, 4), (32, 8, 8192, 32, 3), (9, 3, 1536, 32, 2),
    (8, 4, 172, 1, 3), (16, 16, 256, 256, 2), (4, 1, 64, 32, 4), (2, 1, 64, 32, 4),
])
def test_plan_owns_everything_once(n_heads, n_kv, ffn, unit, n):
    c = cfg(n_heads, n_kv, ffn)
    plan = make_plan(c, n, unit)
    assert [s.rank for s in plan] == list(range(n))
    # Query heads, FFN rows and vocab rows are partitioned.
    for attr, total in (("q_heads", n_heads), ("ffn", ffn), ("vocab", c.vocab)):
        ranges = [getattr(s, attr) for s in plan]
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    for s in plan:
        assert s.ffn[0] % unit == 0 and s.ffn[1] % unit == 0
        h0, h1 = s.q_heads
        if h1 > h0:  # the KV heads a rank holds are exactly those its query heads read
            assert s.kv_heads == (h0 // c.group, (h1 - 1) // c.group + 1)
    if n_kv >= max(n, 4):  # whole groups: no KV head held twice (plan.heads_by_kv)
        held = [k for s in plan for k in range(*s.kv_heads)]
        assert sorted(held) == list(range(n_kv))


def test_one_rank_holds_everything():
    c = cfg(14, 2, 4864)
    (s,) = make_plan(c, 1, 256)
    assert (s.q_heads, s.kv_heads, s.ffn, s.vocab) == ((0, 14), (0, 2), (0, 4864), (0, 1000))


def test_reduce_units_cut_at_the_same_fractions_for_every_count():
    """numatp/parallel/plan.py: units between the cuts i/N of N = 1 to 4, every rank
    holding the one-rank plan's units of its range, where attn_output's blocks allow."""
    c = cfg(16, 4, 1024)   # KV groups of 4 heads x 64 = 256 columns
    (one,) = make_plan(c, 1, 32, head_unit=256)
    # cuts 0, 1/4, 1/3, 1/2, 2/3, 3/4, 1 of 4 KV heads (rounded half up) and of 32 blocks
    assert one.unit_bounds("q_heads") == (0, 4, 4, 8, 12, 12, 16)
    assert one.unit_bounds("ffn") == (0, 256, 352, 512, 672, 768, 1024)
    for n, counts in ((2, [3, 3]), (3, [2, 2, 2]), (4, [1, 2, 2, 1])):
        plan = make_plan(c, n, 32, head_unit=256)
        assert [s.n_units for s in plan] == counts
        for part in ("q_heads", "ffn"):
            joined = ()
            for s in plan:
                bounds = s.unit_bounds(part)
                assert (bounds[0], bounds[-1]) == getattr(s, part)
                joined += bounds[1:] if joined else bounds
            assert joined == one.unit_bounds(part)
    # 2 KV heads: query heads are cut, for every count
    assert make_plan(cfg(16, 2, 1024), 1, 32)[0].unit_bounds("q_heads") == (
        0, 4, 5, 8, 11, 12, 16)
    assert make_plan(cfg(16, 2, 1024), 2, 32)[1].q_heads == (8, 16)


def test_counts_whose_cuts_straddle_blocks_are_left_out():
    c = cfg(16, 4, 1024)
    assert identical_counts(c, 256) == (1, 2, 3, 4)
    # blocks of 512 columns = 2 KV groups: only the cut at 1/2 lands on one
    assert identical_counts(c, 512) == (1, 2)
    assert [s.n_units for s in make_plan(c, 1, 32, head_unit=512)] == [2]
    assert [s.n_units for s in make_plan(c, 2, 32, head_unit=512)] == [1, 1]
    assert make_plan(c, 3, 32, head_unit=512)[0].units == ()
    # Llama-7B's shape with Q4_K attn_output: 32 KV heads of 128, a third is 10.67 heads
    assert identical_counts(cfg(32, 32, 11008, head_dim=128), 256) == (1, 2, 4)
    # whole experts per rank, more than 4 ranks: one unit each
    assert [s.n_units for s in make_plan(c, 2, 32, moe_split="experts")] == [1, 1]
    assert {s.n_units for s in make_plan(c, 5, 32)} == {1}
