"""Files numatp cannot run -- Mixture-of-Experts, other architectures, unsupported quant
types -- fail with one line saying why, and `numatp info` still describes them."""
import json
import re
import shutil

import gguf
import numpy as np
import pytest

import numatp
from numatp.errors import ModelFileError
from numatp.model.gguf_file import GGUFFile
from numatp.quant.formats import supported_names
from numatp.registry import MODELS
from models import STORIES
from robust import error_line, run_main
from synth import write_model


def write_tiny(path, arch, experts=0, hidden=16, ffn=32, vocab=64):
    """A one-layer file of any architecture; with experts, a Mixture-of-Experts one in
    llama.cpp's layout: a router (ffn_gate_inp) and stacked expert matrices (ffn_*_exps)."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(2)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", f32(vocab, hidden))
    w.add_tensor("output_norm.weight", f32(hidden))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{name}.weight", f32(hidden, hidden))
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(2)
        w.add_tensor("blk.0.ffn_gate_inp.weight", f32(experts, hidden))
        w.add_tensor("blk.0.ffn_gate_exps.weight", f32(experts, ffn, hidden))
        w.add_tensor("blk.0.ffn_up_exps.weight", f32(experts, ffn, hidden))
        w.add_tensor("blk.0.ffn_down_exps.weight", f32(experts, hidden, ffn))
    else:
        w.add_tensor("blk.0.ffn_gate.weight", f32(ffn, hidden))
        w.add_tensor("blk.0.ffn_up.weight", f32(ffn, hidden))
        w.add_tensor("blk.0.ffn_down.weight", f32(hidden, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# MoE files run (tests/test_moe.py) with quantized experts; these are refused in one line.
@pytest.mark.parametrize("arch,reason", [
    ("llama", "tensor blk.0.ffn_gate_exps.weight is F16; numatp runs quantized experts only "
              "(e.g. Q8_0, Q4_K)"),
    ("qwen3", "unsupported architecture 'qwen3' with experts (expert_count 4)"),
])
def test_unrunnable_mixture_of_experts_is_reported_as_such(arch, reason, tmp_path, monkeypatch,
                                                           capsys):
    if arch == "llama":   # Mixtral's layout, every tensor in place, experts in F16
        path = write_model(tmp_path / "f16.gguf", arch="llama", qtype="F16", n_layers=1,
                           n_experts=4, n_experts_used=2)
    else:
        path = write_tiny(tmp_path / f"{arch}.gguf", arch, experts=4)
    with pytest.raises(ModelFileError) as e:
        numatp.load(path, nodes=1)
    assert str(e.value) == f"{path}: {reason}"
    code, out, err = run_main(["generate", "hi", "-m", path], monkeypatch, capsys)
    assert (code, error_line(err)) == (1, f"{path}: {reason}")


def unsupported_files(d):
    """(path, architecture, reason) of files numatp cannot run but can describe."""
    odd_type = write_model(d / "q8_1.gguf", qtype="F32", n_layers=1, vocab=300)
    reader = gguf.GGUFReader(str(odd_type), "r+")
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    tensor.field.parts[-2][0] = gguf.GGMLQuantizationType.Q8_1   # F32 data read as Q8_1 fits
    reader.data.flush()
    del reader
    return [
        (write_tiny(d / "moe.gguf", "qwen2", experts=4), "qwen2",
         "unsupported architecture 'qwen2' with experts (expert_count 4)"),
        (write_tiny(d / "falcon.gguf", "falcon"), "falcon",
         "unsupported architecture 'falcon' (supported: llama, qwen2, qwen2moe, qwen3, "
         "qwen3moe)"),
        (odd_type, "llama", "tensor blk.0.attn_q.weight has quant type Q8_1, which numatp cannot "
                            f"run (supported: {supported_names()})"),
    ]


def test_info_describes_files_it_cannot_run(tmp_path, monkeypatch, capsys):
    for path, arch, reason in unsupported_files(tmp_path):
        tensors = GGUFFile(path).tensors
        code, out, err = run_main(["info", path], monkeypatch, capsys)
        assert (code, err) == (0, ""), (path, err)
        lines = out.splitlines()
        assert lines[0].startswith(f"{path}: {arch} ")
        assert f"  {len(tensors)} tensors:" in lines
        assert lines[-1] == f"  numatp cannot run this file: {reason}"
        assert all(any(line.split()[:1] == [re.sub(r"^blk\.\d+\.", "blk.N.", name)]
                       for line in lines) for name in tensors)

        code, out, err = run_main(["info", path, "--json"], monkeypatch, capsys)
        d = json.loads(out)
        assert (code, d["architecture"], d["cannot_run"]) == (0, arch, reason)
        assert d["tensor_count"] == len(tensors) == sum(t["count"] for t in d["tensors"])


def test_info_of_a_moe_file_lists_its_experts(tmp_path, monkeypatch, capsys):
    path = write_tiny(tmp_path / "moe.gguf", "qwen3moe", experts=4)
    code, out, err = run_main(["info", path, "--json"], monkeypatch, capsys)
    kinds = {t["name"]: t for t in json.loads(out)["tensors"]}
    assert kinds["blk.N.ffn_gate_exps.weight"] == {
        "name": "blk.N.ffn_gate_exps.weight", "count": 1, "types": ["F32"], "shape": [4, 32, 16],
        "bytes": 4 * 32 * 16 * 4}


def test_info_accepts_a_known_model_name(tmp_path, monkeypatch, capsys):
    """A name resolves as generate's -m does: to the registry's cached file."""
    monkeypatch.setenv("NUMATP_CACHE", str(tmp_path))
    cached = tmp_path / MODELS["smollm2-135m"].filename
    shutil.copy(STORIES, cached)
    code, out, err = run_main(["info", "smollm2-135m", "--json"], monkeypatch, capsys)
    assert code == 0, err
    d = json.loads(out)
    assert (d["path"], d["architecture"], d["cannot_run"]) == (str(cached), "llama", None)


@pytest.mark.parametrize("name, dense", [("qwen3moe-q8_0", False), ("qwen2moe-q8_0", True)])
def test_info_shows_a_dense_ffn_split_only_where_there_is_one(tmp_path, monkeypatch, capsys,
                                                              name, dense):
    """qwen3moe's FFN is all experts: no dense ffn range (it once showed feed_forward_length
    split as if it were read); qwen2moe's shared expert is dense and is shown as such."""
    from models import moe_model
    path = str(moe_model(name, tmp_path))
    code, out, _ = run_main(["info", path, "--nodes", "2", "--json"], monkeypatch, capsys)
    d = json.loads(out)
    assert code == 0 and (d["ffn"] is not None) == dense
    assert all((s["ffn"] is not None) == dense for s in d["shards"])
    code, out, _ = run_main(["info", path, "--nodes", "2"], monkeypatch, capsys)
    assert ("shared expert ffn" in out) == dense and (" ffn 0:" in out) == dense


