"""Models split with llama.cpp's gguf-split format open as one model: the union of the
splits' tensors, each read from its own file, and one clear line for every way the set
of splits can be wrong."""
import shutil

import gguf
import numpy as np
import pytest

import numatp
from numatp.errors import ModelFileError
from numatp.model.gguf_file import GGUFFile, read_metadata
from numatp.sampling import SamplingParams

from synth import write_model

SHAPE = dict(qtype="F32", n_layers=2, vocab=300, hidden=32, ffn=64)   # 21 tensors


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same model as one file and as three splits."""
    d = tmp_path_factory.mktemp("split")
    return write_model(d / "whole.gguf", **SHAPE), write_model(d / "m.gguf", **SHAPE, split_tensors=8)


def test_split_writer_layout(pair):
    """gguf's writer lays splits out as llama.cpp's gguf-split does: every split a GGUF
    with its own tensors and the split keys, the metadata in the first."""
    _, first = pair
    assert first.name == "m-00001-of-00003.gguf"
    second = gguf.GGUFReader(first.with_name("m-00002-of-00003.gguf"))
    keys = {k: f.contents() for k, f in second.fields.items() if not k.startswith("GGUF.")}
    assert keys == {"split.no": 1, "split.count": 3, "split.tensors.count": 21}
    assert len(second.tensors) == 8
    assert read_metadata(first).get("general.architecture") == "llama"


def test_splits_open_as_one_model(pair):
    whole, first = pair
    a, b = GGUFFile(whole), GGUFFile(first)
    try:
        assert a.tensors.keys() == b.tensors.keys()
        for name, t in a.tensors.items():
            assert (t.qtype, t.shape) == (b.tensors[name].qtype, b.tensors[name].shape)
            assert np.array_equal(t.data, b.tensors[name].data)
        parts = sorted(first.parent.glob("m-*.gguf"))
        assert b.file_size == sum(p.stat().st_size for p in parts)
        for t in b.tensors.values():   # every split's pages can be released
            b.release_view(t.data)
    finally:
        a.close()
        b.close()


def test_split_model_generates_the_same_tokens(pair):
    whole, first = pair
    params = SamplingParams(temperature=0.0)
    runs = []
    for path in pair:
        with numatp.load(path, nodes=1) as llm:
            runs.append(list(llm.generate_ids(llm.tokenize("Once upon a time"), 12, params,
                                              stop_at_eog=False)))
    assert runs[0] == runs[1] and len(runs[0]) == 12


def _copy_splits(first, dest):
    dest.mkdir()
    for p in first.parent.glob(first.name.replace("00001", "*")):
        shutil.copy(p, dest / p.name)
    return dest / first.name


def test_a_split_other_than_the_first_names_the_first(pair):
    _, first = pair
    second = first.with_name("m-00002-of-00003.gguf")
    with pytest.raises(ModelFileError, match=r"this is split 2 of 3 of a model; .* by its first "
                                             r"split: open .*m-00001-of-00003\.gguf$") as e:
        GGUFFile(second)
    assert "\n" not in str(e.value)


def test_missing_split(pair, tmp_path):
    first = _copy_splits(pair[1], tmp_path / "m")
    first.with_name("m-00003-of-00003.gguf").unlink()
    with pytest.raises(ModelFileError, match=r"split 3 of 3 is missing \(.*m-00003-of-00003\.gguf\)"):
        GGUFFile(first)


def test_split_of_another_split_count(tmp_path):
    first = write_model(tmp_path / "two.gguf", **SHAPE, split_tensors=12)
    other = write_model(tmp_path / "three.gguf", **SHAPE, split_tensors=8)
    shutil.copy(other.with_name("three-00002-of-00003.gguf"), first.with_name("two-00002-of-00002.gguf"))
    with pytest.raises(ModelFileError, match=r"two-00002-of-00002\.gguf: expected split 2 of 2, but "
                                             r"the file says split 2 of 3"):
        GGUFFile(first)


def test_splits_that_miss_tensors(tmp_path):
    first = write_model(tmp_path / "a.gguf", **SHAPE, split_tensors=12)    # 12 + 9 tensors
    other = write_model(tmp_path / "b.gguf", **SHAPE, split_tensors=13)    # 13 + 8 tensors
    shutil.copy(other.with_name("b-00002-of-00002.gguf"), first.with_name("a-00002-of-00002.gguf"))
    with pytest.raises(ModelFileError, match="split.tensors.count says 21 tensors, but the 2 splits "
                                             "hold 20"):
        GGUFFile(first)


def test_splits_that_repeat_a_tensor(tmp_path):
    first = write_model(tmp_path / "a.gguf", **SHAPE, split_tensors=12)    # 12 + 9 tensors
    other = write_model(tmp_path / "b.gguf", **SHAPE, split_tensors=11)    # 11 + 10 tensors
    shutil.copy(other.with_name("b-00002-of-00002.gguf"), first.with_name("a-00002-of-00002.gguf"))
    with pytest.raises(ModelFileError, match="tensor .* is also in an earlier split"):
        GGUFFile(first)


def test_first_split_under_another_name(pair, tmp_path):
    renamed = tmp_path / "model.gguf"
    shutil.copy(pair[1], renamed)
    with pytest.raises(ModelFileError, match=r"the first of 3 splits, but its name does not end in "
                                             r"-00001-of-00003\.gguf"):
        GGUFFile(renamed)


def test_cli_names_the_problem_in_one_line(pair, tmp_path):
    import subprocess
    import sys
    second = pair[1].with_name("m-00002-of-00003.gguf")
    r = subprocess.run([sys.executable, "-m", "numatp", "info", str(second)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "numatp: error: " in r.stderr
    assert "m-00001-of-00003.gguf" in r.stderr
