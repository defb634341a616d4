"""The vocabulary a GGUF file describes: tokens, their kinds, the special ids and flags.

Everything here follows what llama.cpp reads from the same keys, including its defaults
and the few rules it applies by token text (which tokens end generation, which look like
control tokens although the file calls them normal), so that a prompt tokenizes and a
generation stops the same way in both programs.
"""
import re
from dataclasses import dataclass, field

from numatp.errors import ModelFileError
from numatp.model.gguf_file import describe
from numatp.tokenizer import pretokenize

# tokenizer.ggml.token_type values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")   # the text of every BYTE token

# Token texts that end a generation. llama.cpp recognises them by text because converted
# files rarely say so; a token found here is treated as a control token whatever its type.
END_OF_GENERATION_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
    "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>",
    "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
    "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
})
# Fill-in-the-middle padding / repository / file separators also end a generation (a code
# model that emits one has finished the file); the prefix/suffix/middle markers are only
# control tokens.
FIM_END_TEXTS = frozenset({
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
    "<|file_sep|>",
})
FIM_MARKER_TEXTS = frozenset({
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>",
    "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>",
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>",
    "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>",
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>",
    "\u2581<MID>", "<|code_middle|>", "<|middle|>",
})

# Kinds of tokenizer.ggml.model we support, and the special ids llama.cpp assumes when
# the file does not name them.
_DEFAULT_IDS = {
    "llama": {"bos": 1, "eos": 2, "unk": 0},
    "gpt2": {},
    "gemma4": {},
}


@dataclass
class Vocab:
    model: str                 # "llama" (SentencePiece) or "gpt2" (BPE with merges)
    pre: str                   # tokenizer.ggml.pre ("default" when missing)
    tokens: list               # id -> token text as stored in the file
    ids: dict                  # token text -> id
    types: list                # id -> NORMAL/CONTROL/... after llama.cpp's text rules
    scores: list | None        # SentencePiece merge priorities (None for gpt2)
    merges: list | None        # "left right" strings, highest priority first (gpt2)
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool     # SentencePiece's dummy leading space
    eog_ids: set = field(default_factory=set)
    rstrip_ids: set = field(default_factory=set)   # specials that eat whitespace after them
    chat_template: str | None = None
    name: str = ""

    def special_ids(self):
        """Ids matched as whole tokens inside text before any other tokenization."""
        return [i for i, t in enumerate(self.types) if t in (CONTROL, USER_DEFINED, UNKNOWN)]


def _token_id(meta, key, n_tokens, default):
    """A special-token id from the file, or the default; ids outside the vocabulary
    (files use 0xFFFFFFFF for "none") are ignored as llama.cpp does."""
    value = meta.get(key)
    if isinstance(value, int) and 0 <= value < n_tokens:
        return value
    if default is not None and 0 <= default < n_tokens:
        return default
    return None


_KIND_NAMES = {str: "a string", bool: "a boolean", list: "an array"}


def _typed(meta, key, kind, where, default=None):
    """meta[key] (default if missing), which must be of `kind`: a file whose keys have the
    wrong GGUF type is refused here, as llama.cpp refuses it, rather than misread later."""
    value = meta.get(key, default)
    if value is not None and type(value) is not kind:
        raise ModelFileError(f"{where}: {key} should be {_KIND_NAMES[kind]}, not {describe(value)}")
    return value


def _elements(values, kinds, what, key, where):
    """Every element of an array is of one of the types `kinds` (exactly: True is not
    a token type)."""
    for i, v in enumerate(values):
        if type(v) not in kinds:
            raise ModelFileError(f"{where}: {key} should be an array of {what}, but element {i} "
                                 f"is {describe(v)}")
    return values


def _array(meta, key, n_tokens, kinds, what, where):
    value = _typed(meta, key, list, where)
    if value is None:
        return None
    if len(value) < n_tokens:
        raise ModelFileError(f"{where}: {key} has {len(value)} entries for {n_tokens} tokens")
    return _elements(value[:n_tokens], kinds, what, key, where)


def _harmony_end_is_not_eog(eog, tokens, types):
    """OpenAI-harmony-style vocabularies end a *message* with <|end|> but a generation
    with <|return|> or <|call|>: there <|end|> must neither stop generation nor vanish
    from the output (llama.cpp makes it a user-defined token)."""
    texts = {tokens[i]: i for i in eog}
    if "<|end|>" in texts and ({"<|return|>", "<|call|>"} <= texts.keys()
                               or {"<|calls|>", "<|flush|>"} <= texts.keys()):
        end = texts["<|end|>"]
        eog.discard(end)
        types[end] = USER_DEFINED


