"""Measure `numatp serve`'s continuous batching: aggregate decode tok/s of K concurrent
streams against one, and how soon a queued request's first token comes after a slot
frees.

    python tools/bench_serve.py -m smollm2-135m --parallel 4 --streams 1,4 --repeats 5

Starts the server (loopback), then alternates the stream counts --repeats times (the
machine is shared and noisy: medians are what to read). Each run sends K identical
greedy completions at once, max_tokens --tokens, streamed. Per run:
- client tok/s: the tokens after each stream's first (those come from decode steps),
  summed over the streams, over the time from the first stream's first token to the last
  stream's last;
- engine tok/s: decoded rows per second inside slots.decode calls (from /health), which
  leaves out HTTP, sampling and detokenization.
Then one run of 2 x parallel streams: the queued half wait for slots; the server's log
says, for each, how many decode steps (and ms) passed between its slot freeing and its
first token.
"""
import argparse
import json
import re
import statistics
import threading
import time
import urllib.request

import openai

from serve_common import ServeProcess

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def health(url):
    with urllib.request.urlopen(url[:-3] + "/health", timeout=60) as r:
        return json.load(r)


def one_stream(client, tokens, out, i, barrier):
    barrier.wait()
    times, n = [], 0
    stream = client.completions.create(model="any", prompt=PROMPT, max_tokens=tokens,
                                       temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
        if chunk.usage:
            n = chunk.usage.completion_tokens
    out[i] = (times[0], times[-1], n)


def run(url, k, tokens):
    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    out, barrier = [None] * k, threading.Barrier(k)
    before = health(url)
    threads = [threading.Thread(target=one_stream, args=(client, tokens, out, i, barrier))
               for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = health(url)
    span = max(last for _, last, _ in out) - min(first for first, _, _ in out)
    decoded = sum(n - 1 for *_, n in out)
    rows = after["decoded_tokens"] - before["decoded_tokens"]
    secs = after["decode_seconds"] - before["decode_seconds"]
    return decoded / span, rows / secs, [n for *_, n in out]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--nodes", default="1")
    ap.add_argument("--threads", default=None)
    ap.add_argument("--streams", default="1,4")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    extra = ["--threads", args.threads] if args.threads else []
    server = ServeProcess(["-m", args.model, "--parallel", args.parallel, "--nodes", args.nodes,
                           "-c", 512, *extra])
    try:
        counts = [int(k) for k in args.streams.split(",")]
        run(server.url, 1, 8)   # warm-up
        results = {k: [] for k in counts}
        for rep in range(args.repeats):
            for k in counts:
                client_tps, engine_tps, ns = run(server.url, k, args.tokens)
                results[k].append((client_tps, engine_tps))
                print(f"run {rep + 1} streams {k}: client {client_tps:7.1f} tok/s, engine "
                      f"{engine_tps:7.1f} tok/s, tokens per stream {ns}", flush=True)
        base = statistics.median(c for c, _ in results[counts[0]])
        base_engine = statistics.median(e for _, e in results[counts[0]])
        for k in counts:
            c = statistics.median(c for c, _ in results[k])
            e = statistics.median(e for _, e in results[k])
            print(f"streams {k}: median client {c:.1f} tok/s ({c / base:.2f}x), engine "
                  f"{e:.1f} tok/s ({e / base_engine:.2f}x)")
        # Queued requests: twice as many streams as slots.
        n_lines = len(server.lines)
        run(server.url, 2 * args.parallel, args.tokens)
        h = health(server.url)
        time.sleep(0.5)
        waits = [re.search(r"first token (\d+) decode steps \(([\d.]+) ms\)", line)
                 for line in server.lines[n_lines:]]
        waits = [(int(m.group(1)), float(m.group(2))) for m in waits if m]
        step_ms = 1e3 * h["decode_seconds"] / h["decode_steps"]
        print(f"{len(waits)} queued requests: first token after their slot freed: decode "
              f"steps {[s for s, _ in waits]}, ms {[ms for _, ms in waits]} (a decode step "
              f"took {step_ms:.1f} ms on average over the whole run)")
    finally:
        print(f"server exit code after Ctrl-C: {server.stop()}")


if __name__ == "__main__":
    main()
