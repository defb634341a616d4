"""The tokenizer numatp uses: encode text to ids and ids back to text or bytes, the way
llama.cpp does for the same GGUF file.

Encoding runs in the `tokenizers` library (built by backend.py); decoding is done here
from each token's exact bytes, because streaming output needs bytes per token anyway and
llama.cpp's rules (control tokens print nothing, "▁" is a space, <0xNN> is one byte) are
simpler to state directly than to configure.
"""
from numatp.errors import UsageError
from numatp.tokenizer import backend, pretokenize
from numatp.tokenizer.vocab import (BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, Vocab,
                                    vocab_from_metadata)


class Tokenizer:
    """Text <-> token ids for one vocabulary.

    Attributes: bos_id, eos_id (None when the vocabulary has none), eog_ids (every id that
    ends a generation), add_bos / add_eos (what encode(add_special=True) adds),
    add_space_prefix (SentencePiece's dummy leading space), vocab_size, chat_template
    (the file's Jinja template or None), model ("llama" or "gpt2"), pre (the
    pre-tokenizer name).
    """

    def __init__(self, vocab: Vocab, where: str = "GGUF file"):
        self._vocab = vocab
        self._tk = backend.build(vocab, where)
        self.model = vocab.model
        self.pre = vocab.pre
        self.bos_id = vocab.bos_id
        self.eos_id = vocab.eos_id
        self.eog_ids = frozenset(vocab.eog_ids)
        self.add_bos = vocab.add_bos
        self.add_eos = vocab.add_eos
        self.add_space_prefix = vocab.add_space_prefix
        self.vocab_size = len(vocab.tokens)
        self.chat_template = vocab.chat_template
        pre = pretokenize.lookup(vocab.pre) if vocab.model == "gpt2" else None
        self._byte_level = pre is not None and pre.byte_level   # GPT-2's byte alphabet
        self._escape_spaces = pre is not None and pre.escape_spaces
        self._newline_runs = backend.NewlineRuns(vocab) if pre and pre.newline_runs_whole else None
        self._bytes = [None] * self.vocab_size      # token_bytes cache, filled on use
        self._unbyte = None                          # byte-level character -> byte value
        self._max_token_bytes = None                 # min_tokens' divisor, found on use

    @classmethod
    def from_metadata(cls, meta: dict, where: str = "GGUF file") -> "Tokenizer":
        return cls(vocab_from_metadata(meta, where), where)

    # -- encoding ------------------------------------------------------------------

    def encode(self, text: str, add_special: bool = True) -> list:
        """Token ids for `text`. Special tokens written in the text ("<|im_start|>") are
        always read as those tokens. With add_special, BOS/EOS are added as the file asks;
        a BOS is not added when the text already starts with the BOS token (a chat
        template that writes it), so a prompt never begins with two."""
        try:
            ids = self._tk.encode(text, add_special_tokens=False).ids
        except TypeError:
            _check_unicode(text)
            raise
        if self._newline_runs is not None and "\n\n" in text:   # a lone newline needs no rule
            ids = self._newline_runs.join(ids)
        if add_special:
            if self.add_bos and not (ids and ids[0] == self.bos_id):
                ids.insert(0, self.bos_id)
            if self.add_eos:
                ids.append(self.eos_id)
        return ids

    def min_tokens(self, text: str) -> int:
        """A lower bound of len(encode(text)), found without tokenizing (which costs
        about 100 bytes of memory and 1.5 us per byte of text): no token stands for more
        bytes of text than its own text has in UTF-8 (a byte-level or "▁" character is
        at least one byte of text, <0xNN> is six characters for one byte), nor an
        unknown character for more than 4. Special tokens that swallow the whitespace
        after them stand for any amount of it, so for such vocabularies whitespace is
        not counted."""
        if self._max_token_bytes is None:
            self._max_token_bytes = max(4, max(len(t.encode()) for t in self._vocab.tokens))
        if self._vocab.rstrip_ids:
            text = "".join(text.split())
        return -(-len(text.encode("utf-8", "surrogatepass")) // self._max_token_bytes)

    def token_to_id(self, text: str):
        """The id of the token whose text is exactly `text`, or None."""
        return self._vocab.ids.get(text)

    def token_text(self, token_id: int) -> str:
        """The token as stored in the file ("Ġthe", "▁the", "<0x0A>", "<|im_end|>")."""
        return self._vocab.tokens[self._check(token_id)]

    # -- decoding ------------------------------------------------------------------

    def token_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The exact bytes a token stands for in output text. Control and unknown tokens
        (BOS, <|im_end|>...) print as nothing unless `special`; user-defined tokens print
        their text; unused tokens print nothing, as in llama.cpp."""
        kind = self._vocab.types[self._check(token_id)]
        if kind in (CONTROL, UNKNOWN):
            return self._vocab.tokens[token_id].encode() if special else b""
        cached = self._bytes[token_id]
        if cached is None:
            cached = self._bytes[token_id] = self._piece(token_id, kind)
        return cached

    def _piece(self, token_id, kind) -> bytes:
        text = self._vocab.tokens[token_id]
        if kind == USER_DEFINED:
            return text.encode()
        if kind == BYTE:
            return bytes([int(text[3:5], 16)])  # "<0xNN>"
        if kind != NORMAL:
            return b""
        if self.model == "llama" or self._escape_spaces:
            return text.replace(backend.SPACE_MARK, " ").encode()
        if not self._byte_level:
            return text.encode()
        if self._unbyte is None:
            self._unbyte = {c: b for b, c in enumerate(backend.byte_level_alphabet())}
        unbyte = self._unbyte
        # A character outside the byte alphabet means a malformed vocabulary; keep its
        # UTF-8 rather than fail in the middle of a generation.
        return b"".join(bytes([unbyte[c]]) if c in unbyte else c.encode() for c in text)

    def decode(self, ids, special: bool = False) -> str:
        """Text for `ids`. For SentencePiece vocabularies the dummy-prefix space of the
        first printed token is dropped, so decode(encode(text)) == text."""
        stream = StreamDecoder(self, special=special)
        return "".join(stream.feed(i) for i in ids) + stream.flush()

    def _check(self, token_id):
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"token id {token_id} outside the vocabulary (0..{self.vocab_size - 1})")
        return token_id

    def __repr__(self):
        return (f"Tokenizer({self.model}, {self.vocab_size} tokens, pre={self._vocab.pre!r}, "
                f"bos={self.bos_id}, eos={self.eos_id}, add_bos={self.add_bos})")


def _check_unicode(text):
    """Text made from undecodable bytes (Python keeps them as lone surrogates, e.g. in
    command-line arguments) is not text the tokenizer can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"the text is not valid UTF-8: undecodable bytes at character {e.start}") from None


