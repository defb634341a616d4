"""The Python API:

    import numatp
    with numatp.load("model.gguf", nodes="auto") as llm:
        for piece in llm.generate("Once upon a time", max_tokens=64, temperature=0.8, seed=1):
            print(piece, end="", flush=True)

OpenAI-shaped completions (create_completion, create_chat_completion) are in
numatp/completions.py, a multi-turn chat in numatp/conversation.py; both run on the
generation here.
"""
import operator
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np

from numatp import _env  # noqa: F401
from numatp.batching import PREFILL_CHUNK, SequenceSlots, reusable
from numatp.batching import chunks as _chunks
from numatp.errors import ContextError, ModelFileError, NumatpError, UsageError
from numatp.model.archs.parts import TOKEN_EMBD
from numatp.model.config import from_gguf
from numatp.model.gguf_file import GGUFFile
from numatp.quant.formats import type_name
from numatp.sampling import Sampler, SamplingParams
from numatp.text_stream import TextStream, checked_stops, text_pieces

DEFAULT_CTX = 4096
# gpu=: None runs on the CPU only; "attn" runs each layer's attention block and the KV
# cache on a CUDA GPU through CuPy (numatp/gpu/, numatp/forward/offload.py).
GPU_MODES = (None, "attn")


@dataclass
class GenerationStats:
    """What the last call did. stop_reason: "eos" (an end-of-generation token), "stop" (a
    stop string), "length" (max_tokens), "context" (the context is full)."""
    prompt_tokens: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    n_prompt_cached: int = 0     # prompt tokens whose keys and values the cache already held
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""

    @property
    def n_prompt(self):
        return len(self.prompt_tokens)

    @property
    def n_prompt_processed(self):
        return self.n_prompt - self.n_prompt_cached

    @property
    def n_gen(self):
        return len(self.tokens)

    @property
    def prompt_tps(self):
        n = self.n_prompt_processed
        return n / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

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

    Prompt reuse: the model keeps the keys and values of the last sequence it ran (the
    last prompt and the tokens generated after it) in its KV cache. A new prompt that
    begins with part of that sequence is processed from where they differ; the cache
    beyond is overwritten. stats.n_prompt_cached and n_prompt_processed say how much each
    call reused. The results are those of processing the prompt from scratch: bitwise
    the same logits for the same tokens, because each token's keys and values do not
    depend on how the tokens were grouped into forward passes: the kernels sum each row
    in the same order whether it is alone (a generated token, fed back in a decode step),
    in a prompt chunk of up to PREFILL_CHUNK tokens or in a batched decode of several
    sequences. (At least a prompt's last 2 tokens are processed again, never a lone token
    where it has more: a rule from when the one-token float kernels summed in another
    order, kept so that what a call reports as cached does not change.) reset() forgets
    the cached sequence (benchmarks of prompt processing).

    Threads: one LLM may be shared by threads: logits(), warm_up(), reset() and each
    generation take turns on the model (it has one KV cache), each running whole while
    the others wait, so each gets the result it would get alone. A generation holds the
    model from its first token until it is exhausted or closed (a for loop that stops
    early closes it when the generator is dropped). Starting another call in the thread
    where a generation is still open raises NumatpError, at that call's first use, rather
    than wait for itself: close() the first generation, or finish it, before starting the
    next. Arguments are checked when a generation is created: a bad one raises there,
    not at the first next().

    Several sequences: parallel=N gives N sequence slots, each with a KV cache region of
    ctx_size tokens, driven through self.slots (numatp/batching.py); the single-sequence
    API above runs on slot 0."""

    def __init__(self, path=None, nodes="auto", threads=None, ctx_size=None, announce=None,
                 moe_split="rows", parallel=1, gpu=None):
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
        from numatp.parallel.plan import check_moe_split
        check_moe_split(moe_split)
        self.moe_split = moe_split
        if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
            raise UsageError(f"invalid parallel {parallel!r}: the number of sequence slots, a "
                             "positive integer")
        self.parallel = parallel
        if gpu not in GPU_MODES:
            raise UsageError(f"invalid gpu {gpu!r}: None (CPU only) or 'attn' (attention and its "
                             "KV cache on the GPU)")
        self.gpu = gpu
        self.gpu_info = self.gpu_budget = None
        if gpu is None:
            check_kv_fits(self.config, ctx_size, parallel)
        elif parallel != 1:
            raise UsageError(f"gpu={gpu!r} keeps one sequence's keys and values on the GPU: "
                             "parallel must be 1")
        self._embd = self.gguf.tensors[TOKEN_EMBD.name]
        self._embd_kernels = None  # a KernelSet, made when first needed (imports Numba)
        self.stats = GenerationStats()
        self.bytes_per_token = weight_bytes_per_token(self.gguf, self.config)
        self._turns = _Turns()
        self.slots = SequenceSlots(self, parallel)
        # The tokens whose keys and values fill slot 0's KV cache from position 0, in
        # order (read and changed only by the holder of the turn).
        self._cached = self.slots._seqs[0]
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
        in_process = len(placement) == 1 and not placement[0].bind
        backend = self._check_gpu(in_process) if self.gpu else None
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
        if in_process:
            from numatp.parallel.local import LocalModel
            self.nodes = 1
            return LocalModel(self.gguf, self.config, self.ctx, len(placement[0].cpus),
                              n_slots=self.parallel, gpu=backend, max_tokens=PREFILL_CHUNK)
        from numatp.parallel.coordinator import ProcessGroupModel
        self.nodes = len(placement)
        return ProcessGroupModel(self.path, self.gguf, self.config, self.ctx, placement,
                                 max_tokens=PREFILL_CHUNK, moe_split=self.moe_split,
                                 n_slots=self.parallel, gpu=backend)

    def _check_gpu(self, in_process) -> str:
        """Before anything is loaded: the GPU (or GpuUnavailable), and that the attention
        block and the KV cache fit it. With worker processes the coordinator asks a child
        process, so that only rank 0, which runs attention, holds a CUDA context."""
        from numatp.gpu.budget import check_fits, gpu_budget
        from numatp.gpu.device import require
        self.gpu_info = require(in_child=not in_process)
        self.gpu_budget = gpu_budget(self.gguf, self.config, self.ctx, PREFILL_CHUNK)
        check_fits(self.gpu_budget, self.gpu_info)
        return self.gpu_info.backend

    def gpu_report(self) -> dict | None:
        """With gpu="attn": the GPU, the bytes it holds (attention weights, KV cache, RoPE
        tables, I/O buffers; CuPy's pool, workspace included), the per-layer host<->GPU
        round trip of one hidden vector over the pinned buffers (µs), and in one process
        the mean time of one layer's attention per decoded token. None without a GPU."""
        if self.gpu is None or self.model is None:
            return None
        return {"device": self.gpu_info.describe(), "planned": self.gpu_budget.as_dict(),
                **(self.model.gpu_report() or {})}

    # --- the pieces -------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list:
        return self.tokenizer.encode(text, add_special=add_special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def token_embeddings(self, ids) -> np.ndarray:
        """The rows of the token-embedding matrix for `ids` (float32, len(ids) x hidden):
        what the first layer reads."""
        from numatp.quant.kernels import KernelSet, dequantize_rows
        if self._embd_kernels is None:
            self._embd_kernels = KernelSet([self._embd.qtype])
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab):
            raise UsageError(f"token id out of range [0, {self.config.vocab})")
        out = np.empty((ids.shape[0], self.config.hidden), dtype=np.float32)
        # Read from the file, not the mmap: see GGUFFile.read_rows.
        rows = self.gguf.read_rows(self._embd, ids)
        dequantize_rows(self._embd_kernels, self._embd.qtype, rows.reshape(-1),
                        self.config.hidden, np.arange(ids.shape[0], dtype=np.int64), out)
        return out

    def _checked_ids(self, ids) -> list:
        """A prompt of token ids as a list of ints, or the UsageError/ContextError it is."""
        if isinstance(ids, (str, bytes)):
            raise UsageError("prompt token ids must be a list of integers, not text")
        try:
            ids = [operator.index(t) for t in ids]
        except TypeError:
            raise UsageError("prompt token ids must be a list of integers") from None
        if not ids:
            raise UsageError("empty prompt: nothing to continue from")
        if len(ids) > self.ctx:
            raise ContextError(f"prompt of {len(ids)} tokens does not fit the context of "
                               f"{self.ctx} tokens (raise -c/--ctx-size)")
        bad = next((t for t in ids if not 0 <= t < self.config.vocab), None)
        if bad is not None:
            raise UsageError(f"token id {bad} out of range [0, {self.config.vocab})")
        return ids

    def _prefill(self, ids, stats, each_logits=None) -> np.ndarray:
        """Logits after the last of `ids`, processing what the KV cache does not already
        hold (see LLM); stats.n_prompt_cached records what was reused. each_logits(i,
        logits) instead runs every token alone from position 0 and sees the logits after
        each (the prompt's own logprobs)."""
        if each_logits is None:
            reuse = reusable(self._cached, ids)
            spans = _chunks(reuse, len(ids))
        else:
            reuse = 0
            spans = ((i, i + 1) for i in range(len(ids)))
        stats.n_prompt_cached = reuse
        logits = None
        for start, end in spans:
            logits = self._forward(ids[start:end], start)
            if each_logits is not None:
                each_logits(start, logits)
        return logits

    def _forward(self, ids, pos0):
        """Run `ids` at positions pos0.. of slot 0 (which must follow what the cache holds
        or replace part of it); returns the logits after the last."""
        return self.slots.run(0, ids, pos0)

    def warm_up(self):
        """Load the compiled kernels now (compiling them on a first run), so that the
        first prompt's timing is the prompt's: the embedding lookup, and the step where
        it runs in this process."""
        self._turns.take()
        try:
            self.token_embeddings([0])
            with self._step:
                if self.model is None:
                    raise NumatpError("this model is closed")
                self._cached.clear()   # the step wrote position 0
                self.model.warm_up()
        finally:
            self._turns.give_back()

    def reset(self):
        """Forget the cached sequence: the next prompt is processed whole, from position 0.
        Results do not change (see LLM); a benchmark of prompt processing needs it."""
        self._turns.take()
        try:
            self._cached.clear()
        finally:
            self._turns.give_back()

    def fill_synthetic_kv(self, n, seed=0):
        """For benchmarks at depth: fill positions 0..n-1 of the KV cache with random keys
        and values, as if a prompt of n tokens had been processed (attention's cost does
        not depend on what the keys and values are), so that a decode at position n can be
        timed without a long prefill. One process only (--nodes 1). The cached sequence is
        forgotten: no prompt can reuse these positions."""
        self._turns.take()
        try:
            with self._step:
                if not hasattr(self.model, "fill_synthetic_kv"):
                    raise UsageError("a synthetic KV cache (--depth) needs the model in one "
                                     "process (--nodes 1)")
                if not 0 <= n < self.ctx:
                    raise UsageError(f"depth {n} does not fit the context of {self.ctx} tokens")
                self._cached.clear()
                self.model.fill_synthetic_kv(n, seed)
        finally:
            self._turns.give_back()

    def logits(self, ids) -> np.ndarray:
        """Logits (float32, vocab) after the last of `ids`. The part of `ids` that the KV
        cache already holds is not processed again (see LLM); self.stats says how much."""
        ids = self._checked_ids(ids)
        stats = GenerationStats(prompt_tokens=ids)
        self._turns.take()
        try:
            self.stats = stats
            t0 = time.perf_counter()
            out = np.array(self._prefill(ids, stats), dtype=np.float32)
            stats.prompt_seconds = time.perf_counter() - t0
            return out
        finally:
            self._turns.give_back()

    # --- generation -------------------------------------------------------------------
    def generate_ids(self, prompt_ids, max_tokens=128, params: SamplingParams | None = None,
                     stop_at_eog=True):
        """An iterator of generated token ids; statistics land in self.stats. max_tokens
        None or negative: until an end-of-generation token or a full context. The
        arguments are checked here; the generation holds the model from its first token
        until it is exhausted or closed (see LLM)."""
        _, run = self.generation(prompt_ids, max_tokens, params, stop_at_eog)
        return _tokens_of(run)

    def generation(self, prompt_ids, max_tokens=128, params: SamplingParams | None = None,
                   stop_at_eog=True, each_prompt_logits=None):
        """The generation under generate_ids() and the completion APIs: checks the
        arguments now and returns (stats, run), run an iterator of (token, logits) where
        logits (float32, vocab) are those the token was drawn from, valid until the next
        token is asked for. each_prompt_logits: see _prefill (for the prompt's logprobs)."""
        ids = self._checked_ids(prompt_ids)
        sampler = Sampler(params or SamplingParams())   # validates the parameters
        stats = GenerationStats(prompt_tokens=ids)
        limit = self.ctx if _checked_max_tokens(max_tokens) is None else max_tokens
        return stats, self._run(ids, limit, sampler, stop_at_eog, stats, each_prompt_logits)

    def _run(self, prompt_ids, max_tokens, sampler, stop_at_eog, stats, each_prompt_logits):
        self._turns.take()
        try:
            self.stats = stats
            t0 = time.perf_counter()
            logits = self._prefill(prompt_ids, stats, each_prompt_logits)
            stats.prompt_seconds = time.perf_counter() - t0
            history = list(prompt_ids)
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
                yield tok, logits
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
        finally:
            self._turns.give_back()

    def prompt_ids(self, prompt: str, chat=False, system=None) -> list:
        """Token ids of a prompt, BOS included where the model wants it; with chat, the
        prompt as a user turn of the model's chat template plus the generation prompt."""
        if not isinstance(prompt, str):
            raise UsageError(f"the prompt must be a string, not {type(prompt).__name__}")
        if not prompt:
            raise UsageError("empty prompt: give some text to continue")
        self.check_could_fit(prompt)
        if chat:
            from numatp.chat import chat_prompt
            prompt = chat_prompt(self.tokenizer, prompt, system=system)
            self.check_could_fit(prompt)
        return self.tokenizer.encode(prompt, add_special=True)

    def check_could_fit(self, text):
        """Refuse a text that could never fit the context before tokenizing it: a 51 MB
        prompt took 75 s and 4.9 GB to tokenize only to be refused for its length."""
        need = self.tokenizer.min_tokens(text)
        if need > self.ctx:
            raise ContextError(f"prompt of {len(text):,} characters does not fit the context of "
                               f"{self.ctx} tokens: it takes at least {need:,} tokens "
                               "(raise -c/--ctx-size)")

    def stream_decoder(self):
        """Turns generated ids into text pieces of complete UTF-8 characters. The reply
        continues the prompt, so a SentencePiece leading space is kept."""
        from numatp.tokenizer import StreamDecoder
        return StreamDecoder(self.tokenizer, at_start=False)

    def generate(self, prompt: str, max_tokens=128, temperature=0.8, top_k=40, top_p=0.95,
                 min_p=0.05, repeat_penalty=1.0, repeat_last_n=64, seed=None, chat=False,
                 system=None, stop=None):
        """Stream the generated text, in pieces of complete UTF-8 characters. stop: a string
        or a list of strings; the text ends before the first of them that appears
        (stats.stop_reason "stop"), even one split over several tokens. The arguments are
        checked at this call; see generate_ids for max_tokens and the model's turns."""
        params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty,
                                repeat_last_n, seed).validate()
        stops = checked_stops(stop)
        ids = self.prompt_ids(prompt, chat=chat, system=system)
        stats, run = self.generation(ids, max_tokens, params)
        return text_pieces(run, TextStream(self.tokenizer, stops), stats)

    def create_completion(self, prompt, **options):
        """An OpenAI-shaped text completion (a dict, or with stream=True an iterator of
        chunks); see numatp.completions.create_completion for the options."""
        from numatp.completions import create_completion
        return create_completion(self, prompt, **options)

    def create_chat_completion(self, messages, **options):
        """An OpenAI-shaped chat completion (a dict, or with stream=True an iterator of
        chunks); see numatp.completions.create_chat_completion for the options."""
        from numatp.completions import create_chat_completion
        return create_chat_completion(self, messages, **options)

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


