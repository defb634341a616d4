"""`numatp bench kernels`: matvec GB/s of each quant kernel vs the read bandwidth."""
import json
import sys
from typing import Optional

import typer

from numatp.cli.app import bench_app


@bench_app.command("kernels")
def bench_kernels(
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        threads: Optional[str] = typer.Option(None, "--threads",
                                              help="Thread counts, e.g. 1,2 or 1-4 "
                                                   "(default: 1 .. all)."),
        types: Optional[str] = typer.Option(None, "--types",
                                            help="Quant types, e.g. Q8_0,Q4_K "
                                                 "(default: all supported)."),
        rows: Optional[int] = typer.Option(None, "--rows",
                                           help="Matrix rows (default: 256 MB of weights, or "
                                                "4x the last-level cache if larger)."),
        cols: Optional[int] = typer.Option(None, "--cols", help="Matrix columns (default 4096)."),
        repeats: int = typer.Option(5, "--repeats", help="Timed matvecs per figure."),
        batch: int = typer.Option(0, "--batch",
                                  help="Also time the batched path with this many tokens "
                                       "(prompt processing); 0: off.")):
    """Matvec throughput of every kernel on a matrix far larger than the last-level cache,
    in GB/s of weights and as a share of the read bandwidth measured in the same run."""
    from numatp.bench.kernels import format_report, run

    def progress(item):
        if not as_json:
            sys.stderr.write(f"  {item['type']:<8} {item['threads']} threads: "
                             f"{item['gbps']:.1f} GB/s\n")
            sys.stderr.flush()

    result = run(types=types, threads=threads, rows=rows, cols=cols, repeats=repeats,
                 batch=batch, progress=progress)
    print(json.dumps(result, indent=2) if as_json else format_report(result))
