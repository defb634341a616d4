"""Tokenizers built from GGUF metadata, encoding exactly as llama.cpp does.

    tok = load_tokenizer("model.gguf")
    ids = tok.encode("Hello")            # BOS added when the file asks for it
    text = tok.decode(ids)

vocab.py reads the tokenizer.* keys, pretokenize.py names the word-splitting regexes of
each `tokenizer.ggml.pre`, backend.py builds the `tokenizers` pipeline, core.py is the
API (Tokenizer, StreamDecoder, load_tokenizer).
"""
from numatp.tokenizer.core import StreamDecoder, Tokenizer, load_tokenizer

__all__ = ["Tokenizer", "StreamDecoder", "load_tokenizer"]
