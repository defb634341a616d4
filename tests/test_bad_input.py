"""Bad input ends in one clear line on stderr with exit code 2 (usage errors) or 1 (all
else), and the library raises a NumatpError subclass with the same message: never a
traceback, a hang, or an allocation sized by a corrupt count from the file.

The file cases go through numatp.load's whole path in this process (GGUF header, config,
tokenizer, one in-process shard) under tracemalloc, so a parser that believed a corrupt
count and allocated for it fails the memory bound; a SIGALRM deadline turns a hang into
a failure. CLI cases run `numatp` in-process (robust.run_main); a few run it as a real
subprocess to see exactly what a user sees.
"""
import ctypes
import math
import os
import subprocess
import sys
import tracemalloc

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numatp
from numatp.errors import ModelFileError, NumatpError, UsageError
from numatp.model.gguf_file import GGUFFile, read_metadata
from numatp.parallel import group
from robust import error_line, hang_guard, run_main
from synth import write_model

# Loading the 300 KB test model legitimately peaks at a few MB of Python/numpy memory; a
# corrupt count taken at its word asks for gigabytes. 64 MiB separates the two.
MAX_ALLOC = 64 << 20
NAN = float("nan")


# ---- models and corruptions ------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small valid F32 model (1 layer, 300-token BPE vocabulary)."""
    return write_model(tmp_path_factory.mktemp("bad") / "small.gguf", qtype="F32",
                       n_layers=1, vocab=300)


@pytest.fixture(scope="module")
def fields(model):
    return header_fields(model)


def header_fields(path):
    """{label: (offset, dtype)} of every structural integer in the header -- counts,
    lengths, types, dimensions, offsets -- and the integer hyperparameters, located with
    gguf.GGUFReader (an independent parser)."""
    r = gguf.GGUFReader(str(path))
    base = r.data.ctypes.data
    out = {}

    def add(label, part, index=0):
        out[label] = (part.ctypes.data - base + index * part.dtype.itemsize, part.dtype)

    for name, f in r.fields.items():
        p = f.parts
        if name.startswith("GGUF."):
            add(name, p[0])
            continue
        add(f"key length of {name}", p[0])
        add(f"type of {name}", p[2])
        if f.types[0] == gguf.GGUFValueType.STRING:
            add(f"length of {name}", p[3])
        elif f.types[0] == gguf.GGUFValueType.ARRAY:
            add(f"element type of {name}", p[3])
            add(f"length of {name}", p[4])
            if f.types[1] == gguf.GGUFValueType.STRING:
                n = (len(p) - 5) // 2
                for i in sorted({0, 1, n - 1}):
                    add(f"length of {name}[{i}]", p[5 + 2 * i])
        elif p[3].dtype.kind in "iu":
            add(f"value of {name}", p[3])
    for t in r.tensors:
        name_len, _, n_dims, dims, qtype, offset = t.field.parts
        add(f"name length of {t.name}", name_len)
        add(f"dimension count of {t.name}", n_dims)
        for j in range(len(dims)):
            add(f"dimension {j} of {t.name}", dims, j)
        add(f"type of {t.name}", qtype)
        add(f"offset of {t.name}", offset)
    return out


def patch(data, offset, dtype, value):
    """Write `value` (as the unsigned bit pattern of dtype's size) into `data`."""
    size = np.dtype(dtype).itemsize
    data[offset:offset + size] = (int(value) % (1 << 8 * size)).to_bytes(size, "little")


def corrupted(src, dst, *changes):
    """A copy of src with fields changed: (label-or-offset, value) pairs, or raw bytes at
    an offset as (offset, b"...")."""
    data = bytearray(src.read_bytes())
    table = header_fields(src)
    for where, value in changes:
        if isinstance(value, bytes):
            data[where:where + len(value)] = value
        else:
            patch(data, *table[where], value)
    dst.write_bytes(data)
    return dst


