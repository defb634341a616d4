"""`numatp bench decode`: llama-bench's prompt (pp) and generation (tg) tests over lists of
sizes, thread counts, node settings and models; the result alone on stdout, progress on
stderr."""
import json
import sys
from typing import List, Optional

import typer

from numatp.cli.app import bench_app
from numatp.cli.options import HF_REPO_HELP, MOE_SPLIT, gpu_option
from numatp.errors import UsageError

FORMATS = ("md", "csv", "json")


@bench_app.command("decode")
def bench_decode(
        models: Optional[List[str]] = typer.Option(
            None, "-m", "--model", help="GGUF file, known model name or hf://OWNER/REPO/FILE.gguf; "
                                        "repeat to compare models."),
        hf_repos: Optional[List[str]] = typer.Option(
            None, "-hf", "-hfr", "--hf-repo", help=HF_REPO_HELP + " Repeat to compare models."),
        nodes: Optional[List[str]] = typer.Option(
            None, "--nodes", help="As for generate (auto, N, or a node list such as 0,1); "
                                  "repeat to compare: --nodes 1 --nodes 2. Default: auto."),
        threads: Optional[str] = typer.Option(
            None, "-t", "--threads", help="Total threads, comma-separated: 4,8,16 "
                                          "(default: all CPUs of the nodes)."),
        n_prompt: str = typer.Option(
            "128", "-p", "--n-prompt", help="Prompt tests: tokens processed from position 0, "
                                            "comma-separated; 0: none."),
        n_gen: str = typer.Option(
            "64", "-n", "--n-gen", help="Generation tests: tokens decoded one at a time, "
                                        "comma-separated; 0: none."),
        gpus: Optional[List[str]] = typer.Option(
            None, "--gpu", help="none (CPU only) or attn (attention and KV cache on the GPU); "
                                "repeat to compare: --gpu none --gpu attn. Default: none."),
        depth: str = typer.Option(
            "0", "-d", "--depth", help="SYNTHETIC: run each test at this KV depth, the cache "
                                       "filled with random keys and values instead of a "
                                       "prompt (attention's cost does not depend on them); "
                                       "comma-separated; one process only (--nodes 1). "
                                       "Rows are labelled 'tg64 @ d8192'."),
        repeats: int = typer.Option(3, "-r", "--repetitions", "--repeats",
                                    help="Measured repetitions of each test."),
        no_warmup: bool = typer.Option(False, "--no-warmup",
                                       help="Skip the unmeasured repetition before each test."),
        output: Optional[str] = typer.Option(
            None, "-o", "--output", help="md (a llama-bench table, the default), csv, or json "
                                         "(a list of row objects)."),
        read_mb: int = typer.Option(
            1024, "--read-mb", help="Buffer for the read-bandwidth measurement that tg rows are "
                                    "compared with; 0 skips it."),
        moe_split: str = MOE_SPLIT,
        as_json: bool = typer.Option(
            False, "--json", help="One JSON object for one configuration (single values only): "
                                  "prompt_tps, decode_tps (medians), their mean and stddev, "
                                  "effective_gbps, read_gbps, pct_of_read. "
                                  "For lists use -o json.")):
    """Prompt and generation tok/s like llama-bench: every combination of the lists, each test
    after one unmeasured warm-up repetition, reported as mean ± standard deviation (and the
    median); tg rows add the effective GB/s and its share of the read bandwidth."""
    import psutil

    from numatp.bench import decode_output
    from numatp.bench.decode import run

    from numatp.hub import repo_ref
    models = [*(models or []), *(repo_ref(r) for r in hf_repos or [])] or [None]
    nodes = nodes or ["auto"]
    thread_counts = int_list(threads, "-t/--threads", minimum=1) if threads else [None]
    prompts = int_list(n_prompt, "-p/--n-prompt", minimum=0)
    gens = int_list(n_gen, "-n/--n-gen", minimum=0)
    depths = int_list(depth, "-d/--depth", minimum=0)
    gpu_modes = [None if g == "none" else gpu_option(g) for g in gpus or ["none"]]
    if repeats < 1:
        raise UsageError(f"invalid -r/--repetitions {repeats}: need at least 1")
    if read_mb < 0 or read_mb << 20 > psutil.virtual_memory().total:
        raise UsageError(f"invalid --read-mb {read_mb}: need 0 (skip) up to this machine's "
                         f"memory, {psutil.virtual_memory().total >> 20} MB")
    from numatp.parallel.plan import check_moe_split
    check_moe_split(moe_split)
    if output is not None and output not in FORMATS:
        raise UsageError(f"invalid -o/--output {output!r}: choose md, csv or json")
    if as_json:
        if output is not None:
            raise UsageError("--json and -o/--output: give one of them")
        if (len(models), len(nodes), len(thread_counts), len(prompts), len(gens), len(depths),
                len(gpu_modes)) != (1,) * 7 \
                or not prompts[0] or not gens[0]:
            raise UsageError("--json prints one object for one -m, --nodes, -t, and -p and -n "
                             "above 0; for lists use -o json")
    with RichProgress() as progress:
        rows = run(models, nodes, thread_counts, prompts, gens, repeats=repeats,
                   warmup=not no_warmup, read_bytes=read_mb << 20, progress=progress,
                   gpus=gpu_modes, depths=depths, moe_split=moe_split)
    if as_json:
        text = json.dumps(decode_output.summary_object(rows), indent=2)
    else:
        text = {"md": decode_output.as_markdown, "csv": decode_output.as_csv,
                "json": decode_output.as_json}[output or "md"](rows)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def int_list(text, flag, minimum) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise UsageError(f"invalid {flag} {text!r}: give comma-separated whole numbers of at "
                         f"least {minimum}, such as 128,512")
    return values


