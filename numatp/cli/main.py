"""The `numatp` command. Each command lives in its own module under numatp/cli/ and
registers on the app of cli/app.py; this one runs the app and turns numatp errors into
one line and an exit code."""
import os
import signal
import sys
import threading

import typer

from numatp import _env  # noqa: F401
# Importing a command module registers its commands on `app` / `bench_app`.
from numatp.cli import (bench_allreduce, bench_decode, bench_kernels, bench_memory,  # noqa: F401
                        chat, generate, info, serve, topology)
from numatp.cli.app import app


def fail(message: str, code: int = 1):
    """End the program with one line on stderr (none if stderr is closed)."""
    if sys.stderr is not None:
        sys.stderr.write(f"numatp: error: {message}\n")
        sys.stderr.flush()
    raise SystemExit(code)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """SIGTERM or SIGHUP (the terminal or ssh session closed), raised like
    KeyboardInterrupt so that every `with` and `finally` on the way out runs: the text so
    far is flushed, workers stopped, shared memory freed."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _on_stop_signal(signum, frame):
    if _inside_llvm(frame):
        # Python code that LLVM called back (its object cache, while Numba compiles or
        # loads a kernel): an exception cannot unwind through LLVM's C frames; ctypes
        # prints it and the process crashes (SIGSEGV). Take the signal again shortly.
        retry = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        retry.daemon = True
        retry.start()
        return
    # One is enough: a second one would break into the shutdown this one starts (raised
    # in a finalizer: "Exception ignored ... Terminated"; during interpreter exit, where
    # the handler is back to the default: killed, exit -15).
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


_LLVMLITE_DIR = f"{os.sep}llvmlite{os.sep}"


def _inside_llvm(frame):
    while frame is not None:
        if _LLVMLITE_DIR in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def main():
    from numatp.cli.llamacpp_flags import llamacpp_flag_note
    from numatp.cli.output import guard_stdout
    from numatp.errors import NumatpError
    # huggingface_hub logs each retry of a failing request as a warning of several lines;
    # a failure the user sees is numatp's one line. HF_HUB_VERBOSITY set by the user wins.
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    note = llamacpp_flag_note(sys.argv[1:])
    if note is not None:
        fail(note, 2)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)
    try:
        stdout = guard_stdout()
    except NumatpError as e:
        fail(str(e), e.exit_code)
    try:
        # A stop signal can also arrive while an error is being reported: the outer
        # handlers see it wherever it is raised.
        try:
            code = _run_app()
        except (KeyboardInterrupt, typer.Abort):
            _interrupted("interrupted", 130)
        except Terminated as e:
            if e.signum == signal.SIGHUP:
                _interrupted("hangup", 128 + signal.SIGHUP)
            _interrupted("terminated", 128 + signal.SIGTERM)
    finally:
        sys.stdout = stdout
    if code == 130:  # typer turns Ctrl-C inside a command into exit code 130
        _interrupted("interrupted", 130)
    raise SystemExit(code if isinstance(code, int) else 0)


def _run_app():
    """The app's exit code; its errors as one line and an exit code."""
    from numatp.cli.output import TerminalHungUp
    from numatp.errors import NumatpError
    cli_errors = _click_exceptions()
    try:
        # Not standalone: click's own handling would print bad flags as a framed block.
        code = app(standalone_mode=False)
        sys.stdout.flush()   # a buffered write that fails does so here, as one line
        return code
    except TerminalHungUp:
        # The SIGHUP that follows must not break into the shutdown.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        _interrupted("hangup", 128 + signal.SIGHUP)
    except NumatpError as e:
        fail(str(e), e.exit_code)
    except getattr(cli_errors, "NoArgsIsHelpError", ()) as e:
        e.show()
        raise SystemExit(e.exit_code)
    except cli_errors.ClickException as e:
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        fail(e.format_message() + hint, e.exit_code)


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
    try:
        sys.stderr.write(f"\nnumatp: {what}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # a terminal that hung up
        pass
    raise SystemExit(code)
