"""OpenAI-shaped completions in the library: LLM.create_completion and
LLM.create_chat_completion, whole and streamed, stop strings, usage, finish_reason,
logprobs, and argument errors raised at the call."""
import pytest

import numatp
import synth
from models import STORIES
from numatp.errors import ContextError, UsageError
from numatp.tokenizer import StreamDecoder

STORY = "Once upon a time"
# Greedy, the synthetic model below ends its reply to this message with its
# end-of-generation token after 2 tokens; to other messages it goes on.
ENDS_EARLY = [{"role": "user", "content": "What?"}]
GOES_ON = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def stories():
    with numatp.load(STORIES, nodes=1, ctx_size=256) as llm:
        yield llm


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = synth.write_model(tmp_path_factory.mktemp("cmpl") / "q8.gguf", qtype="Q8_0",
                             seed=12, ctx=512)
    with numatp.load(path, nodes=1) as llm:
        yield llm


def joined_text(chunks):
    return "".join(c["choices"][0]["text"] for c in chunks)


def joined_content(chunks):
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def token_pieces(llm, ids):
    decoder = StreamDecoder(llm.tokenizer, at_start=False)
    return [decoder.feed(t) for t in ids]


# -- shapes -----------------------------------------------------------------------------

def test_completion_shape_and_usage(stories):
    r = stories.create_completion(STORY, max_tokens=7, temperature=0)
    assert set(r) == {"id", "object", "created", "model", "choices", "usage"}
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    assert isinstance(r["created"], int) and r["model"] == stories.path
    [choice] = r["choices"]
    n_prompt = len(stories.tokenize(STORY))
    assert choice == {"text": choice["text"], "index": 0, "logprobs": None,
                      "finish_reason": "length"}
    assert choice["text"] == stories.detokenize(stories.stats.tokens) and choice["text"]
    assert r["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 7,
                          "total_tokens": n_prompt + 7,
                          "prompt_tokens_details": {"cached_tokens": 0}}
    # The same prompt again: all of it but the last 2 tokens is found in the cache.
    again = stories.create_completion(STORY, max_tokens=7, temperature=0)
    assert again["choices"][0]["text"] == choice["text"]
    assert again["usage"]["prompt_tokens_details"] == {"cached_tokens": n_prompt - 2}


def test_streamed_completion_adds_up_to_the_whole(stories):
    whole = stories.create_completion(STORY, max_tokens=9, temperature=0)
    chunks = list(stories.create_completion(STORY, max_tokens=9, temperature=0, stream=True))
    assert len(chunks) > 2
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1
    assert joined_text(chunks) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert "usage" not in chunks[0] and chunks[-1]["usage"]["completion_tokens"] == 9


def test_chat_completion_shape(synthetic):
    r = synthetic.create_chat_completion(GOES_ON, max_tokens=5, temperature=0)
    assert set(r) == {"id", "object", "created", "model", "choices", "usage"}
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    [choice] = r["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] == "length"
    assert choice["message"] == {"role": "assistant",
                                 "content": synthetic.detokenize(synthetic.stats.tokens)}
    prompt = synthetic.tokenizer.encode(
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")   # ChatML: no template
    assert synthetic.stats.prompt_tokens == prompt
    assert r["usage"]["prompt_tokens"] == len(prompt)
    assert r["usage"]["completion_tokens"] == 5 and r["usage"]["total_tokens"] == len(prompt) + 5


def test_streamed_chat_completion(synthetic):
    whole = synthetic.create_chat_completion(GOES_ON, max_tokens=6, temperature=0)
    chunks = list(synthetic.create_chat_completion(GOES_ON, max_tokens=6, temperature=0,
                                                   stream=True))
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in chunks[1:-1])
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [chunks[-1]["usage"][k] for k in counts] == [whole["usage"][k] for k in counts]
    assert joined_content(chunks) == whole["choices"][0]["message"]["content"]


def test_finish_reason_stop_at_the_end_of_generation_token(synthetic):
    r = synthetic.create_chat_completion(ENDS_EARLY, max_tokens=12, temperature=0)
    assert r["choices"][0]["finish_reason"] == "stop"
    assert synthetic.stats.stop_reason == "eos"
    # The end-of-generation token is neither text nor counted.
    assert r["usage"]["completion_tokens"] == 2 == synthetic.stats.n_gen
    chunks = list(synthetic.create_chat_completion(ENDS_EARLY, max_tokens=12, temperature=0,
                                                   stream=True))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert joined_content(chunks) == r["choices"][0]["message"]["content"]


# -- stop strings -----------------------------------------------------------------------

def split_stop(stories):
    """A stop string that spans two tokens of the greedy continuation of STORY: the text
    before it, and how many tokens it takes to complete it."""
    full = stories.create_completion(STORY, max_tokens=30, temperature=0)["choices"][0]["text"]
    pieces = token_pieces(stories, stories.stats.tokens)
    i = next(i for i in range(3, len(pieces) - 1)
             if len(pieces[i]) >= 3 and len(pieces[i + 1]) >= 3)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    assert "".join(pieces) == full and full.find(stop) == len("".join(pieces[:i + 1])) - 2
    return stop, full[:full.find(stop)], i + 2


def test_a_stop_string_split_over_tokens_is_never_shown(stories):
    stop, before, n_tokens = split_stop(stories)
    r = stories.create_completion(STORY, max_tokens=30, temperature=0, stop=stop)
    assert r["choices"][0]["text"] == before
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] == n_tokens
    chunks = list(stories.create_completion(STORY, max_tokens=30, temperature=0,
                                            stop=["never there", stop], stream=True))
    assert joined_text(chunks) == before
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # generate() and the chat API stop the same way.
    assert "".join(stories.generate(STORY, max_tokens=30, temperature=0, stop=stop)) == before
    assert stories.stats.stop_reason == "stop"
    assert "".join(stories.generate(STORY, max_tokens=30, temperature=0, stop=[stop])) == before


