"""How each `tokenizer.ggml.pre` name splits text into words before byte-level BPE.

llama.cpp names a pre-tokenizer by the model family that trained the vocabulary; each name
stands for a list of regular expressions applied one after another, every expression
splitting each piece the previous one produced. Both the matches and the text between
them become pieces (tokenizers' "isolated" split behaviour), so nothing is ever dropped.

The expressions are written out here from those facts. Two details matter for exact
agreement with llama.cpp:
- contractions are spelled with explicit case classes ('[sS]) instead of (?i:'s): case
  folding would also accept a few non-ASCII letters (the long s, the Kelvin sign).
- GPT-2's expression has no final `\\s+` alternative; a lone whitespace character in front
  of a letter stays a piece of its own, which the isolated split gives anyway.
"""
from dataclasses import dataclass

# 's 't 're 've 'm 'll 'd, upper or lower case.
_CONTRACTIONS_ANY_CASE = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

# GPT-2: contractions (lower case only), then words, numbers and other symbols, each
# with at most one leading space; runs of whitespace keep their last space for the
# next word.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"


def _llama3_style(numbers: str) -> str:
    """Llama 3 / Qwen 2 family: a word may take one leading non-letter (not a newline),
    symbols swallow the newlines after them, and `numbers` says how digits group."""
    return (_CONTRACTIONS_ANY_CASE
            + r"|[^\r\n\p{L}\p{N}]?\p{L}+"
            + "|" + numbers
            + r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
            + r"|\s*[\r\n]+"
            + r"|\s+(?!\S)"
            + r"|\s+")


LLAMA3 = _llama3_style(r"\p{N}{1,3}")      # numbers in groups of up to three digits
QWEN2 = _llama3_style(r"\p{N}")            # every digit on its own

# Bloom family: anything up to whitespace or sentence punctuation, with one leading space.
BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"


@dataclass(frozen=True)
class PreTokenizer:
    regexes: tuple          # applied in order; each splits the pieces of the previous one
    ignore_merges: bool = False   # a piece that is itself a token is taken whole
    add_bos: bool = False         # llama.cpp's default when the file says nothing


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_GPT2 = PreTokenizer((GPT2,))
_LLAMA3 = PreTokenizer((LLAMA3,), ignore_merges=True, add_bos=True)
_QWEN2 = PreTokenizer((QWEN2,))
# StarCoder and its descendants (SmolLM among them) split every digit off first.
_STARCODER = PreTokenizer((r"\p{N}", GPT2))
_FALCON = PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"))
_DEEPSEEK_CODER = PreTokenizer((r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+",
                                "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}"))
_BLOOM = PreTokenizer((BLOOM,))
_VIKING = PreTokenizer((BLOOM, r"\p{N}"))

BY_NAME = {
    "default": _DEFAULT,
    "gpt-2": _GPT2, "phi-2": _GPT2, "mpt": _GPT2, "olmo": _GPT2, "jais": _GPT2,
    "jina-es": _GPT2, "jina-de": _GPT2, "jina-v2-es": _GPT2, "jina-v2-de": _GPT2,
    "gigachat": _GPT2, "exaone4": _GPT2,
    "llama3": _LLAMA3, "llama-v3": _LLAMA3, "llama-bpe": _LLAMA3, "falcon3": _LLAMA3,
    "pixtral": _LLAMA3,
    "dbrx": PreTokenizer((LLAMA3,)), "smaug-bpe": PreTokenizer((LLAMA3,)),
    "chatglm-bpe": PreTokenizer((LLAMA3,)), "glm4": PreTokenizer((LLAMA3,)),
    "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2, "stablelm2": _QWEN2, "megrez": _QWEN2,
    "starcoder": _STARCODER, "smollm": _STARCODER, "refact": _STARCODER,
    "command-r": _STARCODER, "codeshell": _STARCODER, "exaone": _STARCODER,
    "minerva-7b": _STARCODER,
    "falcon": _FALCON,
    "deepseek-coder": _DEEPSEEK_CODER,
    "bloom": _BLOOM, "poro-chat": _BLOOM, "gpt3-finnish": _BLOOM,
    "viking": _VIKING,
}


def lookup(name):
    """The pre-tokenizer for a `tokenizer.ggml.pre` value (None or missing: "default"),
    or None when the name is not supported."""
    return BY_NAME.get(name or "default")
