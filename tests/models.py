"""Where the tests find real models: ../shared/models next to the repository (as laid out
on the development machines and in CI), and the registry's cache for downloaded ones."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NUMATP_SHARED", REPO.parent / "shared"))
STORIES = SHARED / "models" / "stories260K.gguf"


def smollm2() -> Path:
    """SmolLM2-135M-Instruct, fetched once into the cache by numatp's own registry."""
    from numatp.registry import pull
    return pull("smollm2-135m", quiet=True)
