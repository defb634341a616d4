"""Well-formed GGUF files whose metadata or tensor table says something impossible: a
vocabulary that does not match the embedding, values of the wrong type, byte tokens
that are not bytes, arrays nested hundreds deep, a key or tensor given twice, tensor
data that overlaps or is misaligned. Each is refused at load with one ModelFileError
line naming the file and the problem -- not a traceback, and not an IndexError in the
middle of a generation."""
import pytest

import numatp
from gguf_edit import (T, Layout, array, nested_array, scalar, string, tensor_offset,
                       with_tensor_offset)
from numatp.cli.info import describe
from numatp.errors import ModelFileError
from numatp.model.gguf_file import read_metadata
from numatp.tokenizer import load_tokenizer
from robust import error_line, run_main
from synth import write_model
from test_bad_input import load_error

VOCAB = 300


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("meta")
    return {kind: write_model(d / f"{kind}.gguf", qtype="F32", n_layers=1, vocab=VOCAB,
                              tokenizer=kind)
            for kind in ("gpt2", "llama")}


def retokenized(layout, path, change):
    """The tokens and token types of `path`, changed by change(tokens, types)."""
    meta = read_metadata(path)
    tokens, types = list(meta["tokenizer.ggml.tokens"]), list(meta["tokenizer.ggml.token_type"])
    change(tokens, types)
    layout.set("tokenizer.ggml.tokens", T.ARRAY, array(T.STRING, tokens))
    return layout.set("tokenizer.ggml.token_type", T.ARRAY, array(T.INT32, types))


def _drop_last(tokens, types):
    del tokens[-1], types[-1]


def _add_one(tokens, types):
    tokens.append("extra")
    types.append(1)


def _bad_byte_token(tokens, types):
    assert tokens[3] == "<0x00>" and types[3] == 6
    tokens[3] = "<0xZZ>"


def _overlap(layout):
    i, j = layout.tensor_index("blk.0.attn_norm.weight"), layout.tensor_index("output_norm.weight")
    layout.tensors[i] = with_tensor_offset(layout.tensors[i], tensor_offset(layout.tensors[j]))
    return layout


def _misalign(layout):
    i = layout.tensor_index("output_norm.weight")
    layout.tensors[i] = with_tensor_offset(layout.tensors[i], tensor_offset(layout.tensors[i]) + 4)
    return layout


def _twice(entries, index):
    entries.insert(index, entries[index])