def _complete_utf8_length(buf: bytes) -> int:
    """How many leading bytes of `buf` end on a character boundary: a multi-byte
    character cut off at the end is held back (at most 3 bytes)."""
    n = len(buf)
    for back in range(1, min(4, n) + 1):
        b = buf[n - back]
        if b & 0xC0 != 0x80:            # a lead byte (or ASCII): where the last char starts
            need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 \
                else 4 if b >> 3 == 0b11110 else 1   # an invalid lead byte stands alone
            return n if back >= need else n - back
    return n  # only continuation bytes: invalid, let the decoder replace them


class StreamDecoder:
    """Turns a stream of token ids into text as it becomes printable.

    feed(id) returns the text completed by that token (often "", e.g. while the bytes of
    one emoji arrive over several byte tokens); flush() returns whatever is left, with
    incomplete characters replaced by U+FFFD.

    at_start: the stream begins the text. For SentencePiece vocabularies llama.cpp then
    drops the dummy-prefix space of the first printed token. Pass at_start=False when the
    stream continues a prompt, where " there" must keep its space.
    special: print control tokens as their text instead of nothing.
    """

    def __init__(self, tokenizer: Tokenizer, at_start: bool = True, special: bool = False):
        self._tok = tokenizer
        self._special = special
        self._strip_space = at_start and tokenizer.add_space_prefix
        self._pending = b""

    def feed(self, token_id: int) -> str:
        piece = self._tok.token_bytes(token_id, self._special)
        if self._strip_space and piece:
            self._strip_space = False
            if piece.startswith(b" "):
                piece = piece[1:]
        buf = self._pending + piece
        cut = _complete_utf8_length(buf)
        self._pending = buf[cut:]
        return buf[:cut].decode("utf-8", errors="replace")

    def flush(self) -> str:
        rest, self._pending = self._pending, b""
        return rest.decode("utf-8", errors="replace")


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer of a GGUF file (a full model or a vocabulary-only file), or of a
    model named as -m names one (a known name, hf://...)."""
    from numatp.model.gguf_file import read_metadata
    from numatp.registry import resolve_model
    path = resolve_model(path)
    meta = read_metadata(path)
    return Tokenizer.from_metadata(meta, where=str(path))

