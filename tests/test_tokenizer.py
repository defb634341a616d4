"""Tokenizer tests: llama.cpp's own conformance files, an independent reference for
SentencePiece's merge order, special tokens, BOS/EOS rules, bytes and streaming."""
import heapq
from functools import lru_cache

import pytest
from hypothesis import given, settings, strategies as st

from numatp.errors import ModelFileError
from numatp.tokenizer import StreamDecoder, Tokenizer, load_tokenizer, pretokenize
from numatp.tokenizer.backend import byte_level_alphabet
from numatp.model.gguf_file import read_metadata

from models import STORIES, vocab_conformance, vocab_gguf

VOCAB_NAMES = ["gpt-2", "llama-bpe", "qwen2", "llama-spm", "phi-3", "deepseek-coder",
               "deepseek-llm", "falcon", "mpt", "qwen35", "refact", "starcoder"]

# Every `tokenizer.ggml.pre` value llama.cpp's vocabulary loader accepts for a BPE
# vocabulary (src/llama-vocab.cpp, the llama.cpp in llama-cpp-python 0.3.36).
LLAMA_CPP_PRE_NAMES = {
    "default", "minicpm5", "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1",
    "pixtral", "midm-2.0", "lfm2", "jina-v5-nano", "deepseek-llm", "deepseek-coder",
    "deepseek-v3", "spark2_5", "youtu", "falcon", "mpt", "starcoder", "gpt-2", "phi-2",
    "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
    "modern-bert", "jais-2", "gemma4", "granite-embed-multi-311m", "sarvam-moe",
    "jina-v1-en", "jina-v2-code", "roberta-bpe", "whitespace", "refact", "command-r",
    "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "qwen35", "stablelm2", "olmo", "dbrx",
    "smaug-bpe", "poro-chat", "chatglm-bpe", "glm4", "glm5", "viking", "jais", "tekken",
    "smollm", "codeshell", "bloom", "gpt3-finnish", "exaone", "exaone4", "exaone-moe",
    "chameleon", "minerva-7b", "megrez", "gpt-4o", "llama4", "kanana2", "talkie",
    "granite-embed-multi-97m", "tiny_aya", "cohere2moe", "superbpe", "trillion",
    "granite-docling", "bailingmoe", "bailingmoe2", "llada-moe", "seed-coder", "hunyuan",
    "hunyuan-dense", "hy_v4", "joyai-llm", "kimi-k2", "ufakzeka", "grok-2", "afmoe",
    "laguna", "minimax-m2", "solar-open", "mellum2",
}
SEPARATOR = "\n__ggml_vocab_test__\n"


@lru_cache(maxsize=None)
def tokenizer(name) -> Tokenizer:
    """Loaded once per test run: the large vocabularies take about a second each."""
    return load_tokenizer(STORIES if name == "stories260K" else vocab_gguf(name))


