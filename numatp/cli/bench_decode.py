"""`numatp bench decode -m MODEL`: decode and prompt tok/s, effective GB/s vs read bandwidth."""
import json
from typing import Optional

import typer

from numatp.cli.main import bench_app


@bench_app.command("decode")
def bench_decode(
        model: Optional[str] = typer.Option(None, "-m", "--model", help="GGUF file or known model name."),
        nodes: str = typer.Option("auto", "--nodes"),
        threads: Optional[int] = typer.Option(None, "-t", "--threads"),
        n_prompt: int = typer.Option(128, "-p", "--n-prompt", help="Prompt tokens."),
        n_gen: int = typer.Option(64, "-n", "--n-gen", help="Generated tokens."),
        repeats: int = typer.Option(3, "-r", "--repeats"),
        as_json: bool = typer.Option(False, "--json")):
    """Decode tok/s, prompt tok/s, effective GB/s, and that as a share of the read bandwidth."""
    from numatp.bench.decode import format_report, run
    from numatp.errors import UsageError
    if n_prompt < 1 or n_gen < 2 or repeats < 1:
        raise UsageError("need --n-prompt >= 1, --n-gen >= 2, --repeats >= 1")
    r = run(model, nodes=nodes, threads=threads, n_prompt=n_prompt, n_gen=n_gen, repeats=repeats)
    print(json.dumps(r, indent=2) if as_json else format_report(r))
