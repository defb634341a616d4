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
    params = _sampling(temperature, top_p, top_k, min_p, repeat_penalty, seed)
    stops = checked_stops(stop)
    n_top = _count("logprobs", logprobs, llm.config.vocab)
    _flag("stream", stream)
    _flag("echo", echo)
    ids = llm.prompt_ids(prompt) if isinstance(prompt, str) else prompt
    run = _Run(llm, ids, params, max_tokens, stops, n_top, score_prompt=echo and n_top is not None)
    prompt_text = prompt if isinstance(prompt, str) else llm.detokenize(run.stats.prompt_tokens)
    chunks = _completion_chunks(run, _head(llm, "cmpl", "text_completion"), prompt_text, echo)
    return chunks if stream else _joined_completion(chunks, n_top is not None)


def create_chat_completion(llm, messages, max_tokens=None, temperature=0.2, top_p=0.95,
                           top_k=40, min_p=0.05, repeat_penalty=1.0, seed=None, stop=None,
                           stream=False, logprobs=False, top_logprobs=None):
    """The assistant's reply to `messages` ([{"role": ..., "content": ...}, ...]), rendered
    with the model's chat template (ChatML if it has none). logprobs: True for each
    token's logprob; top_logprobs: how many of the most likely tokens to list with it.
    The other arguments as in create_completion."""
    from numatp.chat import checked_messages, messages_prompt, template_stops
    params = _sampling(temperature, top_p, top_k, min_p, repeat_penalty, seed)
    stops = checked_stops(stop) + template_stops(llm.tokenizer)
    _flag("stream", stream)
    _flag("logprobs", logprobs)
    n_top = _count("top_logprobs", top_logprobs, llm.config.vocab)
    if n_top is not None and not logprobs:
        raise UsageError("top_logprobs needs logprobs=True")
    text = messages_prompt(llm.tokenizer, checked_messages(messages))
    llm.check_could_fit(text)
    ids = llm.tokenizer.encode(text, add_special=True)
    run = _Run(llm, ids, params, max_tokens, stops, (n_top or 0) if logprobs else None)
    chunks = _chat_chunks(run, _head(llm, "chatcmpl", "chat.completion.chunk"))
    return chunks if stream else _joined_chat(chunks, logprobs)


# -- one generation as text, with the tokens each piece covers ---------------------------------

@dataclass
class _Token:
    id: int
    offset: int              # where its text starts in the decoded reply (or prompt)
    end: int                 # where it ends
    logprob: float | None
    top: list | None         # [(id, logprob)] of the most likely tokens at its position


class _Run:
    def __init__(self, llm, ids, params, max_tokens, stops, n_top, score_prompt=False):
        self.tokenizer = llm.tokenizer
        self.n_top = n_top
        self.prompt_tokens = []   # _Token of each prompt token, when the prompt is scored
        self.stats, self._steps = llm.generation(
            ids, max_tokens, params, each_prompt_logits=self._score if score_prompt else None)
        self._text = TextStream(llm.tokenizer, stops)
        self.finish_reason = None

    def _score(self, position, logits):
        """The prompt's own logprobs: logits after token `position` give the next one's."""
        from numatp.tokenizer import StreamDecoder
        ids = self.stats.prompt_tokens
        if position == 0:
            decoder, offset = StreamDecoder(self.tokenizer), 0
            self._prompt_offsets = []
            for tok in ids:
                piece = decoder.feed(tok)
                self._prompt_offsets.append((offset, offset + len(piece)))
                offset += len(piece)
            self.prompt_tokens.append(_Token(ids[0], 0, self._prompt_offsets[0][1], None, None))
        if position + 1 < len(ids):
            tok = ids[position + 1]
            self.prompt_tokens.append(_Token(tok, *self._prompt_offsets[position + 1],
                                             *_logprobs(logits, tok, self.n_top)))

    def pieces(self):
        """(text, tokens) as text is released: tokens are those whose text the text released
        so far covers (all of it; at a stop string, those that begin before it)."""
        text_stream, waiting = self._text, []
        with closing(self._steps):
            for tok, logits in self._steps:
                scored = _logprobs(logits, tok, self.n_top) if self.n_top is not None else (None, None)
                text, offset = text_stream.feed(tok)
                waiting.append(_Token(tok, offset, text_stream.decoded, *scored))
                ready = self._ready(waiting)
                if text or ready:
                    yield text, ready
                if text_stream.stopped:
                    break
        if not text_stream.stopped:
            text = text_stream.finish()
            ready = self._ready(waiting, finished=True)
            if text or ready:
                yield text, ready
        if text_stream.stopped:
            self.stats.stop_reason = "stop"
        self.finish_reason = "stop" if self.stats.stop_reason in ("stop", "eos") else "length"

    def _ready(self, waiting, finished=False):
        shown = self._text.shown
        if self._text.stopped:
            ready = [t for t in waiting if t.offset < shown]
            waiting.clear()
            return ready
        n = len(waiting) if finished else next(
            (i for i, t in enumerate(waiting) if t.end > shown), len(waiting))
        ready = waiting[:n]
        del waiting[:n]
        return ready

    def usage(self):
        s = self.stats
        return {"prompt_tokens": s.n_prompt, "completion_tokens": s.n_gen,
                "total_tokens": s.n_prompt + s.n_gen,
                "prompt_tokens_details": {"cached_tokens": s.n_prompt_cached}}


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


