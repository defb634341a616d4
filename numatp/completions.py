"""OpenAI-shaped completions over an LLM's generation, as OpenAI's API and llama-cpp-python's
Llama methods of the same names return them:

- create_completion(llm, prompt, ...): the completions API, text (or token ids) in, text out:
  {"id": "cmpl-...", "object": "text_completion", "created", "model",
   "choices": [{"index": 0, "text", "logprobs", "finish_reason": "stop" | "length"}],
   "usage": {"prompt_tokens", "completion_tokens", "total_tokens",
             "prompt_tokens_details": {"cached_tokens"}}}
- create_chat_completion(llm, messages, ...): the chat API, messages in, the assistant's
  message out: "object": "chat.completion", choices[0]["message"] = {"role": "assistant",
  "content"} in place of "text".

With stream=True each returns an iterator of chunks instead: "text_completion" chunks whose
texts add up to the text, or "chat.completion.chunk" chunks whose choices carry a "delta"
(first {"role": "assistant"}, then {"content": ...}); the last chunk has the finish_reason,
an empty text or delta, and the usage. The whole result is the chunks put together, so the
two forms agree.

Logprobs are those of the model's own distribution (log-softmax of the logits, before the
sampling parameters). The completions API takes logprobs=N and gives, per token, its text,
its logprob, the N most likely tokens and the chosen one in a {text: logprob} dict, and its
text_offset (characters from the start of the prompt). The chat API takes logprobs=True
and top_logprobs=N and gives {"content": [{"token", "logprob", "bytes", "top_logprobs":
[{"token", "logprob", "bytes"} x N]}], "refusal": None}. A token's logprobs come with the
text that covers it; a token the returned text does not reach (after a stop string) has
none.

finish_reason: "stop" for an end-of-generation token or a stop string, "length" for
max_tokens or a full context. Argument errors raise at the call, also with stream=True.
"""
import time
import uuid
from contextlib import closing
from dataclasses import dataclass

import numpy as np

from numatp.errors import UsageError
from numatp.sampling import SamplingParams
from numatp.text_stream import TextStream, checked_stops


def create_completion(llm, prompt, max_tokens=16, temperature=0.8, top_p=0.95, top_k=40,
                      min_p=0.05, repeat_penalty=1.0, seed=None, stop=None, stream=False,
                      logprobs=None, echo=False):
    """Continue `prompt` (a string, or a list of token ids). max_tokens None or negative:
    until an end-of-generation token or a full context. stop: a string or a list of them;
    the text ends before the first that appears. logprobs: None, or how many of the most
    likely tokens to list at each position. echo: the text (and with logprobs, the
    logprobs) begin with the prompt's; every prompt token but the first then gets a
    logprob, at the cost of running the prompt a token at a time, without reuse."""
    _flag("stream", stream)
    request = completion_request(llm, prompt, max_tokens, temperature, top_p, top_k, min_p,
                                 repeat_penalty, seed, stop, logprobs, echo)
    scores = None
    if echo and request.chunks.n_top is not None:
        scores = _PromptScores(llm.tokenizer, request.ids, request.chunks)
    return _result(llm, request, stream, scores)


def create_chat_completion(llm, messages, max_tokens=None, temperature=0.2, top_p=0.95,
                           top_k=40, min_p=0.05, repeat_penalty=1.0, seed=None, stop=None,
                           stream=False, logprobs=False, top_logprobs=None):
    """The assistant's reply to `messages` ([{"role": ..., "content": ...}, ...]), rendered
    with the model's chat template (ChatML if it has none). logprobs: True for each
    token's logprob; top_logprobs: how many of the most likely tokens to list with it.
    The other arguments as in create_completion."""
    _flag("stream", stream)
    request = chat_request(llm, messages, max_tokens, temperature, top_p, top_k, min_p,
                           repeat_penalty, seed, stop, logprobs, top_logprobs)
    return _result(llm, request, stream)


# -- a checked request: what a generation needs, and the chunks its tokens make -------------

