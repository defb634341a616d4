"""Options that `numatp generate` and `numatp chat` share: the model and where it runs, the
sampling parameters, stop strings. Each is declared once here and used as the default of
a parameter of both commands."""
from typing import List, Optional

import typer

MODEL = typer.Option(None, "-m", "--model",
                     help="GGUF file or known model name (default: smollm2-135m).")
TEMP = typer.Option(0.8, "--temp", help="Temperature; 0 is greedy.")
TOP_K = typer.Option(40, "--top-k")
TOP_P = typer.Option(0.95, "--top-p")
MIN_P = typer.Option(0.05, "--min-p")
REPEAT_PENALTY = typer.Option(1.0, "--repeat-penalty")
REPEAT_LAST_N = typer.Option(64, "--repeat-last-n")
SEED = typer.Option(-1, "-s", "--seed", help="RNG seed (-1: random).")
CTX_SIZE = typer.Option(0, "-c", "--ctx-size", help="Context size (0: the model's, at most 4096).")
THREADS = typer.Option(None, "-t", "--threads",
                       help="Total threads (default: all CPUs of the nodes).")
NODES = typer.Option("auto", "--nodes", help="auto, a count N (virtual nodes if the machine has "
                                             "fewer), or a list such as 0,1.")
# llama.cpp calls it a reverse prompt (-r); OpenAI's APIs call it stop.
STOP = typer.Option(None, "--stop", "-r", "--reverse-prompt",
                    help="Stop before this text (repeat for several); it is not printed.")

OptionalStr = Optional[str]
OptionalInt = Optional[int]
StrList = Optional[List[str]]


def sampling_params(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed):
    """The validated SamplingParams of the flags (a bad value is a UsageError)."""
    from numatp.sampling import SamplingParams
    return SamplingParams(temp, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
                          None if seed == -1 else seed).validate()


def announce(message):
    import sys
    print(f"numatp: {message}", file=sys.stderr)
