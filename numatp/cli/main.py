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
    """End the program with one line on stderr (none if stderr is closed)."""
    if sys.stderr is not None:
        sys.stderr.write(f"numatp: error: {message}\n")
        sys.stderr.flush()
    raise SystemExit(code)


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that every `with` and `finally` on the way
    out runs: the text so far is flushed, workers stopped, shared memory freed."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main():
    import signal

    from numatp.cli.output import guard_stdout
    from numatp.errors import NumatpError
    cli_errors = _click_exceptions()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        stdout = guard_stdout()
    except NumatpError as e:
        fail(str(e), e.exit_code)
    try:
        # Not standalone: click's own handling would print bad flags as a framed block.
        code = app(standalone_mode=False)
        sys.stdout.flush()   # a buffered write that fails does so here, as one line
    except NumatpError as e:
        fail(str(e), e.exit_code)
    except getattr(cli_errors, "NoArgsIsHelpError", ()) as e:
        e.show()
        raise SystemExit(e.exit_code)
    except cli_errors.ClickException as e:
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        fail(e.format_message() + hint, e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted("interrupted", 130)
    except Terminated:
        _interrupted("terminated", 143)
    finally:
        sys.stdout = stdout
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130
        _interrupted("interrupted", 130)
    raise SystemExit(code if isinstance(code, int) else 0)


def _click_exceptions():
    """typer >= 0.2x carries its own copy of click; older ones use click itself."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _interrupted(what, code):
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    sys.stderr.write(f"\nnumatp: {what}\n")
    raise SystemExit(code)
