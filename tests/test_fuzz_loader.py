"""Seeded fuzzing of the model loader: small valid GGUF files, each changed in a few
hundred ways (bytes flipped, cut short, counts and lengths made huge, type codes
changed, entries duplicated, dropped or retyped, arrays nested deep, tensors made to
overlap), go through everything that reads a file -- GGUFFile, the tokenizer, `info`,
numatp.load and a short logits call (for models that still have the seeds' F32 weights
only: one with a tensor retyped to another quant type whose size happens to fit would
compile a new kernel set, a minute each). Each must end in a working model or a clean
NumatpError: no other exception, no hang, no allocation sized by the corruption.

The seed is fixed, so a failure names a mutation that reproduces it
(NUMATP_FUZZ_SEED and NUMATP_FUZZ_CASES search elsewhere or longer).
"""
import copy
import os
import random
import struct
import subprocess
import sys
import tracemalloc

import gguf
import pytest

from gguf_edit import (SCALAR_CODES, T, Layout, array, name_of, nested_array, scalar, string,
                       tensor_offset, value_type, with_tensor_offset, with_tensor_type)
from models import STORIES
from numatp.cli.info import describe
from numatp.errors import NumatpError
from numatp.model.gguf_file import GGUFFile, read_metadata
from numatp.tokenizer import load_tokenizer
from robust import error_line, hang_guard, run_main
from synth import write_model
from test_bad_input import MAX_ALLOC, SPECIAL, header_fields, load_here

SEED = int(os.environ.get("NUMATP_FUZZ_SEED", 20240611))
CASES = int(os.environ.get("NUMATP_FUZZ_CASES", 100))   # per seed file
F32 = int(gguf.GGMLQuantizationType.F32)   # the seeds' only type: their kernels are compiled once


def typed_value(rng):
    """A value of some GGUF type, as (type code, payload)."""
    return rng.choice([
        (T.STRING, string("x")),
        (T.STRING, string("é<0xZZ>")),
        (T.UINT32, scalar(T.UINT32, rng.choice([0, 1, 7, 2**32 - 1]))),
        (T.INT32, scalar(T.INT32, rng.choice([-1, 0, 3]))),
        (T.FLOAT32, scalar(T.FLOAT32, rng.choice([0.0, -1.0, float("nan"), float("inf")]))),
        (T.BOOL, scalar(T.BOOL, rng.random() < 0.5)),
        (T.UINT64, scalar(T.UINT64, rng.choice([0, 2**63, 2**64 - 1]))),
        (T.FLOAT64, scalar(T.FLOAT64, rng.choice([1e308, float("nan")]))),
        (T.ARRAY, array(T.STRING, ["a", "b"])),
        (T.ARRAY, array(T.INT32, [1, 2, 3])),
        (T.ARRAY, array(T.FLOAT32, [1.0])),
        (T.ARRAY, array(T.UINT8, [])),
        (T.ARRAY, nested_array(rng.choice([2, 50, 900, 5000]))),
    ])


def random_elements(rng, etype, count) -> bytes:
    size = struct.calcsize(SCALAR_CODES[etype])
    return struct.pack("<IQ", etype, count) + bytes(rng.randrange(256) for _ in range(count * size))


def mutate(layout, fields, header_end, rng):
    """One mutated file as (description, bytes)."""
    kind = rng.choice(["flip", "cut", "field", "retype kv", "array element type", "duplicate kv",
                       "drop kv", "shuffle kvs", "duplicate tensor", "move tensor",
                       "retype tensor"])
    edit = copy.copy(layout)
    edit.kvs, edit.tensors = list(layout.kvs), list(layout.tensors)
    if kind in ("flip", "cut", "field"):
        data = bytearray(layout.encode())
        if kind == "flip":
            spots = [rng.randrange(header_end) for _ in range(rng.randint(1, 4))]
            for at in spots:
                data[at] ^= 1 << rng.randrange(8)
            return f"flip bits at {spots}", bytes(data)
        if kind == "cut":
            n = rng.randrange(len(data))
            return f"cut at {n}", bytes(data[:n])
        label = rng.choice(sorted(fields))
        offset, dtype = fields[label]
        top = 1 << 8 * dtype.itemsize
        value = rng.choice([v for v in SPECIAL if v < top] + [rng.randrange(top)])
        data[offset:offset + dtype.itemsize] = value.to_bytes(dtype.itemsize, "little")
        return f"{label} = {value}", bytes(data)
    if kind == "retype kv":
        key = name_of(rng.choice(edit.kvs))
        vtype, payload = typed_value(rng)
        edit.set(key, vtype, payload)
        what = f"{key} retyped to {T(vtype).name}"
    elif kind == "array element type":
        key = name_of(rng.choice([e for e in edit.kvs if value_type(e) == T.ARRAY]))
        etype = rng.choice(list(SCALAR_CODES))
        edit.set(key, T.ARRAY, random_elements(rng, etype, rng.choice([1, 3, 300, 600])))
        what = f"{key} elements retyped to {etype.name}"
    elif kind == "duplicate kv":
        entry = rng.choice(edit.kvs)
        edit.kvs.insert(rng.randrange(len(edit.kvs) + 1), entry)
        what = f"{name_of(entry)} twice"
    elif kind == "drop kv":
        what = f"{name_of(edit.kvs.pop(rng.randrange(len(edit.kvs))))} dropped"
    elif kind == "shuffle kvs":
        rng.shuffle(edit.kvs)
        what = "metadata shuffled"
    else:
        i = rng.randrange(len(edit.tensors))
        name = name_of(edit.tensors[i])
        if kind == "duplicate tensor":
            edit.tensors.insert(rng.randrange(len(edit.tensors) + 1), edit.tensors[i])
            what = f"tensor {name} twice"
        elif kind == "move tensor":   # onto another tensor, or off the alignment
            other = tensor_offset(rng.choice(edit.tensors))
            offset = max(0, other + rng.choice([0, 32, -32, 1, 3, 17]))
            edit.tensors[i] = with_tensor_offset(edit.tensors[i], offset)
            what = f"tensor {name} moved to offset {offset}"
        else:
            qtype = rng.choice([0, 1, 2, 3, 6, 8, 10, 12, 13, 14, 30, 31, 39, 40, 99, 2**32 - 1])
            edit.tensors[i] = with_tensor_type(edit.tensors[i], qtype)
            what = f"tensor {name} type {qtype}"
    return what, edit.encode()


