"""How each `tokenizer.ggml.pre` name splits text into words before BPE.

llama.cpp names a pre-tokenizer by the model family that trained the vocabulary; each name
stands for a list of regular expressions applied one after another, every expression
splitting each piece the previous one produced. Both the matches and the text between
them become pieces (tokenizers' "isolated" split behaviour), so nothing is ever dropped.
BY_NAME lists every name llama.cpp's vocabulary loader (src/llama-vocab.cpp) accepts for
a BPE vocabulary, with the expressions and defaults it uses for that name.

The expressions are llama.cpp's, written for the `tokenizers` library's regex engine
(Oniguruma). Where llama.cpp does not run an expression as written, the one here says
what llama.cpp actually does:
- contractions are spelled with explicit case classes ('[sS]) instead of (?i:'s): case
  folding would also accept a few non-ASCII letters (the long s, the Kelvin sign).
- GPT-2's expression has no final `\\s+` alternative; a lone whitespace character in front
  of a letter stays a piece of its own, which the isolated split gives anyway.
- llama.cpp's regex engine knows letters only as a whole: \\p{Lu}, \\p{Ll}, \\p{Lt},
  \\p{Lm} and \\p{Lo} all match any letter there, so "upper case letters, then lower case
  letters" is simply "letters" (youtu, tiny_aya).
- A few expressions are replaced in llama.cpp by hand-written splitters (unicode.cpp):
  digit runs cut into groups of three from the right with the remainder first (afmoe,
  tiny_aya), and Kimi-K2's words, which are letters other than Han characters, Han
  characters forming words of their own. Those are given here as the expressions that
  split the same way.
- Gemma 4 (and granite-embed-multi-311m, which llama.cpp reads as Gemma 4) merges each
  line whole, but takes a run of newlines whole when that run is itself a token, merging
  only the runs that are not (newline_runs_whole).
"""
from dataclasses import dataclass

# 's 't 're 've 'm 'll 'd, upper or lower case.
CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

# GPT-2: contractions (lower case only), then words, numbers and other symbols, each
# with at most one leading space; runs of whitespace keep their last space for the
# next word.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"

# The tail shared by the Llama 3 family: symbols swallow the newlines after them, runs of
# whitespace end in newlines or keep their last space for the next word.
_SYMBOLS_AND_SPACES = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _llama3_style(numbers: str, letters: str = r"\p{L}") -> str:
    """Llama 3 / Qwen 2 family: a word may take one leading non-letter (not a newline),
    and `numbers` says how digits group."""
    return (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?" + letters + "+|" + numbers
            + _SYMBOLS_AND_SPACES)


LLAMA3 = _llama3_style(r"\p{N}{1,3}")      # numbers in groups of up to three digits
QWEN2 = _llama3_style(r"\p{N}")            # every digit on its own
QWEN35 = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
          r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen 2's expression without the English contractions: Turkish suffixes after an
# apostrophe stay with their word.
UFAKZEKA = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}" + _SYMBOLS_AND_SPACES
SEED_CODER = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}"
              r"| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+")
BAILINGMOE = (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")
MINICPM5_WORDS = _llama3_style(r"\p{N}+")
# Jais 2: runs of whitespace before a word are cut into power-of-two lengths.
JAIS2 = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+" + "".join(rf"|\s{{{n}}}(?!\S)" for n in (512, 256, 128, 64, 32, 16, 8, 4))
         + r"|\s{1,2}(?!\S)|\s{1}")
EXAONE_MOE = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")


