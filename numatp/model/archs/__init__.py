"""The supported architectures: each module of this package declares one, as ARCH (see
numatp/model/declare.py); parts.py holds the declarations they share. Adding a module
here is all it takes to add an architecture whose step family and blocks exist."""
import importlib
import pkgutil

from numatp.model.declare import Arch


def all_archs() -> dict:
    """{(name, has experts): Arch} of every module here that declares an ARCH: one
    GGUF architecture name may come with and without experts (llama, Mixtral)."""
    archs = {}
    for module in pkgutil.iter_modules(__path__):
        arch = getattr(importlib.import_module(f"{__name__}.{module.name}"), "ARCH", None)
        if isinstance(arch, Arch):
            archs[arch.name, arch.experts] = arch
    return archs


def get_arch(name: str, experts: int = 0) -> Arch:
    """The declaration of GGUF architecture `name` with `experts` experts (0: dense)."""
    from numatp.errors import ModelFileError
    archs = all_archs()
    if (name, experts > 0) in archs:
        return archs[name, experts > 0]
    if (name, True) in archs:
        raise ModelFileError(f"missing metadata {name}.expert_count (a {name} model has experts)")
    if (name, False) in archs:
        raise ModelFileError(f"unsupported architecture {name!r} with experts (expert_count "
                             f"{experts})")
    supported = sorted({n for n, _ in archs})
    raise ModelFileError(f"unsupported architecture {name!r} (supported: {', '.join(supported)})")