# -- the completions API ----------------------------------------------------------------------

def _completion_chunks(run, head, prompt_text, echo):
    def chunk(text, tokens, offset_base, finish_reason=None):
        return {**head, "choices": [{
            "text": text, "index": 0, "finish_reason": finish_reason,
            "logprobs": None if run.n_top is None or finish_reason else
            _completion_logprobs(run.tokenizer, tokens, offset_base)}]}

    # Offsets count from the start of the prompt, echoed or not (OpenAI's text_offset).
    reply_base = len(prompt_text)
    pieces = run.pieces()
    with closing(pieces):
        first = next(pieces, None)   # the prompt has been processed (and scored)
        if echo:
            yield chunk(prompt_text, run.prompt_tokens, 0)
        if first is not None:
            yield chunk(*first, reply_base)
        for text, tokens in pieces:
            yield chunk(text, tokens, reply_base)
    yield {**chunk("", [], reply_base, run.finish_reason), "usage": run.usage()}


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


def _joined_completion(chunks, logprobs_asked):
    texts = []
    logprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for c in chunks:
        choice = c["choices"][0]
        texts.append(choice["text"])
        for key, values in (choice["logprobs"] or {}).items():
            logprobs[key] += values
    return {**_head_of(c, "text_completion"),
            "choices": [{"text": "".join(texts), "index": 0,
                         "logprobs": logprobs if logprobs_asked else None,
                         "finish_reason": choice["finish_reason"]}],
            "usage": c["usage"]}


# -- the chat API -----------------------------------------------------------------------------

def _chat_chunks(run, head):
    def chunk(delta, tokens, finish_reason=None):
        return {**head, "choices": [{
            "index": 0, "delta": delta, "finish_reason": finish_reason,
            "logprobs": None if run.n_top is None or "content" not in delta else
            _chat_logprobs(run.tokenizer, tokens)}]}

    yield chunk({"role": "assistant"}, [])
    pieces = run.pieces()
    with closing(pieces):
        for text, tokens in pieces:
            yield chunk({"content": text}, tokens)
    yield {**chunk({}, [], run.finish_reason), "usage": run.usage()}


def _chat_logprobs(tokenizer, tokens):
    def entry(i, logprob):
        raw = tokenizer.token_bytes(i)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob,
                "bytes": list(raw)}
    return {"content": [{**entry(t.id, t.logprob),
                         "top_logprobs": [entry(i, lp) for i, lp in t.top]} for t in tokens],
            "refusal": None}


def _joined_chat(chunks, logprobs_asked):
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
                         if logprobs_asked else None,
                         "finish_reason": choice["finish_reason"]}],
            "usage": c["usage"]}


# -- shared -----------------------------------------------------------------------------------

def _head(llm, prefix, kind):
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": llm.path}


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
