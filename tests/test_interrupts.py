"""Ctrl-C (SIGINT to the whole process group, as a terminal sends it), SIGTERM (to the
coordinator, as `kill` or a service manager sends it) and SIGHUP (to the whole group, as
a shell does when its terminal or ssh session closes), while the workers load and while
text streams: the text so far is on stdout, the last line on stderr says what happened,
no traceback, exit code 130, 143 or 129, and no worker or /dev/shm segment is left.
More signals during the shutdown change nothing.

The workers never see the Ctrl-C or hang-up themselves (they stay blocked in them from
their start: an interrupted start-up used to print a traceback from each); the
coordinator stops them.

A SIGKILL of the whole group leaves the segments (nothing of numatp survives to free
them): the next coordinator reclaims them.
"""
import fcntl
import os
import pty
import signal
import subprocess
import sys
import termios

import pytest

import numatp
from models import STORIES
from numatp.shm.segment import leftover_segments
from robust import assert_nothing_left, finish, read_some, start_cli, workers_of

STORY = ", there was a little girl named Lily. She loved to play outside in the park"
# Greedy stories260K runs to the full 2048-token context without an end-of-text token,
# so this is still generating when the signal comes.
LONG_RUN = ["generate", "Once upon a time", "-m", STORIES, "--nodes", 2, "-n", 100000,
            "-c", 2048, "--temp", 0]
EXIT_S = 60  # the coordinator stops at once; this only bounds a hang on a loaded machine

CASES = {  # name: (signal, to the whole group?, exit code, last line on stderr)
    "ctrl-c": (signal.SIGINT, True, 130, "numatp: interrupted"),
    "sigterm": (signal.SIGTERM, False, 143, "numatp: terminated"),
    "sighup": (signal.SIGHUP, True, 129, "numatp: hangup"),
}


def _send(proc, name):
    sig, group, _, _ = CASES[name]
    (os.killpg if group else os.kill)(proc.pid, sig)


def _check_end(name, code, err):
    _, _, want_code, want_line = CASES[name]
    assert code == want_code, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == want_line, err


@pytest.mark.parametrize("name", sorted(CASES))
def test_interrupt_during_load(name):
    proc = start_cli(*LONG_RUN)
    try:
        workers = workers_of(proc, 2)
        _send(proc, name)
        code, out, err = finish(proc, EXIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    _check_end(name, code, err)
    assert out == ""
    assert_nothing_left(proc, workers)


@pytest.mark.parametrize("name", sorted(CASES))
def test_interrupt_during_generation(name):
    proc = start_cli(*LONG_RUN)
    try:
        text = read_some(proc)
        workers = workers_of(proc, 2)
        _send(proc, name)
        code, out, err = finish(proc, EXIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    _check_end(name, code, err)
    shown = (text.decode() + out).rstrip("\n")
    assert shown and STORY.startswith(shown[:len(STORY)])
    assert_nothing_left(proc, workers)


def test_more_sigterms_during_the_shutdown():
    """A service manager or an impatient user repeats the signal: the shutdown that the
    first one started goes on undisturbed (it used to print "Exception ignored ...
    Terminated", or die of the signal halfway)."""
    proc = start_cli(*LONG_RUN)
    try:
        read_some(proc)
        workers = workers_of(proc, 2)
        for _ in range(2000):  # until it has exited: a signal every few milliseconds
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(0.005)
            except subprocess.TimeoutExpired:
                pass
        code, out, err = finish(proc, EXIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    _check_end("sigterm", code, err)
    assert "Exception ignored" not in err, err
    assert_nothing_left(proc, workers)


def _take_terminal():
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _hang_up_mid_generation(controlling):
    """Run LONG_RUN with its output on a terminal and close that terminal once text
    streams: (process, its workers, its stderr). controlling: the terminal is numatp's
    controlling terminal (stderr goes there too, lost), else stderr is kept."""
    master, slave = pty.openpty()
    if controlling:
        streams = dict(stdin=slave, stdout=slave, stderr=slave, preexec_fn=_take_terminal)
    else:
        streams = dict(stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-m", "numatp", *map(str, LONG_RUN)],
                            start_new_session=True, **streams)
    os.close(slave)
    try:
        shown = b""
        while b"Lily" not in shown:  # generating
            shown += os.read(master, 4096)
        workers = workers_of(proc, 2)
        os.close(master)
        master = None
        _, err = proc.communicate(timeout=EXIT_S)
    finally:
        if master is not None:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(EXIT_S)
    return proc, workers, (err or b"").decode()


def test_terminal_closed():
    """numatp's terminal goes away (the window or ssh session closed): the kernel sends
    SIGHUP to numatp, the session leader here, and every later write to the terminal
    fails. It ends as for a SIGTERM, with its own exit code."""
    proc, workers, _ = _hang_up_mid_generation(controlling=True)
    assert proc.returncode == 129
    assert_nothing_left(proc, workers)


def test_terminal_hung_up_before_its_sighup():
    """The kernel makes writes to a hung-up terminal fail (EIO) before it sends SIGHUP,
    so numatp can learn of the hang-up from a failed write first. A terminal that is not
    the controlling one gets hung up with no SIGHUP at all, which makes that order
    certain: it ends as for the SIGHUP (it used to end as a write error, exit 1)."""
    proc, workers, err = _hang_up_mid_generation(controlling=False)
    _check_end("sighup", proc.returncode, err)
    assert_nothing_left(proc, workers)


def test_segments_left_by_a_killed_process_group_are_reclaimed():
    proc = start_cli(*LONG_RUN)
    try:
        read_some(proc)
        workers = workers_of(proc, 2)
        os.killpg(proc.pid, signal.SIGKILL)
        finish(proc, EXIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = leftover_segments(proc.pid)
    assert left  # its resource tracker, in the same group, died with it
    with numatp.load(STORIES, nodes=2, ctx_size=64):
        assert leftover_segments(proc.pid) == []
    assert_nothing_left(proc, workers)


_SIGNAL_IN_A_CALLBACK = """
import os, signal, sys, time
from numatp.cli import main

for sig in main.STOP_SIGNALS:
    signal.signal(sig, main._on_stop_signal)
# Stands for llvmlite's object cache hook, which LLVM calls while Numba compiles or loads
# a kernel: the signal arrives while it runs.
callback = compile("def hook():\\n    os.kill(os.getpid(), signal.SIGTERM)\\n"
                   "    for _ in range(100000): pass\\n    return 'hook done'\\n",
                   os.path.join(os.sep, "site-packages", "llvmlite", "binding", "hook.py"), "exec")
namespace = {"os": os, "signal": signal}
exec(callback, namespace)
print(namespace["hook"](), flush=True)
try:
    time.sleep(60)
except main.Terminated:
    print("terminated after the hook", flush=True)
"""


def test_signal_during_a_numba_compile_waits_for_it():
    """An exception raised inside a callback from LLVM cannot unwind through it (the
    process crashed with SIGSEGV when SIGTERM came while Numba loaded a kernel): the
    signal is taken once the callback has returned."""
    r = subprocess.run([sys.executable, "-c", _SIGNAL_IN_A_CALLBACK], capture_output=True,
                       text=True, timeout=EXIT_S)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["hook done", "terminated after the hook"], r.stderr
