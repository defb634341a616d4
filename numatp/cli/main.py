"""The `numatp` command. Each command lives in its own module under numatp/cli/;
this one builds the typer app and turns numatp errors into one line and an exit code."""
import sys

import typer

from numatp import _env  # noqa: F401

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="NUMA-aware tensor-parallel CPU inference for GGUF models.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: memory, kernels, allreduce, decode.")
app.add_typer(bench_app, name="bench")

# Importing a command module registers its commands on `app` / `bench_app`.
from numatp.cli import (bench_allreduce, bench_decode, bench_kernels, bench_memory,  # noqa: E402,F401
                        generate, info, topology)


def fail(message: str, code: int = 1):
    """End the program with one line on stderr."""
    sys.stderr.write(f"numatp: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def main():
    from numatp.errors import NumatpError
    try:
        app()
    except NumatpError as e:
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\nnumatp: interrupted\n")
        raise SystemExit(130)
