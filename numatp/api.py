"""The Python API:

    import numatp
    with numatp.load("model.gguf", nodes="auto") as llm:
        for piece in llm.generate("Once upon a time", max_tokens=64, temperature=0.8, seed=1):
            print(piece, end="", flush=True)
"""
import time
from dataclasses import dataclass, field

import numpy as np

from numatp import _env  # noqa: F401
from numatp.errors import ModelFileError, NumatpError, UsageError
from numatp.model.config import from_gguf
from numatp.model.gguf_file import GGUFFile
from numatp.quant.formats import type_name
from numatp.sampling import Sampler, SamplingParams

PREFILL_CHUNK = 64       # prompt tokens per forward call
DEFAULT_CTX = 4096


@dataclass
class GenerationStats:
    prompt_tokens: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""

    @property
    def n_prompt(self):
        return len(self.prompt_tokens)

    @property
    def n_gen(self):
        return len(self.tokens)

    @property
    def prompt_tps(self):
        return self.n_prompt / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_tps(self):
        # The first generated token comes from the prompt pass; the rest are decode steps.
        steps = max(self.n_gen - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 and steps else 0.0


class LLM:
    """A loaded model. Use as a context manager, or call close()."""

    def __init__(self, path=None, nodes="auto", threads=None, ctx_size=None, announce=None):
        from numatp.registry import resolve_model
        from numatp.tokenizer import Tokenizer
        self.path = str(resolve_model(path))
        self.gguf = GGUFFile(self.path)
        self.config = from_gguf(self.gguf)
        self.tokenizer = Tokenizer.from_metadata(self.gguf.metadata, where=self.path)
        if self.tokenizer.vocab_size != self.config.vocab:
            # A token id without an embedding row, or a row no text maps to: generation
            # would fail mid-text. llama.cpp refuses such files at load too.
            raise ModelFileError(f"{self.path}: the tokenizer has {self.tokenizer.vocab_size} tokens "
                                 f"but token_embd.weight has {self.config.vocab} rows")
        if ctx_size is None or ctx_size == 0:
            ctx_size = min(self.config.ctx_train, DEFAULT_CTX)
        if not isinstance(ctx_size, int) or ctx_size < 1:
            raise UsageError(f"invalid context size {ctx_size!r}: must be a positive integer")
        self.ctx = ctx_size
        check_kv_fits(self.config, ctx_size)
        self._embd = self.gguf.tensors["token_embd.weight"]
        self._embd_kernels = None  # a KernelSet, made when first needed (imports Numba)
        self.stats = GenerationStats()
        self.bytes_per_token = weight_bytes_per_token(self.gguf, self.config)
        self.model = None
        try:
            self.model = self._start(nodes, threads, announce)
        except MemoryError as e:
            raise NumatpError(f"not enough memory to load {self.path} with a context of "
                              f"{ctx_size} tokens ({e})") from None

    def _start(self, nodes, threads, announce):
        from numatp._env import CACHE_PROBLEM, kernels_cached
        from numatp.parallel.group import resolve_nodes
        from numatp.parallel.shard import model_kernel_set
        placement = resolve_nodes(nodes, threads)
        # Only now is the model known to be valid and about to run: a notice before a
        # file error would make that error two lines.
        kernels = model_kernel_set(self.gguf, self.config) if announce is not None else None
        if kernels is not None and not kernels_cached(kernels.key):
            names = "/".join(type_name(q) for q in kernels.qtypes)
            if CACHE_PROBLEM:
                announce(f"{CACHE_PROBLEM}; compiling the kernels for {names} weights into a "
                         "temporary cache, as on every run until that is fixed (a minute or less)")
            else:
                announce(f"first run of this numatp version on {names} weights: compiling their "
                         "kernels for this CPU (a minute or less; later runs load them from the "
                         "cache)")
        if len(placement) == 1 and not placement[0].bind:
            from numatp.parallel.local import LocalModel
            self.nodes = 1
            return LocalModel(self.gguf, self.config, self.ctx, len(placement[0].cpus))
        from numatp.parallel.coordinator import ProcessGroupModel
        self.nodes = len(placement)
        return ProcessGroupModel(self.path, self.gguf, self.config, self.ctx, placement,
                                 max_tokens=PREFILL_CHUNK)

    # --- the pieces -------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list:
        return self.tokenizer.encode(text, add_special=add_special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def embed(self, ids) -> np.ndarray:
        from numatp.quant.kernels import KernelSet, dequantize_rows
        if self._embd_kernels is None:
            self._embd_kernels = KernelSet([self._embd.qtype])
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab):
            raise UsageError(f"token id out of range [0, {self.config.vocab})")
        out = np.empty((ids.shape[0], self.config.hidden), dtype=np.float32)
        dequantize_rows(self._embd_kernels, self._embd.qtype, self._embd.data,
                        self.config.hidden, ids, out)
        return out

    def _prefill(self, ids) -> np.ndarray:
        """Run the prompt from position 0 in chunks; logits after its last token."""
        if not ids:
            raise UsageError("empty prompt: nothing to continue from")
        if len(ids) > self.ctx:
            raise NumatpError(f"prompt of {len(ids)} tokens does not fit the context of {self.ctx} "
                              "tokens (raise -c/--ctx-size)")
        logits = None
        for start in range(0, len(ids), PREFILL_CHUNK):
            logits = self._forward(ids[start:start + PREFILL_CHUNK], start)
        return logits

    def _forward(self, ids, pos0):
        # The jitted step does not check bounds: a position past the KV cache would
        # write outside it.
        if self.model is None:
            raise NumatpError("this model is closed")
        if pos0 + len(ids) > self.ctx:
            raise NumatpError(f"position {pos0 + len(ids) - 1} is past the context of {self.ctx} tokens")
        return self.model.forward(self.embed(ids), pos0)

    def warm_up(self):
        """Load the compiled kernels now (compiling them on a first run), so that the
        first prompt's timing is the prompt's: the embedding lookup, and the step where
        it runs in this process."""
        if self.model is None:
            raise NumatpError("this model is closed")
        self.embed([0])
        self.model.warm_up()

    def logits(self, ids) -> np.ndarray:
        """Logits (float32, vocab) after the last of `ids`, from an empty cache."""
        return np.array(self._prefill(list(ids)), dtype=np.float32)

    # --- generation -------------------------------------------------------------------
    def generate_ids(self, prompt_ids, max_tokens=128, params: SamplingParams | None = None,
                     stop_at_eog=True):
        """Yield generated token ids; statistics land in self.stats."""
        params = params or SamplingParams()
        sampler = Sampler(params)
        if max_tokens is None or max_tokens < 0:
            max_tokens = self.ctx
        stats = self.stats = GenerationStats(prompt_tokens=list(prompt_ids))
        t0 = time.perf_counter()
        logits = self._prefill(stats.prompt_tokens)
        history = list(prompt_ids)
        stats.prompt_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        pos = len(history)
        while True:
            if stats.n_gen >= max_tokens:
                stats.stop_reason = "length"
                break
            tok = sampler(logits, history)
            if stop_at_eog and tok in self.tokenizer.eog_ids:
                stats.stop_reason = "eos"
                break
            stats.tokens.append(tok)
            history.append(tok)
            yield tok
            if stats.n_gen >= max_tokens:
                stats.stop_reason = "length"
                break
            if pos >= self.ctx:
                stats.stop_reason = "context"
                break
            logits = self._forward([tok], pos)
            pos += 1
            stats.decode_seconds = time.perf_counter() - t1

    def prompt_ids(self, prompt: str, chat=False, system=None) -> list:
        """Token ids of a prompt, BOS included where the model wants it; with chat, the
        prompt as a user turn of the model's chat template plus the generation prompt."""
        if not prompt:
            raise UsageError("empty prompt: give some text to continue")
        self._check_could_fit(prompt)
        if chat:
            from numatp.chat import chat_prompt
            prompt = chat_prompt(self.tokenizer, prompt, system=system)
            self._check_could_fit(prompt)
        return self.tokenizer.encode(prompt, add_special=True)

    def _check_could_fit(self, text):
        """Refuse a text that could never fit the context before tokenizing it: a 51 MB
        prompt took 75 s and 4.9 GB to tokenize only to be refused for its length."""
        need = self.tokenizer.min_tokens(text)
        if need > self.ctx:
            raise NumatpError(f"prompt of {len(text):,} characters does not fit the context of "
                              f"{self.ctx} tokens: it takes at least {need:,} tokens "
                              "(raise -c/--ctx-size)")

    def stream_decoder(self):
        """Turns generated ids into text pieces of complete UTF-8 characters. The reply
        continues the prompt, so a SentencePiece leading space is kept."""
        from numatp.tokenizer import StreamDecoder
        return StreamDecoder(self.tokenizer, at_start=False)

    def generate(self, prompt: str, max_tokens=128, temperature=0.8, top_k=40, top_p=0.95,
                 min_p=0.05, repeat_penalty=1.0, repeat_last_n=64, seed=None, chat=False,
                 system=None):
        """Stream the generated text, in pieces of complete UTF-8 characters."""
        params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        params.validate()
        ids = self.prompt_ids(prompt, chat=chat, system=system)
        decoder = self.stream_decoder()
        for tok in self.generate_ids(ids, max_tokens, params):
            piece = decoder.feed(tok)
            if piece:
                yield piece
        rest = decoder.flush()
        if rest:
            yield rest

    def close(self):
        model, self.model = getattr(self, "model", None), None
        if model is not None:
            model.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def weight_bytes_per_token(gguf, cfg) -> int:
    """Bytes of weights one decode step reads: every matrix once, one embedding row."""
    total = 0
    for name, t in gguf.tensors.items():
        if name == "token_embd.weight":
            total += t.nbytes // t.rows * (1 if not cfg.tied_output else t.rows)
        elif name != "rope_freqs.weight":
            total += t.nbytes
    return total


def check_kv_fits(cfg, ctx):
    """Refuse a context whose KV cache could never fit, before any of it is allocated."""
    import psutil
    kv = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4 * ctx
    total = psutil.virtual_memory().total
    if kv > total:
        raise NumatpError(f"a context of {ctx} tokens needs {kv / 2**30:.1f} GiB of KV cache, more "
                          f"than this machine's {total / 2**30:.1f} GiB of memory (lower -c/--ctx-size)")


def load(path=None, nodes="auto", threads=None, ctx_size=None, announce=None) -> LLM:
    """announce(message): called with a one-line notice when loading will compile the
    kernels (the first run of a numatp version), before it starts."""
    return LLM(path, nodes=nodes, threads=threads, ctx_size=ctx_size, announce=announce)