def _cased_words(letter: str, numbers: str, contractions: str = "") -> str:
    """GPT-4o / Tekken style: a word is upper-case letters then lower-case ones, or the
    reverse. llama.cpp writes "upper case" as "a letter that is not a-z" (and lower case
    as "not A-Z"), which is what its regex engine can express; `letter` is the class a
    letter belongs to."""
    upper = rf"(?:(?=[{letter}])[^a-z])"
    lower = rf"(?:(?=[{letter}])[^A-Z])"
    lead = r"[^\r\n\p{L}\p{N}]?"
    return (f"{lead}{upper}*{lower}+{contractions}|{lead}{upper}+{lower}*{contractions}"
            f"|{numbers}" + r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


GPT4O = _cased_words(r"\p{L}", r"\p{N}{1,3}", CONTRACTIONS + "?")
GRANITE_EMB_MULTI = _cased_words(r"\p{L}\p{M}", r"\p{N}{1,3}", CONTRACTIONS + "?")
TEKKEN = _cased_words(r"\p{L}", r"\p{N}")
# youtu / tiny_aya's words as llama.cpp matches them (see the module docstring).
_LETTER_WORDS = r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+" + CONTRACTIONS + "?"
YOUTU_WORDS = _LETTER_WORDS + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
TINY_AYA_WORDS = (_LETTER_WORDS + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
                  r"|\s+(?!\S)|\s+")
YOUTU_CJK = ("[\uac00-\ud7a3\u3131-\u318e]+"
             "|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f"
             "\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+")

# A digit run cut into groups of three from the right, the remainder first: 1234567 ->
# 1 234 567 (llama.cpp's afmoe splitter, also used for tiny_aya).
DIGITS_BY_THOUSANDS = r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))"

# DeepSeek V3 family: Latin words may start with one ASCII symbol; CJK runs and numbers of
# up to three digits are split off first.
HAN_KANA = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
DEEPSEEK3_WORDS = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
                   r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+"
                   r"|\s+(?!\S)|\s+")
SPARK25_WORDS = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
                 r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+")
# The ranges as llama.cpp writes them, including "豈" (U+8C48, not the compatibility
# ideograph U+F900) as the start of its third range.
AFMOE_SCRIPTS = ("[\u4e00-\u9fff\u3400-\u4dbf\u8c48-\ufaff\u3040-\u309f\u30a0-\u30ff"
                 "\uff65-\uff9f\u2f00-\u2fdf\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff"
                 "\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af\u1100-\u11ff]+")

# DeepSeek LLM: Latin, Greek, Cyrillic and other cased-script words, then ASCII and
# full-width punctuation, each with at most one leading whitespace character.
DEEPSEEK_LLM_LETTERS = (
    r"\s?[A-Za-z"
    "\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd"
    "\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15"
    "\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
    "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d"
    "\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e"
    "\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943]+")
DEEPSEEK_LLM_PUNCTUATION = r"\s?[!-/:-~" "\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
CJK_HANGUL = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"

# Kimi K2: Han characters make words of their own; other letters (marks excluded) form
# words that may take a leading symbol and a contraction. The Han ranges are llama.cpp's.
HAN = ("\u4e00-\u9fff\u3400-\u4dbf\U00020000-\U0002a6df\U0002a700-\U0002ebef"
       "\uf900-\ufaff\U0002f800-\U0002fa1f")
KIMI_K2 = (f"[{HAN}]+" + rf"|[^\r\n\p{{L}}\p{{N}}]?[\p{{L}}&&[^{HAN}]]+{CONTRACTIONS}?"
           + r"|\p{N}{1,3}" + _SYMBOLS_AND_SPACES)

# Bloom family: anything up to whitespace or sentence punctuation, with one leading space.
BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"
LINES = r"[^\n]+|[\n]+"


@dataclass(frozen=True)
class PreTokenizer:
    regexes: tuple          # applied in order; each splits the pieces of the previous one
    ignore_merges: bool = False   # a piece that is itself a token is taken whole
    add_bos: bool = False         # llama.cpp's default when the file says nothing
    # False: tokens are UTF-8 text, with <0xNN> tokens for bytes no token covers, instead
    # of GPT-2's byte alphabet.
    byte_level: bool = True
    escape_spaces: bool = False   # spaces are written "▁" (SentencePiece style)
    # A piece made only of newlines is taken whole when it is a token; every other piece
    # is merged (ignore_merges for newline runs alone).
    newline_runs_whole: bool = False
    force_bos: bool = False       # BOS is added even when the file says not to


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))
_GPT2 = PreTokenizer((GPT2,))
_LLAMA3 = PreTokenizer((LLAMA3,), ignore_merges=True, add_bos=True)
_QWEN2 = PreTokenizer((QWEN2,))
# StarCoder and its descendants (SmolLM among them) split every digit off first.
_STARCODER = PreTokenizer((r"\p{N}", GPT2))
_DEEPSEEK3 = PreTokenizer((r"\p{N}{1,3}", HAN_KANA, DEEPSEEK3_WORDS))
_BLOOM = PreTokenizer((BLOOM,))
_GPT4O = PreTokenizer((GPT4O,))
_BAILINGMOE = PreTokenizer((BAILINGMOE,))
_TINY_AYA = PreTokenizer((DIGITS_BY_THOUSANDS, TINY_AYA_WORDS))


