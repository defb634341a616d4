"""The Python API:

    import numatp
    with numatp.load("model.gguf", nodes="auto") as llm:
        for piece in llm.generate("Once upon a time", max_tokens=64, temperature=0.8, seed=1):
            print(piece, end="", flush=True)
"""
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from numatp import _env  # noqa: F401
from numatp.errors import ModelFileError, NumatpError, UsageError
from numatp.model.archs.parts import TOKEN_EMBD
from numatp.model.config import from_gguf
from numatp.model.gguf_file import GGUFFile
from numatp.quant.formats import type_name
from numatp.sampling import Sampler, SamplingParams

# Prompt tokens per forward call: each call streams every weight once from memory and
# enters each parallel region once, so larger chunks spread that over more tokens; 128
# tokens of activations (int8) still sit in a core's L2 cache next to its weights.
PREFILL_CHUNK = 128
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


class _Turns:
    """Calls on one model take turns: the model has one KV cache, and two computations
    interleaved on it would each read the other's keys and values (wrong text, no error).

    A turn is held from the start of a call to its end; for a generation, from its first
    token until it is exhausted or closed. Whoever wants the model while another holds it
    waits, unless the holder is its own thread: waiting for itself would never end."""

    def __init__(self):
        self._changed = threading.Condition()
        self._holder = None   # ident of the thread that last ran the holding call

    def take(self):
        me = threading.get_ident()
        with self._changed:
            while self._holder is not None:
                if self._holder == me:
                    raise NumatpError(
                        "this model is busy with a generation of this thread that has not "
                        "finished: exhaust it or call its close() first (one model runs one "
                        "generation at a time)")
                self._changed.wait()
            self._holder = me

    def resumed(self):
        """The holding generation runs again, maybe in another thread (a thread pool
        driving it): that thread is now the one that must not wait for it."""
        self._holder = threading.get_ident()

    def give_back(self):
        with self._changed:
            self._holder = None
            self._changed.notify()


class LLM:
    """A loaded model. Use as a context manager, or call close().

    One LLM may be shared by threads: logits(), warm_up() and each generation take turns
    on the model (it has one KV cache), each running whole while the others wait, so each
    gets the result it would get alone. A generation holds the model from its first token
    until it is exhausted or closed (a for loop that stops early closes it when the
    generator is dropped). Starting another call in the thread where a generation is still
    open raises NumatpError, at that call's first use, rather than wait for itself: close()
    the first generation, or finish it, before starting the next."""

    def __init__(self, path=None, nodes="auto", threads=None, ctx_size=None, announce=None,
                 moe_split="rows"):
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
        from numatp.parallel.plan import MOE_SPLITS
        if moe_split not in MOE_SPLITS:
            raise UsageError(f"invalid MoE split {moe_split!r} (one of: {', '.join(MOE_SPLITS)})")
        self.moe_split = moe_split
        check_kv_fits(self.config, ctx_size)
        self._embd = self.gguf.tensors[TOKEN_EMBD.name]
        self._embd_kernels = None  # a KernelSet, made when first needed (imports Numba)
        self.stats = GenerationStats()
        self.bytes_per_token = weight_bytes_per_token(self.gguf, self.config)
        self._turns = _Turns()
        self._step = threading.Lock()   # close() from another thread waits out a running step
        self.model = None
        try:
            self.model = self._start(nodes, threads, announce)
        except MemoryError as e:
            raise NumatpError(f"not enough memory to load {self.path} with a context of "
                              f"{ctx_size} tokens ({e})") from None

    def _start(self, nodes, threads, announce):
        from numatp._env import CACHE_PROBLEM, kernels_cached
        from numatp.parallel.group import resolve_nodes, shared_cpus_warning
        from numatp.parallel.shard import model_kernel_set
        placement = resolve_nodes(nodes, threads)
        if announce is not None and (warning := shared_cpus_warning(placement)):
            announce(warning)
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
                                 max_tokens=PREFILL_CHUNK, moe_split=self.moe_split)

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
        if pos0 + len(ids) > self.ctx:
            raise NumatpError(f"position {pos0 + len(ids) - 1} is past the context of {self.ctx} tokens")
        x = self.embed(ids)
        with self._step:
            if self.model is None:
                raise NumatpError("this model is closed")
            return self.model.forward(x, pos0)

    def warm_up(self):
        """Load the compiled kernels now (compiling them on a first run), so that the
        first prompt's timing is the prompt's: the embedding lookup, and the step where
        it runs in this process."""
        self._turns.take()
        try:
            self.embed([0])
            with self._step:
                if self.model is None:
                    raise NumatpError("this model is closed")
                self.model.warm_up()
        finally:
            self._turns.give_back()

    def logits(self, ids) -> np.ndarray:
        """Logits (float32, vocab) after the last of `ids`, from an empty cache."""
        self._turns.take()
        try:
            return np.array(self._prefill(list(ids)), dtype=np.float32)
        finally:
            self._turns.give_back()

    # --- generation -------------------------------------------------------------------
    def generate_ids(self, prompt_ids, max_tokens=128, params: SamplingParams | None = None,
                     stop_at_eog=True):
        """Yield generated token ids; statistics land in self.stats. The generation holds
        the model from its first token until it is exhausted or closed (see LLM)."""
        params = params or SamplingParams()
        sampler = Sampler(params)
        if max_tokens is None or max_tokens < 0:
            max_tokens = self.ctx
        self._turns.take()
        try:
            yield from self._generate_ids(prompt_ids, max_tokens, sampler, stop_at_eog)
        finally:
            self._turns.give_back()

    def _generate_ids(self, prompt_ids, max_tokens, sampler, stop_at_eog):
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
            self._turns.resumed()
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
        """Stop the model's workers and free its memory. A generation still open fails at
        its next token."""
        step = getattr(self, "_step", None)
        if step is None:  # __init__ failed before there was anything to close
            return
        with step:
            model, self.model = self.model, None
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
    from numatp.model.declare import bytes_per_token
    return bytes_per_token(gguf, cfg)


def check_kv_fits(cfg, ctx):
    """Refuse a context whose KV cache could never fit, before any of it is allocated."""
    import psutil

    from numatp.model.declare import cache_nbytes
    kv = cache_nbytes(cfg, ctx)
    total = psutil.virtual_memory().total
    if kv > total:
        raise NumatpError(f"a context of {ctx} tokens needs {kv / 2**30:.1f} GiB of KV cache, more "
                          f"than this machine's {total / 2**30:.1f} GiB of memory (lower -c/--ctx-size)")


def load(path=None, nodes="auto", threads=None, ctx_size=None, announce=None,
         moe_split="rows") -> LLM:
    """announce(message): called with a one-line notice when loading will compile the
    kernels (the first run of a numatp version), before it starts. moe_split: how a
    Mixture-of-Experts model's experts are placed on the nodes, "rows" (a slice of every
    expert on each node) or "experts" (whole experts per node)."""
    return LLM(path, nodes=nodes, threads=threads, ctx_size=ctx_size, announce=announce,
               moe_split=moe_split)
