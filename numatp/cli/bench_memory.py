"""`numatp bench memory`: the read-bandwidth ceiling that decode figures are measured against."""
import json

import typer

from numatp.cli.app import bench_app


@bench_app.command("memory")
def bench_memory(
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        size_mb: int = typer.Option(1024, "--size-mb",
                                    help="MiB per pass: the read buffer, and the total of "
                                         "copy's 2 and triad's 3 arrays. Keep it far above "
                                         "the last-level cache."),
        repeats: int = typer.Option(5, "--repeats", help="Timed passes per figure.")):
    """Read bandwidth node x node (CPU node rows, memory node columns) and read/copy/triad
    scaling with 1..N threads on one node, Numba kernels, STREAM byte counts."""
    from numatp.bench.memory import format_report, run
    result = run(size_mb=size_mb, repeats=repeats)
    print(json.dumps(result, indent=2) if as_json else format_report(result))