def check_file(path):
    """Every reader of `path` works or raises NumatpError. Returns what happened."""
    try:
        GGUFFile(path).close()
    except NumatpError:
        return "rejected"
    for reader in (read_metadata, load_tokenizer, describe):
        try:
            reader(path)
        except NumatpError:
            pass
    try:
        llm = load_here(path, ctx_size=32)
    except NumatpError:
        return "refused"
    with llm:
        llm.detokenize(range(llm.config.vocab))
        if any(t.qtype != F32 for t in llm.gguf.tensors.values()):
            return "loads"   # a tensor retyped to a size that fits: new kernels, a minute to compile
        ids = llm.tokenize("Once upon a time")[:4] or [0]
        logits = llm.logits(ids)
        assert logits.shape == (llm.config.vocab,)
    return "works"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    return [
        write_model(d / "gpt2.gguf", qtype="F32", n_layers=1, vocab=300, ctx=64),
        write_model(d / "spm.gguf", qtype="F32", n_layers=1, vocab=300, ctx=64, tokenizer="llama",
                    chat_template="{{ messages[0]['content'] }}"),
        STORIES,
    ]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["gpt2", "spm", "stories260K"])
def test_fuzzed_files(seeds, tmp_path, which):
    seed_file = seeds[which]
    layout = Layout(seed_file)
    fields = header_fields(seed_file)
    header_end = GGUFFile(seed_file).data_start
    rng = random.Random(SEED * 10 + which)
    path = tmp_path / "m.gguf"
    failures, outcomes = [], {}
    for case in range(CASES):
        what, data = mutate(layout, fields, header_end, rng)
        path.write_bytes(data)
        tracemalloc.start()
        try:
            with hang_guard():
                outcome = check_file(path)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        except Exception as e:   # noqa: BLE001 -- collecting every failure is the point
            failures.append(f"case {case} ({what}): {type(e).__name__}: {str(e)[:200]}")
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        if peak > MAX_ALLOC:
            failures.append(f"case {case} ({what}): allocated {peak / 2**20:.0f} MiB")
    assert not failures, "\n".join(failures)
    assert outcomes.get("works", 0) and len(outcomes) > 1, outcomes   # the mutations vary


def test_fuzzed_files_through_the_cli(seeds, tmp_path, monkeypatch, capsys):
    """A few of the mutations through `numatp info` and `numatp generate`: exit 0, or 1
    with one error line. The first two also in a real process."""
    layout = Layout(seeds[1])
    fields = header_fields(seeds[1])
    header_end = GGUFFile(seeds[1]).data_start
    rng = random.Random(SEED)
    for case in range(16):
        what, data = mutate(layout, fields, header_end, rng)
        path = tmp_path / f"m{case}.gguf"
        path.write_bytes(data)
        runs = [["info", path]]
        try:
            if all(t.qtype == F32 for t in GGUFFile(path).tensors.values()):
                runs.append(["generate", "Once", "-m", path, "-n", "2", "-c", "32", "--temp", "0"])
        except NumatpError:
            runs.append(["generate", "Once", "-m", path])
        for args in runs:
            with hang_guard():
                code, out, err = run_main(args, monkeypatch, capsys)
            assert code in (0, 1), (what, args, err)
            if code == 1:
                error_line(err)
        if case < 2:
            r = subprocess.run([sys.executable, "-m", "numatp", "info", str(path)],
                               capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            assert r.returncode in (0, 1), (what, r.stderr)
            if r.returncode == 1:
                error_line(r.stderr)
