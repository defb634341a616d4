"""The end-of-suite leak check: a run fails if it leaves a /dev/shm/numatp_* segment or a
numatp process behind, whichever test leaked it.

This machine is shared: other test sessions run at the same time and may leak their
own. So only what this session made counts:
- processes: every process started under this session carries SESSION_VAR in its
  environment (set here, inherited through fork, exec and multiprocessing's spawn), so
  a leaked worker is found even after it was re-parented to init;
- segments: their names are numatp_<creator pid>_..., and the creator is this pytest
  process, one of its subprocesses (subprocess.Popen records every pid it starts,
  however short-lived), or a process of this session still alive at the end.
After reporting, the check removes what leaked, so one failure does not break the
next run.
"""
import os
import subprocess
import time

import psutil
import pytest

from numatp.shm.segment import PREFIX, SHM_DIR, leftover_segments

SESSION_VAR = "NUMATP_TEST_SESSION"
SETTLE_S = 10.0   # a stopped process may take a moment to exit on a loaded machine

_session = {}
_popen_pids = set()
_Popen = subprocess.Popen


class _RecordingPopen(_Popen):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _popen_pids.add(self.pid)


def pytest_configure(config):
    token = f"{os.getpid()}-{time.time_ns()}"
    os.environ[SESSION_VAR] = token
    _session.update(token=token, segments_before=set(leftover_segments()))
    subprocess.Popen = _RecordingPopen


def pytest_unconfigure(config):
    subprocess.Popen = _Popen


def session_processes():
    """Processes of this session other than pytest itself, excluding pytest's own
    multiprocessing resource tracker (it lives as long as pytest does)."""
    me, found = os.getpid(), []
    for p in psutil.process_iter(["pid", "ppid", "cmdline"]):
        if p.info["pid"] == me:
            continue
        try:
            if p.environ().get(SESSION_VAR) != _session["token"]:
                continue
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        cmd = " ".join(p.info["cmdline"] or ())
        if p.info["ppid"] == me and "resource_tracker" in cmd:
            continue
        found.append(p)
    return found


def session_segments(processes):
    pids = {os.getpid()} | _popen_pids | {p.pid for p in processes}
    new = set(leftover_segments()) - _session["segments_before"]
    return sorted(n for n in new if _creator(n) in pids)


def _creator(name):
    try:
        return int(name[len(PREFIX):].split("_", 1)[0])
    except ValueError:
        return None


def pytest_sessionfinish(session, exitstatus):
    if not _session:
        return
    deadline = time.monotonic() + SETTLE_S
    while True:
        procs = session_processes()
        segs = session_segments(procs)
        if not (procs or segs) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not (procs or segs):
        return
    lines = [f"leaked process {p.pid}: {' '.join(p.info['cmdline'] or ())}" for p in procs]
    lines += [f"leaked shared memory segment {SHM_DIR}/{n}" for n in segs]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in ["", "numatp leak check failed:"] + lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    for n in segs:
        try:
            os.unlink(os.path.join(SHM_DIR, n))
        except FileNotFoundError:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels():
    """Compile the transformer step into Numba's cache before any test runs, as a user's
    first run does: on a clean machine the first CLI test would otherwise pay for it, and
    print generate's one-time "compiling" notice in front of the output it checks."""
    import numatp
    from models import STORIES
    with numatp.load(STORIES, nodes=1) as llm:
        llm.logits([1])
