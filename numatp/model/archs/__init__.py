"""The supported architectures: each module of this package declares one, as ARCH (see
numatp/model/declare.py); parts.py holds the declarations they share. Adding a module
here is all it takes to add an architecture whose step family and blocks exist."""
import importlib
import pkgutil

from numatp.model.declare import Arch


def all_archs() -> dict:
    """{name: Arch} of every module here that declares an ARCH."""
    archs = {}
    for module in pkgutil.iter_modules(__path__):
        arch = getattr(importlib.import_module(f"{__name__}.{module.name}"), "ARCH", None)
        if isinstance(arch, Arch):
            archs[arch.name] = arch
    return archs


def get_arch(name: str) -> Arch:
    archs = all_archs()
    if name not in archs:
        from numatp.errors import ModelFileError
        raise ModelFileError(f"unsupported architecture {name!r} (supported: {', '.join(sorted(archs))})")
    return archs[name]
