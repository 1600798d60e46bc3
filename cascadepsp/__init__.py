"""cascadepsp: refine any segmenter's coarse mask into a sharp high-resolution mask (CascadePSP, CVPR 2020).

The public names are imported on first use, so ``cascadepsp --help`` and argument errors need no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PRESETS": "models.config", "RMConfig": "models.config", "get_config": "models.config",
    "RefinementModule": "models.refinement", "count_parameters": "models.refinement",
    "Refiner": "inference.refiner", "refine": "inference.refiner", "refine_instances": "instances.refine",
    "convert_official": "weights.registry", "create_model": "weights.registry", "list_weights": "weights.registry", "load_model": "weights.registry",
    "load_official": "weights.registry", "save_model": "weights.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cascadepsp' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
