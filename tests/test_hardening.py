"""The kernel cache, whose pickles every run loads, is private whatever the umask; and
`numatp pull` cleans up after itself and takes wheels only."""
import os
import stat
import subprocess
import sys

import pytest

from numatp import _env


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
    kernels = cache / "numba" / _env._source_fingerprint()
    assert any(kernels.iterdir())   # Numba did set up its cache there
    for d in (tmp_path / "new", cache, cache / "numba", kernels):
        assert _mode(d) == 0o700, d


def test_kernel_cache_others_could_write_is_closed_and_emptied(tmp_path):
    """Made world-writable by an older numatp: someone else may have put pickles there."""
    kernels = tmp_path / "cache" / "numba" / _env._source_fingerprint()
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
