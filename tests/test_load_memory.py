"""Memory of a load and of embedding lookups: the file's pages must not stay resident
beside the copy of its weights (numatp/parallel/shard.py, GGUFFile.read_rows).

A model's peak is compared with its file's size (issue 12: <= 1.05x), so every tensor
held twice for a while, or every file page a lookup leaves mapped, counts. The model here
is a qwen3moe of ~230 MB whose stacked experts are 71 MB each: a tensor copied whole
before its pages are released shows as ~71 MB above the arena, well over the allowance.
Its weights are random Q8_0 blocks (no float master: the values do not matter here, only
that the blocks decode to finite numbers).
"""
import json
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import synth

MB = 1 << 20
HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 512, 8, 2, 64
EXPERTS, USED, EXPERT_FFN, VOCAB = 64, 4, 2048, 16384
# Above the arena while a shard is copied: a chunk's file pages (shard.CHUNK_BYTES, 16 MB),
# the packing's scratch (a few MB) and the allocator's slack.
LOAD_ALLOWANCE = 32 * MB


def _q8_0(rng, shape):
    """Random Q8_0 blocks for a float tensor of `shape`: scale 1/256, quants in [-127, 127]."""
    n = int(np.prod(shape)) // 32
    blocks = np.empty((n, 34), np.uint8)
    blocks[:, :2] = np.full(n, 1 / 256, np.float16).view(np.uint8).reshape(n, 2)
    blocks[:, 2:] = rng.integers(-127, 128, (n, 32), dtype=np.int8).view(np.uint8)
    return blocks.reshape(*shape[:-1], shape[-1] // 32 * 34)


def _tensors():
    p = "blk.0."
    yield "token_embd.weight", (VOCAB, HIDDEN), T.Q8_0
    yield p + "attn_norm.weight", (HIDDEN,), T.F32
    yield p + "attn_q.weight", (HEADS * HEAD_DIM, HIDDEN), T.Q8_0
    yield p + "attn_k.weight", (KV_HEADS * HEAD_DIM, HIDDEN), T.Q8_0
    yield p + "attn_v.weight", (KV_HEADS * HEAD_DIM, HIDDEN), T.Q8_0
    yield p + "attn_q_norm.weight", (HEAD_DIM,), T.F32
    yield p + "attn_k_norm.weight", (HEAD_DIM,), T.F32
    yield p + "attn_output.weight", (HIDDEN, HEADS * HEAD_DIM), T.Q8_0
    yield p + "ffn_norm.weight", (HIDDEN,), T.F32
    yield p + "ffn_gate_inp.weight", (EXPERTS, HIDDEN), T.F32
    yield p + "ffn_gate_exps.weight", (EXPERTS, EXPERT_FFN, HIDDEN), T.Q8_0
    yield p + "ffn_up_exps.weight", (EXPERTS, EXPERT_FFN, HIDDEN), T.Q8_0
    yield p + "ffn_down_exps.weight", (EXPERTS, HIDDEN, EXPERT_FFN), T.Q8_0
    yield "output_norm.weight", (HIDDEN,), T.F32
    yield "output.weight", (VOCAB, HIDDEN), T.Q8_0


@pytest.fixture(scope="module")
def big_moe(tmp_path_factory):
    path = tmp_path_factory.mktemp("load_memory") / "moe.gguf"
    spec = synth.ModelSpec(arch="qwen3moe", hidden=HIDDEN, n_layers=1, n_heads=HEADS,
                           n_kv_heads=KV_HEADS, head_dim=HEAD_DIM, vocab=VOCAB,
                           n_experts=EXPERTS, n_experts_used=USED, expert_ffn=EXPERT_FFN,
                           ffn=EXPERT_FFN, tokenizer="llama")
    w = gguf.GGUFWriter(str(path), "qwen3moe")
    synth._write_hparams(w, spec)
    # synth's vocabularies are learnt from a short text and stop far below VOCAB tokens;
    # the lookups need rows, not a tokenizer that reaches them, so the rest is filler.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{i}" for i in range(VOCAB - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(VOCAB - 259)])
    w.add_token_types([gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * 2
                      + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (VOCAB - 259))
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    specs = list(_tensors())
    for name, shape, qt in specs:
        if qt == T.F32:
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
        else:
            raw = (*shape[:-1], shape[-1] // 32 * 34)
            w.add_tensor_info(name, raw, np.dtype(np.uint8), int(np.prod(raw)), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, qt in specs:
        w.write_tensor_data(np.ones(shape, np.float32) if qt == T.F32 else _q8_0(rng, shape))
    w.close()
    yield path
    path.unlink()


# Runs alone in a fresh interpreter: pytest's own peak would hide the load's.
_LOAD_SHARD = """
import json, sys
from numatp.model.config import from_gguf
from numatp.model.gguf_file import GGUFFile
from numatp.parallel.shard import build_shard, shard_plan

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

g = GGUFFile(sys.argv[1])
cfg = from_gguf(g)
shard = shard_plan(g, cfg, 1)[0]
before = status("VmRSS")
w = build_shard(g, cfg, shard, ctx=16)
print(json.dumps({"before": before, "hwm": status("VmHWM"), "arena": int(w.arena.nbytes),
                  "largest": max(t.nbytes for t in g.tensors.values())}))
"""


def test_loading_a_shard_holds_little_more_than_its_arena(big_moe):
    """The peak of build_shard, over the process's resident size just before it, is the
    arena plus one chunk of file pages and a little scratch: not the arena plus a whole
    tensor (its file pages stayed resident until the tensor was copied)."""
    out = subprocess.run([sys.executable, "-c", _LOAD_SHARD, str(big_moe)], check=True,
                         capture_output=True, text=True, env=os.environ).stdout
    m = json.loads(out)
    assert m["largest"] > 2 * LOAD_ALLOWANCE   # else this test tells nothing
    above = m["hwm"] - m["before"] - m["arena"]
    assert above <= LOAD_ALLOWANCE, f"{above / MB:.1f} MB above the arena"


def _mapped(path) -> int:
    """Bytes of `path` resident in this process's mappings."""
    total, current = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                current = head[5] if len(head) > 5 else None
            elif head and head[0] == "Rss:" and current == str(path):
                total += int(head[1]) * 1024
    return total


def test_embedding_lookups_leave_no_file_pages_mapped(big_moe):
    """Looking up rows all over the embedding leaves none of its pages in this process
    (through the mmap, the kernel maps up to 2 MiB around each row read), and gives the
    rows the file holds."""
    import numatp
    with numatp.load(big_moe, nodes=1, ctx_size=16) as llm:
        ids = np.arange(0, VOCAB, 7)
        before = _mapped(big_moe)
        got = llm.token_embeddings(ids)
        assert _mapped(big_moe) - before <= 4096
        rows = llm.gguf.tensors["token_embd.weight"].data.reshape(VOCAB, -1)[ids]
        want = gguf.quants.dequantize(rows, T.Q8_0)
    assert np.array_equal(got, want)


def test_chunked_copy_is_the_whole_copy(monkeypatch, tmp_path):
    """A shard copied a few row groups (or one expert) at a time is byte for byte the shard
    copied in one piece, for K-quant row groups, padded column shards and both expert
    splits, and each chunk's file pages are released as it is done."""
    import models
    from numatp.model.config import from_gguf
    from numatp.model.gguf_file import GGUFFile
    from numatp.forward import layout as L
    from numatp.parallel import shard as S
    g = GGUFFile(models.moe_model("qwen3moe-q4_k_m", tmp_path))
    cfg = from_gguf(g)
    released = []
    release = g.release_view
    monkeypatch.setattr(g, "release_view", lambda v: (released.append(v.nbytes), release(v)))
    for n, split in ((1, "rows"), (2, "rows"), (3, "rows"), (2, "experts")):
        for shard in S.shard_plan(g, cfg, n, split):
            monkeypatch.setattr(S, "CHUNK_BYTES", 1 << 40)
            whole = S.build_shard(g, cfg, shard, ctx=16)
            released.clear()
            monkeypatch.setattr(S, "CHUNK_BYTES", 1)
            chunked = S.build_shard(g, cfg, shard, ctx=16)
            assert np.array_equal(chunked.index, whole.index)
            for e, (offset, nbytes) in enumerate(whole.index[:, [L.OFFSET, L.NBYTES]]):
                if offset >= 0:   # the bytes between entries are alignment, never written
                    piece = slice(offset, offset + nbytes)
                    assert np.array_equal(chunked.arena[piece], whole.arena[piece]), (n, split, e)
            assert len(released) > len(S.plan_pieces(g, cfg, shard))
    g.close()


def test_a_worker_opens_the_file_without_the_vocabulary(tmp_path):
    """tokenizer=False (a worker process's open) leaves the tokenizer's arrays out of the
    metadata and keeps everything else; a vocabulary cut short still fails as corrupt."""
    from numatp.errors import ModelFileError
    from numatp.model.gguf_file import GGUFFile
    path = synth.write_model(tmp_path / "m.gguf", vocab=300)
    full, lean = GGUFFile(path), GGUFFile(path, tokenizer=False)
    arrays = {k for k, v in full.metadata.items() if k.startswith("tokenizer.ggml.")
              and isinstance(v, list)}
    assert {"tokenizer.ggml.tokens", "tokenizer.ggml.merges"} <= arrays
    assert lean.metadata == {k: v for k, v in full.metadata.items() if k not in arrays}
    assert lean.tensors.keys() == full.tensors.keys()
    assert all(lean.tensors[n].offset == t.offset for n, t in full.tensors.items())
    data = path.read_bytes()
    at = data.index(b"tokenizer.ggml.merges")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:at + 200])
    with pytest.raises(ModelFileError, match="truncated|corrupt"):
        GGUFFile(cut, tokenizer=False)
    full.close()
    lean.close()