@dataclass
class Request:
    ids: list                 # the prompt's token ids
    params: SamplingParams
    max_tokens: int | None    # None: until an end-of-generation token or a full context
    chunks: "CompletionChunks | ChatChunks"


def completion_request(llm, prompt, max_tokens=16, temperature=0.8, top_p=0.95, top_k=40,
                       min_p=0.05, repeat_penalty=1.0, seed=None, stop=None, logprobs=None,
                       echo=False, model=None) -> Request:
    """The completions API's arguments checked (a bad one raises UsageError or
    ContextError) and the prompt tokenized. model: the name the chunks carry (default:
    the model's path)."""
    from numatp.api import _checked_max_tokens
    params = _sampling(temperature, top_p, top_k, min_p, repeat_penalty, seed)
    stops = checked_stops(stop)
    n_top = _count("logprobs", logprobs, llm.config.vocab)
    _flag("echo", echo)
    limit = _checked_max_tokens(max_tokens)
    if isinstance(prompt, str):
        ids = llm.prompt_ids(prompt)
        prompt_text = prompt
    else:
        ids = llm._checked_ids(prompt)
        prompt_text = llm.detokenize(ids)
    head = _head(model or llm.path, "cmpl", "text_completion")
    return Request(ids, params, limit,
                   CompletionChunks(llm.tokenizer, head, stops, n_top, prompt_text, echo))


def chat_request(llm, messages, max_tokens=None, temperature=0.2, top_p=0.95, top_k=40,
                 min_p=0.05, repeat_penalty=1.0, seed=None, stop=None, logprobs=False,
                 top_logprobs=None, model=None) -> Request:
    """The chat API's arguments checked and the conversation rendered and tokenized."""
    from numatp.api import _checked_max_tokens
    from numatp.chat import checked_messages, messages_prompt, template_stops
    params = _sampling(temperature, top_p, top_k, min_p, repeat_penalty, seed)
    stops = checked_stops(stop) + template_stops(llm.tokenizer)
    _flag("logprobs", logprobs)
    n_top = _count("top_logprobs", top_logprobs, llm.config.vocab)
    if n_top is not None and not logprobs:
        raise UsageError("top_logprobs needs logprobs=True")
    limit = _checked_max_tokens(max_tokens)
    text = messages_prompt(llm.tokenizer, checked_messages(messages))
    llm.check_could_fit(text)
    ids = llm._checked_ids(llm.tokenizer.encode(text, add_special=True))
    head = _head(model or llm.path, "chatcmpl", "chat.completion.chunk")
    return Request(ids, params, limit,
                   ChatChunks(llm.tokenizer, head, stops, (n_top or 0) if logprobs else None))


def finish_reason(stop_reason) -> str:
    """OpenAI's finish_reason for a GenerationStats.stop_reason."""
    return "stop" if stop_reason in ("stop", "eos") else "length"


def usage(n_prompt, n_cached, n_generated) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_generated,
            "total_tokens": n_prompt + n_generated,
            "prompt_tokens_details": {"cached_tokens": n_cached}}


# -- the library's run of a request on the model's one sequence ------------------------------

def _result(llm, request, stream, prompt_scores=None):
    # The generation is made here, so that its argument errors raise at the call.
    stats, steps = llm.generation(request.ids, request.max_tokens, request.params,
                                  each_prompt_logits=prompt_scores)
    chunks = _run_chunks(request.chunks, stats, steps)
    return chunks if stream else request.chunks.joined(chunks)


def _run_chunks(chunks, stats, steps):
    with closing(steps):
        step = next(steps, None)   # the prompt has been processed (and scored)
        yield from chunks.opening()
        while step is not None:
            yield from chunks.feed(*step)
            if chunks.stopped:
                break
            step = next(steps, None)
    if chunks.stopped:
        stats.stop_reason = "stop"
    yield from chunks.closing(finish_reason(stats.stop_reason),
                              usage(stats.n_prompt, stats.n_prompt_cached, stats.n_gen))


