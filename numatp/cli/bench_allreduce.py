"""`numatp bench allreduce`: latency of the shared-memory all-reduce between workers."""
import json
import sys

import typer

from numatp.cli.app import bench_app
from numatp.errors import UsageError

# Each worker records one 8-byte time per call in shared memory: 80 MB at this count,
# and minutes of calls; more is a typo.
MAX_ITERS = 10_000_000


def _int_list(text, flag, lo, hi):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < lo or max(values) > hi:
        raise UsageError(f"{flag} values must be integers from {lo} to {hi}, got {text!r}")
    return values


@bench_app.command("allreduce")
def bench_allreduce(
    workers: str = typer.Option("2", "--workers", help="worker counts, comma-separated"),
    floats: str = typer.Option("576,896,2048,4096,8192", "--floats",
                               help="vector lengths in float32 elements, comma-separated"),
    iters: int = typer.Option(2000, "--iters", help="timed calls per size (after 200 warm-up)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
):
    """Median and p99 latency of one all-reduce across worker processes."""
    from numatp.bench import allreduce as bench

    worker_counts = _int_list(workers, "--workers", 1, 256)
    sizes = _int_list(floats, "--floats", 1, 1 << 24)  # 64 MiB per slot
    if not 1 <= iters <= MAX_ITERS:
        raise UsageError(f"--iters must be from 1 to {MAX_ITERS:,}, got {iters}")
    for n in worker_counts:
        if not bench.pinned(n):
            sys.stderr.write(f"note: {n} workers > CPUs available: workers not pinned, "
                             "cores oversubscribed\n")
    results = bench.run(worker_counts, sizes, iters)
    if as_json:
        print(json.dumps({"results": results}))
        return
    print(f"{'workers':>7} {'floats':>7} {'median_us':>10} {'p99_us':>10}")
    for r in results:
        print(f"{r['workers']:>7} {r['floats']:>7} {r['median_us']:>10.2f} {r['p99_us']:>10.2f}")