def conformance_cases(name):
    """(text, expected ids) pairs, read as llama.cpp's test-tokenizer-0 reads them: the
    .inp file is cut at every "\\n__ggml_vocab_test__\\n" (the file ends with one, which
    adds no empty case), and line i of .out holds the ids of case i."""
    inp, out = vocab_conformance(name)
    raw = inp.read_bytes().decode("utf-8")
    texts, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEPARATOR, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEPARATOR)
    expected = [[int(x) for x in line.split()]
                for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(texts) == len(expected), f"{inp}: .inp and .out disagree on the case count"
    return list(zip(texts, expected))


@pytest.mark.parametrize("name", VOCAB_NAMES)
def test_llama_cpp_conformance(name):
    tok = tokenizer(name)
    cases = conformance_cases(name)
    assert len(cases) > 40
    failures = [(text, want, got) for text, want in cases
                if (got := tok.encode(text, add_special=False)) != want]
    assert not failures, "\n".join(f"{t!r}: expected {w}, got {g}" for t, w, g in failures[:5])


@pytest.mark.parametrize("name", VOCAB_NAMES)
def test_decode_round_trip(name):
    tok = tokenizer(name)
    for text, _ in conformance_cases(name):
        assert tok.decode(tok.encode(text, add_special=False)) == text
        assert tok.decode(tok.encode(text, add_special=True)) == text


def test_stories260k_encodes_with_bos_first():
    tok = tokenizer("stories260K")
    assert tok.model == "llama" and tok.vocab_size == 512 and tok.add_bos
    ids = tok.encode("Once upon a time")
    assert ids[0] == tok.bos_id == 1
    assert [tok.token_text(i) for i in ids[1:]] == ["▁Once", "▁upon", "▁a", "▁time"]
    assert tok.decode(ids) == "Once upon a time"
    assert tok.eog_ids == {tok.eos_id} == {2}


# -- SentencePiece against an independent reference -----------------------------------

def reference_spm(text, ids, scores):
    """llama.cpp's SentencePiece pairing, written plainly: prefix a space, spaces become
    "▁", then repeatedly join the adjacent pair whose joint text is the token with the
    highest score (leftmost on ties); pieces that never became tokens go out as <0xNN>.
    `ids` maps token text to id."""
    if not text:
        return []
    syms = list((" " + text).replace(" ", "▁"))
    nxt = list(range(1, len(syms))) + [-1]
    prv = list(range(-1, len(syms) - 1))
    heap = []

    def offer(left, right):
        if left >= 0 and right >= 0 and syms[left] + syms[right] in ids:
            joined = syms[left] + syms[right]
            heapq.heappush(heap, (-scores[ids[joined]], left, right, joined))

    for i in range(len(syms) - 1):
        offer(i, i + 1)
    while heap:
        _, left, right, joined = heapq.heappop(heap)
        if nxt[left] != right or syms[left] is None or syms[left] + syms[right] != joined:
            continue  # stale: one side has changed since this pair was offered
        syms[left], syms[right] = joined, None
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        offer(prv[left], left)
        offer(left, nxt[left])
    out, i = [], 0
    while i >= 0:
        piece = syms[i]
        out.extend([ids[piece]] if piece in ids else [ids[f"<0x{b:02X}>"] for b in piece.encode()])
        i = nxt[i]
    return out


# Spaces, letters, punctuation and characters outside a 512-token vocabulary (byte fallback).
_TEXT = st.text(alphabet=st.sampled_from(list("    aeinorsthdlu.,!?'\n\t") + ["é", "中", "🦙", "ß"]),
                max_size=60)


@pytest.mark.parametrize("name", ["stories260K", "llama-spm"])
@settings(max_examples=300, deadline=None)
@given(text=_TEXT)
def test_sentencepiece_matches_reference(name, text):
    tok = tokenizer(name)
    meta = _spm_meta(name)
    assert tok.encode(text, add_special=False) == reference_spm(text, *meta)


@lru_cache(maxsize=None)
def _spm_meta(name):
    path = STORIES if name == "stories260K" else vocab_gguf(name)
    meta = read_metadata(path)
    tokens = meta["tokenizer.ggml.tokens"]
    return {t: i for i, t in enumerate(tokens)}, meta["tokenizer.ggml.scores"]


# -- special tokens, BOS/EOS, end of generation ----------------------------------------

def test_special_tokens_in_text_are_single_ids():
    tok = tokenizer("qwen2")
    start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    ids = tok.encode("<|im_start|>user\nHi<|im_end|>\n")
    assert ids[0] == start and end in ids
    assert ids.count(start) == 1
    assert tok.decode(ids) == "user\nHi\n"               # control tokens print nothing
    assert tok.decode(ids, special=True) == "<|im_start|>user\nHi<|im_end|>\n"


def test_sentencepiece_space_prefix_after_special_tokens():
    # llama.cpp gives the text after a special token its own dummy-prefix space.
    tok = tokenizer("llama-spm")
    assert tok.encode("<s>Hi", add_special=False) == [1] + tok.encode("Hi", add_special=False)


@pytest.mark.parametrize("name, bos, adds", [("gpt-2", 50256, False), ("qwen2", 151643, False),
                                             ("llama-bpe", 128000, True), ("llama-spm", 1, True),
                                             ("phi-3", 1, True)])
def test_bos_rules(name, bos, adds):
    tok = tokenizer(name)
    assert tok.bos_id == bos and tok.add_bos is adds
    ids = tok.encode("Hello")
    assert (ids[0] == bos) is adds
    assert ids[int(adds):] == tok.encode("Hello", add_special=False)


def test_no_double_bos_when_text_starts_with_it():
    tok = tokenizer("llama-bpe")
    ids = tok.encode("<|begin_of_text|>Hello")
    assert ids[0] == 128000 and ids[1] != 128000


@pytest.mark.parametrize("name, texts", [
    ("qwen2", {"<|endoftext|>", "<|im_end|>"}),
    ("llama-bpe", {"<|end_of_text|>", "<|eot_id|>"}),
    ("phi-3", {"<|endoftext|>", "<|end|>", "</s>"}),
    ("llama-spm", {"</s>"}),
    ("gpt-2", {"<|endoftext|>"}),
])
def test_end_of_generation_ids(name, texts):
    tok = tokenizer(name)
    assert tok.eos_id in tok.eog_ids
    assert {tok.token_to_id(t) for t in texts} <= tok.eog_ids
    assert tok.token_to_id("<|im_start|>") not in tok.eog_ids


# -- bytes and streaming ----------------------------------------------------------------

def test_token_bytes():
    gpt2 = tokenizer("gpt-2")
    assert gpt2.token_bytes(gpt2.token_to_id("Ġthe")) == b" the"
    assert gpt2.token_bytes(gpt2.token_to_id("Ċ")) == b"\n"
    assert gpt2.token_bytes(50256) == b""                           # control
    assert gpt2.token_bytes(50256, special=True) == b"<|endoftext|>"
    spm = tokenizer("llama-spm")
    assert spm.token_bytes(spm.token_to_id("<0x0A>")) == b"\n"
    assert spm.token_bytes(spm.token_to_id("▁the")) == b" the"
    assert spm.token_bytes(spm.bos_id) == b""
    with pytest.raises(IndexError):
        spm.token_bytes(spm.vocab_size)


def test_byte_level_alphabet_is_a_bijection():
    alphabet = byte_level_alphabet()
    assert len(set(alphabet)) == 256
    assert alphabet[ord("A")] == "A" and alphabet[ord(" ")] == "Ġ" and alphabet[ord("\n")] == "Ċ"


@pytest.mark.parametrize("name", ["stories260K", "gpt-2"])
def test_stream_holds_back_partial_characters(name):
    # stories260K spells the llama with four <0xNN> tokens; GPT-2 splits its four bytes
    # over byte-level tokens that are not whole characters either.
    tok = tokenizer(name)
    ids = tok.encode("a🦙b", add_special=False)
    stream = StreamDecoder(tok)
    pieces = [stream.feed(i) for i in ids]
    assert "".join(pieces) + stream.flush() == "a🦙b"
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces                  # some token completed no character


def test_stream_leading_space():
    tok = tokenizer("stories260K")
    ids = tok.encode(" there", add_special=False)[1:]   # "▁there" without the dummy "▁"
    assert "".join(StreamDecoder(tok).feed(i) for i in ids) == "there"
    assert "".join(StreamDecoder(tok, at_start=False).feed(i) for i in ids) == " there"


@pytest.mark.parametrize("name", ["stories260K", "gpt-2"])
@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40))
def test_stream_reproduces_text(name, text):
    tok = tokenizer(name)
    stream = StreamDecoder(tok)
    pieces = [stream.feed(i) for i in tok.encode(text)]
    assert "".join(pieces) + stream.flush() == text
    # Complete characters only: nothing is ever printed as a replacement character.
    assert "\ufffd" in text or all("\ufffd" not in p for p in pieces)


