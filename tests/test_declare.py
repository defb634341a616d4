"""Architecture declarations (numatp/model/archs/): what numatp derives from each table
(the tensors it reads, each rank's pieces of them, bytes per token, the KV cache) agrees
with the model files and with the shards the loader builds."""
import pytest

import synth
from numatp.forward import STEPS
from numatp.model.archs import all_archs
from numatp.model.config import from_gguf
from numatp.model.declare import bytes_per_token, cache_nbytes, cache_shape, present
from numatp.model.gguf_file import GGUFFile
from numatp.parallel.local import ShardState
from numatp.parallel.plan import heads_by_kv
from numatp.parallel.shard import plan_pieces, shard_plan
from numatp.quant import formats

ARCHS = ("llama", "qwen2", "qwen3")   # the dense ones; tests/test_moe.py runs the others
MOE_ARCHS = ("llama", "qwen2moe", "qwen3moe")   # llama with experts: Mixtral


def test_every_architecture_has_a_step():
    archs = all_archs()
    assert sorted(archs) == sorted([(a, False) for a in ARCHS] + [(a, True) for a in MOE_ARCHS])
    assert all(a.family in STEPS for a in archs.values())
    assert {a.family for a in archs.values()} == {"dense", "moe"}


@pytest.fixture(scope="module", params=[(a, tied) for a in ARCHS for tied in (False, True)],
                ids=lambda p: f"{p[0]}-{'tied' if p[1] else 'untied'}")
def model(request, tmp_path_factory):
    arch, tied = request.param
    # 6 heads over 3 KV heads: 4 ranks replicate KV heads; ffn 96 = 3 Q8_0 blocks
    path = synth.write_model(tmp_path_factory.mktemp("declare") / f"{arch}.gguf", arch=arch,
                             hidden=96, n_heads=6, n_kv_heads=3, head_dim=16, ffn=96,
                             n_layers=2, vocab=300, tied=tied)
    g = GGUFFile(path)
    yield g, from_gguf(g)
    g.close()


def test_the_declarations_cover_every_tensor_of_the_file(model):
    g, cfg = model
    assert {t.name for _, _, t in present(g, cfg)} == set(g.tensors)


def test_bytes_per_token_is_every_weight_once_and_one_embedding_row(model):
    g, cfg = model
    embd = g.tensors["token_embd.weight"]
    all_bytes = sum(t.nbytes for t in g.tensors.values())
    unread = 0 if cfg.tied_output else embd.nbytes - embd.nbytes // embd.rows
    assert bytes_per_token(g, cfg) == all_bytes - unread


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_kv_cache_of_each_shard_is_its_kv_heads(model, n):
    g, cfg = model
    ctx = 16
    per_head = cfg.n_layers * ctx * cfg.head_dim * 4 * 2   # keys and values, float32
    assert cache_nbytes(cfg, ctx) == per_head * cfg.n_kv_heads
    for shard in shard_plan(g, cfg, n):
        k0, k1 = shard.kv_heads
        assert cache_nbytes(cfg, ctx, shard) == per_head * (k1 - k0)
        state = ShardState(g, cfg, shard, ctx)
        assert [c.shape for c in state.caches] == [cache_shape(c, cfg, ctx, shard)
                                                    for c in cfg.arch.cache]
        assert sum(c.nbytes for c in state.caches) == cache_nbytes(cfg, ctx, shard)


def _span(piece, axis):
    """[lo, hi) of a piece along a declared axis: rows of a matrix, elements of a vector,
    or the quant blocks of a matrix's input columns; and the whole axis's length."""
    if axis == 0 and piece.matrix:
        return (piece.r0, piece.r1), piece.t.rows
    return (piece.b0, piece.b1), piece.t.cols // formats.block_size(piece.t.qtype)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_rank_pieces_split_each_tensor_as_declared(model, n):
    """A split tensor's pieces cover its axis in rank order, each rank the next slice, the
    other axis whole; they overlap only where KV heads are replicated (query heads cut:
    plan.heads_by_kv) or neighbours share the quant block their column cut falls in. A
    replicated tensor is whole on every rank."""
    g, cfg = model
    plan = shard_plan(g, cfg, n)
    shards = [plan_pieces(g, cfg, s) for s in plan]
    assert len({frozenset(p) for p in shards}) == 1   # every rank fills the same slots
    declarations = {id(t): d for d, _, t in present(g, cfg)}
    for e in shards[0]:
        pieces = [p[e] for p in shards]
        t, split = pieces[0].t, declarations[id(pieces[0].t)].split
        if split is None:
            assert all(_span(p, 0)[0] == (0, _span(p, 0)[1]) for p in pieces)
            continue
        spans, length = zip(*(_span(p, split.axis) for p in pieces))
        assert spans[0][0] == 0 and spans[-1][1] == length[0]
        may_overlap = split.axis == 1 or (split.part == "kv_heads"
                                          and not heads_by_kv(cfg, n))
        for (lo0, hi0), (lo1, hi1) in zip(spans, spans[1:]):
            assert lo0 <= lo1 <= hi0 <= hi1 if may_overlap else hi0 == lo1
        if split.axis == 1:
            assert all((p.r0, p.r1) == (0, t.rows) for p in pieces)
        elif pieces[0].matrix:
            assert all(p.cols == t.cols for p in pieces)