class _PromptScores:
    """The prompt's own logprobs, for echo: called with the logits after each prompt token
    (processed alone), it scores the next one into chunks.prompt_tokens."""

    def __init__(self, tokenizer, ids, chunks):
        from numatp.tokenizer import StreamDecoder
        self.ids, self.chunks = ids, chunks
        decoder, offset, self.offsets = StreamDecoder(tokenizer), 0, []
        for tok in ids:
            piece = decoder.feed(tok)
            self.offsets.append((offset, offset + len(piece)))
            offset += len(piece)

    def __call__(self, position, logits):
        ids, scored = self.ids, self.chunks.prompt_tokens
        if position == 0:
            scored.append(_Token(ids[0], 0, self.offsets[0][1], None, None))
        if position + 1 < len(ids):
            tok = ids[position + 1]
            scored.append(_Token(tok, *self.offsets[position + 1],
                                 *_logprobs(logits, tok, self.chunks.n_top)))


# -- chunks as tokens come: the text, and the tokens each piece covers ------------------------

@dataclass
class _Token:
    id: int
    offset: int              # where its text starts in the decoded reply (or prompt)
    end: int                 # where it ends
    logprob: float | None
    top: list | None         # [(id, logprob)] of the most likely tokens at its position


class _Chunks:
    """The chunks of one completion, made as its tokens come (a generation of the library,
    or a sequence the server's scheduler runs): opening() once the prompt is processed,
    feed(token, logits) for each generated token (while the logits are valid), and
    closing(finish_reason, usage) at the end; each returns the chunks to send now. Once
    `stopped` (a stop string appeared), no more tokens are to be fed."""

    def __init__(self, tokenizer, head, stops, n_top):
        self.tokenizer, self.head, self.n_top = tokenizer, head, n_top
        self._text = TextStream(tokenizer, stops)
        self._waiting = []

    @property
    def stopped(self) -> bool:
        return self._text.stopped

    def opening(self) -> list:
        return []

    def feed(self, token, logits) -> list:
        scored = _logprobs(logits, token, self.n_top) if self.n_top is not None else (None, None)
        text, offset = self._text.feed(token)
        self._waiting.append(_Token(token, offset, self._text.decoded, *scored))
        ready = self._ready()
        return [self._piece(text, ready)] if text or ready else []

    def closing(self, finish_reason, usage) -> list:
        out = []
        if not self.stopped:
            text = self._text.finish()
            ready = self._ready(finished=True)
            if text or ready:
                out.append(self._piece(text, ready))
        out.append({**self._end(finish_reason), "usage": usage})
        return out

    def _ready(self, finished=False):
        """The tokens whose text is released so far (all of it; at a stop string, those
        that begin before it)."""
        shown, waiting = self._text.shown, self._waiting
        if self._text.stopped:
            ready = [t for t in waiting if t.offset < shown]
            waiting.clear()
            return ready
        n = len(waiting) if finished else next(
            (i for i, t in enumerate(waiting) if t.end > shown), len(waiting))
        ready = waiting[:n]
        del waiting[:n]
        return ready


class CompletionChunks(_Chunks):
    """"text_completion" chunks; echo: the first carries the prompt's text (and, once
    prompt_tokens is filled, its logprobs)."""

    def __init__(self, tokenizer, head, stops, n_top, prompt_text, echo):
        super().__init__(tokenizer, head, stops, n_top)
        self.prompt_text, self.echo = prompt_text, echo
        self.prompt_tokens = []
        self.logprobs_asked = n_top is not None

    def opening(self):
        return [self._chunk(self.prompt_text, self.prompt_tokens, 0)] if self.echo else []

    def _piece(self, text, tokens):
        # Offsets count from the start of the prompt, echoed or not (OpenAI's text_offset).
        return self._chunk(text, tokens, len(self.prompt_text))

    def _end(self, finish_reason):
        return self._chunk("", [], 0, finish_reason)

    def _chunk(self, text, tokens, offset_base, finish_reason=None):
        return {**self.head, "choices": [{
            "text": text, "index": 0, "finish_reason": finish_reason,
            "logprobs": None if self.n_top is None or finish_reason else
            _completion_logprobs(self.tokenizer, tokens, offset_base)}]}

    def joined(self, chunks) -> dict:
        texts = []
        logprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for c in chunks:
            choice = c["choices"][0]
            texts.append(choice["text"])
            for key, values in (choice["logprobs"] or {}).items():
                logprobs[key] += values
        return {**_head_of(c, "text_completion"),
                "choices": [{"text": "".join(texts), "index": 0,
                             "logprobs": logprobs if self.logprobs_asked else None,
                             "finish_reason": choice["finish_reason"]}],
                "usage": c["usage"]}