# -- metadata handling without files ------------------------------------------------------

def _byte_level_meta(pre, merges):
    alphabet = byte_level_alphabet()
    tokens = alphabet + [a + b for a, b in (m.split(" ") for m in merges)]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.add_bos_token": False}


def test_pre_tokenizer_digit_rules():
    merges = ["1 2", "12 3"]
    ids = {name: Tokenizer.from_metadata(_byte_level_meta(name, merges)).encode("123")
           for name in ("gpt-2", "smollm", "llama3", "qwen2")}
    assert len(ids["gpt-2"]) == 1        # one number, merged
    assert len(ids["llama3"]) == 1       # groups of up to three digits
    assert len(ids["smollm"]) == 3       # every digit on its own
    assert len(ids["qwen2"]) == 3


def _utf8_bpe_meta(pre, merges, extra_tokens=()):
    """A SentencePiece-style BPE vocabulary: <0xNN> byte tokens, a <bos> control token,
    "▁", a few letters, `extra_tokens` and the results of `merges`."""
    tokens = [f"<0x{b:02X}>" for b in range(256)] + ["<bos>", "▁", "a", "b", *extra_tokens]
    tokens += [a + b for a, b in (m.split(" ") for m in merges) if a + b not in tokens]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.token_type": [6] * 256 + [3] + [1] * (len(tokens) - 257),
            "tokenizer.ggml.bos_token_id": 256, "tokenizer.ggml.add_bos_token": False}


