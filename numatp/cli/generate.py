"""`numatp generate`: stream text from a prompt; timings on stderr; --json for scripts."""
import json
import sys
from typing import Optional

import typer

from numatp.cli.app import app
from numatp.cli.options import (CTX_SIZE, GPU, HF_REPO, MIN_P, MODEL, MOE_SPLIT, NODES,
                                REPEAT_LAST_N, REPEAT_PENALTY, SEED, STOP, TEMP, THREADS,
                                TOP_K, TOP_P, OptionalInt, OptionalStr, StrList, announce,
                                gpu_lines, gpu_option, model_option, sampling_params)
from numatp.errors import UsageError


# More than any context numatp can hold: the longest contexts of supported models are
# about a million tokens, and no token in their vocabularies is longer than 256 bytes.
# Reading `yes |` or /dev/zero to the end would otherwise take all memory.
MAX_PROMPT_BYTES = 256 << 20


def read_prompt(prompt, prompt_opt, file) -> str:
    given = [as_text(p, what) for p, what in ((prompt, "the prompt argument"),
                                            (prompt_opt, "the -p prompt")) if p is not None]
    if file is not None:
        try:
            with open(file, "rb") as f:
                given.append(as_text(f.read(MAX_PROMPT_BYTES + 1), f"prompt file {file}"))
        except OSError as e:
            raise UsageError(f"cannot read prompt file {file}: {e.strerror}") from None
    if len(given) > 1:
        raise UsageError("give the prompt once: as an argument, with -p, or with -f")
    if not given and not sys.stdin.isatty():
        stdin = getattr(sys.stdin, "buffer", sys.stdin)   # bytes, unless replaced by text
        given.append(as_text(stdin.read(MAX_PROMPT_BYTES + 1), "standard input"))
    if not given:
        raise UsageError("no prompt: give one as an argument, with -p/-f, or on stdin")
    if not given[0]:
        raise UsageError("empty prompt: give some text to continue")
    return given[0]


def as_text(data, what) -> str:
    """`data` (bytes read, or a str argument) as text, or one line saying what is wrong.
    Command-line arguments arrive with undecodable bytes as lone surrogates."""
    if len(data) > MAX_PROMPT_BYTES:
        raise UsageError(f"{what} is longer than {MAX_PROMPT_BYTES >> 20} MiB, more than any "
                         "context can hold")
    try:
        if isinstance(data, bytes):
            return data.decode("utf-8")
        data.encode("utf-8")
        return data
    except UnicodeError as e:
        unit = "byte" if isinstance(data, bytes) else "character"
        raise UsageError(f"{what} is not UTF-8 text ({unit} {e.start})") from None


@app.command()
def generate(
    prompt: Optional[str] = typer.Argument(None, help="The prompt (or use -p, -f, or stdin)."),
    prompt_opt: Optional[str] = typer.Option(None, "-p", "--prompt", help="The prompt."),
    file: Optional[str] = typer.Option(None, "-f", "--file", help="Read the prompt from a file."),
    model: OptionalStr = MODEL,
    hf_repo: OptionalStr = HF_REPO,
    n_predict: int = typer.Option(128, "-n", "--n-predict", help="Tokens to generate (-1: until EOS or context full)."),
    temp: float = TEMP,
    top_k: int = TOP_K,
    top_p: float = TOP_P,
    min_p: float = MIN_P,
    repeat_penalty: float = REPEAT_PENALTY,
    repeat_last_n: int = REPEAT_LAST_N,
    seed: int = SEED,
    ctx_size: int = CTX_SIZE,
    threads: OptionalInt = THREADS,
    nodes: str = NODES,
    moe_split: str = MOE_SPLIT,
    gpu: OptionalStr = GPU,
    stop: StrList = STOP,
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the model's chat template."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for --chat."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of streaming."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos",
                                    help="Keep generating past end-of-generation tokens."),
):
    """Generate text from a prompt."""
    import numatp
    from numatp.text_stream import TextStream, checked_stops, text_pieces

    model = model_option(model, hf_repo)
    text = read_prompt(prompt, prompt_opt, file)
    if n_predict == 0 or n_predict < -1:
        raise UsageError(f"invalid -n {n_predict}: give a positive count, or -1 for no limit")
    if ctx_size < 0:
        raise UsageError(f"invalid --ctx-size {ctx_size}: must be >= 0")
    if system is not None and not chat:
        raise UsageError("--system needs --chat")
    if system is not None:
        as_text(system, "--system")
    stops = checked_stops([as_text(s, "--stop") for s in stop or ()])
    params = sampling_params(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
    gpu = gpu_option(gpu)

    with numatp.load(model, nodes=nodes, threads=threads, ctx_size=ctx_size or None,
                     announce=announce, moe_split=moe_split, gpu=gpu) as llm:
        # First, so that a prompt or chat template that fails does so in one line.
        if chat and llm.tokenizer.chat_template is None:
            print("numatp: warning: the model has no chat template; --chat uses ChatML, "
                  "which it may not have been trained on", file=sys.stderr)
        ids = llm.prompt_ids(text, chat=chat, system=system)
        for line in getattr(llm.model, "placement_lines", list)():
            print(f"numatp: {line}", file=sys.stderr)
        # Loading the kernels from Numba's cache takes ~0.5 s: not part of the prompt's
        # tok/s reported below.
        llm.warm_up()
        out = []
        stats, run = llm.generation(ids, None if n_predict == -1 else n_predict, params,
                                    stop_at_eog=not ignore_eos)
        try:
            for piece in text_pieces(run, TextStream(llm.tokenizer, stops), stats):
                out.append(piece)
                if not as_json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
            if not as_json:
                sys.stdout.write("\n")
        finally:
            if not as_json:
                sys.stdout.flush()
        s = llm.stats
        gbps = llm.bytes_per_token * s.decode_tps / 1e9
        if as_json:
            print(json.dumps({
                "text": "".join(out), "tokens": s.tokens, "prompt_tokens": s.prompt_tokens,
                "n_prompt": s.n_prompt, "n_gen": s.n_gen, "prompt_tps": s.prompt_tps,
                "decode_tps": s.decode_tps, "effective_gbps": gbps, "nodes": llm.nodes,
                "stop_reason": s.stop_reason, "model": llm.path, "gpu": llm.gpu_report(),
            }))
        # The first generated token comes out of the prompt pass: with one token there
        # was no decode step to time.
        decode = (f"decode {s.n_gen} tokens, {s.decode_tps:.1f} tok/s, {gbps:.1f} GB/s effective"
                  if s.n_gen > 1 else f"generated {s.n_gen} token (no decode step)")
        print(f"numatp: prompt {s.n_prompt} tokens, {s.prompt_tps:.1f} tok/s | {decode} | "
              f"nodes {llm.nodes}", file=sys.stderr)
        for line in gpu_lines(llm):
            print(f"numatp: {line}", file=sys.stderr)


@app.command()
def pull(name: Optional[str] = typer.Argument(None, help="Model name (see --list)."),
         list_: bool = typer.Option(False, "--list", help="List the known models.")):
    """Fetch a known model into the cache ($NUMATP_CACHE, default ~/.cache/numatp)."""
    from numatp.registry import MODELS, cached_path, pull as do_pull
    if list_ or name is None:
        for m in MODELS.values():
            state = "cached" if cached_path(m.name).exists() else "not cached"
            print(f"{m.name:22s} {m.description} [{state}]")
        return
    print(do_pull(name))
