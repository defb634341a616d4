"""`numatp serve` driven by the real `openai` client: chat and completions, whole and
streamed, stop strings, logprobs, usage, OpenAI-shaped errors (401, 400s, 503 when the
queue is full), a client that goes away frees its slot, concurrent streams each get the
tokens they get alone, and SIGINT/SIGTERM stop the server with nothing left behind."""
import json
import re
import signal
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

import numatp
import synth
from models import STORIES
from robust import assert_nothing_left, finish, start_cli, workers_of

KEY = "test-key"
STORY = "Once upon a time"
CHAT = [{"role": "user", "content": "Tell me a story."}]
LONG = [{"role": "user", "content": "Tell me"}]
START_S = 600   # a cold Numba cache compiles for minutes; warm it is seconds
WAIT_S = 60     # bounds a hang; what it waits for takes well under a second
SERVING = re.compile(r"numatp: serving \S+ on (http://\S+/v1) ")


class Server:
    """A `numatp serve` subprocess; its stderr is read as it comes (a full pipe would
    block the server's log lines) and kept in `lines`."""

    def __init__(self, *args):
        self.proc = start_cli("serve", "--port", 0, *args)
        self.lines = []
        self._ready = threading.Event()
        self.url = None
        threading.Thread(target=self._read, daemon=True).start()
        assert self._ready.wait(START_S), "the server did not start"
        assert self.url, "".join(self.lines)

    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.lines.append(line)
            m = SERVING.match(line)
            if m:
                self.url = m.group(1)
                self._ready.set()
        self._ready.set()

    def wait_line(self, part):
        """The last line of stderr so far that has `part` in it, once there is one."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            found = [line for line in self.lines if part in line]
            if found:
                return found[-1]
            time.sleep(0.02)
        raise AssertionError(f"no line with {part!r} in: {self.stderr}")

    @property
    def stderr(self):
        return "".join(self.lines)

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=WAIT_S)

    def health(self):
        with urllib.request.urlopen(self.url[:-len("/v1")] + "/health", timeout=WAIT_S) as r:
            return json.load(r)

    def wait_health(self, **want):
        deadline = time.monotonic() + WAIT_S
        while True:
            h = self.health()
            if all(h[k] == v for k, v in want.items()) or time.monotonic() > deadline:
                return h
            time.sleep(0.02)

    def post(self, path, data, key=KEY):
        """(status, JSON body) of a raw POST: bodies the openai client would never send."""
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=WAIT_S) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def stop(self, sig=signal.SIGINT):
        """(exit code, stderr) after `sig` (None: sent already)."""
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(WAIT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self.proc.stdout.close()
        return self.proc.returncode, self.stderr


def check_clean_exit(code, err, sig):
    want = {signal.SIGINT: (130, "numatp: interrupted"),
            signal.SIGTERM: (143, "numatp: terminated")}[sig]
    assert code == want[0], err
    assert "Traceback" not in err and "ERROR" not in err, err
    assert err.strip().splitlines()[-1] == want[1], err


@pytest.fixture(scope="module")
def server():
    s = Server("-m", STORIES, "--nodes", 1, "--parallel", 4, "-c", 512, "--api-key", KEY)
    yield s
    check_clean_exit(*s.stop(signal.SIGINT), signal.SIGINT)


@pytest.fixture(scope="module")
def library():
    """The same model in the library: what the server must answer."""
    with numatp.load(STORIES, nodes=1, ctx_size=512) as llm:
        yield llm


def streamed_text(stream, field="text"):
    pieces, last = [], None
    for chunk in stream:
        if chunk.choices:
            piece = getattr(chunk.choices[0], field) if field == "text" else \
                chunk.choices[0].delta.content
            pieces.append(piece or "")
        last = chunk
    return "".join(pieces), last


# -- completions and chat ----------------------------------------------------------------------

def test_completion_matches_the_library(server, library):
    r = server.client().completions.create(model="any", prompt=STORY, max_tokens=24,
                                           temperature=0)
    want = library.create_completion(STORY, max_tokens=24, temperature=0)
    assert r.choices[0].text == want["choices"][0]["text"]
    assert r.choices[0].finish_reason == "length"
    assert r.object == "text_completion" and r.model == "stories260K.gguf"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == \
        (want["usage"]["prompt_tokens"], 24, want["usage"]["prompt_tokens"] + 24)


def test_streamed_completion_with_usage(server, library):
    stream = server.client().completions.create(
        model="any", prompt=STORY, max_tokens=24, temperature=0.7, seed=5, stream=True,
        stream_options={"include_usage": True})
    text, last = streamed_text(stream)
    want = library.create_completion(STORY, max_tokens=24, temperature=0.7, seed=5)
    assert text == want["choices"][0]["text"]
    assert last.choices == [] and last.usage.completion_tokens == 24
    assert last.usage.prompt_tokens == want["usage"]["prompt_tokens"]


def test_chat_whole_and_streamed(server, library):
    client = server.client()
    r = client.chat.completions.create(model="any", messages=CHAT, max_tokens=16, temperature=0)
    want = library.create_chat_completion(CHAT, max_tokens=16, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert r.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert r.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    stream = client.chat.completions.create(model="any", messages=CHAT, max_completion_tokens=16,
                                            temperature=0, stream=True)
    text, last = streamed_text(stream, "delta")
    assert text == r.choices[0].message.content
    assert last.choices[0].finish_reason == r.choices[0].finish_reason
    assert last.usage is None   # not asked for


def test_stop_strings(server):
    client = server.client()
    full = client.completions.create(model="any", prompt=STORY, max_tokens=30,
                                     temperature=0).choices[0].text
    stop = full[12:16]
    before = full[:full.find(stop)]
    r = client.completions.create(model="any", prompt=STORY, max_tokens=30, temperature=0,
                                  stop=["never there", stop])
    assert r.choices[0].text == before and r.choices[0].finish_reason == "stop"
    text, last = streamed_text(client.completions.create(
        model="any", prompt=STORY, max_tokens=30, temperature=0, stop=stop, stream=True))
    assert text == before and last.choices[0].finish_reason == "stop"


def test_logprobs(server, library):
    client = server.client()
    r = client.completions.create(model="any", prompt=STORY, max_tokens=6, temperature=0,
                                  logprobs=3)
    lp = r.choices[0].logprobs
    want = library.create_completion(STORY, max_tokens=6, temperature=0, logprobs=3)
    assert lp.tokens == want["choices"][0]["logprobs"]["tokens"]
    assert lp.token_logprobs == pytest.approx(want["choices"][0]["logprobs"]["token_logprobs"])
    assert lp.text_offset[0] == len(STORY) and all(len(t) == 3 for t in lp.top_logprobs)
    c = client.chat.completions.create(model="any", messages=CHAT, max_tokens=4, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == entry.logprob <= 0   # greedy: the top one
    assert "".join(e.token for e in content) == c.choices[0].message.content


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["stories260K.gguf"]
    h = server.health()
    assert h["status"] == "ok" and h["slots_total"] == 4


def test_a_follow_up_turn_finds_its_history_in_a_slot(server):
    """A conversation's next turn goes to the slot holding its history even after other
    requests came between, which went to other slots rather than overwrite it."""
    client = server.client()
    turn = [{"role": "system", "content": "You tell stories."}] + CHAT
    first = client.chat.completions.create(model="any", messages=turn, max_tokens=8,
                                           temperature=0)
    for prompt in ("The dog", "A cat", "One day"):   # share the BOS token only
        client.completions.create(model="any", prompt=prompt, max_tokens=2)
    turn += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And then?"}]
    second = client.chat.completions.create(model="any", messages=turn, max_tokens=4,
                                            temperature=0)
    # The first turn's prompt, less what tokenizing the reply's text may join differently.
    assert second.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens - 3


# -- errors ------------------------------------------------------------------------------------

def test_api_key(server):
    with pytest.raises(openai.AuthenticationError) as e:
        server.client(key="wrong").completions.create(model="any", prompt=STORY, max_tokens=2)
    assert e.value.status_code == 401 and e.value.body["type"] == "authentication_error"
    status, body = server.post("/completions", b'{"prompt": "x"}', key=None)
    assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}
    assert server.health()["status"] == "ok"   # a probe needs no key


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (b'{"max_tokens": 4}', 400, "prompt"),
    (b'{"prompt": 5}', 400, "prompt"),
    (b'{"prompt": "x", "max_tokens": "many"}', 400, "max_tokens"),
    (b'{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
    (b'{"prompt": "x", "temperature": -1}', 400, "temperature"),
    (b'{"prompt": "x", "top_p": 2}', 400, "top_p"),
    (b'{"prompt": "x", "top_k": 1.5}', 400, "top_k"),
    (b'{"prompt": "x", "seed": "s"}', 400, "seed"),
    (b'{"prompt": "x", "stop": 7}', 400, "stop"),
    (b'{"prompt": "x", "stream": "yes"}', 400, "stream"),
    (b'{"prompt": "x", "logprobs": 99}', 400, "logprobs"),
    (b'{"prompt": "x", "n": 2}', 400, "n"),
    (b'{"prompt": [1, 99999]}', 400, "prompt"),
    (b'{"prompt": "' + b"word " * 3000 + b'"}', 400, "prompt"),
])
def test_bad_completion_requests(server, body, status, param):
    got, answer = server.post("/completions", body)
    assert got == status, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["param"] == param and answer["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body,param", [
    ({}, "messages"),
    ({"messages": "Hi"}, "messages"),
    ({"messages": [{"content": "Hi"}]}, "messages"),
    ({"messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": CHAT, "logprobs": 1}, "logprobs"),
    ({"messages": CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": CHAT, "tools": [{"type": "function"}]}, "tools"),
])
def test_bad_chat_requests(server, body, param):
    got, answer = server.post("/chat/completions", json.dumps(body).encode())
    assert got == 400, answer
    assert answer["error"]["param"] == param


def test_too_long_a_prompt_is_context_length_exceeded(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().completions.create(model="any", prompt=list(range(1, 513)) + [1],
                                           max_tokens=2)
    assert e.value.body["code"] == "context_length_exceeded"


# -- concurrency ---------------------------------------------------------------------------

def test_concurrent_streams_get_what_they_get_alone(server):
    """8 streams on 4 slots, each seeded: the same tokens as alone, whatever ran beside."""
    client = server.client()
    prompts = [f"{STORY} there was a {w}" for w in
               ("cat", "dog", "girl", "boy", "bird", "tree", "king", "frog")]

    def ask(i):
        stream = client.completions.create(model="any", prompt=prompts[i], max_tokens=48,
                                           temperature=0.9, seed=100 + i, stream=True,
                                           stream_options={"include_usage": True})
        text, last = streamed_text(stream)
        return text, last.usage.completion_tokens

    alone = [ask(i) for i in range(len(prompts))]
    before = server.health()
    got = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def together(i):
        start.wait()
        got[i] = ask(i)
    threads = [threading.Thread(target=together, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone
    after = server.health()
    # They were decoded together: some steps ran several slots.
    assert after["decoded_tokens"] - before["decoded_tokens"] > \
        after["decode_steps"] - before["decode_steps"]


# -- one slot, a queue of one: 503, a client that goes away -----------------------------------

@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    # Greedy, this synthetic model answers LONG until its context is full (4050 tokens).
    return synth.write_model(tmp_path_factory.mktemp("serve") / "q8.gguf", qtype="Q8_0",
                             seed=12, ctx=4096)


@pytest.fixture(scope="module")
def one_slot(long_model):
    s = Server("-m", long_model, "--nodes", 1, "--parallel", 1, "--queue", 1, "--api-key", KEY)
    yield s
    check_clean_exit(*s.stop(signal.SIGINT), signal.SIGINT)


def long_stream(server):
    """A streaming chat that runs to the full context unless stopped, once it is running
    (its first text has come)."""
    stream = server.client().chat.completions.create(model="any", messages=LONG,
                                                     temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            return stream


def test_a_client_that_goes_away_frees_its_slot(one_slot):
    before = one_slot.health()
    stream = long_stream(one_slot)
    assert one_slot.health()["slots_processing"] == 1
    stream.close()
    h = one_slot.wait_health(slots_processing=0)
    assert h["slots_processing"] == 0
    assert h["requests_cancelled"] == before["requests_cancelled"] + 1
    assert h["requests_completed"] == before["requests_completed"]   # it never ran to its end
    r = one_slot.client().chat.completions.create(model="any", messages=CHAT, max_tokens=3,
                                                  temperature=0)
    assert r.usage.completion_tokens == 3


def test_a_full_queue_is_503_and_a_waiting_request_starts_when_a_slot_frees(one_slot):
    running = long_stream(one_slot)
    waiting = one_slot.client().chat.completions.create(model="any", messages=CHAT,
                                                        temperature=0, max_tokens=4, stream=True)
    assert one_slot.wait_health(requests_waiting=1)["requests_waiting"] == 1
    with pytest.raises(openai.InternalServerError) as e:
        one_slot.client().chat.completions.create(model="any", messages=CHAT, max_tokens=2)
    assert e.value.status_code == 503 and e.value.body["code"] == "queue_full"
    running.close()
    text, last = streamed_text(waiting, "delta")
    assert last.choices[0].finish_reason == "length" and text
    # Its prompt went in as soon as the slot was free, before any further decode step.
    line = one_slot.wait_line("waited for a slot")
    assert "first token 0 decode steps" in line, line


# -- shutdown ------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_stream_stops_everything(sig):
    """Workers on two virtual nodes, a stream in flight: the stream ends with an error
    event, the server exits as numatp does on that signal, nothing is left."""
    s = Server("-m", STORIES, "--nodes", 2, "--parallel", 2, "-c", 2048)
    try:
        workers = workers_of(s.proc, 2)
        stream = s.client().completions.create(model="any", prompt=STORY, max_tokens=2000,
                                               temperature=0, stream=True)
        next(iter(stream))
        s.proc.send_signal(sig)
        with pytest.raises(openai.APIError, match="shutting down"):
            for _ in stream:
                pass
        code, err = s.stop(None)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    check_clean_exit(code, err, sig)
    assert_nothing_left(s.proc, workers)


def test_a_port_in_use_is_one_line():
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start_cli("serve", "-m", STORIES, "--nodes", 1, "--port", port)
        code, _, err = finish(proc, WAIT_S)
    assert code == 2 and err.strip() == f"numatp: error: cannot listen on 127.0.0.1:{port}: " \
                                         "Address already in use", err


# -- attention on the GPU (the numpy stand-in where there is none) -----------------------------

def test_serve_with_attention_on_the_gpu(monkeypatch):
    monkeypatch.setenv("NUMATP_GPU_BACKEND", "numpy")
    s = Server("-m", STORIES, "--nodes", 1, "-c", 512, "--gpu", "attn")
    try:
        assert "numatp: gpu memory used: " in s.stderr
        r = s.client().chat.completions.create(model="any", messages=CHAT, max_tokens=16,
                                               temperature=0)
        with numatp.load(STORIES, nodes=1, ctx_size=512, gpu="attn") as llm:
            want = llm.create_chat_completion(CHAT, max_tokens=16, temperature=0)
        assert r.choices[0].message.content == want["choices"][0]["message"]["content"]
    finally:
        check_clean_exit(*s.stop(signal.SIGINT), signal.SIGINT)


def test_serve_with_the_gpu_keeps_one_slot():
    proc = start_cli("serve", "-m", STORIES, "--nodes", 1, "--gpu", "attn", "--parallel", 2)
    code, _, err = finish(proc, WAIT_S)
    assert code == 2 and err.strip() == "numatp: error: --gpu attn serves one sequence at a " \
                                         "time: --parallel must be 1", err

