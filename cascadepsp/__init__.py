"""cascadepsp: refine any segmenter's coarse mask into a sharp high-resolution mask (CascadePSP, CVPR 2020).

The public names are imported on first use, so ``cascadepsp --help`` and argument errors need no torch.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "PRESETS": "models.config", "RMConfig": "models.config", "get_config": "models.config",
    "RefinementModule": "models.refinement", "count_parameters": "models.refinement",
    "Refiner": "inference.refiner", "refine": "inference.refiner", "refine_instances": "instances.refine",
    "convert_official": "weights.registry", "create_model": "weights.registry", "list_weights": "weights.registry", "load_model": "weights.registry",
    "load_official": "weights.registry", "save_model": "weights.registry",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
