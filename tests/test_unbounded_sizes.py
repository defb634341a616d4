"""Counts a user gives are checked before anything is allocated for them: `info --nodes
1099511627776` used to allocate until the OOM killer came, a 51 MB prompt was tokenized
in full (4.9 GB, 75 s) before its length was checked against the context, and the
benchmarks' sizes ended in numpy's MemoryError."""
import pytest

import numatp
from gguf_edit import T, Layout, string
from numatp.errors import NumatpError, UsageError
from numatp.parallel.plan import MAX_RANKS
from numatp.tokenizer import load_tokenizer
from robust import error_line, run_main
from synth import write_model
from test_bad_input import load_here


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("sizes") / "small.gguf", qtype="F32",
                       n_layers=1, vocab=300)


@pytest.mark.parametrize("nodes", [MAX_RANKS + 1, 5000, 2**40])
def test_info_nodes_is_bounded(model, monkeypatch, capsys, nodes):
    code, out, err = run_main(["info", model, "--nodes", nodes], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert error_line(err) == (f"invalid --nodes {nodes}: give 1 to {MAX_RANKS} (the most NUMA "
                               "nodes Linux supports)")


def test_info_nodes_at_the_bound(model, monkeypatch, capsys):
    code, out, err = run_main(["info", model, "--nodes", MAX_RANKS], monkeypatch, capsys)
    assert code == 0 and f"rank {MAX_RANKS - 1}:" in out


def test_prompt_that_cannot_fit_is_not_tokenized(model, monkeypatch):
    """The prompt is longer in bytes than the context's tokens could ever cover."""
    with load_here(model, ctx_size=16) as llm:
        longest = max(len(t.encode()) for t in llm.tokenizer._vocab.tokens)
        prompt = "word " * (16 * longest)
        encoded = []
        monkeypatch.setattr(llm.tokenizer, "encode", lambda *a, **k: encoded.append(a) or [1])
        for chat in (False, True):
            with pytest.raises(NumatpError) as e:
                llm.prompt_ids(prompt, chat=chat)
            assert str(e.value) == (f"prompt of {len(prompt):,} characters does not fit the context "
                                    f"of 16 tokens: it takes at least {-(-len(prompt) // longest):,} "
                                    "tokens (raise -c/--ctx-size)")
        assert encoded == []


def test_prompt_bound_is_a_lower_bound(model, tmp_path):
    """Prompts that fit are tokenized as before: the bound never exceeds the real count,
    for byte-level BPE, SentencePiece, and a vocabulary whose special tokens swallow
    the whitespace after them (Phi-3's)."""
    spm = write_model(tmp_path / "spm.gguf", qtype="F32", n_layers=1, vocab=300, tokenizer="llama")
    phi3 = Layout(spm).set("general.name", T.STRING, string("Phi-3 mini")).write(tmp_path / "phi3.gguf")
    texts = ["Once upon a time", " " * 500, "\u00e9\u4e2d\U0001f600" * 50, "robot harbor " * 100,
             "<|endoftext|>" * 20 + "</s>   \n\t " * 20 + "<s>" * 20, "\n" * 300,
             "</s>" + " " * 5000]
    for path in (model, spm, phi3):
        tok = load_tokenizer(path)
        for text in texts:
            assert tok.min_tokens(text) <= len(tok.encode(text, add_special=False)), (path, text)
    assert load_tokenizer(phi3)._vocab.rstrip_ids


def test_huge_prompt_through_the_cli(model, monkeypatch, capsys):
    prompt = "Once upon a time " * 200_000    # 3.4 MB: about 5 s and 400 MB to tokenize
    code, out, err = run_main(["generate", "-m", model, "-c", "16"], monkeypatch, capsys, stdin=prompt)
    assert code == 1 and out == ""
    assert "does not fit the context of 16 tokens: it takes at least" in error_line(err)


@pytest.mark.parametrize("args, words", [
    (["bench", "kernels", "--types", "F32", "--rows", 2**40], "matrix needs"),
    (["bench", "kernels", "--types", "Q8_0", "--cols", 2**40], "matrix needs"),
    (["bench", "kernels", "--types", "F32", "--rows", 64, "--batch", 2**40], "with a batch of"),
    (["bench", "allreduce", "--iters", 2**40], "--iters must be from 1 to 10,000,000"),
])
def test_benchmark_sizes_are_bounded(monkeypatch, capsys, args, words):
    code, out, err = run_main(args, monkeypatch, capsys)
    assert code == 2 and words in error_line(err)


def test_library_nodes_are_bounded(model):
    with pytest.raises(UsageError, match="at most"):
        numatp.load(model, nodes=2**40)