def _same(pre, *names):
    return {name: pre for name in names}


BY_NAME = {
    "default": _DEFAULT,
    **_same(_GPT2, "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es",
            "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "jina-v1-en", "jina-v2-code",
            "roberta-bpe", "exaone4", "mpt", "olmo", "jais", "trillion", "granite-docling"),
    **_same(_LLAMA3, "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
            "midm-2.0", "lfm2", "jina-v5-nano"),
    **_same(PreTokenizer((LLAMA3,)), "dbrx", "smaug-bpe", "chatglm-bpe"),
    **_same(PreTokenizer((LLAMA3,), ignore_merges=True), "glm4", "glm5"),
    "jais-2": PreTokenizer((JAIS2,)),
    "minicpm5": PreTokenizer((r"\p{N}{1,3}", MINICPM5_WORDS), ignore_merges=True),
    **_same(_QWEN2, "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "megrez",
            "hunyuan", "solar-open", "grok-2"),
    "qwen35": PreTokenizer((QWEN35,)),
    "ufakzeka": PreTokenizer((UFAKZEKA,)),
    "laguna": PreTokenizer((LINES, QWEN2)),
    "seed-coder": PreTokenizer((SEED_CODER,)),
    **_same(_BAILINGMOE, "bailingmoe", "bailingmoe2", "llada-moe"),
    "exaone-moe": PreTokenizer((EXAONE_MOE,)),
    **_same(_STARCODER, "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone",
            "minerva-7b", "mellum2"),
    "falcon": PreTokenizer((r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]")),
    "deepseek-llm": PreTokenizer(("[\r\n]", DEEPSEEK_LLM_LETTERS, DEEPSEEK_LLM_PUNCTUATION,
                                  r"\s+$", CJK_HANGUL, r"\p{N}+")),
    "deepseek-coder": PreTokenizer(("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL,
                                    r"\p{N}")),
    **_same(_DEEPSEEK3, "deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"),
    "spark2_5": PreTokenizer((r"\p{N}{1,3}", HAN_KANA, SPARK25_WORDS, r"\p{N}")),
    "youtu": PreTokenizer((YOUTU_CJK, YOUTU_WORDS), ignore_merges=True),
    "afmoe": PreTokenizer((DIGITS_BY_THOUSANDS, AFMOE_SCRIPTS, DEEPSEEK3_WORDS)),
    **_same(_BLOOM, "bloom", "poro-chat", "gpt3-finnish"),
    "viking": PreTokenizer((BLOOM, r"\p{N}")),
    "tekken": PreTokenizer((TEKKEN,), ignore_merges=True, add_bos=True),
    "chameleon": PreTokenizer((r"<sentinel:[0-9]+>", r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                               r"([\t\n]|    |  )", r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", GPT2),
                              add_bos=True),
    **_same(_GPT4O, "gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"),
    "granite-embed-multi-97m": PreTokenizer((GRANITE_EMB_MULTI,), ignore_merges=True),
    **_same(_TINY_AYA, "tiny_aya", "cohere2moe"),
    # A split at every point followed by a multiple of three digits: 1234567 -> 1 234 567.
    "superbpe": PreTokenizer((r"\p{N}+", r"(?=([0-9]{3})+(?![0-9]))")),
    "kimi-k2": PreTokenizer((KIMI_K2,)),
    # SentencePiece-style BPE: no word splitting beyond lines, spaces written "▁".
    "sarvam-moe": PreTokenizer((LINES,), byte_level=False, escape_spaces=True),
    **_same(PreTokenizer((LINES,), byte_level=False, escape_spaces=True,
                         newline_runs_whole=True, add_bos=True, force_bos=True),
            "gemma4", "granite-embed-multi-311m"),
    "whitespace": PreTokenizer((r"\S+",), byte_level=False),
}


def lookup(name):
    """The pre-tokenizer for a `tokenizer.ggml.pre` value (None or missing: "default"),
    or None for a name llama.cpp does not know."""
    return BY_NAME.get(name or "default")