def load_here(path, **kwargs):
    """numatp.load in this process, one shard over this process's CPUs, as on a one-node
    machine (on a multi-node one nodes=1 would start a worker)."""
    here = [group.Placement(-1, tuple(sorted(os.sched_getaffinity(0))), False)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(group, "resolve_nodes", lambda nodes, threads: here)
        return numatp.load(path, nodes=1, **kwargs)


def load_error(path, **kwargs):
    """The NumatpError that loading `path` raises (None if it loads), checking on the way
    that the load neither hangs nor allocates more than MAX_ALLOC."""
    tracemalloc.start()
    try:
        with hang_guard():
            try:
                load_here(path, **kwargs).close()
            except NumatpError as e:
                return e
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MAX_ALLOC, f"loading {path} allocated {peak / 2**20:.0f} MiB"


def cli_error(args, monkeypatch, capsys, stdin=""):
    code, out, err = run_main(args, monkeypatch, capsys, stdin)
    return code, error_line(err)


# ---- the model file -----------------------------------------------------------------

def bad_files(model, d):
    """(what, path, words the message must contain) for each kind of bad file."""
    os.mkfifo(d / "fifo.gguf")
    (d / "text.gguf").write_text("this is plain text, not a model\n" * 4)
    (d / "empty.gguf").write_bytes(b"")
    size = model.stat().st_size
    (d / "cut_header.gguf").write_bytes(model.read_bytes()[:200])
    (d / "cut_data.gguf").write_bytes(model.read_bytes()[:size - 10])
    c = lambda name, *ch: corrupted(model, d / name, *ch)  # noqa: E731
    arch_at = header_fields(model)["length of general.architecture"][0] + 8
    return [
        ("missing", d / "nowhere.gguf", ["no such file"]),
        ("directory", d, ["is a directory"]),
        ("fifo", d / "fifo.gguf", ["not a regular file"]),   # opening it used to hang
        ("not GGUF", d / "text.gguf", ["not a GGUF file"]),
        ("empty", d / "empty.gguf", ["not a GGUF file"]),
        ("version", c("version.gguf", ("GGUF.version", 7)), ["unsupported GGUF version 7"]),
        ("cut in header", d / "cut_header.gguf", ["truncated or corrupt"]),
        ("cut in data", d / "cut_data.gguf", ["outside the file", "truncated"]),
        ("tensor count", c("ntensors.gguf", ("GGUF.tensor_count", 2**63)), ["corrupt header"]),
        ("metadata count", c("nkv.gguf", ("GGUF.kv_count", 2**64 - 1)), ["corrupt header"]),
        ("array length", c("arraylen.gguf", ("length of tokenizer.ggml.tokens", 2**62)),
         ["tokenizer.ggml.tokens", "truncated or corrupt"]),
        ("string length", c("strlen.gguf", ("length of general.name", 2**40)),
         ["general.name", "truncated or corrupt"]),
        ("value type", c("vtype.gguf", ("type of llama.block_count", 77)), ["unknown type 77"]),
        ("dimension count", c("ndims.gguf", ("dimension count of token_embd.weight", 9)),
         ["token_embd.weight has 9 dimensions"]),
        ("huge dimension", c("dim.gguf", ("dimension 1 of output.weight", 2**62)),
         ["output.weight has bad dimensions"]),
        ("dimension", c("dim2.gguf", ("dimension 1 of output.weight", 2**20)),
         ["output.weight lies outside the file"]),
        ("tensor offset", c("offset.gguf", ("offset of output_norm.weight", 2**60)),
         ["output_norm.weight", "outside the file"]),
        ("architecture", c("arch.gguf", (arch_at, b"falco")),
         ["unsupported architecture 'falco'", "supported: llama, qwen2, qwen2moe, qwen3, qwen3moe"]),
        ("quant type", c("q81.gguf", ("type of blk.0.attn_q.weight", int(gguf.GGMLQuantizationType.Q8_1))),
         ["blk.0.attn_q.weight", "Q8_1", "cannot run", "supported: F32,"]),
        ("type code", c("type99.gguf", ("type of blk.0.attn_q.weight", 99)), ["unknown type 99"]),
        ("norm type", c("normf16.gguf", ("type of blk.0.attn_norm.weight", int(gguf.GGMLQuantizationType.F16))),
         ["blk.0.attn_norm.weight", "must be F32"]),
        ("missing tensor", c("rename.gguf", (header_fields(model)["name length of blk.0.ffn_up.weight"][0] + 8,
                                             b"blk.0.ffn_uq.weight")),
         ["missing tensor blk.0.ffn_up.weight"]),
        ("block count", c("layers.gguf", ("value of llama.block_count", 2)),
         ["missing tensor blk.1."]),
        ("huge block count", c("layers_huge.gguf", ("value of llama.block_count", 2**32 - 1)),
         ["block_count = 4294967295", "only"]),        # used to hang listing 4e9 layers
        ("ffn length", c("ffn.gguf", ("value of llama.feed_forward_length", 96)),
         ["blk.0.ffn_gate.weight has shape (128, 64)", "implies (96, 64)"]),
        ("head count", c("heads.gguf", ("value of llama.attention.head_count", 3)),
         ["embedding length 64 is not a multiple of the head count 3"]),
        ("kv heads", c("kvheads.gguf", ("value of llama.attention.head_count_kv", 3)),
         ["4 heads is not a multiple of 3 KV heads"]),
        ("tensor shape", c("shape.gguf", ("dimension 1 of blk.0.attn_q.weight", 32)),
         ["blk.0.attn_q.weight has shape (32, 64)", "implies (64, 64)"]),
    ]


def test_bad_model_files(model, tmp_path, monkeypatch, capsys):
    """Each bad file: the library raises ModelFileError, the CLI prints the same message
    as one line and exits with 1."""
    for what, path, words in bad_files(model, tmp_path):
        e = load_error(path)
        assert isinstance(e, ModelFileError), (what, e)
        for w in words:
            assert w in str(e), (what, str(e))
        code, line = cli_error(["generate", "hello", "-m", path], monkeypatch, capsys)
        assert (code, line) == (1, str(e)), what


def test_unreadable_file(model, tmp_path):
    """A file without read permission. Root would read it anyway, so the child gives up
    the capabilities that override file modes (dropped from its bounding set, they stay
    gone through exec)."""
    path = tmp_path / "secret.gguf"
    path.write_bytes(model.read_bytes())
    path.chmod(0)
    r = subprocess.run([sys.executable, "-m", "numatp", "generate", "hi", "-m", str(path)],
                       capture_output=True, text=True, timeout=120, preexec_fn=_obey_file_modes)
    assert r.returncode == 1, r.stderr
    assert error_line(r.stderr) == f"{path}: cannot read: Permission denied"


def _obey_file_modes():
    if os.geteuid() != 0:
        return
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_every_truncation_of_a_small_file(tmp_path):
    """A GGUF with every metadata value type (nested arrays too) and two tensors, cut at
    every byte: each cut is a ModelFileError, from the full parser and the metadata-only
    reader alike."""
    w = gguf.GGUFWriter(str(tmp_path / "all.gguf"), "llama")
    w.add_uint8("t.u8", 7)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 700)
    w.add_int16("t.i16", -700)
    w.add_uint32("t.u32", 70000)
    w.add_int32("t.i32", -70000)
    w.add_float32("t.f32", 1.5)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_uint64("t.u64", 2**40)
    w.add_int64("t.i64", -2**40)
    w.add_float64("t.f64", 2.5)
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.strs", ["x", "yy", ""])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_tensor("a", np.arange(32, dtype=np.float32).reshape(4, 8))
    w.add_tensor("b", np.ones((2, 16), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    full = (tmp_path / "all.gguf").read_bytes()
    f = GGUFFile(tmp_path / "all.gguf")
    assert f.metadata["t.nested"] == [[1, 2], [3]] and f.tensors["b"].shape == (2, 16)
    end = max(t.offset + t.nbytes for t in f.tensors.values())
    f.close()
    assert end == len(full)  # so every shorter cut loses something
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full)
    for n in range(len(full) - 1, -1, -1):
        os.truncate(cut, n)
        for reader in (GGUFFile, read_metadata):
            with pytest.raises(ModelFileError):
                reader(cut)


def test_truncated_model_sampled(model, tmp_path, monkeypatch, capsys):
    """The test model cut at every 13th byte of its header and at 40 points of its
    tensor data: each a ModelFileError from the whole load."""
    full = model.read_bytes()
    header_end = GGUFFile(model).data_start
    cuts = sorted(set(range(0, header_end, 13)) | set(np.linspace(header_end, len(full) - 1, 40, dtype=int)))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full)
    for n in reversed(cuts):
        os.truncate(cut, n)
        assert isinstance(load_error(cut), ModelFileError), n
    code, line = cli_error(["generate", "hello", "-m", cut], monkeypatch, capsys)
    assert code == 1 and "truncated" in line