def test_every_llama_cpp_pre_tokenizer_name_is_known():
    assert set(pretokenize.BY_NAME) == LLAMA_CPP_PRE_NAMES


@pytest.mark.parametrize("name", sorted(pretokenize.BY_NAME))
def test_every_pre_tokenizer_builds_and_round_trips(name):
    if pretokenize.BY_NAME[name].byte_level:
        meta = _byte_level_meta(name, ["1 2", "Ġ t"])
    else:
        meta = _utf8_bpe_meta(name, ["▁ a", "a b"])
    tok = Tokenizer.from_metadata(meta)
    text = "It's 2024: naïve café, 中文 ¿qué?\n\n  x\t!! <sentinel:7> ab a b"
    assert tok.decode(tok.encode(text)) == text


def _words(pre, text):
    """How the pre-tokenizer `pre` cuts `text` into words (before any merge)."""
    from numatp.tokenizer.backend import build
    from numatp.tokenizer.vocab import vocab_from_metadata
    tk = build(vocab_from_metadata(_byte_level_meta(pre, [])), "test")
    alphabet = {c: bytes([b]) for b, c in enumerate(byte_level_alphabet())}
    return [b"".join(alphabet[c] for c in word).decode()
            for word, _ in tk.pre_tokenizer.pre_tokenize_str(text)]


@pytest.mark.parametrize("pre, text, words", [
    # llama.cpp's hand-written digit splitter: groups of three from the right.
    ("afmoe", "x1234567 12", ["x", "1", "234", "567", " ", "12"]),
    ("tiny_aya", "1234567x", ["1", "234", "567", "x"]),
    ("superbpe", "1234567 ab", ["1", "234", "567", " ab"]),
    # Kimi K2: Han characters are words of their own, even after a space.
    ("kimi-k2", "It's 中文abc 1234", ["It's", " ", "中文", "abc", " ", "123", "4"]),
    # GPT-4o: upper-case letters then lower-case ones make one word, a contraction joins it.
    ("gpt-4o", " HELLOWorld CamelCase we're", [" HELLOWorld", " Camel", "Case", " we're"]),
    ("deepseek-v3", "ab12345 中文x", ["ab", "123", "45", " ", "中文", "x"]),
    ("qwen35", "e\u0301a 12", ["e\u0301a", " ", "1", "2"]),
    # Tabs and pairs of spaces are words, then every later expression splits further.
    ("chameleon", "x  y\tz 12<s:3>", ["x", "  ", "y", "\t", "z", " ", "1", "2", "<", "s", ":",
                                       "3", ">"]),
    ("jais-2", "a" + " " * 7 + "b", ["a", " " * 4, " " * 2, " b"]),
])
def test_pre_tokenizer_words(pre, text, words):
    assert _words(pre, text) == words


def test_sentencepiece_style_bpe_escapes_spaces_and_falls_back_to_bytes():
    tok = Tokenizer.from_metadata(_utf8_bpe_meta("sarvam-moe", ["▁ a", "a b"]))
    ids = tok.encode("ab a é")
    assert [tok.token_text(i) for i in ids] == ["ab", "▁a", "▁", "<0xC3>", "<0xA9>"]
    assert tok.decode(ids) == "ab a é"


# Gemma 4's rules, as llama.cpp's BPE session applies them (llama.cpp's gemma-4
# conformance file would not exercise them: in its vocabulary the merges build every run
# of newlines that is a token anyway; the file, 3 MB packed, is not kept here). The expected tokens are worked out by hand: the text
# is cut into lines and runs of newlines, spaces are written "▁"; a run of newlines that
# is a token is taken whole, every other piece is merged by rank (leftmost first on a
# tie), and what stays outside the vocabulary is spelled in <0xNN> byte tokens.
_GEMMA4_MERGES = ["\n \n"]            # "\n\n\n" is a token, but no merge builds it
_GEMMA4_TOKENS = ["\n", "\n\n", "\n\n\n", "ab"]   # nor "ab" (no "a b" merge)
_GEMMA4_TEXT = "ab\n\n\na b\n\n\n\né\n\n<bos>\n"
_GEMMA4_EXPECTED = ["<bos>", "a", "b", "\n\n\n", "a", "▁", "b", "\n\n", "\n\n", "<0xC3>",
                    "<0xA9>", "\n\n", "<bos>", "\n"]


