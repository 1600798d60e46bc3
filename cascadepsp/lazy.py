"""Public names imported on first use (PEP 562), so ``import cascadepsp`` / ``import pspnet`` and the command's
``--help`` need no torch; both packages' ``__init__`` use it."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to its module (relative to
    the package); submodules are reachable as attributes too. ``namespace`` is the package's ``globals()``."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            namespace[name] = value
            return value
        if importlib.util.find_spec(f"{package}.{name}") is not None:  # a submodule, e.g. pspnet.weights
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__
