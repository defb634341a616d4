"""Numba settings that must be in place before numba is first imported.

The SLP vectorizer is what turns the per-lane block loops of the quantized kernels into
SIMD code (measured: 2-5 GB/s without it, ~30 GB/s with it). Numba's cache key ignores
this setting, so it is forced to one value rather than left to the environment.
The omp threading layer costs ~1 us per parallel region; workqueue ~80 us.

Numba's on-disk cache checks only the source file of the cached function itself, so the
cached transformer step would keep a stale copy of a kernel from another file after an
upgrade. The cache therefore lives in a directory named after a fingerprint of every
source file of the package.

Numba loads that cache's pickles on every run, so its directories are made 0o700
whatever the umask (under umask 000 they were world-writable), and one another user
owns, or that cannot be written at all, is not used: Numba would quietly fall back to
caching next to the package's sources, where the fingerprint does not apply. The
kernels then go to a private temporary directory removed at exit (every run compiles
again), and CACHE_PROBLEM says why, for the first-run notice.

AMX (numatp/quant/amx.py) is decided here too, since the kernels compiled with and
without it must not share a cache: it is used when the CPU Numba compiles for has
AMX-INT8 and Linux grants this process the tile state, unless NUMATP_AMX=0. Kernels
compiled with it live under their own cache directory (a "-amx" suffix, or an "amx"
subdirectory of a NUMBA_CACHE_DIR given from outside).
"""
import atexit
import ctypes
import errno
import hashlib
import os
import platform
import shutil
import tempfile
from pathlib import Path

os.environ["NUMBA_SLP_VECTORIZE"] = "1"
os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")


def _source_fingerprint() -> str:
    h = hashlib.sha1()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


_ARCH_PRCTL = 158            # x86-64 syscall number
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def _amx_usable() -> bool:
    """Whether the kernels may use AMX tiles (see the module docstring)."""
    if os.environ.get("NUMATP_AMX", "1") == "0" or platform.machine() != "x86_64":
        return False
    if os.environ.get("NUMBA_CPU_NAME", "host") != "host" or "NUMBA_CPU_FEATURES" in os.environ:
        # another target than this CPU: only if it names AMX itself
        if not {"+amx-tile", "+amx-int8"} <= set(os.environ.get("NUMBA_CPU_FEATURES", "").split(",")):
            return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
        if not {"amx_tile", "amx_int8"} <= set(flags):
            return False
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


AMX = _amx_usable()


def kernel_cache_name() -> str:
    """The kernel cache's directory name under <cache root>/numba: the source fingerprint,
    "-amx" added where the kernels use AMX."""
    return _source_fingerprint() + ("-amx" if AMX else "")


def cache_root() -> Path:
    return Path(os.environ.get("NUMATP_CACHE") or Path.home() / ".cache" / "numatp")


def make_cache_dir(path: Path, mode: int) -> Path:
    """Create `path` and its missing parents, each with `mode` whatever the umask (which
    can only take permissions away); existing directories keep theirs. Raises OSError."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            pass
        path = d
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{path} is not a directory")
    return path


def _private_kernel_cache(path: Path) -> Path:
    """`path` (numba/<fingerprint> under the cache root) made or checked private: owned
    by this user and writable by no one else. One that others could write to (made by
    an older numatp under umask 000) is closed and emptied: its pickles may not be ours."""
    make_cache_dir(path, 0o700)
    for d in (path.parent, path):
        st = os.stat(d)
        if st.st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, f"{d} belongs to another user")
        if st.st_mode & 0o022:
            os.chmod(d, 0o700)
            if d == path:
                shutil.rmtree(d)
                os.mkdir(d, 0o700)
    if not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, f"{path} is not writable")
    return path


def _numba_cache_dir():
    """(directory, problem): the fingerprinted cache, or a private temporary one and why."""
    wanted = cache_root() / "numba" / kernel_cache_name()
    try:
        return str(_private_kernel_cache(wanted)), None
    except OSError as e:
        fallback = tempfile.mkdtemp(prefix="numatp-kernels-")
        atexit.register(_remove_if_mine, fallback, os.getpid())
        return fallback, f"cannot keep compiled kernels in {wanted.parent}: {e.strerror or e}"


def _remove_if_mine(path, pid):
    if os.getpid() == pid:   # not in a forked child that inherited the handler
        shutil.rmtree(path, ignore_errors=True)


CACHE_PROBLEM = None
if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"], CACHE_PROBLEM = _numba_cache_dir()
else:  # given from outside, or inherited from a parent (a worker's is its parent's)
    _given = Path(os.environ["NUMBA_CACHE_DIR"])
    if _given.name == "amx":
        _plain = _given.parent
    elif _given.name.endswith("-amx"):
        _plain = _given.with_name(_given.name[:-len("-amx")])
    else:
        _plain = None
    if AMX and _plain is None:
        os.environ["NUMBA_CACHE_DIR"] = str(_given / "amx")
    elif not AMX and _plain is not None:
        os.environ["NUMBA_CACHE_DIR"] = str(_plain)


def _compiled_marker(key: str) -> Path:
    return Path(os.environ["NUMBA_CACHE_DIR"]) / "compiled" / key


def kernels_cached(key: str) -> bool:
    """Whether the transformer step for kernel set `key` (KernelSet.key) has run with this
    source state and Numba cache, i.e. whether starting such a model loads compiled
    kernels rather than compiling them."""
    return _compiled_marker(key).exists()


def mark_kernels_cached(key: str) -> None:
    """Note that the step for kernel set `key` has been compiled into the cache."""
    marker = _compiled_marker(key)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:
        pass  # a read-only cache only costs the first-run notice its accuracy
