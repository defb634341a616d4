"""OpenAI request bodies, checked into numatp.completions.Request, and OpenAI's error shape.

Every field is checked before anything runs: a bad one is an ApiError (HTTP 400) naming
the field as OpenAI's `param`, with the same rule the library applies to that argument.
Fields OpenAI defines that numatp cannot honour (n > 1, tools, logit_bias, penalties
other than 0, ...) are refused rather than ignored; fields that change nothing here
(user, model, metadata, ...) are accepted.
"""
from numatp.completions import chat_request, completion_request
from numatp.errors import ContextError, NumatpError
from numatp.sampling import SamplingParams

# OpenAI's limits: completions' logprobs up to 5, the chat's top_logprobs up to 20. The
# library takes up to the vocabulary size; a server keeps each chunk small.
MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
    """An error sent as {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(self, status, message, type="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.type, self.param, self.code = status, type, param, code

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param,
                          "code": self.code}}


def bad(param, message, code=None):
    return ApiError(400, message, param=param, code=code)


def chat_body(llm, body, model_name):
    """(Request, stream, include_usage) of a /v1/chat/completions body."""
    _object(body)
    if "messages" not in body:
        raise bad("messages", "missing required field 'messages'")
    _unsupported(body)
    max_tokens = _max_tokens(body)
    logprobs = _typed(body, "logprobs", bool, "a boolean", False)
    top_logprobs = _count(body, "top_logprobs")
    if top_logprobs is not None and not logprobs:
        raise bad("top_logprobs", "top_logprobs needs logprobs: true")
    kwargs = _sampling(body)
    return _checked(lambda: chat_request(
        llm, body["messages"], max_tokens=max_tokens, stop=_stop(body), logprobs=logprobs,
        top_logprobs=top_logprobs, model=model_name, **kwargs), "messages"), *_stream(body)


def completion_body(llm, body, model_name):
    """(Request, stream, include_usage) of a /v1/completions body."""
    _object(body)
    if "prompt" not in body:
        raise bad("prompt", "missing required field 'prompt'")
    _unsupported(body)
    prompt = body["prompt"]
    # OpenAI takes a list of prompts (a batch); one is accepted in either form.
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) != 1:
            raise bad("prompt", "one prompt per request (send several requests: they run "
                                "at the same time)")
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise bad("prompt", "prompt must be a string or a list of token ids")
    elif not isinstance(prompt, str):
        raise bad("prompt", "prompt must be a string or a list of token ids")
    max_tokens = _max_tokens(body, default=16)
    logprobs = _count(body, "logprobs")
    echo = _typed(body, "echo", bool, "a boolean", False)
    if echo and logprobs is not None:
        raise bad("echo", "echo with logprobs is not supported (the prompt's own logprobs)")
    if body.get("suffix") not in (None, ""):
        raise bad("suffix", "suffix is not supported")
    kwargs = _sampling(body)
    return _checked(lambda: completion_request(
        llm, prompt, max_tokens=max_tokens, stop=_stop(body), logprobs=logprobs, echo=echo,
        model=model_name, **kwargs), "prompt"), *_stream(body)


def _object(body):
    if not isinstance(body, dict):
        raise bad(None, "the request body must be a JSON object")


def _unsupported(body):
    n = body.get("n", 1)
    if n is not None and (n != 1 or isinstance(n, bool)):
        raise bad("n", "only n=1 is supported (one choice per request)")
    for name in ("frequency_penalty", "presence_penalty"):
        value = body.get(name)
        if value not in (None, 0):
            raise bad(name, f"{name} is not supported (use repeat_penalty)")
    for name in ("tools", "functions", "logit_bias"):
        if body.get(name):
            raise bad(name, f"{name} is not supported")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad("response_format", "only the text response format is supported")


def _max_tokens(body, default=None):
    """max_completion_tokens (the chat API's newer name) or max_tokens: None or >= 1."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(name, f"invalid {name} {value!r}: must be an integer >= 1")
        return value
    return default


def _sampling(body):
    """The sampling fields, each checked by SamplingParams' own rule, and named in its error."""
    fields = {"temperature": None, "top_p": None, "top_k": None, "min_p": None,
              "repeat_penalty": None, "seed": None}
    kwargs = {}
    for name in fields:
        value = body.get(name)
        if value is None:
            continue
        if name in ("temperature", "top_p", "min_p", "repeat_penalty") and \
                isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        try:
            SamplingParams(**{name: value}).validate()
        except NumatpError as e:
            raise bad(name, str(e)) from None
        kwargs[name] = value
    return kwargs


def _stop(body):
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return stop or None
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s] or None
    raise bad("stop", "stop must be a string or a list of strings")


def _count(body, name):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise bad(name, f"invalid {name} {value!r}: must be an integer from 0 to "
                        f"{MAX_TOP_LOGPROBS}")
    return value


def _typed(body, name, kind, what, default):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise bad(name, f"invalid {name} {value!r}: must be {what}")
    return value


def _stream(body):
    stream = _typed(body, "stream", bool, "a boolean", False)
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise bad("stream_options", "stream_options must be an object")
    if not stream:
        raise bad("stream_options", "stream_options needs stream: true")
    return stream, _typed(options, "include_usage", bool, "a boolean", False)


def _checked(make, param):
    """make() with the library's remaining errors (messages, a prompt too long for the
    context, a chat template that refuses the conversation) as 400s."""
    try:
        return make()
    except ContextError as e:
        raise bad(param, str(e), code="context_length_exceeded") from None
    except NumatpError as e:
        raise bad(param, str(e)) from None