class RichProgress:
    """numatp.bench.decode.Progress on stderr: a bar while a model loads or a test runs, in a
    terminal only (elsewhere rich would leave its remains in the log), and one line per
    loaded model, notice and finished test, so that a log of stderr tells what ran."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            console=self.console, transient=True)
        self.task = None

    def __enter__(self):
        if self.console.is_terminal:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar.live.is_started:
            self.bar.stop()   # which, unstarted, would still write an empty line

    def say(self, text):
        self.console.print(text, markup=False)

    def loading(self, model, nodes, threads):
        # On the bar only: a line now would make a load error two lines.
        self.show(f"loading {model or 'the default model'} (--nodes {nodes}"
                  f"{'' if threads is None else f', -t {threads}'})", total=None)

    def loaded(self, config):
        self.say(f"loaded {config['model']} in {config['load_s']:.1f} s: {config['nodes']} "
                 f"node{'s' if config['nodes'] > 1 else ''}, {config['threads']} "
                 f"thread{'s' if config['threads'] > 1 else ''}")

    def note(self, message):
        self.say(message)

    def show(self, description, total):
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(description, total=total)

    def test_started(self, label, warmup, repeats):
        self.warmup, self.repeats = warmup, repeats
        self.show(f"{label}: {'warm-up' if warmup else f'run 1/{repeats}'}",
                  total=repeats + warmup)

    def warmed_up(self, label):
        self.bar.update(self.task, advance=1, description=f"{label}: run 1/{self.repeats}")

    def sampled(self, label, index, tps):
        following = min(index + 2, self.repeats)
        self.bar.update(self.task, advance=1,
                        description=f"{label}: run {following}/{self.repeats}")

    def test_done(self, label, row):
        warm = "after 1 unmeasured warm-up" if self.warmup else "no warm-up"
        self.say(f"{label}: {row['avg_ts']:.2f} ± {row['stddev_ts']:.2f} t/s "
                 f"({row['repetitions']} run{'s' if row['repetitions'] > 1 else ''}, {warm})")

    def measuring_read(self, threads):
        self.say(f"measuring read bandwidth with {threads} thread{'s' if threads > 1 else ''}")