CASES = [
    # (what, tokenizer, edit(layout, path) -> layout, words of the message)
    ("fewer tokens than embedding rows", "gpt2",
     lambda lay, p: retokenized(lay, p, _drop_last),
     f"the tokenizer has {VOCAB - 1} tokens but token_embd.weight has {VOCAB} rows"),
    ("more tokens than embedding rows", "gpt2",
     lambda lay, p: retokenized(lay, p, _add_one),
     f"the tokenizer has {VOCAB + 1} tokens but token_embd.weight has {VOCAB} rows"),
    ("tokens that are numbers", "gpt2",
     lambda lay, p: lay.set("tokenizer.ggml.tokens", T.ARRAY, array(T.INT32, range(VOCAB))),
     "tokenizer.ggml.tokens should be an array of strings, but element 0 is the number 0"),
    ("token types that are strings", "gpt2",
     lambda lay, p: lay.set("tokenizer.ggml.token_type", T.ARRAY, array(T.STRING, ["1"] * VOCAB)),
     "tokenizer.ggml.token_type should be an array of integers, but element 0 is the string '1'"),
    ("scores that are strings", "llama",
     lambda lay, p: lay.set("tokenizer.ggml.scores", T.ARRAY, array(T.STRING, ["0"] * VOCAB)),
     "tokenizer.ggml.scores should be an array of numbers"),
    ("merges that are numbers", "gpt2",
     lambda lay, p: lay.set("tokenizer.ggml.merges", T.ARRAY, array(T.UINT64, [1, 2])),
     "tokenizer.ggml.merges should be an array of strings, but element 0 is the number 1"),
    ("tokenizer model as an array", "gpt2",
     lambda lay, p: lay.set("tokenizer.ggml.model", T.ARRAY, array(T.STRING, ["gpt2", "x"])),
     "tokenizer.ggml.model should be a string, not an array of 2 values"),
    ("pre-tokenizer as an array", "gpt2",
     lambda lay, p: lay.set("tokenizer.ggml.pre", T.ARRAY, array(T.STRING, ["default"])),
     "tokenizer.ggml.pre should be a string, not an array of 1 values"),
    ("add_bos_token as a string", "llama",
     lambda lay, p: lay.set("tokenizer.ggml.add_bos_token", T.STRING, string("false")),
     "tokenizer.ggml.add_bos_token should be a boolean, not the string 'false'"),
    ("chat template as an array", "gpt2",
     lambda lay, p: lay.set("tokenizer.chat_template", T.ARRAY, array(T.STRING, ["{{ x }}"])),
     "tokenizer.chat_template should be a string"),
    ("name as a number", "gpt2",
     lambda lay, p: lay.set("general.name", T.UINT32, scalar(T.UINT32, 7)),
     "general.name should be a string, not the number 7"),
    ("architecture as an array", "gpt2",
     lambda lay, p: lay.set("general.architecture", T.ARRAY, array(T.STRING, ["llama", "x"])),
     "general.architecture is an array of 2 values, not a string"),
    ("rope scaling as an array", "gpt2",
     lambda lay, p: lay.set("llama.rope.scaling.type", T.ARRAY, array(T.INT32, range(100000))),
     "llama.rope.scaling.type is an array of 100000 values, not a string"),
    ("block count as an array", "gpt2",
     lambda lay, p: lay.set("llama.block_count", T.ARRAY, array(T.UINT32, [1, 1])),
     "llama.block_count is an array of 2 values, not a positive integer"),
    ("byte token that is not a byte", "llama",
     lambda lay, p: retokenized(lay, p, _bad_byte_token),
     "token 3 is a byte token, but its text '<0xZZ>' is not of the form <0xNN>"),
    ("arrays nested 900 deep", "gpt2",
     lambda lay, p: lay.set("general.tags", T.ARRAY, nested_array(900)),
     "general.tags has arrays nested more than 8 deep"),
    ("key given twice", "gpt2",
     lambda lay, p: _twice(lay.kvs, lay.index("general.name")) or lay,
     "key general.name appears twice"),
    ("tensor given twice", "gpt2",
     lambda lay, p: _twice(lay.tensors, lay.tensor_index("output_norm.weight")) or lay,
     "two tensors are named output_norm.weight"),
    ("overlapping tensor data", "gpt2", lambda lay, p: _overlap(lay),
     "the data of tensors"),
    ("misaligned tensor data", "gpt2", lambda lay, p: _misalign(lay),
     "output_norm.weight: its data offset"),
]


@pytest.mark.parametrize("what, kind, edit, words", CASES, ids=[c[0] for c in CASES])
def test_malformed_file(models, tmp_path, monkeypatch, capsys, what, kind, edit, words):
    path = edit(Layout(models[kind]), models[kind]).write(tmp_path / "bad.gguf")
    e = load_error(path)
    assert isinstance(e, ModelFileError), e
    assert str(e).startswith(f"{path}: ") and words in str(e), str(e)
    code, out, err = run_main(["generate", "hi", "-m", path, "--temp", "0"], monkeypatch, capsys)
    assert (code, out, error_line(err)) == (1, "", str(e))


def test_deep_nesting_in_every_reader(models, tmp_path, monkeypatch, capsys):
    """Each reader used to overflow Python's stack (a RecursionError 3000 lines long)."""
    layout = Layout(models["gpt2"]).set("general.tags", T.ARRAY, nested_array(900))
    path = layout.write(tmp_path / "deep.gguf")
    for reader in (read_metadata, load_tokenizer, describe, numatp.load):
        with pytest.raises(ModelFileError, match="nested more than 8 deep"):
            reader(path)
    code, out, err = run_main(["info", path], monkeypatch, capsys)
    assert code == 1 and "nested more than 8 deep" in error_line(err)


def test_shallow_nesting_still_reads(models, tmp_path):
    layout = Layout(models["gpt2"]).set("general.tags", T.ARRAY, nested_array(7))
    path = layout.write(tmp_path / "ok.gguf")
    value = read_metadata(path)["general.tags"]
    for _ in range(6):
        value = value[0]
    assert value == [1]
