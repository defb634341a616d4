"""Finding CuPy and a CUDA GPU, without making either a dependency.

`probe()` answers what `numatp info`/`topology` show and what `--gpu attn` checks before
anything is loaded: the device's name and free memory, or one sentence saying why there
is none. It imports CuPy, which creates a CUDA context (a few hundred MB of GPU memory)
in the calling process: a coordinator that does not own the GPU asks a short-lived child
process instead (`probe_in_child`), so that only the process that runs attention holds a
context.

NUMATP_GPU_BACKEND=numpy selects the host stand-in: the same offload code on numpy
arrays in host memory (no GPU, no speed-up). It exists so that the offload logic -- the
per-layer loop, the KV layout, RoPE, the attention math, the ranks' zero contribution --
is tested on machines without a GPU; NUMATP_GPU_STANDIN_MEMORY (bytes) sets the memory
it claims to have, for tests of the fit check.
"""
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

from numatp.errors import NumatpError

INSTALL_HINT = ("pip install 'numatp[cuda]' (CUDA 12 drivers) or 'numatp[cuda13]' "
                "(CUDA 13 drivers)")
STANDIN = "numpy"


@dataclass(frozen=True)
class GpuInfo:
    name: str
    free_bytes: int
    total_bytes: int
    backend: str          # "cupy" or "numpy" (the host stand-in)
    detail: str = ""      # CuPy and CUDA runtime versions

    def describe(self) -> str:
        return (f"{self.name}, {self.free_bytes / 2**30:.1f} GiB free of "
                f"{self.total_bytes / 2**30:.1f} GiB" + (f" ({self.detail})" if self.detail else ""))


class GpuUnavailable(NumatpError):
    """--gpu was asked for and there is no usable GPU (or no CuPy)."""


def backend_name() -> str:
    return os.environ.get("NUMATP_GPU_BACKEND", "cupy")


def probe():
    """(GpuInfo, None) for device 0, or (None, the reason there is none)."""
    if backend_name() == STANDIN:
        import psutil
        total = int(os.environ.get("NUMATP_GPU_STANDIN_MEMORY", psutil.virtual_memory().available))
        return GpuInfo("host stand-in (NUMATP_GPU_BACKEND=numpy: numpy arrays, no GPU)",
                       total, total, STANDIN), None
    if backend_name() != "cupy":
        return None, (f"NUMATP_GPU_BACKEND={backend_name()!r} is not a backend "
                      "(cupy, or numpy for the tests' host stand-in)")
    try:
        import cupy
    except ImportError:
        return None, f"CuPy is not installed; {INSTALL_HINT}"
    except Exception as e:  # a broken install: CUDA libraries missing, wrong wheel
        return None, f"CuPy failed to import: {_first_line(e)}"
    try:
        runtime = cupy.cuda.runtime
        if runtime.getDeviceCount() < 1:
            return None, "CuPy finds no CUDA GPU"
        props = runtime.getDeviceProperties(0)
        free, total = runtime.memGetInfo()
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        detail = f"CuPy {cupy.__version__}, CUDA runtime {runtime.runtimeGetVersion()}"
        return GpuInfo(name, int(free), int(total), "cupy", detail), None
    except Exception as e:  # no driver, no device visible, driver too old for the wheel
        return None, f"no usable CUDA GPU: {_first_line(e)}"


def probe_in_child():
    """probe(), run in a child process so that this one creates no CUDA context."""
    code = ("import json; from dataclasses import asdict; from numatp.gpu.device import probe; "
            "i, why = probe(); print(json.dumps([asdict(i) if i else None, why]))")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, env=os.environ.copy())
        info, why = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError) as e:
        return None, f"the GPU probe failed ({_first_line(e)})"
    return (GpuInfo(**info) if info else None), why


def require(in_child=False) -> GpuInfo:
    """The GPU, or GpuUnavailable in one line."""
    info, why = probe_in_child() if in_child else probe()
    if info is None:
        raise GpuUnavailable(f"--gpu attn: {why}")
    return info


def _first_line(e) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


__all__ = ["GpuInfo", "GpuUnavailable", "probe", "probe_in_child", "require", "asdict"]