def test_a_stop_string_in_the_chat_api(synthetic):
    full = synthetic.create_chat_completion(GOES_ON, max_tokens=12, temperature=0)
    content = full["choices"][0]["message"]["content"]
    stop = content[4:7]
    r = synthetic.create_chat_completion(GOES_ON, max_tokens=12, temperature=0, stop=stop)
    assert r["choices"][0]["message"]["content"] == content[:content.find(stop)]
    assert r["choices"][0]["finish_reason"] == "stop"


def test_stop_strings_end_the_logprobs_with_the_text(stories):
    stop, before, n_tokens = split_stop(stories)
    r = stories.create_completion(STORY, max_tokens=30, temperature=0, stop=stop, logprobs=2)
    lp = r["choices"][0]["logprobs"]
    # Logprobs come with the tokens whose text the reply shows, even in part: the token
    # the stop string begins in is listed, the one that completes it is not.
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == n_tokens - 1
    assert "".join(lp["tokens"]).startswith(before)


# -- logprobs -----------------------------------------------------------------------------

def test_completion_logprobs(stories):
    r = stories.create_completion(STORY, max_tokens=6, temperature=0, logprobs=3)
    lp = r["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert len(lp["tokens"]) == 6
    assert lp["text_offset"][0] == len(STORY)
    for tok, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert logprob <= 0 and len(top) == 3
        # Greedy: the chosen token is the most likely one.
        assert top[tok] == logprob == max(top.values())
    streamed = list(stories.create_completion(STORY, max_tokens=6, temperature=0, logprobs=3,
                                              stream=True))
    assert sum(((c["choices"][0]["logprobs"] or {"tokens": []})["tokens"]
               for c in streamed), []) == lp["tokens"]


def test_chat_logprobs(synthetic):
    r = synthetic.create_chat_completion(GOES_ON, max_tokens=4, temperature=0, logprobs=True,
                                         top_logprobs=2)
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert len(entry["top_logprobs"]) == 2
        assert entry["top_logprobs"][0]["logprob"] == entry["logprob"]
    no_top = synthetic.create_chat_completion(GOES_ON, max_tokens=4, temperature=0,
                                              logprobs=True)
    assert [e["logprob"] for e in no_top["choices"][0]["logprobs"]["content"]] == \
        [e["logprob"] for e in content]


# -- argument errors at the call --------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-1), "temperature"),
    (dict(top_p=2.0), "top.p"),
    (dict(max_tokens="many"), "max_tokens"),
    (dict(max_tokens=2.5), "max_tokens"),
    (dict(stop=5), "stop"),
    (dict(stop=["ok", ""]), "stop"),
    (dict(stream="yes"), "stream"),
    (dict(logprobs=-1), "logprobs"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_completion_arguments_fail_at_the_call(stories, kwargs, match, stream):
    kwargs = {"stream": stream} | kwargs
    with pytest.raises(UsageError, match=match):
        stories.create_completion(STORY, **kwargs)


@pytest.mark.parametrize("messages,kwargs,match", [
    ("Hi", {}, "messages"),
    ([], {}, "messages"),
    ([{"content": "Hi"}], {}, "role"),
    ([{"role": "user", "content": 5}], {}, "content"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], {}, "text content"),
    (GOES_ON, dict(top_logprobs=2), "top_logprobs needs logprobs"),
    (GOES_ON, dict(logprobs=1), "logprobs"),
    (GOES_ON, dict(min_p=-0.5), "min.p"),
])
def test_chat_arguments_fail_at_the_call(synthetic, messages, kwargs, match):
    for stream in (False, True):
        with pytest.raises(UsageError, match=match):
            synthetic.create_chat_completion(messages, stream=stream, **kwargs)


def test_generation_arguments_fail_at_the_call_and_do_not_hold_the_model(stories):
    for call in (lambda: stories.generate(STORY, temperature=-1),
                 lambda: stories.generate(STORY, stop=[3]),
                 lambda: stories.generate(5),
                 lambda: stories.generate(STORY, max_tokens=1.5),
                 lambda: stories.generate_ids("text"),
                 lambda: stories.generate_ids([1, stories.config.vocab]),
                 lambda: stories.generate_ids([])):
        with pytest.raises(UsageError):
            call()
    with pytest.raises(ContextError):
        stories.generate_ids([1] * (stories.ctx + 1))
    # Nothing was left holding the model: a generation runs in this thread at once.
    assert "".join(stories.generate(STORY, max_tokens=3, temperature=0))


def test_content_parts_and_none_content_are_read_as_text(synthetic):
    parts = [{"role": "user", "content": [{"type": "text", "text": "H"},
                                          {"type": "text", "text": "i"}]}]
    a = synthetic.create_chat_completion(parts, max_tokens=3, temperature=0)
    b = synthetic.create_chat_completion(GOES_ON, max_tokens=3, temperature=0)
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    r = synthetic.create_chat_completion([{"role": "system", "content": None}] + GOES_ON,
                                         max_tokens=2, temperature=0)
    assert r["usage"]["completion_tokens"] == 2
