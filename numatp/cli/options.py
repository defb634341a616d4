"""Options that `numatp generate` and `numatp chat` share: the model and where it runs, the
sampling parameters, stop strings. Each is declared once here and used as the default of
a parameter of both commands."""
from typing import List, Optional

import typer

from numatp.errors import UsageError

MODEL = typer.Option(None, "-m", "--model",
                     help="GGUF file, known model name or hf://OWNER/REPO/FILE.gguf "
                          "(default: smollm2-135m).")
HF_REPO_HELP = ("A model on the Hugging Face Hub, as llama.cpp's -hf: OWNER/REPO[:QUANT] "
                "(default quant Q4_K_M, else Q8_0, else the first GGUF file).")
HF_REPO = typer.Option(None, "-hf", "-hfr", "--hf-repo", help=HF_REPO_HELP)
MOE_SPLIT = typer.Option("rows", "--moe-split",
                         help="Mixture-of-Experts models over several nodes: rows (a slice of "
                              "every expert per node) or experts (whole experts per node).")
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


def model_option(model, hf_repo):
    """The model -m or -hf names (-hf OWNER/REPO[:QUANT] is hf://OWNER/REPO[:QUANT])."""
    from numatp.hub import repo_ref
    if hf_repo is None:
        return model
    if model is not None:
        raise UsageError("give the model once: with -m or with -hf")
    return repo_ref(hf_repo)
