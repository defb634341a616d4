#!/usr/bin/env python3
"""numatp against llama.cpp, side by side: same GGUF files, same thread count.

For every model and round, numatp and llama.cpp (llama-cpp-python) each run in a fresh
process (bench/engines.py), one after the other, the order alternating from round to
round (A/B, B/A, ...) so that neither side always runs while the shared host is quiet,
and neither warms the other's caches in-process. One unmeasured run of each engine comes
first (--no-warmup skips it), so numatp's Numba cache is warm. Each process measures

  decode tok/s    n_gen greedy single-token steps after a short prompt
  pp128, pp512    prompt processing tok/s, 128- and 512-token prompts from an empty cache
  first token     from process start, and from "model loaded", for the short prompt

The report gives each side's median and the median of the per-round ratios
numatp / llama.cpp (rates: > 1 means numatp is faster; times: > 1 means numatp is
slower), plus how many leading greedy tokens the two engines agree on.

Models (bench/bench_models.py makes or fetches them once into $NUMATP_CACHE/bench):
synth-q8_0, synth-q4_0, synth-q4_k_m (a synthetic ~1.1B llama; Q4_K_M made by llama.cpp's
quantizer), smollm2 (SmolLM2-135M Q4_1), qwen (Qwen2.5-Coder-0.5B Q4_K_M, with --qwen),
synth-f32 and synth-f16 on request. --small writes a small synthetic shape for trials.

Output: a markdown table on stdout and in OUT/compare.md, OUT/compare.json, and
OUT/compare.png when matplotlib is installed (pip install -e .[bench]).
Without llama-cpp-python the numatp side still runs; install llama.cpp with
CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python   (or .[llamacpp]; ~12 min)

usage: python3 bench/compare_llamacpp.py [--models synth-q8_0,smollm2] [--qwen]
           [--rounds 5] [--threads N] [--n-gen 64] [--small] [--out bench/out]
"""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_models as models  # noqa: E402  (bench/bench_models.py; imports numatp first)

from numatp.errors import NumatpError  # noqa: E402

DEFAULT_MODELS = "synth-q8_0,synth-q4_0,synth-q4_k_m,smollm2"
ENGINES = ("numatp", "llamacpp")
LABEL = {"numatp": "numatp", "llamacpp": "llama.cpp"}
# (result key, row label, higher is better)
METRICS = (
    ("decode_tps", "decode tok/s", True),
    ("pp128_tps", "pp128 tok/s", True),
    ("pp512_tps", "pp512 tok/s", True),
    ("ttft_process_s", "first token from process start, s", False),
    ("ttft_loaded_s", "first token after load, s", False),
)
SHORT_PROMPT = "Once upon a time, in a quiet town by the sea,"
# The long prompts are this text repeated and cut to 128 / 512 tokens.
LONG_TEXT = ("The people in the town liked the robot, because it always helped them carry their "
             "heavy bags and fixed the broken clocks in the old tower. One day a storm came over "
             "the water, and the little boats were still far from the shore. ")


def prompts(path: Path) -> tuple[list, list]:
    """(short, long) token ids, the same for both engines: numatp tokenizes once here."""
    import numatp
    tok = numatp.load_tokenizer(str(path))
    short = tok.encode(SHORT_PROMPT, add_special=True)
    long = tok.encode(LONG_TEXT * 40, add_special=True)[:512]
    if len(long) < 512:
        raise NumatpError(f"{path.name}: the long prompt tokenized to only {len(long)} tokens")
    return short, long


