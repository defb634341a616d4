"""Builds a `tokenizers.Tokenizer` that encodes exactly as llama.cpp does for a Vocab.

Two pipelines:
- gpt2 (BPE with the file's merges): split words with the pre-tokenizer's regexes, map
  each byte to GPT-2's printable alphabet (or, for the few SentencePiece-style BPE
  vocabularies, write spaces as "▁" and keep the text), then apply the merges by rank.
- llama (SentencePiece BPE): spaces become "▁", a "▁" is put in front of the text and
  after every special token (add_space_prefix), and the whole text is merged pairwise,
  the pair whose result has the highest score first; characters that never become a
  token fall back to their <0xNN> byte tokens. SentencePiece has no merge list, so the
  merges are derived from the scores: every token that is the concatenation of two
  tokens gives one merge, ranked by the token's score.

Special tokens (control, user-defined, unknown) are "added tokens": found in the raw text
before normalization, so "<|im_start|>" is one id and the text after it gets its own
dummy-prefix space, as in llama.cpp.
"""
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers

from numatp.errors import ModelFileError
from numatp.tokenizer import pretokenize

SPACE_MARK = "\u2581"   # "▁", SentencePiece's visible space


def byte_level_alphabet() -> list:
    """GPT-2's stand-in character for each byte value. Printable Latin-1 bytes stand for
    themselves; the rest (controls, space, soft hyphen...) are moved, in byte order, to
    U+0100 and up, so every token is a string of visible characters."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    alphabet, moved = [], 0
    for b in range(256):
        if b in printable:
            alphabet.append(chr(b))
        else:
            alphabet.append(chr(0x100 + moved))
            moved += 1
    return alphabet


def _add_specials(tk, vocab):
    rstrip = vocab.rstrip_ids
    tk.add_special_tokens([AddedToken(vocab.tokens[i], special=True, normalized=False,
                                      rstrip=i in rstrip)
                           for i in vocab.special_ids()])


def _bpe_model(ids, merges, where, **kwargs):
    try:
        return models.BPE(ids, merges, **kwargs)
    except Exception as e:  # tokenizers reports a merge whose parts are not tokens
        detail = " ".join(str(e).split())   # its messages span lines
        raise ModelFileError(f"{where}: inconsistent BPE merges: {detail[:200]}") from None


def build_gpt2(vocab, where) -> Tokenizer:
    ids = vocab.ids
    # "left right": tokens never contain a space (byte-level ones write it "Ġ", the others
    # "▁"), so the first one separates the two parts. Entries without one are malformed;
    # llama.cpp skips them too.
    merges = [tuple(pair) for pair in (m.split(" ", 1) for m in vocab.merges) if len(pair) == 2]
    pre = pretokenize.lookup(vocab.pre)
    # Without GPT-2's byte alphabet, a character no token covers is spelled with the
    # <0xNN> tokens of its UTF-8 bytes, and left out where the vocabulary has none.
    tk = Tokenizer(_bpe_model(ids, merges, where, ignore_merges=pre.ignore_merges,
                              byte_fallback=not pre.byte_level))
    if pre.escape_spaces:
        tk.normalizer = normalizers.Replace(" ", SPACE_MARK)
    steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
    if pre.byte_level:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence(steps)
    _add_specials(tk, vocab)
    return tk


class NewlineRuns:
    """Gemma 4's rule for runs of newlines, which `tokenizers` cannot be configured for:
    llama.cpp takes a run whole when the run is a token and merges it otherwise, while
    every other piece is always merged. The pipeline merges every piece; `join` then
    replaces the tokens of each merged run by the run's own token where there is one.

    The regexes cut every run of newlines into a piece of its own, and only such a piece
    yields tokens made of newlines (or the <0x0A> byte token), so a maximal stretch of
    such tokens in the output is exactly one run. Special tokens are left out: they are
    matched in the raw text before any splitting."""

    def __init__(self, vocab):
        special = set(vocab.special_ids())
        self._newlines = {i: len(t) for i, t in enumerate(vocab.tokens)
                          if i not in special and not t.strip("\n")}
        newline_byte = vocab.ids.get("<0x0A>")
        if newline_byte is not None and newline_byte not in special:
            self._newlines[newline_byte] = 1
        self._run_token = {n: i for i, n in self._newlines.items()
                           if vocab.tokens[i] == "\n" * n}

    def join(self, ids: list) -> list:
        out, i, end = [], 0, len(ids)
        while i < end:
            if ids[i] not in self._newlines:
                out.append(ids[i])
                i += 1
                continue
            stop, length = i, 0
            while stop < end and ids[stop] in self._newlines:
                length += self._newlines[ids[stop]]
                stop += 1
            whole = self._run_token.get(length)
            out.extend(ids[i:stop] if whole is None else [whole])
            i = stop
        return out


def spm_merges(tokens, scores, ids) -> list:
    """Merges equivalent to SentencePiece's score-driven pairing.

    llama.cpp repeatedly joins the adjacent pair whose joined text is the token with the
    highest score, leftmost on ties. Ranking each split a+b of each token by the token's
    score reproduces that. Equal scores (the run-of-spaces tokens "▁▁", "▁▁▁"... share
    one) get an order that favours growing the leftmost piece: longer results first, and
    for one result the longer left part first. tests/test_tokenizer.py checks the outcome
    against a direct implementation of llama.cpp's pairing.
    """
    ranked = []
    for tid, text in enumerate(tokens):
        for k in range(1, len(text)):
            left, right = text[:k], text[k:]
            if left in ids and right in ids:
                ranked.append((-scores[tid], -len(text), -k, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_spm(vocab, where) -> Tokenizer:
    ids = vocab.ids
    merges = spm_merges(vocab.tokens, vocab.scores, ids)
    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    tk = Tokenizer(_bpe_model(ids, merges, where, byte_fallback=True, unk_token=unk))
    steps = [normalizers.Replace(" ", SPACE_MARK)]
    if vocab.add_space_prefix:
        steps.insert(0, normalizers.Prepend(SPACE_MARK))
    tk.normalizer = normalizers.Sequence(steps)
    _add_specials(tk, vocab)
    return tk


def build(vocab, where) -> Tokenizer:
    return build_gpt2(vocab, where) if vocab.model == "gpt2" else build_spm(vocab, where)