SPECIAL = (0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 31, 32, 33, 255, 256, 4096, 2**16, 2**31 - 1, 2**31,
           2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1)


@st.composite
def mutations(draw, fields, header_end):
    """A changed header field (any value, often a boundary one) or a changed header byte."""
    if draw(st.integers(0, 3)) == 0:
        return f"byte {draw(st.integers(0, header_end - 1))}", np.uint8, draw(st.integers(0, 255))
    label = draw(st.sampled_from(sorted(fields)))
    offset, dtype = fields[label]
    top = 1 << 8 * dtype.itemsize
    value = draw(st.one_of(st.sampled_from([v for v in SPECIAL if v < top]),
                           st.integers(0, top - 1)))
    return label, dtype, value


@pytest.fixture(scope="module")
def mutation_setup(model, fields, tmp_path_factory):
    header_end = GGUFFile(model).data_start
    return model.read_bytes(), fields, header_end, tmp_path_factory.mktemp("mutated") / "m.gguf"


# NUMATP_HYPOTHESIS_EXAMPLES=3000 searches deeper (about 2 minutes); 3000 found nothing.
@settings(max_examples=int(os.environ.get("NUMATP_HYPOTHESIS_EXAMPLES", 150)), deadline=None)
@given(data=st.data())
def test_corrupt_header_fields(mutation_setup, data):
    """Property: whatever header fields are corrupted, loading either works or raises a
    NumatpError -- no other exception, no hang, no allocation sized by the corruption."""
    original, fields, header_end, path = mutation_setup
    buf = bytearray(original)
    for _ in range(data.draw(st.integers(1, 3), label="how many")):
        label, dtype, value = data.draw(mutations(fields, header_end))
        offset = int(label.split()[1]) if label.startswith("byte ") else fields[label][0]
        patch(buf, offset, dtype, value)
    path.write_bytes(buf)
    load_error(path)