def _tokens_of(run):
    with closing(run):
        for tok, _ in run:
            yield tok


def _checked_max_tokens(max_tokens):
    """max_tokens as given, or None for no limit (None or negative)."""
    if max_tokens is None:
        return None
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise UsageError(f"invalid max_tokens {max_tokens!r}: give a whole number "
                         "(None or -1: no limit)")
    return None if max_tokens < 0 else max_tokens


def weight_bytes_per_token(gguf, cfg) -> int:
    """Bytes of weights one decode step reads: every matrix once, one embedding row."""
    from numatp.model.declare import bytes_per_token
    return bytes_per_token(gguf, cfg)


def check_kv_fits(cfg, ctx, parallel=1):
    """Refuse a context whose KV cache (one region of ctx tokens per sequence slot) could
    never fit, before any of it is allocated."""
    import psutil

    from numatp.model.declare import cache_nbytes
    kv = cache_nbytes(cfg, ctx) * parallel
    total = psutil.virtual_memory().total
    if kv > total:
        what = f"a context of {ctx} tokens" if parallel == 1 else \
            f"{parallel} sequence slots of {ctx} tokens each"
        lower = "lower -c/--ctx-size" if parallel == 1 else "lower -c/--ctx-size or --parallel"
        raise NumatpError(f"{what} needs {kv / 2**30:.1f} GiB of KV cache, more than this "
                          f"machine's {total / 2**30:.1f} GiB of memory ({lower})")


def load(path=None, nodes="auto", threads=None, ctx_size=None, announce=None,
         moe_split="rows", parallel=1, gpu=None) -> LLM:
    """announce(message): called with a one-line notice when loading will compile the
    kernels (the first run of a numatp version), before it starts. moe_split: how a
    Mixture-of-Experts model's experts are placed on the nodes, "rows" (a slice of every
    expert on each node) or "experts" (whole experts per node). parallel: the number of
    sequence slots (see LLM.slots). gpu: None (CPU only) or "attn": each layer's attention
    and the KV cache on a CUDA GPU through CuPy (pip install 'numatp[cuda]'), the FFN and
    experts on the CPU; raises NumatpError before loading when there is no usable GPU or
    the attention block and KV cache do not fit it."""
    return LLM(path, nodes=nodes, threads=threads, ctx_size=ctx_size, announce=announce,
               moe_split=moe_split, parallel=parallel, gpu=gpu)
