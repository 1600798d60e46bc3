"""pspnet: a PSPNet segmenter (Zhao et al., CVPR 2017) that produces coarse masks for the CascadePSP refiner.

The public names are imported on first use, as in :mod:`cascadepsp` (PEP 562).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_EXPORTS = {
    "PSPNetConfig": "config", "PSPNetSegmenter": "inference", "predict": "inference", "PSPNet": "model",
    "PyramidPooling": "model", "MODEL_FORMAT": "weights", "bundled_path": "weights", "create": "weights",
    "load": "weights", "load_with_metadata": "weights", "save": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used."""
    if name not in _EXPORTS:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule, e.g. pspnet.weights
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'pspnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