# ---- prompts and flags --------------------------------------------------------------

def test_empty_prompt(model, monkeypatch, capsys):
    message = "empty prompt: give some text to continue"
    assert cli_error(["generate", "", "-m", model], monkeypatch, capsys) == (2, message)
    assert cli_error(["generate", "-m", model], monkeypatch, capsys, stdin="") == (2, message)
    with load_here(model) as llm:
        with pytest.raises(UsageError) as e:
            next(llm.generate(""))
        assert str(e.value) == message


def test_prompt_longer_than_context(model, monkeypatch, capsys):
    prompt = "Once upon a time there was a small robot who lived in a quiet town by the sea."
    code, line = cli_error(["generate", prompt, "-m", model, "-c", 8], monkeypatch, capsys)
    assert code == 1 and "does not fit the context of 8 tokens" in line
    with load_here(model, ctx_size=8) as llm:
        with pytest.raises(NumatpError) as e:
            next(llm.generate(prompt))
        assert str(e.value) == line


def test_context_too_large_for_memory(model, monkeypatch, capsys):
    """A KV cache larger than the machine is refused before anything is allocated."""
    code, line = cli_error(["generate", "hi", "-m", model, "-c", 10**13], monkeypatch, capsys)
    assert code == 1 and "KV cache" in line and "lower -c/--ctx-size" in line
    assert str(load_error(model, ctx_size=10**13)) == line