def vocab_from_metadata(meta: dict, where: str = "GGUF file") -> Vocab:
    """Read and check the tokenizer.* keys; `where` names the file in error messages."""
    model = _typed(meta, "tokenizer.ggml.model", str, where)
    if model is None:
        raise ModelFileError(f"{where}: no tokenizer in this file (tokenizer.ggml.model is missing)")
    if model not in _DEFAULT_IDS:
        raise ModelFileError(f"{where}: unsupported tokenizer model '{model}' "
                             f"(supported: {', '.join(sorted(_DEFAULT_IDS))})")
    tokens = _typed(meta, "tokenizer.ggml.tokens", list, where)
    if not tokens:
        raise ModelFileError(f"{where}: tokenizer.ggml.tokens is missing or empty")
    _elements(tokens, (str,), "strings", "tokenizer.ggml.tokens", where)
    n = len(tokens)
    if not all(tokens):   # llama.cpp renames empty tokens so every id keeps a distinct text
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    ids = dict(zip(tokens, range(n)))
    if len(ids) != n:
        seen = set()
        dup = next(t for t in tokens if t in seen or seen.add(t))
        raise ModelFileError(f"{where}: duplicate token {dup!r} in the vocabulary")
    types = _array(meta, "tokenizer.ggml.token_type", n, (int,), "integers", where) or [NORMAL] * n
    types = list(types)
    scores = _array(meta, "tokenizer.ggml.scores", n, (int, float), "numbers", where)
    bad_byte = next((i for i, t in enumerate(types) if t == BYTE and not BYTE_TOKEN.fullmatch(tokens[i])),
                    None)
    if bad_byte is not None:
        raise ModelFileError(f"{where}: token {bad_byte} is a byte token, but its text "
                             f"{tokens[bad_byte][:40]!r} is not of the form <0xNN>")

    pre = _typed(meta, "tokenizer.ggml.pre", str, where) or "default"
    if model == "gemma4":
        # llama.cpp reads this model name as a BPE vocabulary with Gemma 4's
        # pre-tokenizer, whatever tokenizer.ggml.pre says.
        model, pre = "gpt2", "gemma4"
    merges = None
    if model == "gpt2":
        merges = _typed(meta, "tokenizer.ggml.merges", list, where)
        if merges is None:
            raise ModelFileError(f"{where}: BPE tokenizer without tokenizer.ggml.merges")
        _elements(merges, (str,), "strings", "tokenizer.ggml.merges", where)
        pre_tok = pretokenize.lookup(pre)
        if pre_tok is None:
            raise ModelFileError(f"{where}: unknown pre-tokenizer '{pre}' (tokenizer.ggml.pre); "
                                 f"known: {', '.join(sorted(pretokenize.BY_NAME))}")
        add_bos_default, add_space_prefix_default = pre_tok.add_bos, False
        force_bos = pre_tok.force_bos
    else:
        pre = "default"
        add_bos_default, add_space_prefix_default = True, True
        force_bos = False
        if scores is None:
            scores = [0.0] * n

    def present(texts):
        return {ids[t] for t in texts if t in ids}

    # Tokens that llama.cpp treats as control by their text.
    eog = present(END_OF_GENERATION_TEXTS | FIM_END_TEXTS)
    for i in eog | present(FIM_MARKER_TEXTS):
        types[i] = CONTROL

    defaults = _DEFAULT_IDS[model]
    bos = _token_id(meta, "tokenizer.ggml.bos_token_id", n, defaults.get("bos"))
    eos = _token_id(meta, "tokenizer.ggml.eos_token_id", n, defaults.get("eos"))
    unk = _token_id(meta, "tokenizer.ggml.unknown_token_id", n, defaults.get("unk"))
    eot = _token_id(meta, "tokenizer.ggml.eot_token_id", n, None)
    eom = _token_id(meta, "tokenizer.ggml.eom_token_id", n, None)

    add_bos = _typed(meta, "tokenizer.ggml.add_bos_token", bool, where, add_bos_default)
    if force_bos and not add_bos:
        if bos is None:
            raise ModelFileError(f"{where}: the pre-tokenizer '{pre}' always adds a BOS token, "
                                 f"but there is no BOS token")
        add_bos = True
    add_eos = _typed(meta, "tokenizer.ggml.add_eos_token", bool, where, False)
    add_space_prefix = _typed(meta, "tokenizer.ggml.add_space_prefix", bool, where,
                              add_space_prefix_default)
    if add_bos and bos is None:
        raise ModelFileError(f"{where}: tokenizer.ggml.add_bos_token is true but there is no BOS token")
    if add_eos and eos is None:
        raise ModelFileError(f"{where}: tokenizer.ggml.add_eos_token is true but there is no EOS token")

    fim_ends = [_token_id(meta, f"tokenizer.ggml.fim_{kind}_token_id", n, None)
                for kind in ("pad", "rep", "sep")]
    eog |= {i for i in (eos, eot, eom, *fim_ends) if i is not None}
    _harmony_end_is_not_eog(eog, tokens, types)

    name = _typed(meta, "general.name", str, where, "")
    rstrip = set()
    # Phi-3's special tokens swallow the whitespace after them (llama.cpp sets this by
    # model name because the file does not carry per-token attributes).
    lname = name.lower()
    if "phi-3" in lname or "phi3" in lname:
        rstrip = {i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED, UNKNOWN)}
        rstrip |= present({"</s>"})
        rstrip -= present({"<unk>", "<s>", "<|endoftext|>"})

    template = _typed(meta, "tokenizer.chat_template", str, where)
    return Vocab(model=model, pre=pre, tokens=tokens, ids=ids, types=types,
                 scores=list(scores) if scores is not None and model == "llama" else None,
                 merges=merges, bos_id=bos, eos_id=eos, unk_id=unk,
                 add_bos=add_bos, add_eos=add_eos, add_space_prefix=add_space_prefix,
                 eog_ids=eog, rstrip_ids=rstrip,
                 chat_template=template or None,
                 name=name)

