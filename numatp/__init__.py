"""numatp: NUMA-aware tensor-parallel CPU inference for GGUF models."""
from numatp import _env  # noqa: F401  (must run before numba is imported)
from numatp.errors import ContextError, NumatpError, UsageError, ModelFileError, WorkerError

__version__ = "0.1.0"


def load(path=None, **kwargs):
    """Load a GGUF model; see numatp.api.LLM."""
    from numatp.api import load as _load
    return _load(path, **kwargs)


def load_tokenizer(path):
    """A tokenizer from a GGUF file's metadata (weights are not needed)."""
    from numatp.tokenizer import load_tokenizer as _lt
    return _lt(path)


__all__ = ["load", "load_tokenizer", "NumatpError", "UsageError", "ContextError",
           "ModelFileError", "WorkerError", "__version__"]
