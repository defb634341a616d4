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
GPU = typer.Option(None, "--gpu",
                   help="attn: each layer's attention and the KV cache (f16) on a CUDA GPU "
                        "through CuPy (pip install 'numatp[cuda]'), FFN and experts on the CPU.")
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


def gpu_option(gpu):
    """--gpu's value for numatp.load (None: CPU only)."""
    if gpu is not None and gpu != "attn":
        raise UsageError(f"invalid --gpu {gpu!r}: the one mode is attn (attention and the KV "
                         "cache on the GPU)")
    return gpu


def gpu_lines(llm) -> list:
    """What --gpu attn placed on the GPU and the per-layer round trip, for stderr."""
    r = llm.gpu_report()
    if r is None:
        return []
    mb = lambda b: f"{b / 1e6:,.1f} MB"  # noqa: E731
    used = r["weight_bytes"] + r["kv_bytes"] + r["rope_bytes"] + r["io_bytes"]
    lines = [f"gpu: {r['device']}",
             f"gpu memory used: {mb(used)} = {mb(r['weight_bytes'])} attention weights (f16) + "
             f"{mb(r['kv_bytes'])} KV cache (f16, {r['planned']['ctx']} tokens) + "
             f"{mb(r['rope_bytes'] + r['io_bytes'])} RoPE tables and I/O buffers; workspace "
             f"up to {mb(r['planned']['workspace_bytes'])} (CuPy's pool holds "
             f"{mb(r['pool_bytes'])} now)"]
    if "round_trip_us" in r:
        trip = f"gpu round trip per layer: {r['round_trip_us']:.1f} us host->GPU->host (one hidden vector)"
        if "decode_attention_us" in r:
            trip += (f", {r['decode_attention_us']:.1f} us for a decode token's attention block"
                     f" ({r.get('decode_path', 'xp')})")
        lines.append(trip)
    return lines


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
