"""Ctrl-C (SIGINT to the whole process group, as a terminal sends it) and SIGTERM (to
the coordinator, as `kill` or a service manager sends it), while the workers load and
while text streams: the text so far is on stdout, the last line on stderr says what
happened, no traceback, exit code 130 or 143, and no worker or /dev/shm segment is left.

The workers never see the Ctrl-C themselves (it stays blocked in them from their start:
an interrupted start-up used to print a traceback from each); the coordinator stops them.
"""
import os
import signal

import pytest

from models import STORIES
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
