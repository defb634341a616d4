"""Failing workers: a worker that dies mid-generation or fails at load ends the run with
one line naming the worker and its node, a non-zero exit code, and nothing left behind
(no worker process, no /dev/shm segment). The library raises WorkerError.

stories260K's greedy continuation of "Once upon a time" runs to the full 2048-token
context without an end-of-text token (checked once: 2044 tokens, stop reason
"context"), so a run asked for more than that is still generating when we kill a worker.
"""
import resource
import signal
import subprocess
import sys
import time

import psutil
import pytest

import numatp
from models import STORIES
from numatp.errors import WorkerError
from numatp.shm.segment import leftover_segments
from robust import assert_nothing_left, error_line, finish, read_some, start_cli, workers_of

STORY = ", there was a little girl named Lily. She loved to play outside in the park"
LONG_RUN = ["generate", "Once upon a time", "-m", STORIES, "--nodes", 2, "-n", 100000,
            "-c", 2048, "--temp", 0]
# The coordinator checks its workers' liveness every 25 ms while it waits for a step, so
# it notices a death almost at once; this only bounds a hang on a loaded machine.
EXIT_S = 30


def test_worker_killed_mid_generation():
    proc = start_cli(*LONG_RUN)
    try:
        text = read_some(proc)
        workers = workers_of(proc, 2)
        workers[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        code, out, err = finish(proc, EXIT_S)
        print(f"exit {time.monotonic() - killed_at:.2f} s after the kill")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1
    shown = text.decode() + out  # what was generated before the kill, flushed as it came
    assert shown and STORY.startswith(shown.strip("\n"))
    line = error_line(err, after_start=True)
    assert line.startswith("worker 1 (virtual node (cpus ") and "died (killed by signal 9)" in line
    assert_nothing_left(proc, workers)


def test_worker_killed_while_loading():
    proc = start_cli(*LONG_RUN)
    try:
        workers = workers_of(proc, 2)
        workers[0].send_signal(signal.SIGKILL)
        code, out, err = finish(proc, EXIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 1 and out == ""
    line = error_line(err)
    assert line.startswith("worker 0 (virtual node (cpus ") and "died while loading" in line
    assert_nothing_left(proc, workers)


def _stop_and_expect_it_named(rank, during_load):
    """SIGSTOP worker `rank`: the run ends naming it, within the stop limit plus the time
    to notice (well inside EXIT_S), and leaves nothing behind."""
    proc = start_cli(*LONG_RUN)
    workers = []
    try:
        text = b"" if during_load else read_some(proc)
        workers = workers_of(proc, 2)
        workers[rank].suspend()
        code, out, err = finish(proc, EXIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        for w in workers:  # a stopped worker outlives a failed test otherwise
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass
    assert code == 1, err
    line = error_line(err, after_start=not during_load)
    assert line.startswith(f"worker {rank} (virtual node (cpus "), line
    assert "was stopped (SIGSTOP or SIGTSTP sent to it) and did not run for 5 s" in line
    assert ("while loading" in line) == during_load
    if during_load:
        assert out == ""
    else:
        shown = text.decode() + out
        assert shown and STORY.startswith(shown.strip("\n")[:len(STORY)])
    assert_nothing_left(proc, workers)


def test_worker_stopped_while_loading():
    _stop_and_expect_it_named(0, during_load=True)


def test_worker_stopped_mid_generation():
    """Its peer waits for it in the all-reduce: the stopped one is named, not the peer."""
    _stop_and_expect_it_named(1, during_load=False)


def test_workers_quit_when_the_coordinator_is_killed_mid_generation():
    proc = start_cli(*LONG_RUN)
    workers = []
    try:
        read_some(proc)
        workers = workers_of(proc, 2)
        proc.kill()
        code, out, err = finish(proc, EXIT_S)  # end-of-file once the workers are gone too
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == -signal.SIGKILL
    assert "Traceback" not in err, err
    assert_nothing_left(proc, workers)


def test_workers_quit_quietly_when_the_coordinator_dies_while_loading():
    """The coordinator is SIGKILLed while its workers are still starting: they must not
    load the whole model for nobody and then fail to report it (BrokenPipeError)."""
    proc = start_cli(*LONG_RUN)
    workers = []
    try:
        workers = workers_of(proc, 2)
        for w in workers:  # hold them where they are, most likely still starting up
            w.suspend()
        proc.kill()
        proc.wait(EXIT_S)
        for w in workers:
            w.resume()
        # Their stderr is the coordinator's: it reaches end-of-file once they are gone.
        code, out, err = finish(proc, EXIT_S)
    finally:
        for w in workers:
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass
    assert code == -signal.SIGKILL
    assert "Traceback" not in err and "Error" not in err, err
    assert out == ""
    assert_nothing_left(proc, workers)


def _limit_address_space():
    two_gib = 2 << 30
    resource.setrlimit(resource.RLIMIT_AS, (two_gib, two_gib))


def test_worker_out_of_memory_at_load():
    """Each worker's KV cache for 4M tokens is 2.5 GiB; under a 2 GiB address-space
    limit (inherited by the workers) its allocation fails, as on a full node. The
    coordinator itself stays far below the limit (~0.5 GiB). The run ends with the
    worker's reason before any text."""
    proc = start_cli("generate", "Once upon a time", "-m", STORIES, "--nodes", 2, "-c", 1 << 22,
                     preexec_fn=_limit_address_space)
    code, out, err = finish(proc)
    assert code == 1 and out == ""
    line = error_line(err)
    assert line.startswith("worker ") and "failed to load: not enough memory" in line
    assert leftover_segments(proc.pid) == []


def test_library_raises_worker_error():
    """In-process: the step after a worker's death raises WorkerError, which a caller can
    catch; close() then leaves nothing behind."""
    with numatp.load(STORIES, nodes=2, ctx_size=256) as llm:
        ids = llm.prompt_ids("Once upon a time")
        assert len(list(llm.generate_ids(ids, 3))) == 3
        pids = [r["pid"] for r in llm.model.reports]
        workers = [psutil.Process(p) for p in pids]
        workers[0].kill()
        with pytest.raises(WorkerError, match=r"worker 0 \(virtual node .*\) died \(killed by signal 9\)"):
            list(llm.generate_ids(ids, 3))
        with pytest.raises(WorkerError):  # the group stays stopped
            llm.logits(ids)
    assert_nothing_left(psutil.Process(), workers)


def test_script_without_main_guard(tmp_path):
    """A user's script that loads a multi-node model at top level (no `if __name__ ==
    "__main__":`): its workers must not run the script again."""
    script = tmp_path / "plain_script.py"
    script.write_text(
        "import numatp\n"
        f"llm = numatp.load({str(STORIES)!r}, nodes=2, ctx_size=128)\n"
        "print(len(list(llm.generate_ids(llm.prompt_ids('Once upon a time'), 3))))\n"
        "llm.close()\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "3"
    assert "Traceback" not in r.stderr