@pytest.mark.parametrize("model, pre", [("gpt2", "gemma4"), ("gpt2", "granite-embed-multi-311m"),
                                        # the model name alone stands for Gemma 4's rules
                                        ("gemma4", "gpt-2"), ("gemma4", None)])
def test_gemma4_takes_newline_runs_whole_and_merges_the_rest(model, pre):
    meta = _utf8_bpe_meta(pre, _GEMMA4_MERGES, _GEMMA4_TOKENS)
    meta["tokenizer.ggml.model"] = model
    if pre is None:
        del meta["tokenizer.ggml.pre"]
    tok = Tokenizer.from_metadata(meta)
    assert tok.add_bos          # llama.cpp adds BOS although the file says not to
    ids = tok.encode(_GEMMA4_TEXT)
    assert [tok.token_text(i) for i in ids] == _GEMMA4_EXPECTED
    assert tok.decode(ids, special=True) == "<bos>" + _GEMMA4_TEXT


def test_gemma4_without_bos_token():
    meta = _utf8_bpe_meta("gemma4", [])
    del meta["tokenizer.ggml.bos_token_id"]
    meta["tokenizer.ggml.token_type"][256] = 1     # and no <bos> by its type either
    with pytest.raises(ModelFileError, match="'gemma4' always adds a BOS token, but there is no BOS"):
        Tokenizer.from_metadata(meta)


def _spm_meta_with(extra_tokens, extra_types, **keys):
    """A small SentencePiece vocabulary: <unk> <s> </s>, 256 byte tokens, a few words."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "a", "▁a"]
    types = [2, 3, 3] + [6] * 256 + [1, 1, 1]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens + extra_tokens,
            "tokenizer.ggml.token_type": types + extra_types,
            "tokenizer.ggml.scores": [0.0] * (len(tokens) + len(extra_tokens))}
    meta.update({f"tokenizer.ggml.{k}": v for k, v in keys.items()})
    return meta


def test_special_token_rules_by_text():
    # "<|im_end|>" typed normal still ends generation and prints nothing (llama.cpp marks
    # it control by its text); a user-defined token prints its text; eot_token_id counts.
    extra = ["<|im_end|>", "<tool>", "<stop>"]
    tok = Tokenizer.from_metadata(_spm_meta_with(extra, [1, 4, 3], eot_token_id=264))
    im_end, tool, stop = 262, 263, 264
    assert tok.eog_ids == {2, im_end, stop}
    ids = tok.encode("a<tool>a<|im_end|>", add_special=False)
    assert tool in ids and im_end in ids
    assert tok.decode(ids) == "a<tool> a"          # " a": dummy prefix after a special


def test_harmony_end_token_does_not_stop():
    extra = ["<|end|>", "<|return|>", "<|call|>"]
    tok = Tokenizer.from_metadata(_spm_meta_with(extra, [3, 3, 3]))
    assert {263, 264} <= tok.eog_ids and 262 not in tok.eog_ids
    assert tok.decode([262]) == "<|end|>"


def test_metadata_errors():
    with pytest.raises(ModelFileError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata({"general.architecture": "llama"})
    with pytest.raises(ModelFileError, match="pre-tokenizer 'no-such'") as e:
        Tokenizer.from_metadata(_byte_level_meta("no-such", []))
    assert "\n" not in str(e.value) and "known: " in str(e.value)
    assert set(str(e.value).split("known: ")[1].split(", ")) == set(pretokenize.BY_NAME)
    with pytest.raises(ModelFileError, match=r"unsupported tokenizer model 't5' \(supported: gemma4, gpt2, llama\)"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a"]})
    meta = _byte_level_meta("gpt-2", [])
    meta["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"] + ["a"]
    with pytest.raises(ModelFileError, match="duplicate token"):
        Tokenizer.from_metadata(meta)


def test_load_tokenizer_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        load_tokenizer(tmp_path / "missing.gguf")
