"""Soak `numatp serve`: bounded concurrent clients for N minutes, then a report.

    python tools/soak_serve.py -m tests/data/stories260K.gguf --parallel 4 --clients 6 \
        --minutes 10

Starts the server (loopback, a free port) unless --url names one. Each client loops over
a mix of requests through the `openai` client: chat and completions, streamed or not,
seeded or greedy, with stop strings and logprobs now and then, and every eighth stream
closed after a few chunks (a client that goes away; it counts as ok when the server then
frees the slot, as /health says at the end). A request is ok when it returns a well-formed
answer (text, a finish_reason, usage that adds up); anything else is a failure, printed.
Every --every seconds one line: requests ok/failed so far, and the server's resident
memory (its process and its workers). At the end: the totals, RSS at start (after the
first minute's warm-up), at the end and at most, and the server's exit code after Ctrl-C.
Exit status 1 if any request failed or the server did not stop cleanly.
"""
import argparse
import random
import sys
import threading
import time

import openai
import psutil

from serve_common import ServeProcess

PROMPTS = ["Once upon a time", "The little dog", "One day, Lily went to the park and",
           "Tom had a big red ball.", "The sun was"]
CHATS = ["Tell me a story.", "What is a cat?", "Hi", "Say something nice."]


def rss(pid):
    try:
        p = psutil.Process(pid)
        return sum(q.memory_info().rss for q in [p] + p.children(recursive=True))
    except psutil.NoSuchProcess:
        return 0


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = self.failed = self.closed_early = self.tokens = 0

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


def one_request(client, rng, counts):
    chat = rng.random() < 0.5
    stream = rng.random() < 0.6
    close_early = stream and rng.random() < 1 / 8
    kwargs = dict(model="any", max_tokens=rng.choice([1, 8, 32, 96]),
                  temperature=rng.choice([0, 0.8]), seed=rng.randrange(1 << 31))
    if rng.random() < 0.2:
        kwargs["stop"] = rng.choice(["\n", ".", ["and", "the"]])
    if chat:
        kwargs["messages"] = [{"role": "user", "content": rng.choice(CHATS)}]
        if rng.random() < 0.2:
            kwargs.update(logprobs=True, top_logprobs=2)
        call = client.chat.completions.create
    else:
        kwargs["prompt"] = rng.choice(PROMPTS)
        if rng.random() < 0.2:
            kwargs["logprobs"] = 2
        call = client.completions.create
    if stream:
        kwargs.update(stream=True, stream_options={"include_usage": True})
        s = call(**kwargs)
        n, finish, usage = 0, None, None
        for chunk in s:
            if chunk.choices:
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
            n += 1
            if close_early and n == 3:
                s.close()
                counts.add(ok=1, closed_early=1)
                return
        assert finish in ("stop", "length"), finish
        assert usage is not None and usage.completion_tokens <= kwargs["max_tokens"]
        counts.add(ok=1, tokens=usage.completion_tokens)
    else:
        r = call(**kwargs)
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        counts.add(ok=1, tokens=r.usage.completion_tokens)


def client_loop(url, seed, deadline, counts, errors):
    rng = random.Random(seed)
    client = openai.OpenAI(base_url=url, api_key="soak", max_retries=0, timeout=120)
    while time.monotonic() < deadline:
        try:
            one_request(client, rng, counts)
        except Exception as e:   # every failure is counted and shown, none ends the soak
            counts.add(failed=1)
            errors.append(f"{type(e).__name__}: {e}")
            print(f"request failed: {type(e).__name__}: {e}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="tests/data/stories260K.gguf")
    ap.add_argument("--url", help="a running server (…/v1) instead of starting one")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--nodes", default="1")
    ap.add_argument("-c", "--ctx-size", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--every", type=float, default=30, help="seconds between report lines")
    args = ap.parse_args()

    server = None
    if args.url:
        url, pid = args.url, None
    else:
        server = ServeProcess(["-m", args.model, "--parallel", args.parallel, "--nodes",
                               args.nodes, "-c", args.ctx_size])
        url, pid = server.url, server.proc.pid
    counts, errors = Counts(), []
    start = time.monotonic()
    deadline = start + args.minutes * 60
    threads = [threading.Thread(target=client_loop, args=(url, i, deadline, counts, errors),
                                daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    samples = []   # (seconds, rss)
    while any(t.is_alive() for t in threads):
        time.sleep(min(args.every, max(0.1, deadline - time.monotonic() + 0.1)))
        elapsed = time.monotonic() - start
        mem = rss(pid) if pid else 0
        samples.append((elapsed, mem))
        print(f"{elapsed:7.0f} s  ok {counts.ok:6d}  failed {counts.failed:3d}  "
              f"closed early {counts.closed_early:4d}  tokens {counts.tokens:8d}  "
              f"server RSS {mem / 2**20:7.1f} MiB", flush=True)
    for t in threads:
        t.join()
    health = None
    if server:
        import json
        import urllib.request
        with urllib.request.urlopen(url[:-3] + "/health", timeout=30) as r:
            health = json.load(r)
    code = server.stop() if server else 0
    warm = [m for s, m in samples if s >= 60] or [m for _, m in samples]
    print(f"requests ok {counts.ok}, failed {counts.failed} ({counts.closed_early} streams "
          f"closed early on purpose), {counts.tokens} tokens in {args.minutes:g} min")
    if pid:
        print(f"server RSS after warm-up {warm[0] / 2**20:.1f} MiB, at the end "
              f"{warm[-1] / 2**20:.1f} MiB, most {max(warm) / 2**20:.1f} MiB")
    if health:
        print(f"server /health at the end: {health}")
        print(f"server exit code after Ctrl-C: {code}")
    idle = health is None or (health["slots_processing"] == 0 and health["requests_waiting"] == 0)
    sys.exit(0 if counts.failed == 0 and code in (0, 130) and idle else 1)


if __name__ == "__main__":
    main()
