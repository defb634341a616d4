"""Helpers for the robustness tests: run `numatp` in-process or as a subprocess, find a
running coordinator's workers, check what a finished run left behind, and turn a hang
into a failure."""
import contextlib
import io
import os
import select
import signal
import subprocess
import sys
import time

import psutil
import pytest

from numatp.shm.segment import leftover_segments

WAIT_S = 600   # deadline for things that take seconds warm; a cold Numba cache compiles for minutes here
HANG_S = 30    # what the guarded code does takes milliseconds; this is a hang detector


@contextlib.contextmanager
def hang_guard(seconds=HANG_S):
    """Fail with TimeoutError if the block runs longer than `seconds` (Python code only:
    a single long C call, such as one huge power, is not interrupted)."""
    def hang(*_):
        raise TimeoutError(f"still running after {seconds} s: a hang")
    old = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_main(args, monkeypatch, capsys, stdin=""):
    """`numatp ARGS` in this process: (exit code, stdout, stderr). Errors that come before
    any generation are cheap to check this way; a subprocess adds ~2 s of imports."""
    from numatp.cli.main import STOP_SIGNALS, main
    monkeypatch.setattr(sys, "argv", ["numatp", *map(str, args)])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}  # main() installs its own
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def error_line(err, after_start=False):
    """The one line `numatp` printed for an error; fails if there is more, or a traceback.
    after_start: the run got as far as starting its workers, so their one-line reports
    ("numatp: worker 0 (pid ...): ...") come first."""
    lines = err.strip().splitlines()
    if after_start:
        lines = [line for line in lines if not line.startswith("numatp: worker ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("numatp: error: "), err
    return lines[0][len("numatp: error: "):]


def start_cli(*args, preexec_fn=None):
    """`python -m numatp ARGS` in its own session, so that a signal sent to its process
    group reaches it and its workers as a terminal's Ctrl-C would, and nothing else."""
    return subprocess.Popen([sys.executable, "-m", "numatp", *map(str, args)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=preexec_fn)


def workers_of(proc, n, timeout=WAIT_S):
    """The n worker processes the coordinator `proc` spawned, once all have started."""
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"numatp exited early: {proc.communicate()[1].decode()}"
        found = []
        for child in me.children():
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                pass
        if len(found) == n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{n} workers did not start within {timeout} s")


def read_some(proc, timeout=WAIT_S):
    """Block until the process writes to stdout; returns what it wrote so far."""
    fd = proc.stdout.fileno()
    ready, _, _ = select.select([fd], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    data = os.read(fd, 65536)
    assert data, f"stdout closed: {proc.communicate()[1].decode()}"
    return data


def finish(proc, timeout=WAIT_S):
    """(exit code, rest of stdout, stderr) once the process has exited."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def assert_nothing_left(proc, children):
    """No shared memory segment of the coordinator and none of its children alive."""
    deadline = time.monotonic() + 10  # a killed process may take a moment to be reaped
    while True:
        alive = [c.pid for c in children if _alive(c)]
        segments = leftover_segments(proc.pid)
        if not (alive or segments) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert alive == [], f"processes left: {alive}"
    assert segments == [], f"shared memory left: {segments}"


def _alive(p):
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