@pytest.mark.parametrize("flags, words", [
    (["--nodes", "5,7"], "no such node 5"),
    (["--nodes", "0,0"], "listed twice"),
    (["--nodes", "abc"], "invalid --nodes 'abc'"),
    (["--nodes", "0"], "need at least 1"),
    (["--nodes", "1000"], "at most"),       # would start 1000 worker processes
    (["-t", "0"], "invalid thread count 0"),
])
def test_bad_placement_flags(model, monkeypatch, capsys, flags, words):
    code, line = cli_error(["generate", "hi", "-m", model, *flags], monkeypatch, capsys)
    assert code == 2 and words in line
    kwargs = {"nodes": flags[1]} if flags[0] == "--nodes" else {"threads": int(flags[1])}
    with pytest.raises(UsageError) as e:
        numatp.load(model, **kwargs)
    assert str(e.value) == line


@pytest.mark.parametrize("flags, words", [
    (["-n", "0"], "invalid -n 0"),
    (["-n", "-5"], "invalid -n -5"),
    (["-c", "-1"], "invalid --ctx-size -1"),
    (["--system", "be brief"], "--system needs --chat"),
    (["--temp", "abc"], "Invalid value for '--temp'"),
    (["--bogus"], "No such option: --bogus"),
])
def test_bad_generation_flags(model, monkeypatch, capsys, flags, words):
    code, line = cli_error(["generate", "hi", "-m", model, *flags], monkeypatch, capsys)
    assert code == 2 and words in line


@pytest.mark.parametrize("flag, value, param, words", [
    ("--temp", NAN, "temperature", "invalid temperature nan: must be a finite number"),
    ("--temp", -1.0, "temperature", "invalid temperature -1.0: must be >= 0"),
    ("--temp", math.inf, "temperature", "invalid temperature inf"),
    ("--top-p", NAN, "top_p", "invalid top-p nan"),
    ("--top-p", 0.0, "top_p", "invalid top-p 0.0: must be in (0, 1]"),
    ("--min-p", -0.5, "min_p", "invalid min-p -0.5"),
    ("--min-p", NAN, "min_p", "invalid min-p nan"),
    ("--repeat-penalty", -1.0, "repeat_penalty", "invalid repeat-penalty -1.0: must be > 0"),
    ("--repeat-penalty", NAN, "repeat_penalty", "invalid repeat-penalty nan"),
    ("--top-k", -3, "top_k", "invalid top-k -3"),
    ("--repeat-last-n", -1, "repeat_last_n", "invalid repeat-last-n -1"),
    ("--seed", -5, "seed", "invalid seed -5"),
])
def test_bad_sampling_values(model, monkeypatch, capsys, flag, value, param, words):
    """The CLI rejects the value before loading; LLM.generate with the same value raises
    UsageError with the same message."""
    code, line = cli_error(["generate", "hi", "-m", model, flag, value], monkeypatch, capsys)
    assert code == 2 and line.startswith(words)
    with load_here(model) as llm:
        with pytest.raises(UsageError) as e:
            next(llm.generate("hi", **{param: value}))
    assert str(e.value) == line


def test_what_a_user_sees(model, tmp_path):
    """In a real process: one line, no traceback, the right exit code."""
    bad = corrupted(model, tmp_path / "bad.gguf", ("GGUF.kv_count", 2**64 - 1))
    for args, code in [(["generate", "hi", "-m", bad], 1),
                       (["generate", "hi", "-m", model, "--temp", "nan"], 2),
                       (["generate", "hi", "-m", model, "--bogus"], 2)]:
        r = subprocess.run([sys.executable, "-m", "numatp", *map(str, args)], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode == code, r.stderr
        error_line(r.stderr)
        assert r.stdout == ""
