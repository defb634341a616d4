"""Standard output for the CLI: a write that fails (a full disk, /dev/full, a pipe whose
reader has gone) becomes one error line instead of a traceback, and no second
"Exception ignored" report when the interpreter flushes at exit."""
import errno
import os
import signal
import sys

from numatp.errors import NumatpError


class OutputError(NumatpError, OSError):
    """Standard output cannot be written. Also an OSError, so that code already
    prepared for a failing write (flushing on the way out of an interrupt) catches it."""


class TerminalHungUp(OutputError):
    """Standard output is a terminal that hung up (its window or ssh session closed).
    The kernel makes writes fail with EIO before it sends SIGHUP, so a write can learn of
    the hang-up first: the program then ends as for the SIGHUP."""


class GuardedOutput:
    """Wraps sys.stdout: write and flush raise OutputError; everything else is the
    stream's own (encoding, isatty, buffer...)."""

    def __init__(self, stream):
        self._stream = stream
        try:
            self._terminal = stream.isatty()
        except (OSError, ValueError, AttributeError):
            self._terminal = False

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as e:
            raise self._failed(e) from None

    def flush(self):
        try:
            self._stream.flush()
        except OSError as e:
            raise self._failed(e) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def _failed(self, error):
        # What is still buffered would fail again when the interpreter flushes at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass   # not a real file (a test's capture): nothing is flushed at exit
        if self._terminal and error.errno == errno.EIO:
            # Its SIGHUP comes next; it must not break into the cleanup on the way out.
            try:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            except ValueError:
                pass  # not the main thread: the handler stays
            return TerminalHungUp("the terminal hung up")
        return OutputError(f"cannot write to standard output: {error.strerror or error}")


def guard_stdout():
    """Install GuardedOutput as sys.stdout; returns what to restore afterwards. A closed
    standard output (`>&-`: Python then has none) is refused: the output would be lost,
    and the next file numatp opens would become descriptor 1, its workers' stdout."""
    original = sys.stdout
    if original is None:
        raise OutputError("standard output is closed")
    sys.stdout = GuardedOutput(original)
    return original