class ChatChunks(_Chunks):
    """"chat.completion.chunk" chunks: a delta {"role": "assistant"} first, then
    {"content": ...} deltas."""

    def __init__(self, tokenizer, head, stops, n_top):
        super().__init__(tokenizer, head, stops, n_top)
        self.logprobs_asked = n_top is not None

    def opening(self):
        return [self._chunk({"role": "assistant"}, [])]

    def _piece(self, text, tokens):
        return self._chunk({"content": text}, tokens)

    def _end(self, finish_reason):
        return self._chunk({}, [], finish_reason)

    def _chunk(self, delta, tokens, finish_reason=None):
        return {**self.head, "choices": [{
            "index": 0, "delta": delta, "finish_reason": finish_reason,
            "logprobs": None if self.n_top is None or "content" not in delta else
            _chat_logprobs(self.tokenizer, tokens)}]}

    def joined(self, chunks) -> dict:
        texts, content = [], []
        for c in chunks:
            choice = c["choices"][0]
            texts.append(choice["delta"].get("content", ""))
            if choice["logprobs"] is not None:
                content += choice["logprobs"]["content"]
        return {**_head_of(c, "chat.completion"),
                "choices": [{"index": 0,
                             "message": {"role": "assistant", "content": "".join(texts)},
                             "logprobs": {"content": content, "refusal": None}
                             if self.logprobs_asked else None,
                             "finish_reason": choice["finish_reason"]}],
                "usage": c["usage"]}


def _logprobs(logits, token, n_top):
    """(logprob of `token`, [(id, logprob)] of the n_top most likely) under the logits."""
    z = logits.astype(np.float64)
    z -= z.max()
    logp = z - np.log(np.exp(z).sum())
    top = []
    if n_top:
        best = np.argpartition(-logp, n_top - 1)[:n_top]
        best = best[np.argsort(-logp[best], kind="stable")]
        top = [(int(i), float(logp[i])) for i in best]
    return float(logp[token]), top


def _completion_logprobs(tokenizer, tokens, base):
    def text(i):
        return tokenizer.token_bytes(i).decode("utf-8", errors="replace")
    tops = []
    for t in tokens:
        if t.top is None:
            tops.append(None)
        else:
            # OpenAI's form: the N most likely, and always the chosen one.
            tops.append({text(i): lp for i, lp in t.top} | {text(t.id): t.logprob})
    return {"tokens": [text(t.id) for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": tops,
            "text_offset": [base + t.offset for t in tokens]}


def _chat_logprobs(tokenizer, tokens):
    def entry(i, logprob):
        raw = tokenizer.token_bytes(i)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob,
                "bytes": list(raw)}
    return {"content": [{**entry(t.id, t.logprob),
                         "top_logprobs": [entry(i, lp) for i, lp in t.top]} for t in tokens],
            "refusal": None}


# -- shared -----------------------------------------------------------------------------------

def _head(model, prefix, kind):
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": model}


def _head_of(chunk, kind):
    return {"id": chunk["id"], "object": kind, "created": chunk["created"],
            "model": chunk["model"]}


def _sampling(temperature, top_p, top_k, min_p, repeat_penalty, seed):
    return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          repeat_penalty=repeat_penalty, seed=seed).validate()


def _flag(name, value):
    if not isinstance(value, bool):
        raise UsageError(f"invalid {name} {value!r}: give True or False")


def _count(name, value, vocab):
    """None, or a whole number from 0 to the vocabulary size."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= vocab:
        raise UsageError(f"invalid {name} {value!r}: give a whole number from 0 to {vocab} "
                         "(how many of the most likely tokens to list)")
    return value