def run_engine(engine, path, threads, short, long, n_gen, timeout) -> dict:
    cmd = [sys.executable, str(HERE / "engines.py"), engine, str(path), "--threads", str(threads),
           "--short", ",".join(map(str, short)), "--long", ",".join(map(str, long)),
           "--n-gen", str(n_gen)]
    load = os.getloadavg()[0]
    spawned = time.time()
    try:
        proc = subprocess.run(cmd + ["--spawned-at", repr(spawned)], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"engine": engine, "error": f"timed out after {timeout} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"engine": engine, "error": last}
    # The host's 1-minute load average around the run: above the CPU count, the engines'
    # threads were waiting for a core, and synchronisation-heavy code suffers most.
    return {**json.loads(lines[-1]), "load_before": load, "load_after": os.getloadavg()[0]}


def agreement(a: list, b: list) -> int:
    """Leading greedy tokens two runs share (quantized activations in llama.cpp can flip a
    close argmax, after which the continuations differ)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def summarize(name, runs, engines) -> dict:
    """Medians per engine and the median of per-round ratios numatp / llama.cpp."""
    by_round = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["engine"]] = r
    out = {"model": name, "metrics": {}, "errors": sorted({f"{LABEL[r['engine']]}: {r['error']}"
                                                           for r in runs if "error" in r})}
    for key, _, _ in METRICS:
        m = {}
        for e in engines:
            vals = [r[key] for r in runs if r["engine"] == e and key in r]
            m[e] = statistics.median(vals) if vals else None
            m[e + "_all"] = vals
        ratios = [pair["numatp"][key] / pair["llamacpp"][key] for pair in by_round.values()
                  if all(e in pair and key in pair[e] for e in ENGINES) and pair["llamacpp"][key] > 0]
        m["ratio"] = statistics.median(ratios) if ratios else None
        m["ratios"] = ratios
        out["metrics"][key] = m
    agree = [agreement(p["numatp"]["tokens"], p["llamacpp"]["tokens"]) for p in by_round.values()
             if all(e in p and "tokens" in p[e] for e in ENGINES)]
    out["tokens_agree"] = agree
    out["n_tokens"] = max((len(r["tokens"]) for r in runs if "tokens" in r), default=0)
    return out


def _fmt(v, rate):
    if v is None:
        return "-"
    return f"{v:.1f}" if rate else f"{v:.2f}"


def markdown(summaries, meta) -> str:
    lines = [f"# numatp vs llama.cpp ({meta['date']})", "",
             f"{meta['cpu']}, {meta['threads']} threads for both engines, {meta['rounds']} rounds "
             f"alternating A/B, fresh process per run"
             f"{', after one unmeasured warm-up run each' if meta['warmup'] else ''}. numatp {meta['numatp_commit']}, "
             f"llama-cpp-python {meta['llama_cpp_version'] or 'not installed'}.",
             "Ratio = median over rounds of numatp / llama.cpp from the same round: for tok/s "
             "above 1 means numatp is faster, for seconds above 1 means numatp is slower.", "",
             "| model | metric | numatp | llama.cpp | ratio | per-round ratios |",
             "|---|---|---|---|---|---|"]
    for s in summaries:
        for key, label, rate in METRICS:
            m = s["metrics"][key]
            label = label.replace("decode", f"decode ({meta['n_gen']} tokens)") if key == "decode_tps" else label
            ratios = " ".join(f"{r:.2f}" for r in m["ratios"])
            lines.append(f"| {s['model']} | {label} | {_fmt(m.get('numatp'), rate)} | "
                         f"{_fmt(m.get('llamacpp'), rate)} | {_fmt(m['ratio'], False)} | {ratios} |")
    lines.append("")
    for s in summaries:
        notes = []
        if s["tokens_agree"]:
            notes.append(f"greedy tokens agree for the first {statistics.median(s['tokens_agree']):g} "
                         f"of {s['n_tokens']} (median over rounds)")
        notes += s["errors"]
        if notes:
            lines.append(f"- {s['model']}: " + "; ".join(notes))
    if meta.get("load"):
        lines.append(f"- host load (1-minute average) around the measured runs: median "
                     f"{meta['load']['median']:.1f}, max {meta['load']['max']:.1f}, on "
                     f"{meta['load']['cpus']} CPUs")
    for note in meta["notes"]:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def chart(summaries, engines, path: Path) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no chart: matplotlib is not installed (pip install -e .[bench])"
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4.2))
    names = [s["model"] for s in summaries]
    width = 0.8 / len(engines)
    for ax, (key, label, rate) in zip(axes, METRICS):
        for j, e in enumerate(engines):
            vals = [s["metrics"][key].get(e) or 0 for s in summaries]
            ax.bar([i + (j - (len(engines) - 1) / 2) * width for i in range(len(names))], vals,
                   width, label=LABEL[e])
        for i, s in enumerate(summaries):
            r = s["metrics"][key]["ratio"]
            if r is not None:
                top = max(s["metrics"][key].get(e) or 0 for e in engines)
                ax.annotate(f"{r:.2f}x", (i, top), ha="center", va="bottom", fontsize=8)
        ax.set_title(label + ("" if rate else " (lower is better)"), fontsize=9)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle("numatp vs llama.cpp (labels: numatp / llama.cpp, median of rounds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"chart: {path}"


def cpu_name() -> str:
    """Model name and widest vector ISA: the same CPU family reaches very different
    speeds with and without AVX-512, and virtual machines do not always expose it."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return name
    isa = "AVX-512" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    return f"{name} ({isa})"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, of: {', '.join(models.NAMES)}")
    ap.add_argument("--qwen", action="store_true", help="add Qwen2.5-Coder-0.5B Q4_K_M (491 MB download)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--n-gen", type=int, default=64, help="decode steps timed (at least 64 for reports)")
    ap.add_argument("--small", action="store_true", help="small synthetic shape, for trying the harness")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per engine run")
    ap.add_argument("--no-warmup", action="store_true",
                    help="skip the unmeasured first run of each engine (then round 1 includes "
                         "numatp's kernel compilation if its Numba cache is cold)")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    args = ap.parse_args()
    # A SIGTERM unwinds like Ctrl-C, so subprocess.run kills the engine process it waits on.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if args.qwen and "qwen" not in names:
        names.append("qwen")
    unknown = [n for n in names if n not in models.NAMES]
    if unknown or args.rounds < 1 or args.threads < 1 or args.n_gen < 1:
        ap.error(f"unknown model {unknown[0]!r} (known: {', '.join(models.NAMES)})" if unknown
                 else "--rounds, --threads and --n-gen must be positive")
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    notes = []
    have_llama = importlib.util.find_spec("llama_cpp") is not None
    engines = ENGINES if have_llama else ("numatp",)
    if not have_llama:
        msg = f"llama-cpp-python is not installed: numatp side only. Install it with {models.INSTALL_LLAMACPP}"
        say(msg)
        notes.append(msg)
        if "synth-q4_k_m" in names:
            names.remove("synth-q4_k_m")
            notes.append("synth-q4_k_m skipped: it is made by llama.cpp's quantizer")

    try:
        models.ensure_synthetic(names, args.small, say)
        paths = {n: models.model_path(n, args.small, args.threads, say) for n in names}
    except NumatpError as e:
        sys.exit(f"error: {e}")

    llama_version = None
    if have_llama:
        from importlib.metadata import version
        llama_version = version("llama-cpp-python")
    meta = {"date": datetime.date.today().isoformat(), "cpu": cpu_name(), "threads": args.threads,
            "rounds": args.rounds, "warmup": not args.no_warmup, "n_gen": args.n_gen, "small": args.small,
            "numatp_commit": git_commit(), "llama_cpp_version": llama_version, "notes": notes,
            "models": {n: str(p) for n, p in paths.items()}}
    args.out.mkdir(parents=True, exist_ok=True)

    all_runs, summaries = [], []
    for name in names:
        path = paths[name]
        short, long = prompts(path)
        runs = []
        if not args.no_warmup:
            # One unmeasured run each first: numatp's first process on a fresh checkout
            # compiles its kernels into Numba's cache (minutes), which a user pays once, and
            # both engines then find the model file in the page cache.
            for e in engines:
                r = run_engine(e, path, args.threads, short, long, args.n_gen, args.timeout)
                say(f"{name} warm-up {LABEL[e]}: {r['error'] if 'error' in r else 'done'}")
        for rnd in range(args.rounds):
            order = engines if rnd % 2 == 0 else engines[::-1]
            for e in order:
                r = run_engine(e, path, args.threads, short, long, args.n_gen, args.timeout)
                r.update(round=rnd, model=name)
                runs.append(r)
                brief = r["error"] if "error" in r else (
                    f"decode {r['decode_tps']:.1f} tok/s, pp128 {r['pp128_tps']:.1f}, "
                    f"pp512 {r['pp512_tps']:.1f}, first token {r['ttft_process_s']:.2f} s")
                say(f"{name} round {rnd + 1}/{args.rounds} {LABEL[e]}: {brief}")
        all_runs += runs
        summaries.append(summarize(name, runs, engines))
        # Written after every model, so a long run that is cut short keeps what it measured.
        table = write_outputs(args.out, summaries, all_runs, meta)
    print(table)
    say(chart(summaries, engines, args.out / "compare.png"))
    say(f"written: {args.out / 'compare.md'}, {args.out / 'compare.json'}")


def write_outputs(out: Path, summaries, runs, meta) -> str:
    loads = [r[k] for r in runs for k in ("load_before", "load_after") if k in r]
    if loads:
        meta["load"] = {"median": statistics.median(loads), "max": max(loads), "cpus": os.cpu_count()}
    table = markdown(summaries, meta)
    (out / "compare.md").write_text(table)
    (out / "compare.json").write_text(json.dumps({"meta": meta, "summary": summaries, "runs": runs},
                                                 indent=1))
    return table


if __name__ == "__main__":
    main()