# The model's experts are 32 rows long, one Q8_0 block of ffn_down_exps: split by rows,
# the second node gets none of them (the block cannot be cut).
@pytest.mark.parametrize("split, experts, rows", [("rows", [[0, 8], [0, 8]], [[0, 32], [32, 32]]),
                                                   ("experts", [[0, 4], [4, 8]], [[0, 32], [0, 32]])])
def test_info_shows_each_nodes_experts_for_either_split(tmp_path, monkeypatch, capsys, split,
                                                        experts, rows):
    """--moe-split as generate takes it: a slice of every expert per node, or whole experts."""
    from models import moe_model
    path = str(moe_model("qwen3moe-q8_0", tmp_path))
    code, out, _ = run_main(["info", path, "--nodes", "2", "--moe-split", split, "--json"],
                            monkeypatch, capsys)
    d = json.loads(out)
    assert (code, d["moe_split"]) == (0, split)
    assert [s["experts"] for s in d["shards"]] == experts
    assert [s["expert_ffn"] for s in d["shards"]] == rows
    # rows: each node holds 3 of numatp/parallel/plan.py's 6 reduce units; whole experts
    # per node: one unit each, and no node counts that give the same bits
    rows_split = split == "rows"
    assert [s["reduce_units"] for s in d["shards"]] == ([3, 3] if rows_split else [1, 1])
    assert d["identical_nodes"] == ([1, 2, 3, 4] if rows_split else [1])
    code, out, _ = run_main(["info", path, "--nodes", "2", "--moe-split", split], monkeypatch,
                            capsys)
    assert f"experts split by {split}:" in out
    assert ("summed as 6 reduce units: the same logits on 1, 2, 3 and 4 nodes" if rows_split
            else "summed as 2 reduce units: the node count changes the float round-off") in out


def test_info_rejects_an_unknown_moe_split_in_one_line(tmp_path, monkeypatch, capsys):
    from models import moe_model
    path = str(moe_model("qwen3moe-q8_0", tmp_path))
    code, out, err = run_main(["info", path, "--moe-split", "layers"], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "numatp: error: invalid MoE split 'layers' (one of: rows, experts)"]
